"""IRN's refinement of the maps into pseudo masks (Ahn et al., CVPR 2019), as RIB uses it.

Stages, each ``(dataset, input folder(s), out_dir, cfg)`` -> a small summary dict:

    ir_label_stage(dataset, maps_dir, out_dir, cfg)            confident labels (PNG, 255 = unsure)
    train_irn_stage(dataset, ir_label_dir, out_dir, cfg)       IRN network -> out_dir/irn.pth
    make_sem_seg_stage(dataset, maps_dir, irn_dir, out_dir, cfg)  random walk -> pseudo masks (PNG)
    eval_mask_stage(dataset, mask_dir, out_dir, cfg)           mIoU report of the pseudo masks
    apply_saliency(dataset, mask_dir, saliency_dir, out_dir, cfg)  RIB-Sal: ignore disagreements

All numbers live in :class:`IRNConfig` (``IRNConfig.preset(behaviour="rib")`` for the RIB authors' settings).
Every stage writes atomically and skips outputs that exist, so a rerun resumes.
"""
from rib_ext.config import IRNConfig
from rib_ext.presets import IRN_PRESETS as PRESETS
from rib_ext.irn.ir_label import combine_confident, confident_labels, ir_label_stage
from rib_ext.irn.network import IRNet, build_irnet, infer_boundary, load_irnet, save_irnet
from rib_ext.irn.path_index import PathIndex
from rib_ext.irn.random_walk import propagate_maps, random_walk, random_walk_dense
from rib_ext.irn.saliency import SaliencyError, apply_saliency, refine_with_saliency
from rib_ext.irn.sem_seg import eval_mask_stage, make_sem_seg, make_sem_seg_stage
from rib_ext.irn.train_irn import train_irn_stage

__all__ = [
    "IRNConfig", "IRNet", "PRESETS", "PathIndex", "SaliencyError", "apply_saliency", "build_irnet",
    "combine_confident", "confident_labels", "eval_mask_stage", "infer_boundary", "ir_label_stage",
    "load_irnet", "make_sem_seg", "make_sem_seg_stage", "propagate_maps", "random_walk",
    "random_walk_dense", "refine_with_saliency", "save_irnet", "train_irn_stage",
]
