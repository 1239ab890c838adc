"""How torch's OpenMP threads wait between parallel regions: set by ponder's commands (and
the server benchmark, which runs the server as `ponder serve` does) before torch is
imported, since OpenMP reads it once, when torch loads it.

Spinning long (libgomp's default) made decoding several times slower on a CPU shared with
another busy process; sleeping at once (OMP_WAIT_POLICY=PASSIVE, ponder's default before)
cost a decode step 20-40% on a free CPU, where each of its ~150 parallel regions woke a
sleeping thread. A short spin keeps most of both. On a 2-core AMD EPYC (2026-12-05), the
engine's tokens/s at batch 16 on a free CPU: 652 spinning 1000 times, 509-541 passive, 688
at libgomp's default; beside one busy process: 342, 398 and 184. The README's main job:
111.1 s against 129.1 s passive.
"""

from __future__ import annotations

import os
from collections.abc import MutableMapping

SPIN_COUNT = "1000"  # libgomp's (torch's OpenMP on Linux) spins before a waiting thread sleeps


def wait_briefly(environ: MutableMapping[str, str] = os.environ) -> None:
    """A short spin, then sleep, unless the user set a wait policy (OMP_WAIT_POLICY=PASSIVE
    suits a machine shared with other busy processes) or these variables themselves."""
    if "OMP_WAIT_POLICY" not in environ:
        environ.setdefault("GOMP_SPINCOUNT", SPIN_COUNT)
        environ.setdefault("KMP_BLOCKTIME", "0")  # LLVM's and Intel's OpenMP: no spin
