"""A resumable loop over prompts, a chunk at a time, for commands that write data rather than train.

Each chunk's rows are appended to the run's JSON Lines files, and then ``progress.json`` is replaced atomically
with what has been done so far: chunks and prompts done, the commands' counters, and the size in bytes of every
output file after the chunk. A run killed at any point leaves a progress file that describes whole chunks only;
``resume=auto`` cuts each output file back to the size recorded there (dropping the rows of a chunk that was being
written) and continues with the next chunk. No prompt is done twice, and none is skipped.

Each chunk is seeded from ``(seed, chunk index)`` alone, so what a chunk samples does not depend on whether the
run was resumed before it: a resumed run ends with the same bytes as an uninterrupted one. Changing the settings
or the prompts of a run part-way would break that, so resuming with either changed is refused by name.
"""

from __future__ import annotations

import hashlib
import json
import os
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import numpy as np
import yaml
from tqdm.auto import tqdm

from tunekit.errors import ConfigError, DataError
from tunekit.files import write_atomic
from tunekit.train.rundir import check_room_for_checkpoints

T = TypeVar("T")

PROGRESS_FILE = "progress.json"
INTERRUPTED_EXIT_CODE = 130  # as a shell reports a process stopped by SIGINT
CONFIG_FILE = "config.yaml"


@dataclass
class ChunkOutput:
    """What one chunk produced."""

    rows: dict[str, list[dict[str, Any]]]  # output file name -> rows to append, one JSON object a line
    counts: dict[str, float] = field(default_factory=dict)  # added to the run's running totals


@dataclass
class RunState:
    """The contents of progress.json: everything needed to continue after the last completed chunk."""

    chunks_done: int = 0
    prompts_done: int = 0
    prompts_total: int = 0
    chunk_size: int = 1
    counts: dict[str, float] = field(default_factory=dict)
    sizes: dict[str, int] = field(default_factory=dict)  # bytes of each output file after the last chunk
    prompts_sha256: str = ""  # the prompts this run works through, so a resumed run knows they are the same
    settings: dict[str, Any] = field(default_factory=dict)  # the settings the rows depend on

    @property
    def done(self) -> bool:
        return self.prompts_done >= self.prompts_total


def chunk_seed(seed: int, chunk: int) -> int:
    """The seed of chunk ``chunk`` of a run seeded with ``seed``: a function of the two alone, well mixed (chunks
    0 and 1 of seed 0 do not share streams with chunk 0 of seed 1)."""
    return int(np.random.SeedSequence([seed, chunk]).generate_state(1)[0])


# Keys that do not change what a run writes; a resumed run may differ in these.
NOT_SETTINGS = ("output_dir", "resume", "progress", "device")


def run_settings(config: dict[str, Any]) -> dict[str, Any]:
    """What of a command's resolved config (as a dict) its rows depend on: all but where the run goes, whether it
    resumes, the progress bar, the device, and the model's speed switches (config.yaml records which turned on)."""
    settings = {k: v for k, v in config.items() if k not in NOT_SETTINGS}
    settings["model"] = {k: v for k, v in settings["model"].items() if k != "fast_paths"}
    return settings


def digest(items: Sequence[Any]) -> str:
    """SHA-256 of ``items`` written as JSON (values JSON has no type for written as text)."""
    text = json.dumps(list(items), sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()


class ChunkedRun:
    """One run directory of a chunked command (``files``: the JSON Lines files it appends to).

    Built before anything is loaded or written: it checks ``output_dir`` and, with ``resume="auto"``, reads the
    progress of the run there and checks that ``settings`` and the prompts (``prompts_sha256``, ``total``) are the
    ones that run used. :meth:`begin` writes config.yaml and readies the files; :meth:`run` works through the
    chunks.
    """

    def __init__(
        self,
        output_dir: Path,
        resume: str | None,
        files: Sequence[str],
        settings: dict[str, Any],
        prompts_sha256: str,
        total: int,
        chunk_size: int,
    ) -> None:
        self.output_dir = output_dir
        self.files = tuple(files)
        fresh = RunState(
            prompts_total=total,
            chunk_size=chunk_size,
            sizes={name: 0 for name in self.files},
            prompts_sha256=prompts_sha256,
            # As progress.json will hold them (tuples become lists), so that a resumed run compares like with like.
            settings=json.loads(json.dumps(settings, default=str)),
        )
        self.state = self._resumed(resume, fresh) or fresh
        check_room_for_checkpoints(output_dir, 0)  # writable, with room for the (small) output files

    @property
    def resumed(self) -> bool:
        return self.state.chunks_done > 0

    def _resumed(self, resume: str | None, fresh: RunState) -> RunState | None:
        """The state to continue from (None: start afresh); ConfigError for what cannot be continued."""
        out = self.output_dir
        if resume not in (None, "auto"):
            raise ConfigError(
                f"resume={resume!r}: this command keeps no checkpoints; resume=auto continues the run in output_dir "
                "after its last completed chunk"
            )
        if out.exists() and not out.is_dir():
            raise ConfigError(f"output_dir {out} is a file, not a folder; choose another output_dir")
        if not out.exists() or not any(out.iterdir()):
            return None
        if resume != "auto":
            raise ConfigError(
                f"output_dir {out} already holds a run; pass resume=auto to continue it, or choose another output_dir"
            )
        progress = out / PROGRESS_FILE
        if not progress.is_file():
            ours = {CONFIG_FILE, *self.files, *(f".{name}.tmp" for name in (PROGRESS_FILE, CONFIG_FILE))}
            strangers = sorted(p.name for p in out.iterdir() if p.name not in ours)
            if strangers:
                raise ConfigError(
                    f"output_dir {out} holds files this command does not write ({', '.join(strangers[:5])}) and no "
                    f"{PROGRESS_FILE}, so it is not a run to continue; choose another output_dir"
                )
            return None  # killed before its first chunk completed: nothing to keep
        try:
            state = RunState(**json.loads(progress.read_text()))
        except (ValueError, TypeError) as err:
            raise ConfigError(f"{progress} cannot be read ({err}); choose another output_dir") from None
        changed = _differences(state.settings, fresh.settings)
        if changed:
            raise ConfigError(
                f"output_dir {out} was started with other settings ({'; '.join(changed[:4])}); resume with the "
                f"run's own settings (its {CONFIG_FILE}) so that the rows it appends match the rows it has, or "
                "choose another output_dir"
            )
        if (state.prompts_total, state.prompts_sha256) != (fresh.prompts_total, fresh.prompts_sha256):
            raise DataError(
                f"output_dir {out} was started on other prompts ({state.prompts_total} then, {fresh.prompts_total} "
                "now, or the same number with other contents); resume on the run's own data, or choose another "
                "output_dir"
            )
        for name in self.files:
            path, recorded = out / name, state.sizes.get(name, 0)
            size = path.stat().st_size if path.is_file() else 0
            if size < recorded:
                raise DataError(
                    f"{path} holds {size} bytes, fewer than the {recorded} that {progress} records after chunk "
                    f"{state.chunks_done}: it was changed since; choose another output_dir"
                )
        return state

    def begin(self, config: dict[str, Any]) -> None:
        """Create the run directory, write config.yaml and cut each output file back to the last completed chunk
        (the rows of a chunk that was being written when the run was killed)."""
        self.output_dir.mkdir(parents=True, exist_ok=True)
        write_atomic(self.output_dir / CONFIG_FILE, yaml.safe_dump(config, sort_keys=False))
        for name in self.files:
            path = self.output_dir / name
            with path.open("a") as f:
                f.truncate(self.state.sizes.get(name, 0))

    def run(
        self,
        items: Sequence[T],
        work: Callable[[list[T], int], ChunkOutput],
        seed: int,
        desc: str,
        show: bool = True,
        postfix: Callable[[dict[str, float]], dict[str, Any]] | None = None,
    ) -> dict[str, float]:
        """Call ``work(chunk, chunk_seed)`` on each chunk not yet done, in order, with the global RNGs seeded by
        :func:`chunk_seed`; append its rows and record the progress after each. Returns the run's totals."""
        from accelerate.utils import set_seed

        state, size = self.state, self.state.chunk_size
        bar = tqdm(
            total=len(items),
            initial=state.prompts_done,
            disable=not show,
            file=sys.stderr,
            dynamic_ncols=True,
            mininterval=1.0,
            desc=desc,
            unit="prompt",
        )
        try:
            for start in range(state.prompts_done, len(items), size):
                chunk = list(items[start : start + size])
                seed_here = chunk_seed(seed, state.chunks_done)
                set_seed(seed_here)
                output = work(chunk, seed_here)
                for name in self.files:
                    state.sizes[name] = _append(self.output_dir / name, output.rows.get(name, []))
                for key, value in output.counts.items():
                    state.counts[key] = state.counts.get(key, 0) + value
                state.chunks_done += 1
                state.prompts_done = start + len(chunk)
                write_atomic(self.output_dir / PROGRESS_FILE, json.dumps(state.__dict__, indent=1) + "\n")
                if postfix is not None:
                    bar.set_postfix(postfix(state.counts), refresh=False)
                bar.update(len(chunk))
        except KeyboardInterrupt:
            # Ctrl-C: what is on disk is whole chunks (or is cut back to them on resume), so stop at once with a
            # message rather than a traceback.
            bar.close()
            print(
                f"interrupted: {state.prompts_done} of {len(items)} prompts done ({state.chunks_done} chunks); "
                f"continue with output_dir={self.output_dir} resume=auto",
                file=sys.stderr,
            )
            raise SystemExit(INTERRUPTED_EXIT_CODE) from None
        finally:
            bar.close()
        return dict(state.counts)


def _append(path: Path, rows: list[dict[str, Any]]) -> int:
    """Append ``rows`` as JSON lines, on disk before returning; the file's size after them."""
    with path.open("a", encoding="utf-8") as f:
        f.write("".join(json.dumps(row, ensure_ascii=False, default=str) + "\n" for row in rows))
        f.flush()
        os.fsync(f.fileno())
    return path.stat().st_size


def _differences(before: dict[str, Any], now: dict[str, Any]) -> list[str]:
    """``key: <then> then, <now> now`` for every dotted key whose value differs."""
    a, b = _flat(before), _flat(now)
    keys = sorted(set(a) | set(b))
    return [f"{key}: {a.get(key)!r} then, {b.get(key)!r} now" for key in keys if a.get(key) != b.get(key)]


def _flat(config: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in config.items():
        if isinstance(value, dict):
            out.update(_flat(value, f"{prefix}{key}."))
        else:
            out[prefix + key] = value
    return out
