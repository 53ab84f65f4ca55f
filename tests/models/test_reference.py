"""The reference policy under adapters: the untouched base's log-probs, with one copy of the base weights."""

import torch

from tunekit.data import synthetic
from tunekit.data.collate import collate_pairs
from tunekit.data.pairs import PairDataConfig, tokenize_pairs
from tunekit.data.sources import Rows
from tunekit.models.adapters import AdapterConfig, apply_adapter
from tunekit.models.load import ModelConfig, load_model
from tunekit.models.logprobs import sequence_logps
from tunekit.models.reference import ReferencePolicy


def batch(tokenizer):
    pairs, _ = tokenize_pairs(Rows("mem", synthetic.preference_pairs(4, seed=5)), PairDataConfig(), tokenizer)
    return collate_pairs(pairs, pad_id=tokenizer.pad_token_id)


def trained_lora(path):
    torch.manual_seed(0)
    policy = apply_adapter(load_model(ModelConfig(path=path)), AdapterConfig())
    with torch.no_grad():
        for name, param in policy.named_parameters():
            if "lora_B" in name:
                param.normal_(std=0.5)  # as if trained: the policy now differs from the base
    return policy


def test_reference_log_probs_equal_the_untouched_base(tiny_llama_path, tokenizer):
    b = batch(tokenizer)
    policy = trained_lora(tiny_llama_path)
    reference = ReferencePolicy.for_policy(policy)
    assert reference.kind == "adapter_disabled"
    ref_sums, _ = reference.run(policy, lambda m: sequence_logps(m, b))
    base = load_model(ModelConfig(path=tiny_llama_path)).eval()
    with torch.no_grad():
        base_sums, _ = sequence_logps(base, b)
        policy_sums, _ = sequence_logps(policy, b)
    torch.testing.assert_close(ref_sums, base_sums, atol=1e-5, rtol=0)
    assert (policy_sums - base_sums).abs().max() > 1e-2  # the adapter is back on after the reference pass


def test_adapter_reference_holds_one_copy_of_the_base_weights(tiny_llama_path):
    base_bytes = sum(p.numel() * p.element_size() for p in load_model(ModelConfig(path=tiny_llama_path)).parameters())
    policy = trained_lora(tiny_llama_path)
    reference = ReferencePolicy.for_policy(policy)
    assert reference.frozen is None
    storages = {p.untyped_storage().data_ptr(): p.untyped_storage().nbytes() for p in policy.parameters()}
    adapter_bytes = sum(p.numel() * p.element_size() for n, p in policy.named_parameters() if "lora_" in n)
    assert sum(storages.values()) <= base_bytes + adapter_bytes


def test_full_fine_tuning_keeps_a_frozen_copy(tiny_llama_path, tokenizer):
    b = batch(tokenizer)
    policy = apply_adapter(load_model(ModelConfig(path=tiny_llama_path)), AdapterConfig(method="full"))
    reference = ReferencePolicy.for_policy(policy)
    assert reference.kind == "frozen_copy"
    with torch.no_grad():
        before, _ = sequence_logps(policy, b)
        for p in policy.parameters():
            p.add_(0.01)
    after_ref, _ = reference.run(policy, lambda m: sequence_logps(m, b))
    torch.testing.assert_close(after_ref, before, atol=1e-5, rtol=0)


def test_reference_passes_run_without_dropout_while_the_policy_trains(tiny_llama_path, tokenizer):
    """The reference is a fixed function: with dropout in the base, two reference passes during training agree
    (and equal the base in eval mode), and the policy is left in training mode."""
    b = batch(tokenizer)
    base = load_model(ModelConfig(path=tiny_llama_path))
    for module in base.modules():
        if hasattr(module, "attention_dropout"):
            module.attention_dropout = 0.5
    policy = apply_adapter(base, AdapterConfig()).train()
    reference = ReferencePolicy.for_policy(policy)
    first, _ = reference.run(policy, lambda m: sequence_logps(m, b))
    second, _ = reference.run(policy, lambda m: sequence_logps(m, b))
    torch.testing.assert_close(first, second, atol=0, rtol=0)
    assert policy.training
