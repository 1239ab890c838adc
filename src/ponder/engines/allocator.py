"""Keep freed memory for reuse on CPU, instead of handing it back to the kernel every step.

A decode step allocates and frees several temporaries of a few MB (logits rows, their
softmax, the sampling cumsum). glibc serves blocks that large with mmap and returns them
with munmap, so every step paid for fresh zeroed pages again: on a 2-core machine that was
a fifth of a batch-16 step of the bundled model. Raising glibc's mmap and trim thresholds
keeps those blocks on the heap for reuse, the way a caching allocator would.

The cost: up to TRIM_BYTES of freed memory stays with the process. Set
PONDER_DEFAULT_MALLOC=1 to leave glibc's settings alone. Elsewhere than glibc this does
nothing.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os

# mallopt parameter numbers from glibc's malloc.h
M_TRIM_THRESHOLD, M_TOP_PAD, M_MMAP_THRESHOLD = -1, -2, -3
MMAP_BYTES = 256 << 20  # blocks above this still come from (and go back to) mmap
TRIM_BYTES = 1 << 30
TOP_PAD_BYTES = 64 << 20

_done = False


def keep_freed_memory() -> bool:
    """Apply the settings once per process; True when they are in effect."""
    global _done
    if _done:
        return True
    if os.environ.get("PONDER_DEFAULT_MALLOC") == "1":
        return False
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):
        return False
    _done = all(mallopt(param, value) == 1 for param, value in (
        (M_MMAP_THRESHOLD, MMAP_BYTES), (M_TRIM_THRESHOLD, TRIM_BYTES),
        (M_TOP_PAD, TOP_PAD_BYTES)))
    return _done
