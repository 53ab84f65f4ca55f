"""Reward recipe end to end: accuracy on the default task, reloading with plain peft, starting from SFT."""

import json

import pytest
import torch

from tunekit.config import load_config
from tunekit.errors import ConfigError
from tunekit.models.reward import RewardScorer
from tunekit.recipes.reward import RewardConfig, run
from tunekit.recipes.sft import SFTConfig
from tunekit.recipes.sft import run as run_sft


def reward_config(out, *overrides):
    return load_config(RewardConfig, None, [f"output_dir={out}", "train.progress=false", *overrides])


def test_default_task_reaches_high_held_out_accuracy(tmp_path):
    result = run(reward_config(tmp_path / "rm", "train.eval_every=0"))
    final = result.history[-1]
    assert final["eval/accuracy"] > 0.9, final
    assert final["eval/margin"] > 0
    for key in ("eval/loss", "eval/reward_mean", "eval/reward_std"):
        assert key in final


def test_final_reloads_with_plain_peft_and_scores_like_the_api(tmp_path):
    from peft import PeftModel
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    out = tmp_path / "rm"
    run(reward_config(out, "data.synthetic_size=64", "max_steps=6", "train.lr=1e-2", "data.eval_fraction=0"))
    final = out / "final"
    base_path = json.loads((final / "adapter_config.json").read_text())["base_model_name_or_path"]
    # Plain peft on a base built with num_labels=1 (AutoPeftModelForSequenceClassification alone builds 2 labels).
    base = AutoModelForSequenceClassification.from_pretrained(base_path, num_labels=1)
    model = PeftModel.from_pretrained(base, final).eval()
    tokenizer = AutoTokenizer.from_pretrained(final)
    # A template whose prompt ends in a space, as "Question: {prompt}\nAnswer: " does.
    prompt, completion = "Question: What is 2 + 3?\nAnswer: ", "2 + 3 = 5. #### 5"
    text = prompt + completion + tokenizer.eos_token
    # As reward training tokenizes a pair: BOS, the prompt, then the response with its EOS, each on its own. Joined,
    # the text would tokenize otherwise at the seam (the space would merge into the response's first token).
    pieces = [tokenizer(t, add_special_tokens=False)["input_ids"] for t in (prompt, completion + tokenizer.eos_token)]
    ids = torch.tensor([[tokenizer.bos_token_id, *pieces[0], *pieces[1]]])
    assert ids[0].tolist() != tokenizer(text)["input_ids"]
    with torch.no_grad():
        hidden = model.base_model.model.model(input_ids=ids).last_hidden_state
        plain = model.base_model.model.score(hidden)[0, -1, 0].item()
    scorer = RewardScorer.from_pretrained(final)
    assert scorer.score([prompt], [completion])[0] == pytest.approx(plain, abs=1e-5)
    # That is the token sequence the recipe trained on for such a pair.
    from tunekit.data.pairs import PairDataConfig, tokenize_pairs
    from tunekit.data.sources import Rows

    row = {"prompt": prompt, "chosen": completion, "rejected": "2 + 3 = 6. #### 6"}
    [pair], _ = tokenize_pairs(Rows("mem", [row]), PairDataConfig(), scorer.tokenizer)
    assert pair.prompt_ids + pair.chosen_ids == ids[0].tolist()
    # The trained head was saved with the adapter: scores are not those of a fresh random head.
    assert scorer.score_texts([text]) != RewardScorer(
        AutoModelForSequenceClassification.from_pretrained(base_path, num_labels=1), tokenizer
    ).score_texts([text])


def test_reward_model_can_start_from_an_sft_run(tmp_path):
    sft_out = tmp_path / "sft"
    run_sft(
        load_config(
            SFTConfig,
            None,
            [
                f"output_dir={sft_out}",
                "train.progress=false",
                "max_steps=3",
                "data.synthetic_size=64",
                "data.eval_fraction=0",
            ],
        )
    )
    result = run(
        reward_config(tmp_path / "rm", f"model.path={sft_out / 'final'}", "max_steps=3", "data.synthetic_size=64")
    )
    assert result.step == 3
    recorded = json.loads((tmp_path / "rm" / "final" / "adapter_config.json").read_text())
    assert recorded["task_type"] == "SEQ_CLS"


def test_unknown_loss_key_is_refused(tmp_path):
    with pytest.raises(ConfigError, match="did you mean loss.center_coef"):
        reward_config(tmp_path / "rm", "loss.center_coeff=0.1")
