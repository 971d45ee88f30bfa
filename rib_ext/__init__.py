"""rib_ext: a fast, faithful implementation of RIB (Reducing Information Bottleneck for weakly
supervised semantic segmentation, NeurIPS 2021) and the WSSS pipeline around it.

Stages (each a module named after it): data -> train_cam -> make_cam / rib -> eval_seed -> crf.
``python -m rib_ext.pipeline --help`` runs them.
"""
__version__ = "0.1.0"
