"""When a process started, on the clock ``time.time()`` reads: a job's start-up is the time from its start to its
first phase.

``psutil.Process().create_time()`` adds the process's start (ticks since boot) to the boot time the kernel
reports in whole seconds (/proc/stat ``btime``), which on a virtual machine can be off from the real boot by a
second or more; every start-up measured from it then carries that constant error (0.97 s on the machine of
docs/measurements/default-run.md, 2026-12-07 (warm process), for a process 0.01 s old). The start in ticks and
/proc/uptime are read on one clock, so their difference is the process's true age.
"""

from __future__ import annotations

import os
import time


def process_started_at(pid: int | str = "self") -> float:
    """The Unix time at which process ``pid`` started, to a clock tick (10 ms); psutil's reading where /proc
    is not there."""
    try:
        with open(f"/proc/{pid}/stat") as stat, open("/proc/uptime") as uptime:
            ticks = int(stat.read().rsplit(")", 1)[1].split()[19])
            now_since_boot = float(uptime.read().split()[0])
        return time.time() - (now_since_boot - ticks / os.sysconf("SC_CLK_TCK"))
    except (OSError, ValueError, IndexError):
        import psutil

        return psutil.Process(None if pid == "self" else int(pid)).create_time()
