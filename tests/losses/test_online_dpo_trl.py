"""Online DPO against TRL 1.16's OnlineDPOTrainer, running TRL's own training_step on the same two samples a prompt.

TRL's step samples two completions a prompt, scores both with its reward functions, takes the first as chosen when
its score is at least the second's (a tie included), and takes the sigmoid DPO loss's mean over the prompts with the
reference's log-probs computed on the fly (the adapter disabled). tunekit with ``online.ties=keep`` must give the same
pairs, the same loss and the same gradient.
"""

import types
from collections import defaultdict

import torch
from trl_source import IdentityAccelerator, namespace, stand_in, trl_functions

from tunekit.data.prompts import PromptExample
from tunekit.losses.preference import PreferenceLossConfig
from tunekit.models.adapters import AdapterConfig, apply_adapter
from tunekit.models.load import ModelConfig, load_model
from tunekit.models.reference import ReferencePolicy
from tunekit.recipes.dpo import dpo_step
from tunekit.rl.online_pairs import best_and_worst, pair_batch
from tunekit.rl.rollout import SamplingConfig, generate_rollout

BETA = 0.2


def length_mod_3(prompts, completions, **kwargs):
    """A judge with ties and without: a completion's length in characters, modulo 3."""
    return [float(len(c) % 3) for c in completions]


def trl_online_step(policy, tokenizer, prompts, completion_ids, completion_mask, prompt_ids, prompt_mask):
    """TRL's OnlineDPOTrainer.training_step (its code as installed) with its generation replaced by the given
    samples: rows [0, P) the first sample of each prompt, rows [P, 2P) the second, as TRL lays them out."""
    helpers = namespace(
        is_conversational=lambda example: False,
        empty_cache=lambda: None,
        OptimizerNames=types.SimpleNamespace(LOMO="lomo", ADALOMO="adalomo"),
    )
    path = "experimental/online_dpo/online_dpo_trainer.py"
    methods = ["training_step", "_forward", "_calculate_rewards_from_functions", "beta"]
    fns = trl_functions(path, [f"OnlineDPOTrainer.{name}" for name in methods], helpers)

    class Accelerator(IdentityAccelerator):
        @staticmethod
        def backward(loss, **kwargs):
            loss.backward()

    trainer = stand_in(
        fns,
        args=types.SimpleNamespace(
            use_vllm=False,
            missing_eos_penalty=None,
            loss_type="sigmoid",
            torch_empty_cache_steps=None,
            optim="adamw_torch",
            n_gpu=1,
            gradient_accumulation_steps=1,
        ),
        _beta=BETA,
        model=policy,
        ref_model=None,
        max_length=10_000,
        eos_token_ids=[tokenizer.eos_token_id],
        processing_class=tokenizer,
        reward_funcs=[length_mod_3],
        reward_processing_classes=[None],
        reward_weights=torch.ones(1),
        accelerator=Accelerator(),
        state=types.SimpleNamespace(global_step=0, epoch=0),
        stats=defaultdict(list),
    )
    samples = (prompt_ids, prompt_mask, completion_ids, completion_mask, None)
    trainer._generate = lambda model, prompts, images=None: samples
    loss = trainer.training_step(policy, {"prompt": prompts})
    return loss, trainer.stats


def test_two_samples_a_prompt_give_trls_pairs_loss_and_gradient(tiny_llama_path, tokenizer):
    torch.manual_seed(0)
    policy = apply_adapter(load_model(ModelConfig(path=tiny_llama_path)), AdapterConfig())
    with torch.no_grad():  # move the adapter off zero, so that the policy and its reference differ
        for name, param in policy.named_parameters():
            if "lora_B" in name:
                param.normal_(std=0.05)
    # Prompts of one length: TRL's forward passes no position ids, so left padding would shift its positions.
    texts = [f"Question: What is {a} + {b}?\nAnswer:" for a, b in [(1, 2), (3, 4), (5, 1), (2, 2), (6, 3), (7, 1)]]
    prompts = []
    for i, text in enumerate(texts):
        ids = [tokenizer.bos_token_id] + tokenizer(text, add_special_tokens=False)["input_ids"]
        prompts.append(PromptExample(text, ids, {}, i))
    assert len({len(p.prompt_ids) for p in prompts}) == 1
    rollout = generate_rollout(policy, tokenizer, prompts, SamplingConfig(num_generations=2, max_new_tokens=5))

    # tunekit: the judge's scores, the pairs (ties kept, as TRL keeps them) and offline DPO's step function.
    scores = torch.tensor(length_mod_3(rollout.prompts, rollout.completions)).view(-1, 2)
    choice = best_and_worst(scores)
    assert choice.tied.any() and not choice.tied.all(), "the samples should hold both ties and preferences"
    batch = pair_batch(rollout, choice, torch.ones(len(prompts), dtype=torch.bool), 2)
    loss_sum, metrics = dpo_step(policy, batch, PreferenceLossConfig(beta=BETA), ReferencePolicy.for_policy(policy))
    (loss_sum / len(prompts)).backward()
    ours = {name: p.grad.clone() for name, p in policy.named_parameters() if p.grad is not None}
    policy.zero_grad(set_to_none=True)

    # TRL: the same samples in its layout, first samples then second samples.
    width = len(prompts[0].prompt_ids)
    first, second = slice(0, None, 2), slice(1, None, 2)
    completion_ids = torch.cat([rollout.input_ids[first, width:], rollout.input_ids[second, width:]])
    completion_mask = torch.cat([rollout.attention_mask[first, width:], rollout.attention_mask[second, width:]])
    prompt_ids = torch.cat([rollout.input_ids[first, :width], rollout.input_ids[second, :width]])
    prompt_mask = torch.cat([rollout.attention_mask[first, :width], rollout.attention_mask[second, :width]])
    loss, stats = trl_online_step(policy, tokenizer, texts, completion_ids, completion_mask, prompt_ids, prompt_mask)
    theirs = {name: p.grad.clone() for name, p in policy.named_parameters() if p.grad is not None}

    torch.testing.assert_close(loss_sum / len(prompts), loss, rtol=0, atol=1e-6)
    assert abs(float(loss) - 0.6931) > 1e-3  # the reference differs from the policy: not DPO's first-step log 2
    assert ours.keys() == theirs.keys() and ours
    for name, grad in theirs.items():
        torch.testing.assert_close(ours[name], grad, rtol=1e-4, atol=1e-7)
    # The same pairs: TRL's logged implicit rewards and score margin are ours.
    assert abs(metrics["rewards/chosen"].item() - stats["rewards/chosen"][0]) < 1e-6
    assert abs(metrics["rewards/margin"].item() - stats["rewards/margins"][0]) < 1e-6
    assert abs(choice.margin.mean().item() - stats["objective/scores_margin"][0]) < 1e-6
