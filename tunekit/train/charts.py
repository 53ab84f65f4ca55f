"""The charts a finished run writes into its run directory; a picture that cannot be drawn never fails the run."""

from __future__ import annotations

import logging
from pathlib import Path

log = logging.getLogger(__name__)


def write_run_charts(run_dir: Path) -> list[Path]:
    """Write ``run_dir/plots/*.png`` from ``run_dir/metrics.jsonl``, as ``python -m tunekit.plot RUN_DIR`` does.

    Returns the paths written. Any failure (nothing logged, matplotlib missing or broken, a full disk) is logged as
    a warning and returns ``[]``: the training it describes has already finished and been saved. matplotlib is
    imported here rather than with the runner, so a process pays for it only once a run has finished.
    """
    try:
        from tunekit.plot import default_out_dir, write_charts

        return write_charts([run_dir], default_out_dir([run_dir]))
    except Exception as err:  # matplotlib and the file system raise many kinds of errors; none may end the run
        log.warning("training finished, but its charts could not be written to %s: %s", run_dir / "plots", err)
        return []
