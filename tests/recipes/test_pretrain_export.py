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
