"""The lean forward's decode attention as one compiled loop (decode_attention.c), built on
first use with this machine's C compiler and loaded through ctypes.

Why: in a batched decode step the cached keys and values come from memory, not cache (the
weights streamed since have evicted them), and torch's batched matmuls, one small product
per (row, key/value head), read them at about a third of the memory's bandwidth. On a
2-core AMD EPYC (2026-12-05; the bundled model's 3 key/value heads x 3 query heads, 64
dims, caches flushed first): 16 rows x 100 columns 75-86 against 176-180 us a layer, 64 x
173 414-487 against 866-990 us; reading the same bytes with a sum took 75-84 and 354-446.
See decode_attention.c for how.

Where it is not used (`why_not` says why): no C compiler, a torch whose threads are not GNU
OpenMP's (the loop would bring a second thread pool), a build or self-check that fails,
`PONDER_ATTENTION_KERNEL=0`, or a model whose head size is not 64 or 128 or that has more than
8 query heads per key/value head. The lean forward then attends with torch's ops, as before.

The built library lives under ponder's cache (models.ponder_home()/kernels), named by a
hash of the source, the flags, the compiler and this CPU, so a machine with another CPU or
compiler builds its own; it is written to a temporary file and renamed, so processes that
build at once do not see half a file.
"""

from __future__ import annotations

import ctypes
import functools
import hashlib
import os
import platform
import shutil
import subprocess
import tempfile
from pathlib import Path

import torch

from ponder.engines.cpu import cpu_info

SOURCE = Path(__file__).with_name("decode_attention.c")
FLAGS = ("-O3", "-march=native", "-fopenmp", "-shared", "-fPIC")
DIMS = frozenset({64, 128})
MAX_GROUPS = 8
SYMBOLS = ("ponder_decode_attention", "ponder_decode_step")


class DecodeAttention:
    """The loaded function, called with tensors it checks first (a wrong layout must raise,
    not read outside them)."""

    def __init__(self, function, step_function):
        self.function, self.step_function = function, step_function

    @staticmethod
    def supports(head_dim: int, groups: int) -> bool:
        """Whether the loop has code for this head size and number of query heads per
        key/value head."""
        return head_dim in DIMS and 1 <= groups <= MAX_GROUPS

    def __call__(self, queries: torch.Tensor, keys: torch.Tensor, values: torch.Tensor,
                 scale: float, allowed: torch.Tensor | None = None,
                 prefix_row: torch.Tensor | None = None,
                 prefix_len: torch.Tensor | None = None) -> torch.Tensor:
        """queries [batch, heads * dim] (rows may be strided; heads contiguous), rotated; keys
        and values [batch, kv_heads, length, dim]; allowed: uint8 [batch, length] contiguous,
        0 = masked; prefix_row, prefix_len: int64 [batch], row b reads its first
        prefix_len[b] columns from row prefix_row[b]. Returns the attended values [batch,
        heads * dim]."""
        out, shape = self._checked(queries, keys, values, allowed, prefix_row, prefix_len)
        status = self.function(
            queries.data_ptr(), queries.stride(0), keys.data_ptr(), *keys.stride()[:3],
            values.data_ptr(), *values.stride()[:3], *_pointers(prefix_row, prefix_len, allowed),
            out.data_ptr(), *shape, scale)
        return _done(status, out)

    def step(self, queries: torch.Tensor, new_keys: torch.Tensor, new_values: torch.Tensor,
             cos: torch.Tensor, signed_sin: torch.Tensor, keys: torch.Tensor,
             values: torch.Tensor, scale: float, allowed: torch.Tensor | None = None,
             prefix_row: torch.Tensor | None = None,
             prefix_len: torch.Tensor | None = None) -> torch.Tensor:
        """The same, from a step's projections as they come: the queries and `new_keys`
        [batch, kv_heads * dim] (rows may be strided) are rotated here by `cos` and
        `signed_sin` [batch, dim] (lean.LeanForward._rotate's convention), and the rotated
        keys and `new_values` are written into the last column of `keys` and `values` (views
        that end at the step's column, not yet written) before attention reads them."""
        out, shape = self._checked(queries, keys, values, allowed, prefix_row, prefix_len)
        batch, kv_heads, _, dim = keys.shape
        if not (all(t.shape == (batch, kv_heads * dim) and t.stride(-1) == 1
                    and t.dtype == torch.float32 and t.device.type == "cpu"
                    for t in (new_keys, new_values))
                and all(t.shape == (batch, dim) and t.is_contiguous()
                        and t.dtype == torch.float32 and t.device.type == "cpu"
                        for t in (cos, signed_sin))):
            raise ValueError("decode attention: new keys and values [batch, kv_heads*dim] and "
                             "cos, sin [batch, dim] in CPU fp32")
        status = self.step_function(
            queries.data_ptr(), queries.stride(0), new_keys.data_ptr(), new_keys.stride(0),
            new_values.data_ptr(), new_values.stride(0), cos.data_ptr(), signed_sin.data_ptr(),
            keys.data_ptr(), *keys.stride()[:3], values.data_ptr(), *values.stride()[:3],
            *_pointers(prefix_row, prefix_len, allowed), out.data_ptr(), *shape, scale)
        return _done(status, out)

    def _checked(self, queries, keys, values, allowed, prefix_row, prefix_len):
        """The output tensor and (batch, kv_heads, groups, length, dim), or ValueError for
        tensors the loop would read wrongly or outside of."""
        batch, kv_heads, length, dim = keys.shape
        groups = queries.shape[-1] // (kv_heads * dim)
        tensors = (queries, keys, values, *(t for t in (allowed, prefix_row, prefix_len)
                                            if t is not None))
        if (not self.supports(dim, groups) or queries.shape[-1] != kv_heads * groups * dim
                or any(t.device.type != "cpu" for t in tensors)
                or any(t.dtype != torch.float32 or t.stride(-1) != 1
                       for t in (queries, keys, values))
                or values.shape != keys.shape or queries.shape[0] != batch
                or (allowed is not None and (allowed.dtype != torch.uint8
                                             or allowed.shape != (batch, length)
                                             or not allowed.is_contiguous()))
                or any(t is not None and (t.dtype != torch.long or t.shape != (batch,)
                                          or not t.is_contiguous())
                       for t in (prefix_row, prefix_len))):
            raise ValueError(
                "decode attention: queries [batch, heads*dim] and keys/values [batch, kv_heads, "
                "length, 64 or 128] in CPU fp32 with contiguous last dims, at most "
                f"{MAX_GROUPS} query heads per key/value head, uint8 mask [batch, length], "
                f"int64 prefixes [batch]; got queries {tuple(queries.shape)}, keys "
                f"{tuple(keys.shape)}")
        out = queries.new_empty(batch, kv_heads * groups * dim)
        return out, (batch, kv_heads, groups, length, dim)


def _pointers(*tensors: torch.Tensor | None) -> list[int | None]:
    return [None if t is None else t.data_ptr() for t in tensors]


def _done(status: int, out: torch.Tensor) -> torch.Tensor:
    if status != 0:  # supports() agrees with the C file's cases (tested)
        raise ValueError("no decode attention code for this head size and grouping")
    return out


_why_not: str | None = None


def why_not() -> str | None:
    """Why the lean forward attends with torch's ops (None: it uses the loop)."""
    load()
    return _why_not


@functools.cache
def load() -> DecodeAttention | None:
    """The loop, built (once per machine) and checked on first use; None where it cannot be
    had (why_not() says why)."""
    global _why_not
    try:
        kernel = _load()
    except _Unavailable as reason:
        _why_not = str(reason)
        return None
    _why_not = None
    return kernel


class _Unavailable(Exception):
    pass


def _load() -> DecodeAttention:
    if os.environ.get("PONDER_ATTENTION_KERNEL", "1") == "0":
        raise _Unavailable("turned off by PONDER_ATTENTION_KERNEL=0")
    if not _torch_runs_on_gnu_openmp():
        raise _Unavailable("torch here does not run its threads on GNU OpenMP (libgomp)")
    compiler = os.environ.get("CC") or shutil.which("cc") or shutil.which("gcc")
    if not compiler:
        raise _Unavailable("no C compiler (cc or gcc, or $CC) on this machine")
    library = _build(compiler)
    try:
        loaded = ctypes.CDLL(str(library))
        function, step_function = (getattr(loaded, name) for name in SYMBOLS)
    except (OSError, AttributeError) as error:
        raise _Unavailable(f"the built library did not load: {error}") from error
    p, i, n = ctypes.c_void_p, ctypes.c_int, ctypes.c_long
    cache = [p, n, n, n] * 2  # keys, values: pointer and three strides
    tail = [p, p, p, p, i, i, i, i, i, ctypes.c_float]  # prefixes, mask, out, shape, scale
    function.argtypes = [p, n, *cache, *tail]
    step_function.argtypes = [p, n, p, n, p, n, p, p, *cache, *tail]
    function.restype = step_function.restype = ctypes.c_int
    kernel = DecodeAttention(function, step_function)
    if not _agrees_with_torch(kernel):
        raise _Unavailable("the built loop's results differ from torch's")
    return kernel


def _torch_runs_on_gnu_openmp() -> bool:
    """torch's own libgomp is in this process (so the library's libgomp.so.1 is that one and
    its threads are torch's)."""
    try:
        with open("/proc/self/maps") as maps:
            return any("libgomp" in line for line in maps)
    except OSError:
        return False


def _build(compiler: str) -> Path:
    from ponder.models import ponder_home

    source = SOURCE.read_bytes()
    try:
        version = subprocess.run([compiler, "--version"], capture_output=True, text=True,
                                 timeout=30).stdout
    except (OSError, subprocess.SubprocessError) as error:
        raise _Unavailable(f"the C compiler {compiler!r} did not run: {error}") from error
    key = hashlib.sha256(b"\0".join(s.encode() if isinstance(s, str) else s for s in (
        source, " ".join(FLAGS), compiler, version, platform.machine(),
        cpu_info("model name"), cpu_info("flags")))).hexdigest()[:16]
    folder = ponder_home() / "kernels"
    library = folder / f"decode_attention-{key}.so"
    if library.exists():
        return library
    try:
        folder.mkdir(parents=True, exist_ok=True)
        handle, temporary = tempfile.mkstemp(suffix=".so", dir=folder)
        os.close(handle)
    except OSError as error:
        raise _Unavailable(f"cannot write to {folder}: {error}") from error
    try:
        result = subprocess.run([compiler, *FLAGS, str(SOURCE), "-o", temporary, "-lm"],
                                capture_output=True, text=True, timeout=300)
        if result.returncode != 0:
            first = (result.stderr.strip().splitlines() or ["(no message)"])[0]
            raise _Unavailable(f"the C compiler failed on {SOURCE.name}: {first}")
        os.replace(temporary, library)
    except (OSError, subprocess.SubprocessError) as error:
        raise _Unavailable(f"building {SOURCE.name} failed: {error}") from error
    finally:
        if os.path.exists(temporary):
            os.unlink(temporary)
    return library


def reference(queries: torch.Tensor, keys: torch.Tensor, values: torch.Tensor, scale: float,
              allowed: torch.Tensor | None = None, prefix_row: torch.Tensor | None = None,
              prefix_len: torch.Tensor | None = None) -> torch.Tensor:
    """What DecodeAttention computes, with torch's ops (for checks and tests)."""
    batch, kv_heads, length, dim = keys.shape
    if prefix_row is not None:  # each row's first columns come from its prefix row
        columns = torch.arange(length)
        own = (columns[None, :] >= prefix_len[:, None])[:, None, :, None]
        keys = torch.where(own, keys, keys[prefix_row])
        values = torch.where(own, values, values[prefix_row])
    grouped = queries.reshape(batch, kv_heads, -1, dim) * scale
    scores = torch.matmul(grouped, keys.transpose(-1, -2))
    if allowed is not None:
        scores = scores.masked_fill(~allowed.bool()[:, None, None, :],
                                    torch.finfo(scores.dtype).min)
    return torch.matmul(torch.softmax(scores, dim=-1), values).reshape(batch, -1)


def reference_step(queries: torch.Tensor, new_keys: torch.Tensor, new_values: torch.Tensor,
                   cos: torch.Tensor, signed_sin: torch.Tensor, keys: torch.Tensor,
                   values: torch.Tensor, scale: float, allowed: torch.Tensor | None = None,
                   prefix_row: torch.Tensor | None = None,
                   prefix_len: torch.Tensor | None = None) -> torch.Tensor:
    """What DecodeAttention.step computes (writing the last column of keys and values, as it
    does), with torch's ops."""
    batch, kv_heads, _, dim = keys.shape

    def rotate(x: torch.Tensor) -> torch.Tensor:
        x = x.reshape(batch, -1, dim)
        return x * cos[:, None] + x.roll(dim // 2, dims=-1) * signed_sin[:, None]

    keys[:, :, -1] = rotate(new_keys)
    values[:, :, -1] = new_values.reshape(batch, kv_heads, dim)
    return reference(rotate(queries).reshape(batch, -1), keys, values, scale, allowed,
                     prefix_row, prefix_len)


def _agrees_with_torch(kernel: DecodeAttention) -> bool:
    g = torch.Generator().manual_seed(0)
    keys, values = (torch.randn(3, 2, 150, 64, generator=g) for _ in range(2))
    queries = torch.randn(3, 2 * 3 * 64, generator=g)
    new_keys, new_values = (torch.randn(3, 2 * 64, generator=g) for _ in range(2))
    cos, sin = (torch.randn(3, 64, generator=g) for _ in range(2))
    allowed = torch.ones(3, 150, dtype=torch.uint8)
    allowed[1, :40] = 0
    with torch.inference_mode():
        plain = torch.allclose(kernel(queries, keys, values, 0.125, allowed),
                               reference(queries, keys, values, 0.125, allowed), atol=1e-5)
        ours = kernel.step(queries, new_keys, new_values, cos, sin, keys, values, 0.125, allowed)
        written = keys.clone(), values.clone()
        theirs = reference_step(queries, new_keys, new_values, cos, sin, keys, values, 0.125,
                                allowed)
        return (plain and torch.allclose(ours, theirs, atol=1e-5)
                and all(torch.allclose(a, b, atol=1e-6)
                        for a, b in zip(written, (keys, values), strict=True)))
