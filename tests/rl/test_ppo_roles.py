"""PPO's four roles on one base: each equals the same role loaded as its own model, and the base is stored once."""

from __future__ import annotations

import pytest
import torch

from tunekit.config import load_config
from tunekit.models.load import ModelConfig, load_score_model
from tunekit.models.policy import build_policy
from tunekit.models.reward import last_token_scores
from tunekit.rl.roles import CriticConfig, SharedRoles

QUICK = ["train.progress=false", "max_steps=2", "data.synthetic_size=32"]


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """An SFT LoRA run (the actor's start) and a reward run, both short, on tiny-llama."""
    from tunekit.recipes import reward, sft

    root = tmp_path_factory.mktemp("ppo-roles")
    sft.run(load_config(sft.SFTConfig, None, [f"output_dir={root / 'sft'}", *QUICK]))
    reward.run(load_config(reward.RewardConfig, None, [f"output_dir={root / 'reward'}", *QUICK]))
    return root / "sft" / "final", root / "reward" / "final"


def _batch(tokenizer):
    texts = ["Q: 2 + 3 = ?\nA: 2 + 3 = 5. #### 5", "Q: 7 + 1 = ?\nA:"]
    ids = [[tokenizer.bos_token_id, *tokenizer(t, add_special_tokens=False)["input_ids"]] for t in texts]
    width = max(map(len, ids))
    input_ids = torch.full((2, width), tokenizer.pad_token_id)
    mask = torch.zeros((2, width), dtype=torch.long)
    for b, row in enumerate(ids):  # left padding, as in rollouts
        input_ids[b, width - len(row) :] = torch.tensor(row)
        mask[b, width - len(row) :] = 1
    return {"input_ids": input_ids, "attention_mask": mask, "position_ids": (mask.cumsum(-1) - 1).clamp(min=0)}


def _logits(model, batch):
    with torch.no_grad():
        return model(**batch).logits


def _shared(actor_start, reward_dir):
    torch.manual_seed(0)
    model = build_policy(ModelConfig(path=str(actor_start)), reference_adapter=True)
    roles = SharedRoles(model, CriticConfig(), str(reward_dir))
    # Move every trained role away from its starting point, as training would.
    with torch.no_grad():
        for name, p in model.named_parameters():
            if ".default." in name or ".critic." in name or name.startswith("value_head"):
                p.add_(0.05 * torch.randn_like(p))
    return model.eval(), roles


def test_every_role_equals_its_separately_loaded_model(runs, tokenizer, tmp_path):
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    sft_final, reward_final = runs
    model, roles = _shared(sft_final, reward_final)
    batch = _batch(tokenizer)
    base_path = model.peft_config["default"].base_model_name_or_path

    def fresh_base():
        return AutoModelForCausalLM.from_pretrained(base_path).eval()

    # actor: the trained adapter, saved and loaded alone on a fresh base
    model.save_pretrained(tmp_path / "roles", selected_adapters=["default", "critic"])
    actor = PeftModel.from_pretrained(fresh_base(), tmp_path / "roles")
    torch.testing.assert_close(_logits(model, batch), _logits(actor, batch), atol=1e-5, rtol=0)

    # reference: the SFT adapter as it was before training moved the actor
    with roles.acting(model, "reference"):
        shared_reference = _logits(model, batch)
    reference = PeftModel.from_pretrained(fresh_base(), sft_final)
    torch.testing.assert_close(shared_reference, _logits(reference, batch), atol=1e-5, rtol=0)
    assert not torch.allclose(shared_reference, _logits(model, batch), atol=1e-3)

    # critic: its adapter on a fresh base, with the same value head on the last hidden state
    critic = PeftModel.from_pretrained(fresh_base(), tmp_path / "roles" / "critic")
    with torch.no_grad():
        hidden = critic(**batch, output_hidden_states=True).hidden_states[-1]
        separate_values = model.value_head(hidden[:, :-1]).squeeze(-1)
        shared_values = roles.values(model, batch)
    torch.testing.assert_close(shared_values, separate_values, atol=1e-5, rtol=0)

    # reward: the reward run loaded as the sequence-classification model the reward recipe trained
    scorer = load_score_model(str(reward_final))
    with torch.no_grad():
        separate_scores = last_token_scores(scorer, batch["input_ids"], batch["attention_mask"])
    torch.testing.assert_close(roles.reward_scores(model, batch), separate_scores, atol=1e-5, rtol=0)

    # and switching left the actor active
    torch.testing.assert_close(_logits(model, batch), _logits(actor, batch), atol=1e-5, rtol=0)


def test_actor_and_critic_both_train_through_role_switches(runs, tokenizer):
    from tunekit.models.logprobs import token_logps

    sft_final, reward_final = runs
    model, roles = _shared(sft_final, reward_final)
    model.train()
    batch = _batch(tokenizer)
    batch["labels"] = batch["input_ids"].masked_fill(batch["attention_mask"] == 0, -100)
    with torch.no_grad(), roles.acting(model, "reference"):
        token_logps(model, batch)
    roles.reward_scores(model, batch)
    logps, mask = token_logps(model, batch)
    values = roles.values(model, batch)
    (logps.sum() + values.sum()).backward()
    grads = {name: p.grad for name, p in model.named_parameters() if p.grad is not None}
    assert any(".default." in n for n in grads) and any(".critic." in n for n in grads)
    assert "value_head.weight" in grads
    assert not any(".reference." in n or ".reward." in n or n.startswith("reward_head") for n in grads)
    assert all(not p.requires_grad for n, p in model.named_parameters() if ".reference." in n or ".reward." in n)


def test_four_roles_store_the_base_once(runs):
    """Parameter storage of all four roles together, against the base causal LM's own, in the default setup:
    a fresh actor LoRA (r=8, every linear layer) whose reference is the base itself, the critic, the reward run."""
    from transformers import AutoModelForCausalLM

    _, reward_final = runs
    model = build_policy(ModelConfig(path="tiny-llama"), reference_adapter=True)
    roles = SharedRoles(model, CriticConfig(), str(reward_final))
    assert roles.reference_kind == "adapter_disabled"
    base = AutoModelForCausalLM.from_pretrained(model.peft_config["default"].base_model_name_or_path)

    def nbytes(module):
        unique = {p.data_ptr(): p.numel() * p.element_size() for p in module.parameters()}
        return sum(unique.values())

    ratio = nbytes(model) / nbytes(base)
    assert ratio <= 1.2, ratio
