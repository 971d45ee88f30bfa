"""Shared pytest setup: the ``needs_cuda`` marker skips cleanly where no CUDA device is present."""
import pytest
import torch


def pytest_collection_modifyitems(config, items):
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA device (none present on this machine)")
    for item in items:
        if "needs_cuda" in item.keywords:
            item.add_marker(skip)


def cpu_and_cuda():
    """Device parametrisation: CPU always, CUDA as a test that skips without a GPU."""
    return ("cpu", pytest.param("cuda", marks=pytest.mark.needs_cuda))
