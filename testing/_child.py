"""Run a function in a fresh Python process with failpoints armed: a client that crashes.

    run = crash_at("client.after_decision", place_order, args=(configs, coordinator.address))
    coordinator.settle()             # recovery finishes what the dead client left prepared

Failpoints (twostep.client.tpc.failpoints) are read from TWOSTEP_FAILPOINTS once, when the
process imports twostep, so they are armed in a new interpreter, never in a fork of this one.
The function and its arguments travel by pickle: the function must be importable by its
module name in the child (a module-level function of a test module under pytest's default
import mode, or of the application), and the child gets this process's `sys.path`. It is a
new process: it must configure its connections itself (pass the configs as arguments).
"""

from __future__ import annotations

import contextlib
import os
import pickle
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import traceback
import weakref
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ._processes import is_stopped

__all__ = ["ChildProcess", "ChildRun", "crash_at", "run_in_process", "start_in_process"]

_FAILPOINTS = "TWOSTEP_FAILPOINTS"
_HIT = re.compile(r"^failpoint (?P<name>\S+) hit: ", re.MULTILINE)  # written by _fire()
_CALL, _RESULT = "call.pickle", "result.pickle"


@dataclass(frozen=True)
class ChildRun:
    """How a function run by `run_in_process` ended."""

    returncode: int  #: negative: killed by that signal (-9 when a failpoint killed it)
    value: Any  #: what the function returned (None if it did not return)
    error: str | None  #: the traceback of an exception that escaped it (or of loading it)
    failpoint: str | None  #: the failpoint that fired (from the child's stderr), if one did
    stdout: str
    stderr: str

    @property
    def returned(self) -> bool:
        return self.returncode == 0

    @property
    def killed(self) -> bool:
        return self.returncode == -signal.SIGKILL

    def describe(self) -> str:
        """A few lines for a failure message: how it ended, its error and output."""
        how = (
            f"killed at failpoint {self.failpoint}"
            if self.failpoint
            else f"exit status {self.returncode}"
        )
        parts = [how, self.error or "", self.stdout[-2000:], self.stderr[-2000:]]
        return "\n".join(part.rstrip() for part in parts if part.strip())


class ChildProcess:
    """A function running in a fresh interpreter (made by `start_in_process`)."""

    def __init__(
        self,
        function: Callable[..., Any],
        args: Sequence[Any],
        kwargs: Mapping[str, Any],
        failpoints: str,
        env: Mapping[str, str] | None,
    ):
        self._dir = Path(tempfile.mkdtemp(prefix="twostep-child-"))
        # Removed by wait(), or when this handle is dropped (a child killed and never waited).
        self._remove_dir = weakref.finalize(self, shutil.rmtree, self._dir, ignore_errors=True)
        with (self._dir / _CALL).open("wb") as call:
            pickle.dump(list(sys.path), call)  # loaded first: the function's module needs it
            pickle.dump((function, tuple(args), dict(kwargs)), call)
        child_env = {**os.environ, **(env or {}), _FAILPOINTS: failpoints}
        with (self._dir / "stdout").open("wb") as out, (self._dir / "stderr").open("wb") as err:
            self._proc = subprocess.Popen(
                [sys.executable, "-m", __name__, str(self._dir)],
                env=child_env,
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=err,
            )

    @property
    def pid(self) -> int:
        return self._proc.pid

    def wait(self, timeout: float = 60.0) -> ChildRun:
        """Wait for the end (seconds); `TimeoutError` (after killing it) if it runs on."""
        try:
            returncode = self._proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.kill()
            raise TimeoutError(
                f"the child process ran on for {timeout} s; its output:\n{self._output()}"
            ) from None
        value, error = None, None
        with contextlib.suppress(FileNotFoundError), (self._dir / _RESULT).open("rb") as result:
            value, error = pickle.load(result)
        stdout, stderr = self._read("stdout"), self._read("stderr")
        self._remove_dir()
        hit = _HIT.search(stderr)
        failpoint = hit["name"] if hit else None
        return ChildRun(returncode, value, error, failpoint, stdout, stderr)

    def wait_stopped(self, timeout: float = 60.0) -> None:
        """Wait until it stopped itself (a failpoint armed as `NAME=stop`); `TimeoutError`
        (after killing it) if it ends or runs on instead."""
        give_up = time.monotonic() + timeout
        while not is_stopped(self.pid):
            if self._proc.poll() is not None or time.monotonic() > give_up:
                self.kill()
                raise TimeoutError(f"the child did not stop at a failpoint:\n{self._output()}")
            time.sleep(0.01)

    def resume(self) -> None:
        """SIGCONT: a stopped child goes on from its failpoint."""
        os.kill(self.pid, signal.SIGCONT)

    def kill(self) -> None:
        """SIGKILL (also a stopped child) and reap."""
        if self._proc.poll() is None:
            self._proc.kill()
        self._proc.wait()

    def _read(self, name: str) -> str:
        try:
            return (self._dir / name).read_text(errors="replace")
        except OSError:
            return ""

    def _output(self) -> str:
        return (self._read("stdout") + self._read("stderr"))[-4000:]


def start_in_process(
    function: Callable[..., Any],
    args: Sequence[Any] = (),
    kwargs: Mapping[str, Any] | None = None,
    *,
    failpoints: str = "",
    env: Mapping[str, str] | None = None,
) -> ChildProcess:
    """Start `function(*args, **kwargs)` in a fresh interpreter with TWOSTEP_FAILPOINTS set to
    `failpoints` (e.g. "client.before_commit_request" or "client.after_decision=stop"); `env`
    adds environment variables. Returns at once; `.wait()` gives the `ChildRun`."""
    return ChildProcess(function, args, kwargs or {}, failpoints, env)


def run_in_process(
    function: Callable[..., Any],
    args: Sequence[Any] = (),
    kwargs: Mapping[str, Any] | None = None,
    *,
    failpoints: str = "",
    env: Mapping[str, str] | None = None,
    timeout: float = 60.0,
) -> ChildRun:
    """`start_in_process(...)` and wait for its end (at most `timeout` seconds)."""
    child = start_in_process(function, args, kwargs, failpoints=failpoints, env=env)
    return child.wait(timeout)


def crash_at(
    failpoint: str,
    function: Callable[..., Any],
    args: Sequence[Any] = (),
    kwargs: Mapping[str, Any] | None = None,
    *,
    env: Mapping[str, str] | None = None,
    timeout: float = 60.0,
) -> ChildRun:
    """Run `function` in a fresh interpreter that is SIGKILLed at `failpoint`, a name from
    twostep.client.tpc.failpoints (e.g. "client.after_decision": the coordinator decided
    COMMIT, no branch is committed yet). `ValueError` for an unknown name; `AssertionError`
    (with the child's output) if the function ended without reaching the failpoint."""
    from twostep.client.tpc.failpoints import KNOWN  # the client is only needed here

    if failpoint not in KNOWN:
        raise ValueError(f"unknown failpoint {failpoint!r}; known: {', '.join(sorted(KNOWN))}")
    run = run_in_process(function, args, kwargs, failpoints=failpoint, env=env, timeout=timeout)
    if run.failpoint != failpoint or not run.killed:
        raise AssertionError(f"the child was not killed at {failpoint}: {run.describe()}")
    return run


def _serve(directory: Path) -> int:
    """The child's side: load the call, run it, write (value, error) to the result file."""
    try:
        with (directory / _CALL).open("rb") as call:
            sys.path[:] = pickle.load(call)
            function, args, kwargs = pickle.load(call)
        outcome: tuple[Any, str | None] = (function(*args, **kwargs), None)
    except BaseException:
        outcome = (None, traceback.format_exc())
    try:
        data = pickle.dumps(outcome)
    except Exception:  # a value that cannot travel back: say so instead of losing the run
        data = pickle.dumps(
            (None, f"the return value cannot be pickled:\n{traceback.format_exc()}")
        )
    (directory / _RESULT).write_bytes(data)
    return 0 if outcome[1] is None else 1


if __name__ == "__main__":
    sys.exit(_serve(Path(sys.argv[1])))
