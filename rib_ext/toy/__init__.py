"""The paper's toy experiment (Sec. 3.1, Figures 1 and 2): on handwritten '2' / '8' images, a tenth
carrying a class-correlated shape, how much gradient reaches the input from each conv layer and
from the logit, and how RIB's per-image fine-tuning changes the logit's gradient map.

``python -m rib_ext.toy --help`` runs it; :func:`run_toy` is the same from Python.
"""
from rib_ext.toy.config import ToyConfig
from rib_ext.toy.data import ToyData, make_toy_data, region_masks
from rib_ext.toy.experiment import run_seed, run_toy
from rib_ext.toy.gradients import gradient_maps, hgr, normalise_maps, region_hgr
from rib_ext.toy.model import ToyNet
from rib_ext.toy.rib import rib_g6_maps, rib_loss
from rib_ext.toy.train import train_classifier

__all__ = ["ToyConfig", "ToyData", "ToyNet", "gradient_maps", "hgr", "make_toy_data",
           "normalise_maps", "region_hgr", "region_masks", "rib_g6_maps", "rib_loss", "run_seed",
           "run_toy", "train_classifier"]
