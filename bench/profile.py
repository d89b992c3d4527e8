"""Optional (`--profile`): where the gateway spends its time under the heartbeat load, by py-spy.

One extra, untimed gateway phase runs under `py-spy record` (which pauses the process for each
sample, so stacks are whole); the folded stacks go to bench/results/latest-http-profile.folded (or
latest-ws-profile.folded for the WebSocket benchmark; flamegraph/speedscope input) and the functions
with the most samples, by own time and by inclusive time, to the report.
"""

from __future__ import annotations

import logging
import shutil
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

from harness import procstat

if TYPE_CHECKING:
    from bench.targets import Cores

logger = logging.getLogger("bench.profile")

TOP = 25
# Frames every request runs under (process entry, server loop): not a cost of their own.
_ROOTS = ("(gateway/cli.py", "(gateway/server.py")
RATE = 100


class ProfileError(Exception):
    """py-spy is missing or could not attach to the gateway."""


def find_py_spy() -> str | None:
    local = Path(sys.executable).with_name("py-spy")
    return str(local) if local.exists() else shutil.which("py-spy")


def _frame_name(frame: str) -> str:
    # py-spy raw frames: "function (path/to/file.py:line)"; drop the line so a function is one entry.
    name, _, where = frame.partition(" (")
    path = where.rsplit(":", 1)[0]
    for marker in ("site-packages/", "/lib/python3"):
        if marker in path:
            path = path.split(marker, 1)[1]
    if "/work/" in path or path.startswith("/"):
        path = "/".join(path.split("/")[-2:])
    return f"{name} ({path})"


def summarize(folded: str, top: int = TOP) -> dict[str, object]:
    """Own and inclusive sample shares per function from py-spy's folded stacks."""
    own: Counter[str] = Counter()
    inclusive: Counter[str] = Counter()
    total = 0
    for line in folded.splitlines():
        stack, _, count_text = line.rpartition(" ")
        if not stack or not count_text.isdigit():
            continue
        count = int(count_text)
        total += count
        frames = [_frame_name(f) for f in stack.split(";") if f.strip()]
        if not frames:
            continue
        own[frames[-1]] += count
        for name in set(frames):
            inclusive[name] += count

    def share(
        counter: Counter[str], keep: Callable[[str], bool] = lambda _name: True
    ) -> list[dict[str, object]]:
        ranked = [(name, n) for name, n in counter.most_common() if keep(name)][:top]
        return [{"function": name, "percent": 100.0 * n / total if total else 0.0} for name, n in ranked]

    return {
        "samples": total,
        "own": share(own),
        "inclusive": share(inclusive),
        # The request path below the web framework: what the gateway itself adds per message.
        "gateway": share(inclusive, _is_gateway_cost),
    }


def _is_gateway_cost(name: str) -> bool:
    if any(root in name for root in _ROOTS):
        return False
    return any(
        marker in name for marker in ("(gateway/", "(prometheus_client/", "(dataclasses.py", "(gzip.py")
    )


class Recording:
    """py-spy recording one process for `seconds` (plus a margin), pinned to the load core; start it,
    run the load, then `finish`. Usable from plain and from async code (both steps block briefly)."""

    def __init__(self, pid: int, seconds: float, cores: Cores, workdir: Path) -> None:
        exe = find_py_spy()
        if exe is None:
            raise ProfileError("--profile needs py-spy: .venv/bin/pip install py-spy")
        self.pid = pid
        self.out = workdir / f"profile-{pid}.folded"
        command = [
            *cores.prefix(cores.load),
            exe,
            "record",
            "--pid",
            str(pid),
            "--rate",
            str(RATE),
            "--duration",
            str(int(seconds) + 2),
            # Only the thread holding the GIL: Python's own time, not threads parked in a queue.
            "--gil",
            "--format",
            "raw",
            "--output",
            str(self.out),
        ]
        self.seconds = seconds
        self._spy = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
        time.sleep(1.0)
        if self._spy.poll() is not None:
            output = self._spy.stdout.read().decode(errors="replace") if self._spy.stdout else ""
            raise ProfileError(f"py-spy could not attach to the process (pid {pid}):\n{output}")
        self._threads_before = procstat.thread_cpu(pid)

    def finish(self, measured_seconds: float, saved: Path) -> dict[str, object]:
        """Wait for py-spy, keep its stacks at `saved`, and summarize them with the CPU by thread."""
        after = procstat.thread_cpu(self.pid)
        used = {tid: cpu - self._threads_before.get(tid, 0.0) for tid, cpu in after.items()}
        main = used.pop(self.pid, 0.0)
        self._spy.wait(timeout=self.seconds + 30)
        if not self.out.exists():
            raise ProfileError("py-spy wrote no profile")
        folded = self.out.read_text()
        saved.parent.mkdir(parents=True, exist_ok=True)
        saved.write_text(folded)
        summary = summarize(folded)
        # Where the core went, by thread: py-spy does not see C code that released the GIL (SQLite itself).
        summary["cpu_share"] = {
            "main thread (event loop)": main / measured_seconds,
            f"{len(used)} other threads (store, executor)": sum(used.values()) / measured_seconds,
        }
        return summary
