"""The final segmentation stage: DeepLab-v2 (ResNet-101, ASPP) trained on the pseudo masks.

    segment_stage(train_dataset, label_dir, val_dataset, out_dir, cfg, score_dir=None,
                  saliency_dir=None) -> summary dict (val mIoU etc.)

Pieces: :class:`SegmentConfig` (every default, the paper's VOC numbers; ``preset("coco")``),
:class:`DeepLabV2` / :func:`build_deeplab` (model), :func:`train_segmenter` (training with exact
resume), :func:`score_labels` / :func:`fill_ignored` (the re-training technique),
:func:`predict_labels` / :func:`infer_stage` (multi-scale + flip inference, CRF, evaluation).
"""
from rib_ext.config import SegmentConfig, deeplab_crf
from rib_ext.presets import SEGMENT_PRESETS as PRESETS
from rib_ext.segment.data import SegmentationTrainSet, augment, load_labels
from rib_ext.segment.infer import (VOC_SERVER_DIR, crf_refine_probs, evaluate_folder, infer_stage,
                                   predict_folder, predict_labels, predict_probs)
from rib_ext.segment.model import ASPP, DeepLabV2, build_deeplab, dilated_resnet, load_deeplab, save_deeplab
from rib_ext.segment.retrain import (score_labels, fill_ignored, load_scores, write_score_labels,
                                     write_filled_labels)
from rib_ext.segment.stage import segment_stage
from rib_ext.segment.train import read_log, segmentation_loss, train_segmenter

__all__ = [
    "ASPP", "DeepLabV2", "PRESETS", "SegmentConfig", "SegmentationTrainSet", "VOC_SERVER_DIR", "augment",
    "build_deeplab", "score_labels", "crf_refine_probs", "deeplab_crf", "dilated_resnet",
    "evaluate_folder", "fill_ignored", "infer_stage", "load_deeplab", "load_labels", "load_scores",
    "predict_folder", "predict_labels", "predict_probs", "read_log", "save_deeplab", "segment_stage",
    "segmentation_loss", "train_segmenter", "write_score_labels", "write_filled_labels",
]
