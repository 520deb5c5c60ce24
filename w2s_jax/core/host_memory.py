"""Host memory that XLA:CPU's train steps reuse instead of faulting in anew
(issue 12, bench/RESULTS.md 6c).

glibc's malloc serves XLA:CPU's multi-GB step buffers by mmap (or from a
thread's arena) and gives them back to the kernel when the step frees
them, so every step touches its ~1.3 GB afresh: about 324k minor page
faults per gpt2-small step (batch 8 x 128), 0.6-1.4 s of system time, more
when PyTorch shares the process. With one arena, no mmap for large blocks
and no trimming of the heap, freed blocks are reused and a step takes no
page faults. The cost: the process keeps its peak host memory, as JAX's
and PyTorch's device allocators do, and a run with many buffer sizes (length
buckets, eval batches) holds more. `give_back_free_memory`, which the train
and predict loops call after compiles and at the end of a pass, bounds that
to one stage's (it works with or without the setting). Numerics cannot
change.

It is opt-in: `W2S_KEEP_HOST_MEMORY=1` (`apply_default()`). End to end
it did not pay at MiniLM size, where batches come in several lengths: at
4096 examples the run took as long with it and peaked 600 MB higher, the
freed blocks of each length's buffers kept side by side (bench/RESULTS.md
4e). It pays for one large step shape run many times (gpt2-small, 6c).
It must run before JAX starts its CPU client: threads that already picked
a malloc arena keep it, so `python -m w2s_jax.main` calls it first (a
notebook kernel's threads are already there, so the notebook does not).
One arena puts every thread's large allocations behind one lock (small
ones still come from per-thread caches); measured on one core
(bench/RESULTS.md 6c).
"""
from __future__ import annotations

import ctypes
import os

ENV = "W2S_KEEP_HOST_MEMORY"

# glibc <malloc.h> mallopt parameters.
M_TRIM_THRESHOLD = -1
M_MMAP_MAX = -4
M_ARENA_MAX = -8

_applied: list[bool] = []  # the outcome, once tried


def keep_freed_memory() -> bool:
    """Make glibc's malloc keep and reuse freed memory (module docstring);
    True if it took effect (glibc Linux only; elsewhere nothing happens)."""
    if _applied:
        return _applied[0]
    ok = False
    if _glibc():
        try:
            libc = ctypes.CDLL(None)  # this process's own C library
            # mallopt returns 1 on success, 0 on error.
            ok = all(libc.mallopt(param, value) == 1 for param, value in (
                (M_ARENA_MAX, 1),  # blocks from any thread: the main heap
                (M_MMAP_MAX, 0),  # never mmap a block (munmap'd on free)
                # -1 (SIZE_MAX): never give the heap's top back. A positive
                # int caps at 2 GiB, under a gpt2-small step's 2.6 GiB.
                (M_TRIM_THRESHOLD, -1),
            ))
        except (OSError, AttributeError):
            ok = False
    _applied.append(ok)
    return ok


def give_back_free_memory() -> None:
    """Return the free pages inside malloc's heaps to the kernel (glibc's
    malloc_trim(0); elsewhere nothing happens).

    Called where the working set changes, after a compile and at the end of
    a training pass (or of a prediction pass that compiled): what was freed
    there (LLVM's compile memory, the last pass's buffers) would otherwise
    stay in the process beside the next pass's buffers and raise its peak.
    Live blocks are not touched; a later allocation faults its pages in
    again."""
    if _glibc():
        try:
            trim = ctypes.CDLL(None).malloc_trim
            trim.argtypes = [ctypes.c_size_t]
            trim(0)
        except (OSError, AttributeError):
            pass


def _glibc() -> bool:
    try:
        return os.confstr("CS_GNU_LIBC_VERSION") is not None
    except (ValueError, OSError, AttributeError):  # not glibc, or no confstr
        return False


def apply_default() -> bool:
    """keep_freed_memory() where $W2S_KEEP_HOST_MEMORY is 1 (module
    docstring); True if it took effect."""
    if os.environ.get(ENV, "").strip() != "1":
        return False
    return keep_freed_memory()
