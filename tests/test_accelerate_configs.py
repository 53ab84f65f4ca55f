"""The shipped accelerate configs load with accelerate's own parser and state the command that uses them."""

from pathlib import Path

import pytest

CONFIGS = sorted((Path(__file__).resolve().parents[1] / "recipes" / "accelerate").glob("*.yaml"))


@pytest.mark.parametrize("path", CONFIGS, ids=[p.name for p in CONFIGS])
def test_accelerate_config_loads(path):
    from accelerate.commands.config.config_args import load_config_from_file

    config = load_config_from_file(str(path))
    assert config.num_processes >= 2
    assert any(
        "accelerate launch --config_file recipes/accelerate/" in line for line in path.read_text().splitlines()[:4]
    )


def test_every_engine_has_a_config():
    assert {p.name for p in CONFIGS} >= {
        "ddp.yaml",
        "fsdp.yaml",
        "deepspeed-zero2.yaml",
        "deepspeed-zero3.yaml",
        "multi-node.yaml",
    }
