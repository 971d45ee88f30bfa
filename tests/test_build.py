"""The build itself: CI sets RIB_EXT_EXPECT_COMPILED / RIB_EXT_EXPECT_CUDA so that a broken C++ or
CUDA build fails the run instead of passing silently on the pure-PyTorch fallback."""
import os

import pytest
import torch

from rib_ext import ops


def test_backend_report_is_consistent():
    info = ops.backends()
    assert info["extension_loaded"] == ops.HAS_C
    for op, where in info["ops"].items():
        assert where["cpu"] == ("compiled-cpu" if ops.HAS_C else "pytorch"), op
        if not info["compiled_with_cuda"]:
            assert where["cuda"] == "pytorch", op


@pytest.mark.skipif(os.environ.get("RIB_EXT_EXPECT_COMPILED") != "1",
                    reason="set RIB_EXT_EXPECT_COMPILED=1 to require the compiled extension")
def test_compiled_cpu_extension_present():
    assert ops.HAS_C, ops.backends()["load_error"]
    assert ops.compiled_with_openmp(), "built without OpenMP: the CPU kernels would run on one thread"
    assert all(v["cpu"] == "compiled-cpu" for v in ops.backends()["ops"].values())


@pytest.mark.skipif(os.environ.get("RIB_EXT_EXPECT_CUDA") != "1",
                    reason="set RIB_EXT_EXPECT_CUDA=1 to require the compiled CUDA kernels")
def test_compiled_cuda_kernels_present():
    assert ops.compiled_with_cuda(), "the CUDA kernels were not compiled in"
    assert all(v["cuda"] == "compiled-cuda" for v in ops.backends()["ops"].values())
    assert torch.version.cuda is not None
