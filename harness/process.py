"""One child process we started: its output in a log file, readiness by a probe, and a stop by
SIGTERM with a clean-exit check. Everything is addressed by the pid we started, never by name."""

from __future__ import annotations

import contextlib
import signal
import subprocess
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

STOP_TIMEOUT = 15.0
# Bounds how much of a log goes into an error message.
LOG_TAIL_CHARS = 20_000


class ProcessError(RuntimeError):
    """A process exited early or was not ready in time; the message carries its output."""


class UncleanExit(AssertionError):
    """A process ignored SIGTERM or exited non-zero after it: a bug worth seeing."""


class Process:
    """A started child process whose stdout and stderr go to `log_path`."""

    def __init__(
        self, name: str, argv: Sequence[str], popen: subprocess.Popen[bytes], log_path: Path
    ) -> None:
        self.name = name
        self.argv = list(argv)
        self.popen = popen
        self.log_path = log_path
        # Set when `stop` had to fall back to SIGKILL.
        self.killed_after_sigterm = False

    @property
    def pid(self) -> int:
        return self.popen.pid

    @property
    def returncode(self) -> int | None:
        return self.popen.poll()

    def log_text(self, limit: int = LOG_TAIL_CHARS) -> str:
        """The output so far (its tail, if long)."""
        with contextlib.suppress(OSError):
            text = self.log_path.read_text(errors="replace")
            if len(text) > limit:
                return f"[... {len(text) - limit} characters cut ...]\n{text[-limit:]}"
            return text
        return ""

    def check(self) -> None:
        """Raise ProcessError if the process has exited."""
        if self.popen.poll() is not None:
            raise ProcessError(
                f"{self.name} (pid {self.pid}) exited with {self.popen.returncode}\n"
                f"command: {' '.join(self.argv)}\n--- its output ---\n{self.log_text()}"
            )

    def signal(self, sig: signal.Signals) -> None:
        if self.popen.poll() is None:
            self.popen.send_signal(sig)

    def wait(self, timeout: float) -> int:
        return self.popen.wait(timeout=timeout)

    def stop(self, timeout: float = STOP_TIMEOUT) -> int:
        """SIGTERM, then SIGKILL after `timeout`; the exit code (negative: the signal that ended it)."""
        if self.popen.poll() is None:
            self.popen.send_signal(signal.SIGTERM)
            try:
                return self.popen.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                self.killed_after_sigterm = True
                self.popen.kill()
                return self.popen.wait(timeout=10)
        return self.popen.returncode

    def stop_cleanly(self, timeout: float = STOP_TIMEOUT) -> None:
        """`stop`, failing unless SIGTERM alone ended the process with exit code 0."""
        code = self.stop(timeout)
        if self.killed_after_sigterm:
            raise UncleanExit(f"{self.name} (pid {self.pid}) ignored SIGTERM for {timeout}s; killed it")
        if code != 0:
            raise UncleanExit(f"{self.name} (pid {self.pid}) exited with code {code} after SIGTERM")

    def kill(self) -> None:
        """SIGKILL, as a crash would end it."""
        if self.popen.poll() is None:
            self.popen.kill()
            self.popen.wait(timeout=10)


def spawn(
    name: str,
    argv: Sequence[str],
    log_path: Path,
    *,
    env: Mapping[str, str] | None = None,
    cwd: Path | None = None,
) -> Process:
    """Start `argv` with stdin closed and stdout+stderr appended to `log_path`."""
    log_path.parent.mkdir(parents=True, exist_ok=True)
    with log_path.open("ab") as log:
        # The child keeps its own copy of the descriptor.
        popen = subprocess.Popen(
            list(argv),
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            env=None if env is None else dict(env),
            cwd=cwd,
        )
    return Process(name, argv, popen, log_path)


def wait_ready(process: Process, probe: Callable[[], bool], timeout: float, interval: float = 0.05) -> None:
    """Poll `probe` until it holds. If the process exits first or time runs out, it is killed and
    ProcessError names what happened, with the process's output."""
    deadline = time.monotonic() + timeout
    while not probe():
        try:
            process.check()
        except ProcessError:
            process.kill()
            raise
        if time.monotonic() >= deadline:
            process.kill()
            raise ProcessError(
                f"{process.name} (pid {process.pid}) was not ready within {timeout}s\n"
                f"command: {' '.join(process.argv)}\n--- its output ---\n{process.log_text()}"
            )
        time.sleep(interval)
