"""Shared fixtures. The embedded tiny models are built once per test session into a temporary cache."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import pytest

# Set before tunekit is imported anywhere, and inherited by recipe subprocesses.
os.environ.setdefault("TUNEKIT_CACHE", tempfile.mkdtemp(prefix="tunekit-test-cache-"))
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

# Under pytest-xdist (`-n auto`) the workers share the machine's cores: each gets its share of torch threads, and
# so do the recipe subprocesses it starts (they inherit the variable). Oversubscribed OpenMP threads spin against
# each other and can run many times slower than the same work done one process at a time.
_WORKERS = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1"))
if _WORKERS > 1:
    _cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    os.environ["OMP_NUM_THREADS"] = str(max(1, _cores // _WORKERS))

SHARED_DATA = Path(__file__).resolve().parents[2] / "shared" / "data"


@pytest.fixture(scope="session")
def tiny_llama_path() -> str:
    from tunekit.models.tiny import tiny_model_path

    return str(tiny_model_path("tiny-llama"))


@pytest.fixture(scope="session")
def tokenizer(tiny_llama_path: str):
    from tunekit.models.load import load_tokenizer

    return load_tokenizer(tiny_llama_path)


@pytest.fixture(scope="session")
def shared_data() -> Path:
    if not SHARED_DATA.is_dir():
        pytest.fail(f"the shared data directory {SHARED_DATA} is missing; tests that read real data need it")
    return SHARED_DATA


@pytest.fixture(scope="session")
def sft_warm_start(tmp_path_factory) -> Path:
    """final/ of the SFT warm start that the default GRPO and PPO configs start from, trained once per session."""
    from tunekit.config import load_config
    from tunekit.recipes.sft import SFTConfig, run

    out = tmp_path_factory.mktemp("sft-warmstart")
    run(load_config(SFTConfig, "recipes/sft/tiny-warmstart.yaml", [f"output_dir={out}", "train.progress=false"]))
    return out / "final"
