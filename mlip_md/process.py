"""Process-wide settings for long MD runs: torch's thread count and glibc's malloc behaviour.

Both are chosen once per process, before the first model call, by the commands that run MD
loops (``mlip-md ipi``, ``mlip-md demo``) and reported in their log line; library users call
:func:`configure_for_md` themselves (the ASE calculator does not change process-wide settings
on its own).

Threads. A process gets ``OMP_NUM_THREADS`` intra-op threads when that variable is set, else
one. One thread per process is the right default for MD: the fused descriptor kernel and its C
readout are single-threaded, MPI runs put one process on each core, and on a busy or shared
machine torch's default (one thread per core) made the i-PI demo 3-10x slower than one thread
(BENCHMARKS.md). Ask for more with ``--threads N`` (or ``OMP_NUM_THREADS=N``) on an idle
machine with large cells.

Memory. Eager torch allocates and frees the same large blocks every step; glibc returns them
to the kernel by default and the process then pays a page fault per touched page on the next
step (up to 2x slower). :func:`keep_freed_memory` raises glibc's trim threshold and pins its
mmap threshold with ``mallopt`` at run time, the same effect as starting the process with
``GLIBC_TUNABLES=glibc.malloc.mmap_threshold=...:glibc.malloc.trim_threshold=...`` (equal page
fault counts, measured), without restarting the process. ``MLIP_MD_MALLOC=system`` keeps
glibc's defaults; an existing ``GLIBC_TUNABLES`` is respected.
"""
from __future__ import annotations

import ctypes
import ctypes.util
import dataclasses
import os
import sys
from typing import Optional

# mallopt parameters (glibc malloc.h)
_M_TRIM_THRESHOLD = -1
_M_MMAP_THRESHOLD = -3
#: largest mmap threshold glibc accepts on 64-bit systems (HEAP_MAX_SIZE / 2 = 32 MiB):
#: blocks up to this size are recycled from the heap instead of mmap'ed afresh each step
MMAP_THRESHOLD = 32 * 1024 * 1024
#: freed memory at the top of the heap is returned to the kernel only beyond this (bytes)
TRIM_THRESHOLD = 2**31 - 1


@dataclasses.dataclass(frozen=True)
class ProcessSettings:
    """What :func:`configure_for_md` chose: torch threads, where the number came from, and the
    malloc mode ("kept freed memory", "GLIBC_TUNABLES", "glibc defaults")."""

    threads: int
    threads_source: str
    malloc: str

    def describe(self) -> str:
        """``"1 torch thread (default: one per process)"``-style text for log lines."""
        plural = "s" if self.threads != 1 else ""
        return f"{self.threads} torch thread{plural} ({self.threads_source}), malloc {self.malloc}"


def default_threads(requested: Optional[int] = None) -> tuple:
    """(threads, source): ``requested`` if given, else ``OMP_NUM_THREADS`` if set to a positive
    integer, else 1. Raises ValueError for a requested count below 1 or a malformed variable."""
    if requested is not None:
        if int(requested) < 1:
            raise ValueError(f"--threads must be >= 1, got {requested}")
        return int(requested), "--threads"
    env = os.environ.get("OMP_NUM_THREADS", "").strip()
    if env:
        try:
            value = int(env)
        except ValueError:
            raise ValueError(f"OMP_NUM_THREADS={env!r} is not a whole number; set it to the threads per process, "
                             "e.g. OMP_NUM_THREADS=1") from None
        if value < 1:
            raise ValueError(f"OMP_NUM_THREADS={env!r} must be >= 1")
        return value, "OMP_NUM_THREADS"
    return 1, "default: one per process; --threads or OMP_NUM_THREADS for more"


def keep_freed_memory() -> str:
    """Make glibc keep freed memory for reuse (see the module docstring). Returns the malloc
    mode for log lines. Does nothing off glibc, with ``MLIP_MD_MALLOC=system`` or when
    ``GLIBC_TUNABLES`` is set."""
    if os.environ.get("MLIP_MD_MALLOC") == "system":
        return "glibc defaults (MLIP_MD_MALLOC=system)"
    if "GLIBC_TUNABLES" in os.environ:
        return "GLIBC_TUNABLES=" + os.environ["GLIBC_TUNABLES"]
    if not sys.platform.startswith("linux"):
        return "system defaults"
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):  # not glibc (e.g. musl)
        return "system defaults"
    mallopt.argtypes = (ctypes.c_int, ctypes.c_int)
    mallopt.restype = ctypes.c_int
    # mmap first: setting the trim threshold alone switches off glibc's dynamic mmap threshold
    if mallopt(_M_MMAP_THRESHOLD, MMAP_THRESHOLD) != 1 or mallopt(_M_TRIM_THRESHOLD, TRIM_THRESHOLD) != 1:
        return "glibc defaults (mallopt refused)"
    return "keeps freed memory"


def configure_for_md(threads: Optional[int] = None) -> ProcessSettings:
    """Set torch's intra-op threads (:func:`default_threads`) and glibc's malloc behaviour
    (:func:`keep_freed_memory`) for this process; returns what was chosen."""
    import torch

    count, source = default_threads(threads)
    torch.set_num_threads(count)
    return ProcessSettings(threads=count, threads_source=source, malloc=keep_freed_memory())
