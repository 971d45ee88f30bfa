"""Stage ``segment``: DeepLab-v2 trained on the pseudo masks, then evaluated (RIB's final step).

Files under ``out_dir``::

    config.json                            the SegmentConfig of the run
    retrain/confident_labels/<id>.png      re-training only: random-walk scores > fg / < bg, else 255
    retrain/first/                         re-training only: the first network (model.pth, log.csv)
    retrain/first_predictions/<id>.png     re-training only: its predictions on the training images
    retrain/filled_labels/<id>.png         re-training only: confident labels, 255s filled from those
    train/model.pth, train/log.csv         the final network (train_state.pth while it trains)
    val/predictions/<id>.png               predictions on the evaluation images (VOC palette)
    val/result.json, result.md, confusion.npy, settings.json
    val/results/VOC2012/Segmentation/comp6_test_cls/<id>.png   instead, for images without ground
                                           truth (the VOC test set): the evaluation server's layout
    summary.json                           what segment_stage returns

Every step writes atomically and skips what exists, so a rerun resumes where it stopped.
"""
from __future__ import annotations

import time
import warnings
from pathlib import Path
from typing import Optional

from rib_ext.crf import _densecrf
from rib_ext.io import save_json
from rib_ext.outputs import present_names
from rib_ext.runner import main_rank
from rib_ext.runtime import resolve_device

from rib_ext.config import SegmentConfig
from .infer import infer_stage, predict_folder
from .model import load_deeplab
from .retrain import write_score_labels, write_filled_labels
from .train import train_segmenter


def _wants_retrain(cfg: SegmentConfig, score_dir, saliency_dir) -> bool:
    if not cfg.retrain:
        return False
    if saliency_dir is not None:
        warnings.warn("segment: re-training is skipped with saliency-refined labels (the paper does "
                      "not use it for RIB-Sal); set retrain=False to silence this", stacklevel=3)
        return False
    if score_dir is None:
        warnings.warn("segment: re-training needs the random-walk scores (score_dir); training once "
                      "on the pseudo masks instead; set retrain=False to silence this", stacklevel=3)
        return False
    return True


def _retrain_labels(train_dataset, names, score_dir, out_dir: Path, cfg: SegmentConfig, device) -> Path:
    """Steps 1-2 of the re-training technique; returns the folder of filled labels."""
    root = out_dir / "retrain"
    names = present_names(score_dir, names, ".npy", "random-walk scores", "segment", cfg.allow_missing)[0]
    confident, filled = root / "confident_labels", root / "filled_labels"
    # Each rank writes its shard of the label files; every rank returns when all are written.
    write_score_labels(train_dataset, names, score_dir, confident, cfg.retrain_fg,
                       cfg.retrain_bg)
    first = train_segmenter(train_dataset, confident, root / "first", cfg, names=names)  # every rank
    model = load_deeplab(first["model"], device, train_dataset.num_classes + 1)
    predictions = root / "first_predictions"
    predict_folder(model, train_dataset, names, predictions, cfg,
                   model_path=first["model"])  # each rank its shard
    write_filled_labels(names, confident, predictions, filled,
                        train_dataset.num_classes)
    return filled


def segment_stage(train_dataset, label_dir: str | Path, val_dataset, out_dir: str | Path,
                  cfg: Optional[SegmentConfig] = None, score_dir: Optional[str | Path] = None,
                  saliency_dir: Optional[str | Path] = None) -> dict:
    """Train DeepLab-v2 on pseudo masks and evaluate it (see the module docstring for the files).

    Args:
        train_dataset: the images to train on (their ids select the label files).
        label_dir: pseudo masks ``<id>.png`` (VOC palette, 255 = ignore), e.g. IRN's make_sem_seg.
        val_dataset: images to predict and, where they have ground truth, evaluate; None to skip.
        cfg: settings (default: the paper's VOC ones; ``SegmentConfig.preset("coco")``).
        score_dir: the random-walk scores ``<id>.npy`` that re-training starts from (``cfg.retrain``).
        saliency_dir: saliency-refined pseudo masks ``<id>.png`` (e.g. from
            :func:`rib_ext.irn.apply_saliency`): trained on instead of ``label_dir``, without
            re-training, as the paper does for RIB-Sal.

    Returns ``{'miou', 'per_class_iou', 'num_images', 'retrain', 'train', 'model', 'predictions',
    'report', 'seconds'}`` (scores None when nothing was evaluated), also saved as summary.json.
    """
    cfg = cfg if cfg is not None else SegmentConfig()
    out_dir = Path(out_dir)
    t0 = time.time()
    if cfg.use_crf:
        _densecrf()  # fail now, not after hours of training, if pydensecrf is missing
    device = resolve_device(cfg.device)
    out_dir.mkdir(parents=True, exist_ok=True)
    main = main_rank()
    if main:
        save_json(out_dir / "config.json", cfg.as_dict())
    # Under torchrun every rank trains (DDP, rib_ext.training.DataParallel), then all ranks share
    # the inference (each predicts and scores its shard of the images).
    retrain, names, train_labels, trained = _train(train_dataset, label_dir, out_dir, cfg, score_dir,
                                                   saliency_dir, device)

    summary = {"miou": None, "per_class_iou": None, "num_images": 0, "predictions": None, "report": None}
    if val_dataset is not None:
        model = load_deeplab(trained["model"], device, val_dataset.num_classes + 1)
        summary.update(infer_stage(model, val_dataset, out_dir, cfg, model_path=trained["model"]))
    summary.update(retrain=retrain, train_images=len(names), train_labels=str(train_labels),
                   model=trained["model"], train=trained, seconds=round(time.time() - t0, 2))
    summary.pop("written", None)
    if main:
        save_json(out_dir / "summary.json", summary)
    return summary


def _train(train_dataset, label_dir, out_dir: Path, cfg: SegmentConfig, score_dir, saliency_dir,
           device) -> tuple:
    """(re-trained?, training names, label folder, train_segmenter's summary)."""
    train_labels = Path(saliency_dir if saliency_dir is not None else label_dir)
    names = present_names(train_labels, train_dataset.ids, ".png", "pseudo masks", "segment",
                          cfg.allow_missing)[0]
    retrain = _wants_retrain(cfg, score_dir, saliency_dir)
    if retrain:
        train_labels = _retrain_labels(train_dataset, names, score_dir, out_dir, cfg, device)
        names = [n for n in names if (train_labels / f"{n}.png").exists()]
    trained = train_segmenter(train_dataset, train_labels, out_dir / "train", cfg, names=names)
    return retrain, names, train_labels, trained
