"""rib_ext: a fast, faithful implementation of RIB (Reducing Information Bottleneck for weakly
supervised semantic segmentation, NeurIPS 2021) and the WSSS pipeline around it.

Stages (each a module named after it): data -> train_cam -> make_cam / rib -> eval_seed -> crf.
``python -m rib_ext.pipeline --help`` runs them.
"""
__version__ = "0.1.0"


# The Python API, imported on first use so that ``import rib_ext`` stays light (and by name, so
# the package root adds no import edge to the layer contract).
_LAZY = {"RIB": "rib_ext.api", "RIBConfig": "rib_ext.config", "adapt": "rib_ext.models.adapters"}


def __getattr__(name: str):
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'rib_ext' has no attribute {name!r}")
