"""The native RIM layer: built on first use, wrapped in an autograd Function.

``csrc/rim_layer.cpp`` runs one RIM layer's time loop, forward and backward, in C++ (see
its header). It is compiled with ``torch.utils.cpp_extension`` the first time a RIM
needs it and cached under torch's extension directory (``TORCH_EXTENSIONS_DIR``, by
default ``~/.cache/torch_extensions``), in a folder named after a hash of the source and
the torch version, so an edited source or another torch never loads a stale build.

Where it cannot be built (no C++ compiler, no ninja, a torch without an exported BLAS),
:func:`load` warns once and returns None, and ``RIM(backend="auto")`` runs the PyTorch
path. ``RIM_AGENTS_NATIVE=0`` in the environment skips the native op without trying;
``RIM_AGENTS_NATIVE_SIMD`` caps its vector instructions (:func:`simd_level`).

Symbols as in ``rim.py``: L steps, N batch, D input features, K units, H unit size, G gate
width, Q query width.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import os
import platform
import shutil
import time
import warnings
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType
from typing import Any, NamedTuple

import torch
from torch import Tensor

SOURCE = Path(__file__).with_name("csrc") / "rim_layer.cpp"
DTYPES = (torch.float32, torch.float64)
DISABLE_VARIABLE = "RIM_AGENTS_NATIVE"
SIMD_VARIABLE = "RIM_AGENTS_NATIVE_SIMD"
SIMD_LEVELS = ("none", "avx2", "avx512")


class NativeUnavailable(RuntimeError):
    """The native op could not be built or loaded; the message says why."""


def _cpu_flags() -> set[str]:
    """The x86 feature flags of this CPU (Linux), empty where unknown."""
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return set()
    line = next((line for line in text.splitlines() if line.startswith("flags")), "")
    return set(line.partition(":")[2].split())


def simd_level() -> str:
    """The widest vectors the op is built for: ``avx512`` (AVX-512F), ``avx2`` (AVX2 with
    FMA) or ``none``; the best this CPU has, capped by ``RIM_AGENTS_NATIVE_SIMD``.

    Either vector level runs the float matmuls in the op's own kernel; ``none`` calls the BLAS.
    The cap builds for an older CPU (a cache shared by several machines) or tests a
    narrower path; a level above this CPU's is refused, since the build could not run here.
    """
    cpu = _cpu_flags() if platform.machine() in ("x86_64", "AMD64") else set()
    best = "avx512" if {"avx2", "fma", "avx512f"} <= cpu else "avx2" if {"avx2", "fma"} <= cpu else "none"
    cap = os.environ.get(SIMD_VARIABLE, "").strip().lower()
    if not cap:
        return best
    if cap not in SIMD_LEVELS:
        raise NativeUnavailable(f"{SIMD_VARIABLE}={cap!r} is not one of {', '.join(SIMD_LEVELS)}")
    if SIMD_LEVELS.index(cap) > SIMD_LEVELS.index(best):
        raise NativeUnavailable(f"{SIMD_VARIABLE}={cap} asks for more than this CPU has ({best})")
    return cap


def compile_flags() -> list[str]:
    """``-O3``, loops free to vectorize, and the vector instructions of :func:`simd_level`.

    The build is for this machine: its folder name includes these flags, so a cache
    shared with another CPU builds its own copy instead of loading one it cannot run.
    """
    flags = ["-O3", "-fopenmp-simd", "-fno-trapping-math", "-fno-math-errno"]
    level = simd_level()
    if level in ("avx2", "avx512"):
        flags += ["-mavx2", "-mfma"]
    if level == "avx512":
        flags += ["-mavx512f"]
    return flags


@contextlib.contextmanager
def _ninja_on_path() -> Iterator[None]:
    """torch runs ``ninja`` from PATH; where it is not there, use the pip package's binary
    (a dependency of this package) for the build, without changing PATH for anything else."""
    if shutil.which("ninja") is not None:
        yield
        return
    try:
        import ninja  # type: ignore[import-untyped]
    except ImportError:
        yield
        return
    previous = os.environ.get("PATH", "")
    os.environ["PATH"] = os.pathsep.join([ninja.BIN_DIR, previous])
    try:
        yield
    finally:
        os.environ["PATH"] = previous


def _build() -> ModuleType:
    """The extension; NativeUnavailable saying why it cannot be built. One attempt per process."""
    result = _attempt_build()
    if isinstance(result, NativeUnavailable):
        raise result
    return result


@functools.cache
def _attempt_build() -> ModuleType | NativeUnavailable:
    """Compile (or load the cached build of) the extension, or the reason it failed."""
    try:
        return _compile()
    except NativeUnavailable as error:
        return error


STALE_LOCK_SECONDS = 900
"""A build lock older than this is left by a process killed while it compiled (a build takes
about a minute, a few under load): torch's loader would wait on it forever, silently."""


def clear_stale_build_lock(build_directory: Path, now: float | None = None) -> bool:
    """Remove the ``lock`` file of ``build_directory`` when it is older than ``STALE_LOCK_SECONDS``.

    :param build_directory: torch's build folder of one extension
    :param now: the current time (``time.time()``); for tests
    :return: whether a stale lock was removed (with a warning naming it)
    """
    lock = build_directory / "lock"
    try:
        age = (time.time() if now is None else now) - lock.stat().st_mtime
    except FileNotFoundError:
        return False
    if age < STALE_LOCK_SECONDS:
        return False
    lock.unlink(missing_ok=True)
    warnings.warn(
        f"rim_agents: removed a stale build lock {lock} ({age / 60:.0f} min old), left by a process "
        "killed while it compiled the native op",
        RuntimeWarning,
        stacklevel=2,
    )
    return True


def _compile() -> ModuleType:
    if os.environ.get(DISABLE_VARIABLE, "1") == "0":
        raise NativeUnavailable(f"{DISABLE_VARIABLE}=0 is set")
    flags = compile_flags()
    digest = hashlib.sha256(SOURCE.read_bytes() + torch.__version__.encode() + " ".join(flags).encode())
    name = f"rim_layer_{digest.hexdigest()[:16]}"
    try:
        from torch.utils.cpp_extension import _get_build_directory
        from torch.utils.cpp_extension import load as load_extension

        clear_stale_build_lock(Path(_get_build_directory(name, verbose=False)))
        with _ninja_on_path():
            module = load_extension(name=name, sources=[str(SOURCE)], extra_cflags=flags, verbose=False)
    except Exception as error:  # any build failure means: use the PyTorch path
        reason = str(error).strip().splitlines()[-1] if str(error).strip() else type(error).__name__
        kind = type(error).__name__
        raise NativeUnavailable(f"building {SOURCE.name} failed ({kind}: {reason})") from error
    if not module.has_blas():
        raise NativeUnavailable("this torch build exports no sgemm_/dgemm_ for the native op to call")
    return module


@functools.cache
def load() -> ModuleType | None:
    """The built extension, or None after one warning saying why it is unavailable."""
    try:
        return _build()
    except NativeUnavailable as error:
        warnings.warn(
            f"rim_agents: the native RIM op is unavailable, using the PyTorch path: {error}. "
            f"Install a C++ compiler (g++) and ninja to build it, or set {DISABLE_VARIABLE}=0 to skip it.",
            RuntimeWarning,
            stacklevel=3,
        )
        return None


def unavailable_reason() -> str | None:
    """Why the extension cannot be used here, or None when it can (builds it if needed)."""
    try:
        _build()
    except NativeUnavailable as error:
        return str(error)
    return None


def unsupported_reason(x: Tensor) -> str | None:
    """Why an input cannot run natively (device, dtype, compilation), or None."""
    if x.device.type != "cpu":
        return f"the native op runs on the CPU only, the input is on {x.device}"
    if x.dtype not in DTYPES:
        return f"the native op supports float32 and float64, the input is {x.dtype}"
    if torch.compiler.is_compiling() or torch.jit.is_tracing():
        return "the native op is opaque to torch.compile and tracing"
    return None


class LayerConfig(NamedTuple):
    """The sizes and switches of one layer that are not in its tensors."""

    top_k: int
    lstm: bool
    heads: int
    key_size: int
    value_size: int


class LayerInputs(NamedTuple):
    """One layer's inputs to the native op; optional parts are None.

    keys ``(L, N, Q)``; x ``(L, N, D)``; w_in ``(D, K*G)``, each unit's input-to-gate map
    (:meth:`RIMCell.composed_input_weight`); h0, c0 ``(K, N, H)``; keep ``(L, N)``;
    recurrent ``(K, H, G+Q)`` and bias ``(K, G+Q)``; bias_ih ``(K, G)`` (GRU only);
    in_mask ``(L, K, N)`` and comm_mask ``(L, N, A, K, K)`` (dropout, scaled);
    qkv ``(K, H, A*(2E+V))``, out ``(K, A*V, H or 2H)``, out_bias ``(K, 2H)`` (gated).
    """

    keys: Tensor
    x: Tensor
    w_in: Tensor
    h0: Tensor
    c0: Tensor
    keep: Tensor | None
    recurrent: Tensor
    bias: Tensor
    bias_ih: Tensor | None
    in_mask: Tensor | None
    qkv: Tensor | None
    out: Tensor | None
    out_bias: Tensor | None
    comm_mask: Tensor | None


class _RimLayer(torch.autograd.Function):
    """Autograd over the native op: forward saves what the hand-written backward reads."""

    @staticmethod
    def forward(ctx: Any, config: LayerConfig, *inputs: Tensor | None) -> tuple[Tensor, ...]:  # type: ignore[override]
        module = _build()
        args = LayerInputs(*(None if t is None else t.contiguous() for t in inputs))  # type: ignore[arg-type]
        result = module.forward(*args, *config)
        output, h_n, c_n, active = result[:4]
        hp, cp, act, tc, wsig, query, h1, qkv, att, read, pact = result[4:]
        ctx.config = config
        ctx.save_for_backward(*args, hp, cp, act, tc, wsig, query, active, h1, qkv, att, read, pact)
        ctx.mark_non_differentiable(active)
        return output, h_n, c_n, active

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(
        ctx: Any, grad_output: Tensor | None, grad_h: Tensor | None, grad_c: Tensor | None, _: Any
    ) -> tuple[Tensor | None, ...]:
        saved = ctx.saved_tensors
        args = LayerInputs(*saved[: len(LayerInputs._fields)])
        buffers = list(saved[len(LayerInputs._fields) :])
        zeros = args.h0.new_zeros(args.h0.shape)
        if grad_output is None:
            units, batch, size = args.h0.shape
            grad_output = args.h0.new_zeros(args.keys.shape[0], batch, units * size)
        grads = _build().backward(
            grad_output,  # read through its strides (a sum's gradient arrives expanded)
            zeros if grad_h is None else grad_h.contiguous(),
            zeros if grad_c is None else grad_c.contiguous(),
            buffers,
            args.keys,
            args.x,
            args.w_in,
            args.h0,
            args.keep,
            args.recurrent,
            args.bias_ih,
            args.in_mask,
            args.qkv,
            args.out,
            args.out_bias,
            args.comm_mask,
            *ctx.config,
        )
        d_keys, d_x, d_h0, d_c0, d_rec, d_bias, d_bias_ih, d_w_in, d_qkv, d_out, d_out_bias = grads
        # Order of LayerInputs (after the config); None for keep and the dropout masks.
        return (
            *(None, d_keys, d_x, d_w_in, d_h0, d_c0, None, d_rec, d_bias, d_bias_ih),
            *(None, d_qkv, d_out, d_out_bias, None),
        )


class _Compose(torch.autograd.Function):
    """``value_weight (D, V) @ weight_ih[k] (V, G)`` for every unit k, side by side: ``(D, K*G)``."""

    @staticmethod
    def forward(ctx: Any, value_weight: Tensor, weight_ih: Tensor) -> Tensor:  # type: ignore[override]
        value_weight, weight_ih = value_weight.contiguous(), weight_ih.contiguous()
        ctx.save_for_backward(value_weight, weight_ih)
        return _build().compose_forward(value_weight, weight_ih)

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx: Any, grad: Tensor) -> tuple[Tensor, Tensor]:
        value_weight, weight_ih = ctx.saved_tensors
        d_value, d_weight_ih = _build().compose_backward(grad.contiguous(), value_weight, weight_ih)
        return d_value, d_weight_ih


def compose(value_weight: Tensor, weight_ih: Tensor) -> Tensor:
    """:meth:`RIMCell.composed_input_weight` computed by the native op (its matmuls, forward
    and backward): ``(D, V)``, ``(K, V, G)`` -> ``(D, K*G)``."""
    return _Compose.apply(value_weight, weight_ih)


def run_layer(config: LayerConfig, inputs: LayerInputs) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """One layer over the sequence: ``output (L, N, K*H)``, ``h_n``, ``c_n`` ``(K, N, H)``,
    ``active (L, K, N)``."""
    if torch.is_grad_enabled():
        output, h_n, c_n, active = _RimLayer.apply(config, *inputs)
    else:  # no graph to record: skip the autograd Function's bookkeeping
        contiguous = (None if t is None else t.contiguous() for t in inputs)
        output, h_n, c_n, active = _build().forward(*contiguous, *config)[:4]
    return output, h_n, c_n, active


def empty_cache() -> int:
    """Free the blocks the native op keeps for its saved buffers; the bytes freed.

    Buffers saved for the backward are reused call after call (the same shapes recur, and
    fresh memory of this size is page-faulted in every time); up to 2 GiB of freed blocks
    are kept. Like ``torch.cuda.empty_cache``, this returns them to the system.
    """
    module = load()
    return 0 if module is None else int(module.empty_cache())
