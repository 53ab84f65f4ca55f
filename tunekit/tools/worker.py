"""The sandbox's worker: runs one tool call in its own process, started by :mod:`tunekit.tools.sandbox`.

    python -m tunekit.tools.worker request.json

``request.json`` holds ``{"source": <the tool's config name>, "arguments": {...}}``. The worker's current
directory is the call's scratch directory, and its stdout and stderr are files there. It writes the tool's return
value to ``result.txt`` (nothing for None: the tool answers with what it printed) or, when the tool raises,
``TypeName: message`` to ``error.txt``. It imports no torch: starting it costs a bare interpreter.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    request = json.loads(Path(args[0]).read_text())
    try:
        from tunekit.tools.registry import load_tool_function

        fn = load_tool_function(request["source"])
        value = fn(**request["arguments"])
    except BaseException as err:  # noqa: BLE001 - every failure of the tool is reported, whatever it is
        sys.stdout.flush()
        Path("error.txt").write_text(f"{type(err).__name__}: {err}"[:2000])
        return 1
    sys.stdout.flush()
    if value is not None:
        Path("result.txt").write_text(str(value))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
