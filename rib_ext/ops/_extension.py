"""Loads the compiled extension and tells which backend each operator runs on.

The package works without the extension (every op falls back to its pure-PyTorch reference, more
slowly); ``RIB_EXT_REQUIRE_COMPILED=1`` turns a missing extension into an import error, which CI uses
so that a broken build cannot pass as a slow one.
"""
from __future__ import annotations

import os
import warnings

import torch

_C = None
LOAD_ERROR: str | None = None
try:
    from rib_ext import _C  # noqa: F401  (importing runs the TORCH_LIBRARY registrations)
except ImportError as exc:  # pragma: no cover - depends on the build
    LOAD_ERROR = f"{type(exc).__name__}: {exc}"
    if os.environ.get("RIB_EXT_REQUIRE_COMPILED", "0") == "1":
        raise ImportError(
            "rib_ext._C (the compiled operators) failed to load and RIB_EXT_REQUIRE_COMPILED=1: "
            f"{LOAD_ERROR}. Rebuild with `pip install --no-build-isolation .` next to this torch."
        ) from exc
    warnings.warn(
        f"rib_ext: compiled operators unavailable ({LOAD_ERROR}); using the pure-PyTorch "
        "reference implementations (slower).",
        RuntimeWarning,
        stacklevel=2,
    )

HAS_C = _C is not None

NAMESPACE = "rib_ext"


def registered_ops() -> tuple[str, ...]:
    """Every operator the loaded extension registered under ``torch.ops.rib_ext`` (backward ops,
    named ``_<op>_backward``, included), read from the dispatcher's schemas: a new op in the C++
    schema list is picked up without touching Python."""
    if not HAS_C:
        return ()
    prefix = f"{NAMESPACE}::"
    return tuple(sorted(n[len(prefix):] for n in torch._C._dispatch_get_all_op_names()
                        if n.startswith(prefix)))


# Public operator names (torch.ops.rib_ext.<name>), from the schemas when the extension is loaded;
# without it, the names the pure-PyTorch fallbacks stand in for.
OPS = tuple(n for n in registered_ops() if not n.startswith("_")) or (
    "cam_flip_accumulate_", "cam_flip_merge", "cam_max_normalize", "gndrp_margin_loss", "gndrp_pool",
    "margin_loss", "resize_bicubic_u8", "sgd_step_")


def compiled_with_cuda() -> bool:
    return HAS_C and bool(_C.compiled_with_cuda())


def compiled_with_openmp() -> bool:
    return HAS_C and bool(_C.compiled_with_openmp())


def has_kernel(op: str, device_type: str) -> bool:
    """Whether ``torch.ops.rib_ext.<op>`` has a compiled kernel for ``device_type`` ('cpu'/'cuda')."""
    if not HAS_C:
        return False
    key = {"cpu": "CPU", "cuda": "CUDA"}.get(device_type)
    if key is None:
        return False
    return torch._C._dispatch_has_kernel_for_dispatch_key(f"rib_ext::{op}", key)


# Looked up once: a plain dict read is something torch.compile traces without a graph break.
_COMPILED = {(op, dev): has_kernel(op, dev) for op in registered_ops() for dev in ("cpu", "cuda")}


def use_compiled(op: str, tensor: torch.Tensor) -> bool:
    """Whether the wrapper of ``op`` should call the compiled kernel for ``tensor``'s device.
    An op name the extension does not register raises (a typo must not silently fall back)."""
    if HAS_C and op not in OPS:
        raise KeyError(f"rib_ext: no operator {op!r} is registered (registered: {', '.join(OPS)})")
    return _COMPILED.get((op, tensor.device.type), False)


def backend(op: str, device: str | torch.device = "cpu") -> str:
    """'compiled-cpu', 'compiled-cuda' or 'pytorch' (the plain-PyTorch oracle): what ``op`` runs on for tensors on ``device``."""
    device_type = torch.device(device).type
    return f"compiled-{device_type}" if has_kernel(op, device_type) else "pytorch"


def backends() -> dict:
    """Per-op backend on CPU and CUDA, plus the build facts; printed by ``python -m rib_ext.ops``."""
    table = {op: {"cpu": backend(op, "cpu"), "cuda": backend(op, "cuda")} for op in OPS}
    return {
        "extension_loaded": HAS_C,
        "load_error": LOAD_ERROR,
        "compiled_with_cuda": compiled_with_cuda(),
        "compiled_with_openmp": compiled_with_openmp(),
        "cuda_device_available": torch.cuda.is_available(),
        "ops": table,
    }
