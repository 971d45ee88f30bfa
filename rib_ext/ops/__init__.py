"""rib_ext's custom operators: GNDRP pooling, the RIB margin loss, their fused form, CAM maps,
Pillow's bicubic resize of uint8 images, one SGD step of many weight slots.

Each op has a CPU kernel (C++/OpenMP), a CUDA kernel, autograd, a fake kernel for torch.compile,
and a pure-PyTorch reference (:mod:`rib_ext.ops.oracle`) that the tests use as the oracle and
that runs when the compiled extension is missing. ``python -m rib_ext.ops`` prints which backend
each op runs on.
"""
from . import oracle
from ._extension import HAS_C, backend, backends, compiled_with_cuda, compiled_with_openmp
from .cam import (cam_flip_accumulate_, cam_flip_merge, cam_max_normalize, finalize_maps,
                  strided_size, strided_up_size)
from .gndrp import BEHAVIOURS, MODES, gndrp_margin_loss, gndrp_pool
from .loss import margin_loss, margin_stop_statistic
from .resize import resize_bicubic_u8
from .sgd import sgd_step_

__all__ = [
    "HAS_C", "BEHAVIOURS", "MODES", "backend", "backends", "compiled_with_cuda", "compiled_with_openmp",
    "oracle", "gndrp_pool", "gndrp_margin_loss", "margin_loss", "margin_stop_statistic",
    "cam_flip_merge", "cam_flip_accumulate_", "cam_max_normalize", "finalize_maps",
    "strided_size", "strided_up_size", "resize_bicubic_u8", "sgd_step_",
]
