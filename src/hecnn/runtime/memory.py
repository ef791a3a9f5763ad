"""The process's resident-set high-water mark, to report what a run really needed.

Linux keeps the peak RSS per process (``VmHWM``); writing ``5`` to ``/proc/self/clear_refs``
resets it, so a run can measure its own peak rather than the process's lifetime one. Elsewhere
``resource.getrusage`` gives the lifetime peak.

Ciphertexts mapped from a file (``np.memmap``) are paged in as they are read; a streamed layer
releases the pages of input rows it no longer needs (:func:`release_rows`), so an input larger
than memory never has to be resident whole.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import gc
import mmap
import resource
import sys

import numpy as np


def reset_peak_rss() -> bool:
    """Reset the peak-RSS counter to the current RSS; False where the OS does not allow it."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


def proc_kib(path: str, field: str) -> int | None:
    """Bytes of the ``field:`` line (in kB) of a ``/proc`` file, None where it is missing."""
    try:
        with open(path) as f:
            for line in f:
                if line.startswith(field + ":"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return None


def current_rss() -> int:
    """Resident set size now in bytes (0 where ``/proc`` is not available)."""
    return proc_kib("/proc/self/status", "VmRSS") or 0


def peak_rss() -> int:
    """Peak resident set size in bytes (since the last reset, or since the process started)."""
    found = proc_kib("/proc/self/status", "VmHWM")
    if found is not None:
        return found
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak if sys.platform == "darwin" else peak * 1024  # bytes on macOS, KiB on Linux


def release_free_heap() -> bool:
    """Collect garbage and hand the C heap's free pages back to the OS; False where that is
    not possible (no glibc).

    glibc keeps freed memory in its arenas for reuse, so a process that built large temporaries
    (a model's calibration pass, keys, encryption) keeps them resident after they are gone —
    resident set another process could use, and noise in the peak a run reports."""
    gc.collect()
    name = ctypes.util.find_library("c")
    try:
        trim = ctypes.CDLL(name).malloc_trim if name else None
    except (OSError, AttributeError):
        trim = None
    if trim is None:
        return False
    trim(0)
    return True


def file_mapping(a: np.ndarray) -> tuple[mmap.mmap, int] | None:
    """(the file mapping ``a``'s memory lies in, ``a``'s byte offset in it), or None when ``a``
    is ordinary memory (e.g. ciphertexts the server maps from an uploaded file)."""
    base = a
    while base is not None and not isinstance(base, mmap.mmap):
        base = getattr(base, "base", None)
    if base is None or not a.flags.c_contiguous:
        return None
    start = np.frombuffer(base, dtype=np.uint8, count=1).ctypes.data
    return base, a.ctypes.data - start


def release_rows(a: np.ndarray, rows: np.ndarray) -> int:
    """Drop the pages of rows ``rows`` of a file-mapped array from memory; returns the bytes
    released (0 for ordinary memory, which is never touched).

    The file keeps the data: a row read again is paged back in. This lets a streamed layer keep
    only the window of its input it still needs resident, whatever the input's size.
    """
    found = file_mapping(a)
    rows = np.unique(np.asarray(rows, dtype=np.int64))
    if found is None or not len(rows):
        return 0
    mm, offset = found
    row_bytes = a.nbytes // a.shape[0]
    breaks = np.flatnonzero(np.diff(rows) != 1) + 1
    released = 0
    for run in np.split(rows, breaks):
        lo = offset + int(run[0]) * row_bytes
        hi = offset + (int(run[-1]) + 1) * row_bytes
        lo = -(-lo // mmap.PAGESIZE) * mmap.PAGESIZE  # whole pages inside the rows only
        hi = hi // mmap.PAGESIZE * mmap.PAGESIZE
        if hi > lo:
            mm.madvise(mmap.MADV_DONTNEED, lo, hi - lo)
            released += hi - lo
    return released
