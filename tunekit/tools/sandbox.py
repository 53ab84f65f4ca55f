"""Running a tool call: in a sandboxed subprocess (or, for a trusted quick built-in, in this process), with every
failure turned into an error message for the model.

A sandboxed call is a fresh Python process (:mod:`tunekit.tools.worker`) that

- runs in a scratch directory of its own, removed afterwards, with ``HOME`` pointed there;
- has an address-space limit (``RLIMIT_AS``, ``tools.memory_mb``), a CPU-time limit a second past the wall-clock
  one, and a file-size limit (``RLIMIT_FSIZE``) that also bounds what it prints, since its stdout is a file;
- is stopped, with its whole process group, after ``tools.timeout_s`` seconds of wall-clock time;
- has no network when Linux lets an unprivileged user make a namespace (``unshare -rn``: a user namespace and an
  empty network namespace, loopback down); where it cannot, the call runs with the network, and
  :data:`NETWORK_ISOLATED` says so (docs/tools.md states what the sandbox does not stop).

A hang, a crash, a raise, megabytes of output or malformed arguments all come back as a :class:`CallResult` whose
``output`` begins with ``error:``; nothing a tool does stops the run.
"""

from __future__ import annotations

import functools
import json
import os
import resource
import shutil
import signal
import subprocess
import sys
import tempfile
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

from tunekit.tools.calls import CallResult, ToolCall, argument_error, error_result, truncate
from tunekit.tools.registry import REPO_ROOT, Tool

STDOUT_LIMIT_FACTOR = 16  # a call may print this many times tools.max_output_chars before its writes fail


@dataclass
class Limits:
    timeout_s: float = 5.0
    memory_mb: int = 512
    max_output_chars: int = 512


@functools.cache
def network_isolation() -> list[str]:
    """The command prefix that takes the network away from a call (``unshare -rn``), or [] where the kernel or the
    system does not allow it to an unprivileged user."""
    unshare = shutil.which("unshare")
    if unshare is None or not sys.platform.startswith("linux"):
        return []
    try:
        probe = subprocess.run([unshare, "-rn", "true"], capture_output=True, timeout=10)
    except (OSError, subprocess.TimeoutExpired):
        return []
    return [unshare, "-rn"] if probe.returncode == 0 else []


def run_calls(calls: list[ToolCall], tools: dict[str, Tool], limits: Limits, parallel: int = 4) -> list[CallResult]:
    """Run ``calls`` (sandboxed ones ``parallel`` at a time); results in the order of the calls."""
    if not calls:
        return []
    with ThreadPoolExecutor(max_workers=parallel) as pool:
        return list(pool.map(lambda call: run_call(call, tools, limits), calls))


def run_call(call: ToolCall, tools: dict[str, Tool], limits: Limits) -> CallResult:
    """One call -> its result; never raises for anything the model or the tool did."""
    if call.error is not None:
        return error_result(call, call.error, "malformed")
    tool = tools.get(call.name)
    if tool is None:
        known = ", ".join(sorted(tools)) or "none"
        return error_result(call, f"there is no tool {call.name!r} (tools: {known})", "unknown tool")
    problem = argument_error(tool.schema, tool.fn, call.arguments)
    if problem is not None:
        return error_result(call, f"bad arguments for {call.name}: {problem}", "bad arguments")
    if not tool.sandboxed:
        return _in_process(call, tool, limits)
    return _sandboxed(call, tool, limits)


def _in_process(call: ToolCall, tool: Tool, limits: Limits) -> CallResult:
    try:
        value = tool.fn(**call.arguments)
    except Exception as err:
        return error_result(call, f"{type(err).__name__}: {err}", "raised")
    text, cut = truncate("" if value is None else str(value), limits.max_output_chars)
    return CallResult(call.name, call.arguments, text, ok=True, error="output truncated" if cut else None)


def _sandboxed(call: ToolCall, tool: Tool, limits: Limits) -> CallResult:
    scratch = Path(tempfile.mkdtemp(prefix="tunekit-tool-"))
    try:
        return _run_worker(call, tool, limits, scratch)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)


def _run_worker(call: ToolCall, tool: Tool, limits: Limits, scratch: Path) -> CallResult:
    (scratch / "request.json").write_text(json.dumps({"source": tool.source, "arguments": call.arguments}))
    output_bytes = STDOUT_LIMIT_FACTOR * limits.max_output_chars
    env = {
        "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
        "HOME": str(scratch),
        "TMPDIR": str(scratch),
        "PYTHONPATH": os.pathsep.join(p for p in (str(REPO_ROOT), os.environ.get("PYTHONPATH", "")) if p),
        "PYTHONDONTWRITEBYTECODE": "1",
        "PYTHONUNBUFFERED": "1",
    }
    command = [*network_isolation(), sys.executable, "-m", "tunekit.tools.worker", "request.json"]
    limit = functools.partial(_limit_resources, limits, output_bytes)
    with (scratch / "stdout.txt").open("wb") as out, (scratch / "stderr.txt").open("wb") as err:
        process = subprocess.Popen(
            command, cwd=scratch, env=env, stdin=subprocess.DEVNULL, stdout=out, stderr=err,
            preexec_fn=limit, start_new_session=True,
        )  # fmt: skip
        try:
            code = process.wait(timeout=limits.timeout_s)
        except subprocess.TimeoutExpired:
            _kill_group(process)
            return error_result(
                call, f"{call.name} did not finish within {limits.timeout_s:g} s and was stopped", "timeout"
            )
    return _outcome(call, code, scratch, limits, output_bytes)


def _limit_resources(limits: Limits, output_bytes: int) -> None:
    """Runs in the child between fork and exec: the limits the worker and everything it starts inherit."""
    memory = limits.memory_mb * 1024 * 1024
    resource.setrlimit(resource.RLIMIT_AS, (memory, memory))
    cpu = int(limits.timeout_s) + 2
    resource.setrlimit(resource.RLIMIT_CPU, (cpu, cpu))
    resource.setrlimit(resource.RLIMIT_FSIZE, (output_bytes, output_bytes))
    resource.setrlimit(resource.RLIMIT_CORE, (0, 0))


def _kill_group(process: subprocess.Popen) -> None:
    try:
        os.killpg(process.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    process.wait()


def _outcome(call: ToolCall, code: int, scratch: Path, limits: Limits, output_bytes: int) -> CallResult:
    """The result files of a finished worker -> what the model is shown."""
    stdout = (scratch / "stdout.txt").read_bytes()[:output_bytes].decode(errors="replace")
    flooded = (scratch / "stdout.txt").stat().st_size >= output_bytes
    error_file, result_file = scratch / "error.txt", scratch / "result.txt"
    if flooded:
        text = stdout[: limits.max_output_chars]
        note = f"... [output stopped: {call.name} printed more than {output_bytes} bytes]"
        return CallResult(call.name, call.arguments, text + note, ok=False, error="output flood")
    if code < 0:
        name = signal.Signals(-code).name if -code in signal.valid_signals() else str(-code)
        return error_result(call, f"{call.name} crashed (its process died of {name})", "crashed")
    if error_file.is_file():
        message = error_file.read_text(errors="replace")
        if message.startswith("MemoryError"):
            return error_result(call, f"{call.name} ran out of memory (limit {limits.memory_mb} MiB)", "out of memory")
        text, _ = truncate(message, limits.max_output_chars)
        return error_result(call, text, "raised")
    if code != 0:
        tail = (scratch / "stderr.txt").read_bytes()[-300:].decode(errors="replace").strip()
        return error_result(call, f"{call.name} exited with code {code}" + (f": {tail}" if tail else ""), "crashed")
    value = result_file.read_text(errors="replace") if result_file.is_file() else stdout
    text, cut = truncate(value, limits.max_output_chars)
    return CallResult(call.name, call.arguments, text, ok=True, error="output truncated" if cut else None)
