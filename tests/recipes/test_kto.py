"""KTO recipe end to end on the tiny model (issue 31). The default's held-out curve is in docs/results.md; this
trains briefly on a small file and evaluates on the same file, so that it shows the mechanics cheaply."""

import json

from tunekit.config import load_config
from tunekit.data import synthetic
from tunekit.recipes.kto import KTOConfig, run


def test_training_separates_desirable_from_undesirable_and_saves_an_adapter(tmp_path):
    # 8 pairs written as 16 unpaired rows: the recipe reads its own format, not the pair conversion.
    rows = []
    for pair in synthetic.preference_pairs(8, seed=3):
        rows.append({"prompt": pair["prompt"], "completion": pair["chosen"], "label": True})
        rows.append({"prompt": pair["prompt"], "completion": pair["rejected"], "label": False})
    data = tmp_path / "feedback.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    out = tmp_path / "kto"
    overrides = [f"output_dir={out}", "train.progress=false", f"data.path={data}", f"data.eval_path={data}"]
    overrides += ["max_steps=20", "train.eval_every=20", "train.lr=5e-3", "train.epochs=30"]
    result = run(load_config(KTOConfig, None, overrides))
    evals = [r for r in result.history if "eval/rewards/accuracy" in r]
    assert [r["step"] for r in evals] == [0, 20]
    start, end = evals
    # Policy == reference at step 0: every reward and the reference point are exactly 0.
    assert start["eval/rewards/accuracy"] == 0.0 and start["eval/rewards/margin"] == 0.0 and start["eval/kl"] == 0.0
    assert end["eval/rewards/accuracy"] > 0.8, evals
    assert end["eval/rewards/margin"] > 0
    assert end["eval/loss"] < start["eval/loss"]
    train_lines = [r for r in result.history if "loss" in r]
    assert all(k in train_lines[-1] for k in ("kl", "rewards/accuracy", "rewards/chosen", "rewards/rejected"))
    assert (out / "final" / "adapter_model.safetensors").is_file()
