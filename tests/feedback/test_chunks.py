"""The chunked, resumable loop the AI-feedback commands share: killed anywhere, resumed with resume=auto, it ends
with the bytes an uninterrupted run writes and does no prompt twice; what cannot be continued is refused by name."""

import json

import pytest
import torch

import tunekit.feedback.chunks as chunks
from tunekit.errors import ConfigError, DataError
from tunekit.feedback.chunks import PROGRESS_FILE, ChunkedRun, ChunkOutput, chunk_seed, digest, run_settings

ITEMS = [f"prompt {i}" for i in range(7)]
SETTINGS = {"seed": 3, "sampling": {"temperature": 1.0}}


class Work:
    """Writes one row per item holding a draw from the global torch RNG (seeded per chunk), and one row per chunk
    to a second file; records the items it was given, and raises on the chunk ``fail_at`` (counted from 0)."""

    def __init__(self, fail_at=None):
        self.seen, self.fail_at, self.calls = [], fail_at, 0

    def __call__(self, chunk, seed):
        if self.calls == self.fail_at:
            raise RuntimeError("killed")
        self.calls += 1
        self.seen += chunk
        rows = [{"item": item, "draw": torch.rand(()).item()} for item in chunk]
        return ChunkOutput({"a.jsonl": rows, "b.jsonl": [{"seed": seed}]}, {"items": len(chunk), "chunks": 1})


def open_run(out, resume=None, settings=SETTINGS, items=ITEMS):
    return ChunkedRun(out, resume, ["a.jsonl", "b.jsonl"], settings, digest(items), len(items), chunk_size=3)


def complete(out, work, resume=None):
    run = open_run(out, resume)
    run.begin({"config": True})
    return run.run(ITEMS, work, seed=3, desc="test", show=False)


def contents(out):
    return {name: (out / name).read_bytes() for name in ("a.jsonl", "b.jsonl", "config.yaml")}


@pytest.fixture
def uninterrupted(tmp_path):
    out = tmp_path / "whole"
    totals = complete(out, Work())
    return out, totals


def test_a_run_appends_each_chunks_rows_and_records_its_progress(uninterrupted):
    out, totals = uninterrupted
    assert totals == {"items": 7, "chunks": 3}
    rows = [json.loads(line) for line in (out / "a.jsonl").read_text().splitlines()]
    assert [r["item"] for r in rows] == ITEMS
    seeds = [json.loads(line)["seed"] for line in (out / "b.jsonl").read_text().splitlines()]
    assert seeds == [chunk_seed(3, 0), chunk_seed(3, 1), chunk_seed(3, 2)]
    # Each chunk's first draw is the first draw of its own seed, whatever came before.
    torch.manual_seed(chunk_seed(3, 1))
    assert rows[3]["draw"] == torch.rand(()).item()
    progress = json.loads((out / PROGRESS_FILE).read_text())
    assert progress["chunks_done"] == 3 and progress["prompts_done"] == 7 and progress["prompts_total"] == 7
    assert progress["sizes"] == {
        "a.jsonl": (out / "a.jsonl").stat().st_size,
        "b.jsonl": (out / "b.jsonl").stat().st_size,
    }


def test_killed_while_working_then_resumed_writes_the_same_bytes(tmp_path, uninterrupted):
    out = tmp_path / "killed"
    first = Work(fail_at=1)
    with pytest.raises(RuntimeError, match="killed"):
        complete(out, first)
    assert first.seen == ITEMS[:3]
    second = Work()
    totals = complete(out, second, resume="auto")
    assert second.seen == ITEMS[3:]  # no prompt done twice
    assert totals == uninterrupted[1]
    assert contents(out) == contents(uninterrupted[0])


def test_killed_between_appending_rows_and_recording_them_is_cut_back_on_resume(tmp_path, monkeypatch, uninterrupted):
    out = tmp_path / "torn"
    real = chunks.write_atomic
    writes = []

    def die_on_second_progress(path, text):
        if path.name == PROGRESS_FILE:
            writes.append(path)
            if len(writes) == 2:
                raise RuntimeError("killed")
        real(path, text)

    monkeypatch.setattr(chunks, "write_atomic", die_on_second_progress)
    with pytest.raises(RuntimeError):
        complete(out, Work())
    monkeypatch.setattr(chunks, "write_atomic", real)
    assert len((out / "a.jsonl").read_text().splitlines()) == 6  # chunk 2's rows are on disk, unrecorded
    second = Work()
    complete(out, second, resume="auto")
    assert second.seen == ITEMS[3:]  # the unrecorded chunk is done again, once
    assert contents(out) == contents(uninterrupted[0])


def test_resuming_a_finished_run_does_nothing(uninterrupted):
    out, totals = uninterrupted
    before = contents(out)
    work = Work()
    assert complete(out, work, resume="auto") == totals
    assert work.seen == [] and contents(out) == before


def test_a_run_killed_before_its_first_chunk_starts_afresh(tmp_path, uninterrupted):
    out = tmp_path / "early"
    with pytest.raises(RuntimeError):
        complete(out, Work(fail_at=0))
    assert not (out / PROGRESS_FILE).exists()
    complete(out, Work(), resume="auto")
    assert contents(out) == contents(uninterrupted[0])


def test_what_cannot_be_continued_is_refused_by_name(tmp_path, uninterrupted):
    out, _ = uninterrupted
    with pytest.raises(ConfigError, match="already holds a run; pass resume=auto"):
        open_run(out)
    with pytest.raises(ConfigError, match=r"sampling\.temperature: 1\.0 then, 0\.7 now"):
        open_run(out, "auto", settings={"seed": 3, "sampling": {"temperature": 0.7}})
    with pytest.raises(DataError, match="other prompts"):
        open_run(out, "auto", items=ITEMS[:-1])
    with pytest.raises(ConfigError, match="keeps no checkpoints"):
        open_run(out, str(out / "checkpoints" / "step-1"))
    other = tmp_path / "training-run"
    (other / "checkpoints").mkdir(parents=True)
    with pytest.raises(ConfigError, match="holds files this command does not write"):
        open_run(other, "auto")
    (tmp_path / "file").write_text("x")
    with pytest.raises(ConfigError, match="is a file"):
        open_run(tmp_path / "file")


def test_a_changed_output_file_is_refused(uninterrupted):
    out, _ = uninterrupted
    (out / "a.jsonl").write_text("")
    with pytest.raises(DataError, match="fewer than the"):
        open_run(out, "auto")


def test_settings_leave_out_what_does_not_change_the_rows():
    config = {"output_dir": "x", "resume": "auto", "progress": True, "device": "cpu", "seed": 1}
    config["model"] = {"path": "tiny-llama", "fast_paths": {"enabled": True}}
    assert run_settings(config) == {"seed": 1, "model": {"path": "tiny-llama"}}


def test_chunk_seeds_depend_on_seed_and_index_alone():
    assert chunk_seed(0, 1) == chunk_seed(0, 1)
    assert len({chunk_seed(0, 0), chunk_seed(0, 1), chunk_seed(1, 0)}) == 3
