"""The smoke version of benchmarks/grpo_oracle.py: tunekit's GRPO and TRL's GRPOTrainer for two steps on the SFT
warm start, both final policies and the warm start scored by the one evaluator. Figures and alignment, never
outcomes: two steps teach nothing."""

from __future__ import annotations

import json
import math
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "benchmarks"))

import grpo_oracle  # noqa: E402

POLICIES = ["warm start", "tunekit", "trl"]


@pytest.fixture(scope="module")
def smoke(sft_warm_start, tmp_path_factory):
    root = tmp_path_factory.mktemp("oracle")
    out = root / "out.json"
    results = grpo_oracle.main(["--smoke", f"--out={root / 'runs'}", f"--json={out}", f"model.path={sft_warm_start}"])
    assert json.loads(out.read_text())["policies"].keys() == results["policies"].keys()
    return results


def test_the_table_holds_three_policies_scored_by_the_one_evaluator(smoke, capsys):
    assert list(smoke["policies"]) == POLICIES
    for name, policy in smoke["policies"].items():
        for key in ("sampled_accuracy", "greedy_accuracy"):
            assert 0.0 <= policy[key] <= 1.0, (name, key, policy[key])
        assert policy["prompts"] == 4 and policy["samples_per_prompt"] == 2
        assert 1 <= policy["mean_completion_tokens"] <= 6
    assert smoke["policies"]["warm start"]["wall_s"] is None
    assert smoke["policies"]["tunekit"]["wall_s"] > 0 and smoke["policies"]["trl"]["wall_s"] > 0
    grpo_oracle.print_table(smoke)
    table = [line for line in capsys.readouterr().out.splitlines() if line.startswith("| ")]
    assert [row.split(" | ")[0][2:] for row in table[1:]] == POLICIES


def test_trl_trained_on_tunekits_prompt_ids_in_tunekits_order_with_the_mapped_hyperparameters(smoke):
    tunekit, trl = smoke["tunekit"], smoke["trl"]
    assert tunekit["steps"] == trl["steps"] == 2
    # tunekit's rollouts drew the prompts the oracle laid out for TRL, and TRL generated from exactly their ids.
    assert tunekit["order_as_reconstructed"] is True
    assert trl["prompt_ids_match"] is True and trl["generation_batches"] == 2
    assert trl["tokenization"] == {"checked": 16, "mismatched": 0, "tunekit_ids_given": False}
    # The recipe's hyperparameters, whatever its defaults are today, mapped onto TRL's names.
    args, config = trl["arguments"], smoke["config"]
    assert args["per_device_train_batch_size"] == 4 * 4 and args["gradient_accumulation_steps"] == 1
    assert args["max_steps"] == 2 and args["shuffle_dataset"] is False and args["num_iterations"] == 1
    assert args["learning_rate"] == config["train"]["lr"] and args["beta"] == config["loss"]["kl_beta"]
    assert (args["epsilon"], args["epsilon_high"]) == (config["loss"]["clip_low"], config["loss"]["clip_high"])
    assert (
        args["loss_type"] == {"sequence": "grpo", "token": "dapo", "dr_grpo": "dr_grpo"}[config["loss"]["aggregation"]]
    )
    assert args["use_bias_correction_kl"] is False and args["gradient_checkpointing"] is False
    assert args["report_to"] == "none" and args["bf16"] is False


def test_chat_prompts_that_trl_would_tokenize_otherwise_get_tunekits_ids(sft_warm_start, tmp_path):
    """Chat prompts are rendered by the template, which places no BOS; TRL's tokenizer call would add one. Also
    crosses an epoch with grad accumulation and two passes per batch of rollouts."""
    rows = [{"prompt": [{"role": "user", "content": f"What is {a} + 2?"}], "answer": str(a + 2)} for a in range(10)]
    data = tmp_path / "chat.jsonl"
    data.write_text("".join(json.dumps(row) + "\n" for row in rows))
    results = grpo_oracle.main(
        [
            "--smoke",
            f"--out={tmp_path / 'runs'}",
            "--eval-prompts=2",
            f"model.path={sft_warm_start}",
            f"data.path={data}",
            "data.eval_fraction=0.2",
            "train.micro_batch_size=2",
            "train.grad_accum_steps=2",
            "loss.passes=2",
            "train.epochs=2",
            "max_steps=6",
        ]
    )
    tunekit, trl = results["tunekit"], results["trl"]
    assert tunekit["steps"] == trl["steps"] == 6 and tunekit["order_as_reconstructed"] is True
    assert trl["tokenization"] == {"checked": 8, "mismatched": 8, "tunekit_ids_given": True}
    assert trl["prompt_ids_match"] is True and trl["generation_batches"] == 3
    assert trl["arguments"]["num_iterations"] == 2 and trl["arguments"]["gradient_accumulation_steps"] == 2
    assert all(
        0 <= p["greedy_accuracy"] <= 1 and math.isfinite(p["sampled_accuracy"]) for p in results["policies"].values()
    )


def test_a_missing_warm_start_names_the_command_that_makes_it(tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_info:
        grpo_oracle.main(["--smoke", f"--out={tmp_path}", f"model.path={tmp_path / 'nowhere' / 'final'}"])
    assert exit_info.value.code == 2
    assert grpo_oracle.WARM_START_COMMAND in capsys.readouterr().err
