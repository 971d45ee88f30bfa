"""Seed and mask evaluation: confusion matrices, IoU, the background-threshold sweep, reports.

Conventions (IRN's / chainercv's): ``conf[g, p]`` counts pixels of ground-truth class ``g`` predicted
as ``p``; ground-truth pixels equal to ``ignore`` (255) are skipped; mIoU is the mean over classes of
the IoU of the confusion matrix summed over all images (not a mean of per-image scores). Confusion
matrices are int64 counts, so partial results (workers, GPUs) merge by plain summation.
"""
from __future__ import annotations

import math
import os
from pathlib import Path
from typing import Any, Dict, Iterable, List, Optional, Sequence, Tuple

import numpy as np

from rib_ext.config import EvalSeedConfig
from rib_ext.data import load_label_png
from rib_ext.io import atomic_path, save_figure, save_json, save_text
from rib_ext.outputs import load_maps, map_path, require_maps
from rib_ext.runner import ImageResult, PerImageStage, on_main_rank, run_stage


# --------------------------------------------------------------------------- which images count

class MissingGroundTruthError(FileNotFoundError):
    """Listed images have no ground-truth mask file (the message names the ids and files)."""


def with_ground_truth(dataset, names: Sequence[str], stage: str, allow_missing: bool = False
                      ) -> Tuple[List[str], List[str]]:
    """(names whose ground-truth mask exists, names without one).

    A listed image without its mask would drop out of the figures unseen (the mIoU of 7 images
    reported as the list's 8): an error naming the ids and files, or with ``allow_missing`` a
    warning naming them; the stage records the count in its result (:func:`note_missing`).
    """
    index = {name: i for i, name in enumerate(dataset.ids)}
    missing = [n for n in names if not dataset.has_mask(index[n])]
    if missing:
        shown = ", ".join(f"{n} ({dataset.mask_file(index[n])})" for n in missing[:5])
        more = f" and {len(missing) - 5} more" if len(missing) > 5 else ""
        msg = (f"{stage}: {len(missing)} of {len(names)} images have no ground-truth mask: "
               f"{shown}{more}")
        if not allow_missing:
            raise MissingGroundTruthError(msg + " (add the masks, fix the list, or pass "
                                                "--allow-missing to evaluate without them)")
        import warnings

        warnings.warn(msg + "; they are left out of the evaluation (--allow-missing)", stacklevel=2)
    gone = set(missing)
    return [n for n in names if n not in gone], missing


def note_missing(result: Dict[str, Any], missing: Sequence[str]) -> Dict[str, Any]:
    """``result`` with the images left out for want of a mask (count and ids), for the reports."""
    if missing:
        result["missing_masks"] = {"count": len(missing), "ids": list(missing)}
    return result


# --------------------------------------------------------------------------- confusion and scores

def confusion_matrix(pred: np.ndarray, gt: np.ndarray, num_classes: int,
                     ignore: int = 255) -> np.ndarray:
    """[num_classes, num_classes] int64 counts, rows = ground truth, columns = prediction."""
    pred = np.asarray(pred)
    gt = np.asarray(gt)
    if pred.shape != gt.shape:
        raise ValueError(f"prediction shape {pred.shape} differs from ground-truth shape {gt.shape}")
    valid = gt != ignore
    g = gt[valid].astype(np.int64)
    p = pred[valid].astype(np.int64)
    _check_range(g, num_classes, "ground truth", ignore)
    _check_range(p, num_classes, "prediction", None)
    return np.bincount(g * num_classes + p, minlength=num_classes * num_classes).reshape(
        num_classes, num_classes)


def _check_range(values: np.ndarray, num_classes: int, what: str, ignore: Optional[int]) -> None:
    if values.size and (values.min() < 0 or values.max() >= num_classes):
        bad = np.unique(values[(values < 0) | (values >= num_classes)])[:5].tolist()
        extra = f" or {ignore}" if ignore is not None else ""
        raise ValueError(f"{what} holds labels {bad} outside 0..{num_classes - 1}{extra}")


def iou_from_confusion(conf: np.ndarray) -> np.ndarray:
    """Per-class IoU = TP / (TP + FP + FN); NaN for a class absent from both prediction and
    ground truth (it then does not count in the mean)."""
    conf = np.asarray(conf, dtype=np.float64)
    tp = np.diag(conf)
    union = conf.sum(axis=0) + conf.sum(axis=1) - tp
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(union > 0, tp / union, np.nan)


def miou(conf: np.ndarray) -> float:
    """Mean IoU over the classes present in prediction or ground truth."""
    return _nanmean(iou_from_confusion(conf))


def _nanmean(x: np.ndarray) -> float:
    x = np.asarray(x, dtype=np.float64)
    finite = ~np.isnan(x)
    return float(x[finite].mean()) if finite.any() else float("nan")


def foreground_precision_recall(conf: np.ndarray) -> Dict[str, float]:
    """Precision, recall and F1 of the foreground, as in the paper's Table 6.

    Per foreground class c (class 0, the background, excluded): precision TP/(TP+FP) and recall
    TP/(TP+FN); each is averaged over the classes where it is defined (NaN-mean); F1 is the harmonic
    mean of those two means. (The Table 6 rows satisfy F1 = 2PR/(P+R) of the mean P and R, e.g. RIB:
    2*67.3*78.9/(67.3+78.9) = 72.6, which is why F1 is taken from the means, not per class.)
    """
    conf = np.asarray(conf, dtype=np.float64)
    tp = np.diag(conf)[1:]
    predicted = conf.sum(axis=0)[1:]
    actual = conf.sum(axis=1)[1:]
    with np.errstate(invalid="ignore", divide="ignore"):
        precision = _nanmean(np.where(predicted > 0, tp / predicted, np.nan))
        recall = _nanmean(np.where(actual > 0, tp / actual, np.nan))
    denom = precision + recall
    f1 = 2 * precision * recall / denom if denom > 0 else float("nan")
    return {"precision": precision, "recall": recall, "f1": f1}


def summarize_confusion(conf: np.ndarray) -> Dict[str, Any]:
    """mIoU, per-class IoU, foreground precision / recall / F1 and the confusion matrix itself."""
    conf = np.asarray(conf, dtype=np.int64)
    iou = iou_from_confusion(conf)
    return {"miou": _nanmean(iou), "per_class_iou": iou.tolist(),
            **foreground_precision_recall(conf), "confusion": conf}


# --------------------------------------------------------------------------- seeds

def _as_float_maps(maps: np.ndarray) -> np.ndarray:
    maps = np.asarray(maps)
    if maps.ndim != 3:
        raise ValueError(f"maps must be [K', H, W], got shape {maps.shape}")
    if not np.issubdtype(maps.dtype, np.floating):
        maps = maps.astype(np.float64)
    if not np.isfinite(maps).all():
        raise ValueError("maps hold NaN or inf values (a map max-normalised by zero?)")
    return maps


def _class_lut(keys: np.ndarray, num_maps: int) -> np.ndarray:
    keys = np.asarray(keys, dtype=np.int64).reshape(-1)
    if keys.size != num_maps:
        raise ValueError(f"{keys.size} keys for {num_maps} maps")
    if keys.size and keys.min() < 0:
        raise ValueError(f"keys must be 0-based foreground class indices, got {keys.tolist()}")
    return np.concatenate([[0], keys + 1])


def _best_label_index(maps: np.ndarray) -> Tuple[np.ndarray, np.ndarray]:
    # (best score, 1-based index of its map) per pixel; ties go to the first map (argmax's rule).
    # With no maps the score is -inf, so every threshold makes the pixel background.
    if maps.shape[0] == 0:
        return (np.full(maps.shape[1:], -np.inf, dtype=maps.dtype),
                np.zeros(maps.shape[1:], dtype=np.int64))
    idx = np.argmax(maps, axis=0)
    return np.take_along_axis(maps, idx[None], axis=0)[0], idx + 1


def best_foreground(maps: np.ndarray, keys: np.ndarray) -> Tuple[np.ndarray, np.ndarray]:
    """Per pixel, the highest map score and the class id (keys + 1) of that map."""
    maps = _as_float_maps(maps)
    lut = _class_lut(keys, maps.shape[0])
    score, index = _best_label_index(maps)
    return score, lut[index]


def seed_label_indices(maps: np.ndarray, threshold: float) -> np.ndarray:
    """argmax over [a constant plane at ``threshold``, maps]: 0 = background, i = maps[i - 1].

    Equal to IRN's padded argmax, ties included: a pixel is foreground only where its best map
    value is strictly above the threshold. IRN pads the (float32) maps with the threshold, so the
    comparison is made at the maps' precision; so is it here.
    """
    score, index = _best_label_index(_as_float_maps(maps))
    return np.where(score > score.dtype.type(threshold), index, 0)


def indices_to_class_ids(indices: np.ndarray, keys: np.ndarray) -> np.ndarray:
    """Map label indices (0 = background, i = the i-th key) to class ids (0, keys + 1)."""
    keys = np.asarray(keys).reshape(-1)
    indices = np.asarray(indices)
    if indices.size and (indices.min() < 0 or indices.max() > keys.size):
        raise ValueError(f"label indices span {indices.min()}..{indices.max()} but there are only "
                         f"{keys.size} keys (valid indices 0..{keys.size})")
    return _class_lut(keys, keys.size)[indices]


def seed_prediction(maps: np.ndarray, keys: np.ndarray, threshold: float) -> np.ndarray:
    """The seed label map [H, W] of class ids for background threshold ``threshold``.

    ``maps`` [K', H, W]: the image's max-normalised ``high_res`` maps; ``keys`` [K']: their 0-based
    foreground class indices; the result holds 0 (background) or keys + 1.
    """
    indices = seed_label_indices(maps, threshold)  # validates maps
    return _class_lut(keys, np.shape(maps)[0])[indices]


def sweep_thresholds(cfg: Optional[EvalSeedConfig] = None) -> np.ndarray:
    """start, start + step, ..., stop (inclusive), rounded so that e.g. 0.3 is exactly 0.3."""
    cfg = cfg if cfg is not None else EvalSeedConfig()
    if cfg.threshold_step <= 0:
        raise ValueError(f"threshold_step must be > 0, got {cfg.threshold_step}")
    if cfg.threshold_stop < cfg.threshold_start:
        raise ValueError(f"threshold_stop {cfg.threshold_stop} < threshold_start {cfg.threshold_start}")
    n = int(math.floor((cfg.threshold_stop - cfg.threshold_start) / cfg.threshold_step + 1e-9)) + 1
    return np.round(cfg.threshold_start + cfg.threshold_step * np.arange(n), 10)


class ThresholdSweep:
    """Accumulates one confusion matrix per background threshold over a set of images.

    Per image the best foreground score and class are computed once; a pixel is then foreground
    for exactly the thresholds below its score, so all thresholds' confusion matrices follow from
    one histogram over (number of thresholds below the score, ground truth, best class).
    ``confusions`` [T, C, C] is a plain sum over images: merge partial sweeps with :meth:`merge`
    or by summing (e.g. ``all_reduce``) that array.
    """

    def __init__(self, num_classes: int = 21, cfg: Optional[EvalSeedConfig] = None,
                 ignore: int = 255, thresholds: Optional[Sequence[float]] = None):
        self.num_classes = int(num_classes)
        self.ignore = ignore
        self.thresholds = (np.asarray(thresholds, dtype=np.float64) if thresholds is not None
                           else sweep_thresholds(cfg))
        if self.thresholds.ndim != 1 or self.thresholds.size == 0:
            raise ValueError(f"thresholds must be a non-empty 1-D sequence, got {self.thresholds}")
        if np.any(np.diff(self.thresholds) <= 0):
            raise ValueError(f"thresholds must be strictly increasing, got {self.thresholds}")
        t, c = self.thresholds.size, self.num_classes
        self.confusions = np.zeros((t, c, c), dtype=np.int64)
        self.num_images = 0

    def update(self, maps: np.ndarray, keys: np.ndarray, gt: np.ndarray) -> None:
        """Add one image: ``maps`` [K', H, W] max-normalised, ``keys`` [K'], ``gt`` [H, W]."""
        gt = np.asarray(gt)
        score, cls = best_foreground(maps, keys)
        if score.shape != gt.shape:
            raise ValueError(f"maps are {score.shape} but the ground truth is {gt.shape}")
        valid = gt != self.ignore
        g = gt[valid].astype(np.int64)
        _check_range(g, self.num_classes, "ground truth", self.ignore)
        cls = cls[valid]
        _check_range(cls, self.num_classes, "keys + 1", None)
        score = score[valid]
        # n_below[i] = how many thresholds lie strictly below the score: for threshold j the pixel
        # is foreground iff j < n_below (same strict comparison as seed_label_indices).
        n_below = np.searchsorted(self.thresholds.astype(score.dtype), score, side="left")
        t, c = self.thresholds.size, self.num_classes
        fg = np.bincount((n_below * c + g) * c + cls, minlength=(t + 1) * c * c).reshape(t + 1, c, c)
        bg = np.bincount(n_below * c + g, minlength=(t + 1) * c).reshape(t + 1, c)
        # Foreground at threshold j: pixels with n_below > j; background: n_below <= j.
        fg_at = np.cumsum(fg[::-1], axis=0)[::-1][1:]
        bg_at = np.cumsum(bg, axis=0)[:-1]
        self.confusions += fg_at
        self.confusions[:, :, 0] += bg_at
        self.num_images += 1

    def merge(self, other: "ThresholdSweep") -> None:
        if other.num_classes != self.num_classes or not np.array_equal(other.thresholds,
                                                                       self.thresholds):
            raise ValueError("cannot merge sweeps over different classes or thresholds")
        self.confusions += other.confusions
        self.num_images += other.num_images

    def result(self) -> Dict[str, Any]:
        """Scores at the best threshold (the first, i.e. lowest, of equal ones) plus the sweep."""
        if self.num_images == 0:
            raise ValueError("no images were added to the threshold sweep")
        per_threshold = [miou(conf) for conf in self.confusions]
        if all(math.isnan(v) for v in per_threshold):
            raise ValueError("every ground-truth pixel of the swept images is ignored")
        best = int(np.nanargmax(per_threshold))
        return {"best_threshold": float(self.thresholds[best]),
                **summarize_confusion(self.confusions[best]),
                "thresholds": self.thresholds.tolist(),
                "per_threshold_miou": per_threshold,
                "num_images": self.num_images}


def evaluate_label_maps(pairs: Iterable[Tuple[np.ndarray, np.ndarray]], num_classes: int = 21,
                        ignore: int = 255) -> Dict[str, Any]:
    """Score (prediction, ground truth) label-map pairs, e.g. pseudo masks or CRF seeds."""
    conf, count = confusion_of_pairs(pairs, num_classes, ignore)
    if count == 0:
        raise ValueError("no label maps to evaluate")
    return {**summarize_confusion(conf), "num_images": count}


def confusion_of_pairs(pairs: Iterable[Tuple[np.ndarray, np.ndarray]], num_classes: int,
                       ignore: int = 255) -> Tuple[np.ndarray, int]:
    """(summed confusion matrix, number of pairs) of (prediction, ground truth) label maps."""
    conf = np.zeros((num_classes, num_classes), dtype=np.int64)
    count = 0
    for pred, gt in pairs:
        conf += confusion_matrix(pred, gt, num_classes, ignore)
        count += 1
    return conf, count


def _score_one(job: tuple, name: str) -> ImageResult:
    dataset, index, folder, what = job
    gt = dataset.mask(index[name])
    path = Path(folder) / f"{name}.png"
    pred = load_label_png(path)
    if pred.shape != gt.shape:
        raise ValueError(f"{path}: {what} is {pred.shape[0]}x{pred.shape[1]} but the ground truth "
                         f"of {name} is {gt.shape[0]}x{gt.shape[1]}")
    size = dataset.num_classes + 1
    return ImageResult(sums={"confusion": confusion_matrix(pred, gt, size), "images": 1})


def evaluate_folder_masks(dataset, names: Sequence[str], folder: str | Path, label: str,
                          what: str = "mask") -> Dict[str, Any]:
    """Scores of the label PNGs ``folder/<id>.png`` of ``names`` against their ground truth (a
    collective under torchrun: each rank scores its shard, the counts are summed over the
    ranks). A PNG of another size than its ground truth is an error naming it."""
    size = dataset.num_classes + 1
    stage = PerImageStage(label, {}, compute=_score_one, sums={"confusion": (size, size), "images": ()})
    job = (dataset, {n: i for i, n in enumerate(dataset.ids)}, Path(folder), what)
    run = run_stage(stage, job, names, folder)
    if run.count("images") == 0:
        raise ValueError("no label maps to evaluate")
    return {**summarize_confusion(run.sums["confusion"]), "num_images": run.count("images")}


def _json_number(x: float) -> Optional[float]:
    # JSON has no NaN; an undefined score (class absent everywhere) becomes null.
    return None if x is None or (isinstance(x, float) and math.isnan(x)) else float(x)


def _check_class_names(result: Dict[str, Any], class_names: Sequence[str]) -> None:
    n = len(result["per_class_iou"])
    if len(class_names) != n:
        raise ValueError(f"{len(class_names)} class names for {n} classes")


def report_json(result: Dict[str, Any], class_names: Sequence[str]) -> Dict[str, Any]:
    """The JSON-safe part of ``result`` (the confusion matrix goes to confusion.npy)."""
    _check_class_names(result, class_names)
    out = {k: v for k, v in result.items() if k not in ("confusion", "per_class_iou",
                                                          "per_threshold_miou")}
    for key in ("miou", "precision", "recall", "f1"):
        out[key] = _json_number(result[key])
    out["per_class_iou"] = {name: _json_number(v)
                            for name, v in zip(class_names, result["per_class_iou"])}
    if "per_threshold_miou" in result:
        out["per_threshold_miou"] = [_json_number(v) for v in result["per_threshold_miou"]]
    return out


def _pct(x: Optional[float]) -> str:
    return "-" if x is None or math.isnan(x) else f"{100 * x:.2f}"


def percent(x: Optional[float], digits: int = 1) -> str:
    """A score as a percentage for a log line; an undefined one (None, NaN: e.g. the precision
    when no pixel is predicted as foreground) says so instead of printing 'nan' as a figure."""
    if x is None or (isinstance(x, float) and math.isnan(x)):
        return "n/a"
    return f"{100 * float(x):.{digits}f}"


def json_numbers(result: Dict[str, Any]) -> Dict[str, Any]:
    """``result`` with NaN figures as None (JSON has no NaN; ``json.dumps`` would write one)."""
    return {k: _json_number(v) if isinstance(v, float) else v for k, v in result.items()}


def report_markdown(result: Dict[str, Any], class_names: Sequence[str],
                    title: str = "Evaluation") -> str:
    _check_class_names(result, class_names)
    lines = [f"# {title}", ""]
    if "best_threshold" in result:
        lines.append(f"Best background threshold: {result['best_threshold']:.2f} "
                     f"(swept {result['thresholds'][0]:.2f}..{result['thresholds'][-1]:.2f})")
    lines.append(f"Images: {result.get('num_images', '?')}")
    if result.get("missing_masks"):
        gone = result["missing_masks"]
        ids = ", ".join(gone["ids"][:20]) + (", ..." if len(gone["ids"]) > 20 else "")
        lines.append(f"Not counted: {gone['count']} listed image(s) without a ground-truth mask "
                     f"(--allow-missing): {ids}")
    lines += ["",
              "| mIoU | Precision | Recall | F1 |", "|---:|---:|---:|---:|",
              f"| {_pct(result['miou'])} | {_pct(result['precision'])} | "
              f"{_pct(result['recall'])} | {_pct(result['f1'])} |", "",
              "Precision / recall / F1: foreground classes, per-class values averaged, "
              "F1 from the averages (the paper's Table 6).", "",
              "| Class | IoU |", "|---|---:|"]
    lines += [f"| {name} | {_pct(v)} |" for name, v in zip(class_names, result["per_class_iou"])]
    if "per_threshold_miou" in result:
        lines += ["", "| Threshold | mIoU |", "|---:|---:|"]
        lines += [f"| {t:.2f} | {_pct(v)} |"
                  for t, v in zip(result["thresholds"], result["per_threshold_miou"])]
    return "\n".join(lines) + "\n"


def write_report(out_dir: os.PathLike | str, result: Dict[str, Any],
                 class_names: Sequence[str], title: str = "Evaluation") -> List[Path]:
    """Write result.json, result.md and confusion.npy into ``out_dir``; returns their paths."""
    out_dir = Path(out_dir)
    paths = [out_dir / "result.json", out_dir / "result.md", out_dir / "confusion.npy"]
    save_json(paths[0], report_json(result, class_names))
    save_text(paths[1], report_markdown(result, class_names, title))
    with atomic_path(paths[2]) as tmp:
        with open(tmp, "wb") as f:
            np.save(f, np.asarray(result["confusion"], dtype=np.int64))
    return paths


def plot_sweep(path: os.PathLike | str, result: Dict[str, Any]) -> Path:
    """PNG of mIoU against the background threshold, the best one marked."""
    # The Agg canvas directly, not pyplot: no global backend switch, safe in worker processes.
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    if "per_threshold_miou" not in result:
        raise ValueError("result has no threshold sweep (it comes from ThresholdSweep.result())")
    fig = Figure(figsize=(5, 3.5), dpi=100)
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    ax.plot(result["thresholds"], [100 * v for v in result["per_threshold_miou"]], marker="o",
            markersize=3)
    ax.axvline(result["best_threshold"], color="tab:red", linestyle="--",
               label=f"best t={result['best_threshold']:.2f}: {100 * result['miou']:.1f}")
    ax.set_xlabel("background threshold")
    ax.set_ylabel("seed mIoU (%)")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    return save_figure(path, fig)


# ------------------------------------------------------------------ the eval_seed stage's work

def _sweep_one(job: tuple, name: str) -> ImageResult:
    dataset, index, maps_dir, cfg = job
    i = index[name]
    gt = dataset.mask(i)
    keys, maps = load_maps(map_path(maps_dir, name), dataset.num_classes, dataset.image_size(i),
                           labels=dataset.labels(i))
    sweep = ThresholdSweep(num_classes=dataset.num_classes + 1, cfg=cfg)
    sweep.update(maps, keys, gt)
    return ImageResult(sums={"confusions": sweep.confusions, "images": 1})


def eval_seed(dataset, maps_dir: str | Path, cfg: EvalSeedConfig, out_dir: str | Path,
              allow_missing: bool = False, title: str = "Seed evaluation") -> dict:
    """mIoU of ``argmax([t, maps])`` for every threshold t of the sweep, over the images that have
    a ground-truth mask; writes result.json, result.md, confusion.npy and sweep.png to ``out_dir``.
    """
    maps_dir = Path(maps_dir)
    names, no_mask = with_ground_truth(dataset, dataset.ids, "eval_seed", allow_missing)
    names = require_maps(maps_dir, names, "eval_seed", allow_missing)
    sweep = ThresholdSweep(num_classes=dataset.num_classes + 1, cfg=cfg)
    stage = PerImageStage("eval_seed", {}, compute=_sweep_one,
                          sums={"confusions": sweep.confusions.shape, "images": ()})
    job = (dataset, {name: i for i, name in enumerate(dataset.ids)}, maps_dir, cfg)
    # Confusion matrices are plain counts: summed over ranks they are the whole list's.
    run = run_stage(stage, job, names, maps_dir)
    sweep.confusions, sweep.num_images = run.sums["confusions"], run.count("images")
    if sweep.num_images == 0:
        raise ValueError(f"eval_seed: no image of the list has a ground-truth mask ({len(dataset)} images)")
    result = note_missing(sweep.result(), no_mask)
    out_dir = Path(out_dir)

    def report() -> None:
        write_report(out_dir, result, ("background",) + tuple(dataset.class_names), title=title)
        plot_sweep(out_dir / "sweep.png", result)

    # The next stages (crf, ir_label) read the best threshold from result.json on every rank.
    on_main_rank(report)
    return result
