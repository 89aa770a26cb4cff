"""CPU time of a process tree from Linux /proc, for the benchmark scripts beside this file."""

from __future__ import annotations

import os
from pathlib import Path


def cpu_seconds(pid: int) -> float | None:
    """User + system CPU time so far of a process, its threads and its live child processes
    (the relay's workers), from Linux /proc; None elsewhere."""
    stats: dict[int, tuple[int, float]] = {}  # pid -> (parent, cpu seconds)
    for entry in Path("/proc").iterdir() if Path("/proc").is_dir() else ():
        if not entry.name.isdigit():
            continue
        try:
            fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        stats[int(entry.name)] = (
            int(fields[1]),
            (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK"),
        )
    if pid not in stats:
        return None
    children: dict[int, list[int]] = {}
    for candidate, (parent, _cpu) in stats.items():
        children.setdefault(parent, []).append(candidate)
    total, todo = 0.0, [pid]
    while todo:
        current = todo.pop()
        total += stats[current][1]
        todo.extend(children.get(current, ()))
    return total
