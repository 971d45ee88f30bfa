"""rib_ext: a fast, faithful implementation of RIB (Reducing Information Bottleneck for weakly
supervised semantic segmentation, NeurIPS 2021) and the WSSS pipeline around it.

Stages (each a module named after it): data -> train_cam -> make_cam / rib -> eval_seed -> crf.
``python -m rib_ext.pipeline --help`` runs them.
"""
__version__ = "0.1.0"


def __getattr__(name: str):
    # The Python API, imported on first use: ``import rib_ext`` stays light.
    if name == "RIB":
        from rib_ext.rib.api import RIB

        return RIB
    if name == "RIBConfig":
        from rib_ext.config import RIBConfig

        return RIBConfig
    if name == "adapt":
        from rib_ext.models.adapters import adapt

        return adapt
    raise AttributeError(f"module 'rib_ext' has no attribute {name!r}")
