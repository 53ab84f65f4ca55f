"""User mistakes end with exit code 2, one clear message, and no run directory."""

import json

import pytest

from tunekit.errors import USER_ERROR_EXIT_CODE, exit_on_user_error
from tunekit.recipes import sft


def run_cli(argv, capsys):
    with pytest.raises(SystemExit) as exit_info:
        exit_on_user_error(lambda: sft.main(argv))
    assert exit_info.value.code == USER_ERROR_EXIT_CODE
    return capsys.readouterr().err


def write_jsonl(path, rows):
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in rows))
    return path


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["model.adpater.r=4"], "unknown config key 'model.adpater'; did you mean model.adapter?"),
        (["train.lr=fast"], "config key 'train.lr' expects float, got 'fast'"),
        (["model.path=./no/such/model"], "model.path './no/such/model' does not exist"),
        (["model.path=no/such/model"], "model.path 'no/such/model' is neither a local directory nor a hub id"),
        (["model.path=no-such-org/no-such-model"], "model.path 'no-such-org/no-such-model' is not a local directory"),
        (["model.adapter.target_modules=[q_proj,qkv]"], "target_modules ['qkv'] match no linear layer"),
        (["model.adapter.method=full", "model.quantization=4bit"], "method=full cannot train quantised weights"),
        (["train.micro_batch_size=4000"], "one optimizer step needs 4000 items"),
    ],
)
def test_config_and_model_mistakes(tmp_path, capsys, args, message):
    out = tmp_path / "run"
    err = run_cli([f"output_dir={out}", "data.synthetic_size=64", *args], capsys)
    assert message in err
    assert err.strip().splitlines()[-1].startswith("tunekit error: ") and "Traceback" not in err
    assert not out.exists()


def test_data_mistakes_leave_no_run_directory(tmp_path, capsys):
    data = write_jsonl(tmp_path / "d.jsonl", [{"prompt": "a", "completion": "b"}, "{oops"])
    out = tmp_path / "run"
    err = run_cli([f"output_dir={out}", f"data.path={data}"], capsys)
    assert "d.jsonl line 2 is not valid JSON" in err
    assert not out.exists()


def test_quantization_without_bitsandbytes(tmp_path, capsys, monkeypatch):
    import importlib.util

    real_find_spec = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util, "find_spec", lambda name, *a: None if name == "bitsandbytes" else real_find_spec(name, *a)
    )
    out = tmp_path / "run"
    err = run_cli([f"output_dir={out}", "model.quantization=4bit"], capsys)
    assert "model.quantization=4bit needs bitsandbytes, which is not installed" in err
    assert not out.exists()


def test_a_model_folder_without_a_tokenizer_is_named(tmp_path, capsys):
    from tunekit.models.tiny import tiny_model_path

    model = tmp_path / "model"
    model.mkdir()
    for name in ("config.json", "model.safetensors"):  # the weights alone, as a bare save_pretrained leaves them
        (model / name).write_bytes((tiny_model_path("tiny-llama") / name).read_bytes())
    out = tmp_path / "run"
    err = run_cli([f"output_dir={out}", f"model.path={model}"], capsys)
    assert f"model.path '{model}' holds a model but no tokenizer" in err and "sentencepiece" not in err
    assert not out.exists()
