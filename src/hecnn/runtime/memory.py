"""The process's resident-set high-water mark, to report what a run really needed.

Linux keeps the peak RSS per process (``VmHWM``); writing ``5`` to ``/proc/self/clear_refs``
resets it, so a run can measure its own peak rather than the process's lifetime one. Elsewhere
``resource.getrusage`` gives the lifetime peak.
"""

from __future__ import annotations

import resource
import sys


def reset_peak_rss() -> bool:
    """Reset the peak-RSS counter to the current RSS; False where the OS does not allow it."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


def peak_rss() -> int:
    """Peak resident set size in bytes (since the last reset, or since the process started)."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak if sys.platform == "darwin" else peak * 1024  # bytes on macOS, KiB on Linux
