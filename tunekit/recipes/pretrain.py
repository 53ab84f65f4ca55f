"""Continued pre-training on raw text: the SFT loop with every token trained and packing on by default.

python -m tunekit.recipes.pretrain                                  # embedded tiny model and text
python -m tunekit.recipes.pretrain --config recipes/pretrain/llama-lora.yaml data.path=corpus.jsonl
"""

from __future__ import annotations

from dataclasses import dataclass, field

from tunekit.data import synthetic
from tunekit.data.sft import DataConfig
from tunekit.recipes import sft
from tunekit.recipes.common import parse_args, run_command
from tunekit.train.runner import RunResult


def _text_data() -> DataConfig:
    return DataConfig(format="text", packing=True, train_on_prompt=True, max_length=256)


@dataclass
class PretrainConfig(sft.SFTConfig):
    data: DataConfig = field(default_factory=_text_data)


def run(config: PretrainConfig) -> RunResult:
    """Train per ``config``; data.path "synthetic" means the embedded text corpus."""
    return sft.run(config, synthetic_rows=synthetic.text_corpus, recipe="pretrain", about=__doc__)


def main(argv: list[str] | None = None) -> RunResult:
    return run(parse_args(PretrainConfig, argv, "pretrain", __doc__))


if __name__ == "__main__":
    run_command(main)
