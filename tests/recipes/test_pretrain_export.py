import pytest
import torch

from tunekit.config import load_config
from tunekit.errors import ConfigError
from tunekit.recipes import pretrain
from tunekit.recipes.export import ExportConfig, export
from tunekit.recipes.sft import SFTConfig, run
from tunekit.train.log import read_metrics


def test_pretrain_packs_text_and_loss_falls(tmp_path):
    out = tmp_path / "pt"
    pretrain.main(
        [
            f"output_dir={out}",
            "data.synthetic_size=200",
            "train.progress=false",
            "train.lr=5e-3",
            "train.micro_batch_size=4",
            "train.epochs=3",
        ]
    )
    records = read_metrics(out / "metrics.jsonl")
    assert records[-1]["loss"] < records[0]["loss"] - 0.5
    assert (out / "final" / "adapter_model.safetensors").is_file()


def test_export_merges_adapter_into_plain_model(tmp_path):
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    out = tmp_path / "sft"
    run(
        load_config(
            SFTConfig,
            None,
            [
                f"output_dir={out}",
                "data.synthetic_size=64",
                "data.eval_fraction=0",
                "train.progress=false",
                "train.lr=1e-2",
                "max_steps=4",
            ],
        )
    )
    merged_dir = export(ExportConfig(adapter=str(out / "final"), output_dir=str(tmp_path / "merged")))
    merged = AutoModelForCausalLM.from_pretrained(merged_dir).eval()
    assert not any("lora" in name for name, _ in merged.named_parameters())

    import json

    base_path = json.loads((out / "final" / "adapter_config.json").read_text())["base_model_name_or_path"]
    adapted = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(base_path), out / "final").eval()
    ids = torch.tensor([[1, 20, 30, 40, 50, 60]])
    with torch.no_grad():
        assert torch.allclose(merged(ids).logits, adapted(ids).logits, atol=1e-5)


def test_export_refuses_a_non_adapter_directory(tmp_path):
    with pytest.raises(ConfigError, match="is not a PEFT adapter directory"):
        export(ExportConfig(adapter=str(tmp_path), output_dir=str(tmp_path / "m")))


def test_a_run_on_an_earlier_runs_adapter_loads_and_exports_as_it_was_trained(tmp_path, monkeypatch):
    """SFT B started from SFT A's final/ trains on base + A: B's final/ records A's final/ as its base, so that
    loading it, exporting it and running it from another directory all give base + A + B."""
    import json

    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    from tunekit.models.load import ModelConfig, load_model

    common = ["data.synthetic_size=64", "data.eval_fraction=0", "train.progress=false", "train.lr=5e-2", "max_steps=3"]
    monkeypatch.chdir(tmp_path)  # relative output dirs: the recorded base must still be found from elsewhere
    run(load_config(SFTConfig, None, ["output_dir=a", *common]))
    run(load_config(SFTConfig, None, ["output_dir=b", "model.path=a/final", *common]))
    recorded = json.loads((tmp_path / "b" / "final" / "adapter_config.json").read_text())["base_model_name_or_path"]
    assert recorded == str((tmp_path / "a" / "final").resolve())

    ids = torch.tensor([[1, 20, 30, 40, 50, 60]])
    with torch.no_grad():
        trained = PeftModel.from_pretrained(load_model(ModelConfig(path="a/final")), "b/final").eval()(ids).logits
        merged_dir = export(ExportConfig(adapter="b/final", output_dir="merged"))
        monkeypatch.chdir(tmp_path / "b")
        loaded = load_model(ModelConfig(path="final")).eval()(ids).logits
        exported = AutoModelForCausalLM.from_pretrained(tmp_path / merged_dir).eval()(ids).logits
        base_and_b = PeftModel.from_pretrained(load_model(ModelConfig(path="tiny-llama")), "final").eval()(ids).logits
    # Merging A (and B) into the weights changes the order of float additions: differences of 2e-5 were seen.
    torch.testing.assert_close(loaded, trained, atol=1e-4, rtol=0)
    torch.testing.assert_close(exported, trained, atol=1e-4, rtol=0)
    assert (base_and_b - trained).abs().max() > 1e-3  # A's training is part of what B was trained on
