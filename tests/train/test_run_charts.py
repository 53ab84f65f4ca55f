"""Every finished training run leaves PNG charts of its metrics in RUN_DIR/plots; a failure to draw never fails it."""

import logging

from tunekit.config import load_config
from tunekit.recipes.sft import SFTConfig, run
from tunekit.train.log import read_metrics

SHORT = [
    "train.progress=false",
    "data.synthetic_size=16",
    "data.eval_fraction=0.25",
    "train.eval_every=1",
    "train.micro_batch_size=4",
    "max_steps=2",
]
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def sft(out, *overrides):
    return run(load_config(SFTConfig, None, [f"output_dir={out}", *SHORT, *overrides]))


def test_short_sft_run_leaves_png_charts(tmp_path):
    out = tmp_path / "run"
    sft(out)
    plots = out / "plots"
    names = sorted(p.name for p in plots.iterdir())
    assert names == ["grad_norm.png", "loss.png", "lr.png", "throughput.png"]
    for path in plots.iterdir():
        data = path.read_bytes()
        assert data.startswith(PNG_SIGNATURE) and len(data) > 5000, path
    # Written after the last metrics line (the training was complete when it was drawn) and before final/, whose
    # model card shows them beside the weights.
    assert (out / "final" / "adapter_config.json").is_file()
    assert (plots / "loss.png").stat().st_mtime >= (out / "metrics.jsonl").stat().st_mtime
    assert (out / "final" / "loss.png").read_bytes() == (plots / "loss.png").read_bytes()


def test_a_failure_to_draw_is_a_warning_not_a_failed_run(tmp_path, monkeypatch, caplog):
    import tunekit.plot

    def broken(*args, **kwargs):
        raise RuntimeError("no fonts today")

    monkeypatch.setattr(tunekit.plot, "write_charts", broken)
    out = tmp_path / "run"
    with caplog.at_level(logging.WARNING, logger="tunekit.train.charts"):
        result = sft(out)
    assert result.step == 2
    assert (out / "final" / "adapter_model.safetensors").is_file()
    assert read_metrics(out / "metrics.jsonl")[-1]["step"] == 2
    assert not (out / "plots").exists()
    assert "charts could not be written" in caplog.text and "no fonts today" in caplog.text
