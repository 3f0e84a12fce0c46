"""The memory settings of a process that trains trials (a Ray worker), beside its BLAS thread limit."""

from __future__ import annotations

import ctypes
import functools

#: glibc's ``mallopt`` parameters (malloc.h).
M_TRIM_THRESHOLD, M_MMAP_THRESHOLD = -1, -3
#: Free memory the heap keeps at its top rather than giving it back to the OS.
TRIM_THRESHOLD_BYTES = 64 << 20
#: Blocks up to this size come from the heap rather than from a mapping of their own (glibc's largest: 32 MB).
MMAP_THRESHOLD_BYTES = 32 << 20


@functools.cache
def keep_freed_memory() -> bool:
    """Let this process's malloc keep the memory a trial frees for its next arrays (once per process); False where
    there is no glibc ``mallopt`` (nothing is changed then).

    In a process that has just started, as a Ray worker has, glibc's malloc adapts its thresholds to what is freed:
    it gives the top of its heap back to the OS as soon as more than twice the largest block freed so far is free
    there. A trial frees its 800 KB arrays (1000 evaluation samples x 100 units) every epoch, so a worker's heap
    shrank and grew again all the time: about 20,000 pages per default trial, each a page fault and a page the kernel
    zeroes again, 4-7 % of the trials' CPU time in a sweep (a process whose heap is already large, as the benchmarks'
    are, sees none of it). Fixed thresholds keep up to 64 MB free at the top of the heap and serve blocks of up to
    32 MB from it: about 30 page faults per trial. Where an array lives does not change what a trial computes."""
    try:  # the process's own symbols: the C library's, with no search for its file (find_library runs ldconfig)
        mallopt = ctypes.CDLL(None).mallopt
    except (OSError, AttributeError):
        return False
    mallopt.argtypes, mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
    return bool(mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD_BYTES)) and bool(mallopt(M_TRIM_THRESHOLD,
                                                                                 TRIM_THRESHOLD_BYTES))
