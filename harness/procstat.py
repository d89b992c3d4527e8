"""CPU time of a process and its threads from /proc (Linux), to show where a core went in a phase:
a saturated server core reads ~100%, and the load generator must stay well below. Also a process's
resident memory, for the memory cost of idle WebSockets."""

from __future__ import annotations

import logging
import os
import resource
from pathlib import Path

logger = logging.getLogger("harness.procstat")

_TICK = os.sysconf("SC_CLK_TCK")


def _stat_times(stat: str) -> tuple[float, float]:
    # Fields after the parenthesised command name; utime and stime are fields 14 and 15.
    fields = stat.rsplit(")", 1)[1].split()
    return int(fields[11]) / _TICK, int(fields[12]) / _TICK


def process_cpu(pid: int) -> float:
    """User + system seconds of a whole process so far (0.0 if it is gone)."""
    try:
        user, system = _stat_times(Path(f"/proc/{pid}/stat").read_text())
    except OSError:
        return 0.0
    return user + system


def thread_cpu(pid: int) -> dict[int, float]:
    """User + system seconds per thread id (the main thread's id is the pid). Python 3.11 does not
    name its threads for the OS, so ids are all there is."""
    out: dict[int, float] = {}
    for task in Path(f"/proc/{pid}/task").glob("*"):
        try:
            user, system = _stat_times((task / "stat").read_text())
        except OSError:
            continue
        out[int(task.name)] = user + system
    return out


def children_cpu() -> float:
    """User + system seconds of this process's waited-for children (such as wrk runs) so far."""
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def core_busy(core: int | None) -> float:
    """Busy seconds (not idle, not waiting for I/O) of one CPU so far, or of all CPUs if None."""
    name = "cpu" if core is None else f"cpu{core}"
    for line in Path("/proc/stat").read_text().splitlines():
        fields = line.split()
        if fields and fields[0] == name:
            ticks = [int(v) for v in fields[1:8]]
            idle, iowait = ticks[3], ticks[4]
            return (sum(ticks) - idle - iowait) / _TICK
    return 0.0


def memory_kib(pid: int) -> dict[str, int]:
    """Resident memory of a process in KiB from /proc/PID/status: `rss` in all, `anon` (heap, stacks:
    what grows per connection) and `file` (mapped code and libraries)."""
    wanted = {"VmRSS:": "rss", "RssAnon:": "anon", "RssFile:": "file"}
    out = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        fields = line.split()
        if fields and fields[0] in wanted:
            out[wanted[fields[0]]] = int(fields[1])
    return out
