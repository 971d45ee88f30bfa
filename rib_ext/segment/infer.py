"""Inference of the segmentation network: multi-scale + flip softmax, dense CRF, reports.

Per image: at each scale (0.5, 0.75, 1.0) the image and its mirror go through the network, the
logits are upsampled (bilinear) to the image size, softmaxed, the mirror's flipped back; the
probabilities are averaged over all views. With ``use_crf`` a dense CRF (DeepLab's settings) takes
``-log p`` as its unary; the label is the argmax. Predictions are VOC-palette PNGs of class ids.
"""
from __future__ import annotations

from pathlib import Path
from typing import Optional, Sequence

import numpy as np
import torch
import torch.nn.functional as F

from rib_ext.config import CRFConfig
from rib_ext.crf import _densecrf
from rib_ext.data import multiscale_flip_views, save_label_png
from rib_ext.evaluation import evaluate_folder_masks, note_missing, with_ground_truth, write_report
from rib_ext.io import file_digest
from rib_ext.outputs import check_settings
from rib_ext.runner import ImageResult, Output, PerImageStage, on_main_rank, run_stage

from rib_ext.config import SegmentConfig
from .model import DeepLabV2

# Where the PASCAL VOC evaluation server looks for test-set predictions (comp6: trained on data
# other than VOC's own segmentation masks), relative to the folder that is archived and uploaded.
VOC_SERVER_DIR = Path("results", "VOC2012", "Segmentation", "comp6_test_cls")
UNARY_FLOOR = 1e-5  # pydensecrf's unary_from_softmax clips at the same value


@torch.no_grad()
def predict_probs(model: DeepLabV2, img: np.ndarray, scales: Sequence[float] = (0.5, 0.75, 1.0),
                  flip: bool = True, amp: bool = False) -> torch.Tensor:
    """float32 [C, H, W] on the model's device: softmax averaged over scales (and mirrors)."""
    h, w = img.shape[:2]
    device = next(model.parameters()).device
    use_amp = amp and device.type == "cuda"
    total = None
    for views in multiscale_flip_views(img, scales):
        views = views if flip else views[:1]
        with torch.autocast("cuda", dtype=torch.bfloat16, enabled=use_amp):
            logits = model.logits(views.to(device))
        probs = F.interpolate(logits.float(), size=(h, w), mode="bilinear", align_corners=False).softmax(1)
        merged = probs[0] + probs[1].flip(-1) if flip else probs[0]
        total = merged if total is None else total + merged
    return total / (len(scales) * (2 if flip else 1))


def crf_refine_probs(img: np.ndarray, probs: np.ndarray, cfg: Optional[CRFConfig] = None) -> np.ndarray:
    """int64 [H, W]: argmax of a dense CRF whose unary is ``-log probs`` ([C, H, W])."""
    cfg = cfg if cfg is not None else CRFConfig()
    img, probs = np.asarray(img), np.asarray(probs, dtype=np.float32)
    c, h, w = probs.shape
    if img.shape != (h, w, 3) or img.dtype != np.uint8:
        raise ValueError(f"image must be uint8 [{h}, {w}, 3] to match the probabilities, got "
                         f"{img.dtype} {img.shape}")
    dcrf = _densecrf()[0]
    crf = dcrf.DenseCRF2D(w, h, c)
    unary = -np.log(np.clip(probs, UNARY_FLOOR, None)).reshape(c, -1)
    crf.setUnaryEnergy(np.ascontiguousarray(unary))
    crf.addPairwiseGaussian(sxy=cfg.gaussian_sxy, compat=cfg.gaussian_compat)
    # pydensecrf needs a writable C-contiguous image (a decoded PIL array is read-only).
    crf.addPairwiseBilateral(sxy=cfg.bilateral_sxy, srgb=cfg.bilateral_srgb,
                             rgbim=np.require(img, requirements=["C_CONTIGUOUS", "WRITEABLE"]),
                             compat=cfg.bilateral_compat)
    q = np.asarray(crf.inference(cfg.iterations)).reshape(c, h, w)
    return q.argmax(axis=0)


def predict_labels(model: DeepLabV2, img: np.ndarray, cfg: Optional[SegmentConfig] = None) -> np.ndarray:
    """uint8 [H, W] class ids (0 = background) of one RGB image uint8 [H, W, 3]."""
    cfg = cfg if cfg is not None else SegmentConfig()
    probs = predict_probs(model, img, cfg.scales, cfg.flip, cfg.amp)
    if cfg.use_crf:
        return crf_refine_probs(img, probs.cpu().numpy(), cfg.crf).astype(np.uint8)
    return probs.argmax(0).to(torch.uint8).cpu().numpy()


def inference_settings(cfg: SegmentConfig, model_path: Optional[str | Path] = None) -> dict:
    d = cfg.as_dict()
    keys = ("scales", "flip", "use_crf") + (("crf",) if cfg.use_crf else ())
    # The model by its contents, not its path: a copied or moved run folder predicts on.
    return {**{k: d[k] for k in keys},
            "model_sha256": None if model_path is None else file_digest(model_path)}


def _predict_one(job: tuple, name: str) -> ImageResult:
    model, dataset, index, cfg = job
    return ImageResult(files={"prediction": predict_labels(model, dataset.image(index[name]), cfg)})


def predict_folder(model: DeepLabV2, dataset, names: Sequence[str], out_dir: str | Path,
                   cfg: Optional[SegmentConfig] = None, settings_dir: Optional[str | Path] = None,
                   model_path: Optional[str | Path] = None) -> dict:
    """Write ``out_dir/<id>.png`` for ``names``; existing PNGs are kept (resume). Under torchrun
    every rank calls it with the same names and predicts its shard; the counts are over all ranks.

    The inference settings (and ``model_path``) are recorded in ``settings_dir/settings.json``
    (default ``out_dir``), and a rerun with other settings is refused rather than mixing outputs.
    """
    cfg = cfg if cfg is not None else SegmentConfig()
    out_dir = Path(out_dir)
    settings_dir = Path(settings_dir) if settings_dir is not None else out_dir
    settings_dir.mkdir(parents=True, exist_ok=True)
    check_settings(settings_dir, "segment_predict", inference_settings(cfg, model_path))
    model.eval()
    stage = PerImageStage("segment", {"prediction": Output("{id}.png", save_label_png)},
                          compute=_predict_one)
    job = (model, dataset, {name: i for i, name in enumerate(dataset.ids)}, cfg)
    run = run_stage(stage, job, names, out_dir, label=f"segment: predict ({out_dir.name})")
    return {"written": run.written, "skipped_existing": run.skipped, "folder": str(out_dir)}


def has_ground_truth(dataset, i: int) -> bool:
    mask_path = getattr(dataset, "mask_path", None)
    if mask_path is not None:
        return mask_path(i) is not None
    return dataset.mask(i) is not None


def evaluate_folder(dataset, names: Sequence[str], pred_dir: str | Path, report_dir: str | Path,
                    title: str = "DeepLab-v2 segmentation", missing: Sequence[str] = ()) -> dict:
    """mIoU etc. of ``pred_dir/<id>.png`` against the ground truth of ``names``; writes
    ``report_dir/result.json``, ``result.md`` and ``confusion.npy``; returns the result dict.
    Under torchrun every rank calls it and scores its shard (the counts summed over the ranks)."""
    if not names:
        raise ValueError("segment: no image with a ground-truth mask to evaluate")
    result = note_missing(evaluate_folder_masks(dataset, names, pred_dir, "segment: evaluate",
                                                "prediction"), missing)
    on_main_rank(lambda: write_report(report_dir, result, ("background", *dataset.class_names),
                                      title=title))
    return result


def infer_stage(model: DeepLabV2, dataset, out_dir: str | Path, cfg: Optional[SegmentConfig] = None,
                model_path: Optional[str | Path] = None, split: str = "val") -> dict:
    """Predict every image of ``dataset`` and evaluate those with ground truth.

    With ground truth (e.g. VOC val): ``out_dir/<split>/predictions/<id>.png`` and the report in
    ``out_dir/<split>/``. Without any (the VOC test set): the evaluation server's layout,
    ``out_dir/<split>/results/VOC2012/Segmentation/comp6_test_cls/<id>.png`` (archive the
    ``results`` folder and upload it). Returns ``{'miou', 'per_class_iou', 'num_images',
    'predictions', 'report', 'written'}`` (scores None without ground truth).
    """
    cfg = cfg if cfg is not None else SegmentConfig()
    split_dir = Path(out_dir) / split
    with_gt = [n for i, n in enumerate(dataset.ids) if has_ground_truth(dataset, i)]
    no_mask: list = []
    if with_gt and len(with_gt) < len(dataset.ids):  # none at all: a test set, for the server
        with_gt, no_mask = with_ground_truth(dataset, dataset.ids, "segment", cfg.allow_missing)
    pred_dir = split_dir / ("predictions" if with_gt else VOC_SERVER_DIR)
    # settings.json beside, not inside, the server folder: the server rejects unexpected files.
    # Under torchrun each rank predicts its shard of the images, then scores its shard of those
    # with ground truth (the confusion counts are summed over the ranks, rank 0 writes the report).
    written = predict_folder(model, dataset, dataset.ids, pred_dir, cfg, split_dir,
                             model_path)["written"]
    summary = {"miou": None, "per_class_iou": None, "num_images": len(dataset.ids),
               "predictions": str(pred_dir), "report": None, "written": written}
    if with_gt:
        result = evaluate_folder(dataset, with_gt, pred_dir, split_dir,
                                 title=f"DeepLab-v2 segmentation ({split})", missing=no_mask)
        names = ("background", *dataset.class_names)
        summary.update(miou=result["miou"], num_images=result["num_images"],
                       per_class_iou=dict(zip(names, result["per_class_iou"])),
                       report=str(split_dir / "result.json"))
    return summary
