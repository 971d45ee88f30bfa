"""Pictures of localization maps: per-image panels, RIB's per-step montage, the logit curves.

Everything here takes plain arrays and paths, so it serves the pipeline (``visualize_run`` on a
finished output folder) and any folder of IRN-format ``.npy`` maps alike (``visualize_maps``,
``python -m rib_ext.visualize``). Panels are tiled with Pillow (their size is exact: one tile per
layer, ``tile`` pixels on the long side, a caption strip above); the curves use matplotlib's Agg
canvas directly (no global backend switch).

A map layer is drawn as a heat overlay of the per-pixel best class score (max over the image's
classes of the max-normalised ``high_res`` maps), a label layer in the VOC palette (255, VOC's
ignore value, in its usual cream colour).
"""
from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any, Dict, List, Mapping, Optional, Sequence

import numpy as np
from PIL import Image, ImageDraw

from rib_ext import distributed
from rib_ext.data.images import voc_palette
from rib_ext.io import load_npy_dict, save_figure, save_png
from rib_ext.layout import MAP_SETS, PICTURE_LOGIT_CURVES, PICTURE_PANELS, PICTURE_STEPS, Layout
from rib_ext.outputs import load_maps

CAPTION_HEIGHT = 14  # pixels of the caption strip above each tile
DEFAULT_COUNT = 12  # images with a panel
DEFAULT_MONTAGE_COUNT = 3  # images with a per-step montage

__all__ = [
    "choose_images", "map_score", "heat_overlay", "label_rgb", "render_image_panel",
    "render_step_montage", "plot_logit_curves", "load_records", "images_with_maps", "visualize_maps",
    "visualize_run",
    "step_maps_with_engine", "CAPTION_HEIGHT",
]


# ---------------------------------------------------------------------------------------------
# Building blocks


def choose_images(ids: Sequence[str], count: int = DEFAULT_COUNT) -> List[str]:
    """``count`` ids spread evenly over ``ids`` (first and last included): deterministic, and a
    rerun with more images keeps showing the same kind of spread rather than the first few."""
    ids = list(ids)
    if count <= 0 or not ids:
        return []
    if count >= len(ids):
        return ids
    if count == 1:
        return [ids[0]]
    picks = sorted({round(i * (len(ids) - 1) / (count - 1)) for i in range(count)})
    return [ids[i] for i in picks]


def map_score(maps: Mapping[str, Any]) -> np.ndarray:
    """float32 [H, W] in [0, 1]: the best class score per pixel of an IRN map dict (its
    ``high_res``); zeros for an image without classes."""
    high = np.asarray(maps["high_res"], dtype=np.float32)
    if high.ndim != 3:
        raise ValueError(f"high_res must be [K', H, W], got shape {high.shape}")
    if high.shape[0] == 0:
        return np.zeros(high.shape[1:], dtype=np.float32)
    return np.clip(high.max(axis=0), 0.0, 1.0)


def _jet(x: np.ndarray) -> np.ndarray:
    """uint8 [H, W, 3]: matplotlib's 'jet' colour map of ``x`` in [0, 1] (the CAM convention)."""
    from matplotlib import colormaps

    return (colormaps["jet"](np.clip(x, 0, 1))[..., :3] * 255).astype(np.uint8)


def heat_overlay(image: np.ndarray, score: np.ndarray, alpha: float = 0.5) -> np.ndarray:
    """uint8 [H, W, 3]: ``score`` [H, W] in [0, 1] as a jet heat map blended over ``image``."""
    image = _check_rgb(image)
    score = np.asarray(score, dtype=np.float32)
    if score.shape != image.shape[:2]:
        raise ValueError(f"map is {score.shape} but the image is {image.shape[:2]}")
    mixed = (1 - alpha) * image.astype(np.float32) + alpha * _jet(score).astype(np.float32)
    return np.clip(np.rint(mixed), 0, 255).astype(np.uint8)


def label_rgb(labels: np.ndarray) -> np.ndarray:
    """uint8 [H, W, 3]: class ids (0 background, 255 ignore) in the VOC palette."""
    labels = np.asarray(labels)
    if labels.ndim != 2:
        raise ValueError(f"labels must be [H, W], got shape {labels.shape}")
    if labels.size and (labels.min() < 0 or labels.max() > 255):
        raise ValueError(f"label values must lie in 0..255, got {labels.min()}..{labels.max()}")
    return voc_palette()[labels.astype(np.uint8)]


def _check_rgb(image: np.ndarray) -> np.ndarray:
    image = np.asarray(image)
    if image.ndim != 3 or image.shape[2] != 3:
        raise ValueError(f"image must be [H, W, 3], got shape {image.shape}")
    return image.astype(np.uint8) if image.dtype != np.uint8 else image


def _layer_rgb(image: np.ndarray, layer: np.ndarray) -> np.ndarray:
    """A float layer is a score map (heat overlay), an integer one a label map, [H, W, 3] a picture."""
    layer = np.asarray(layer)
    if layer.ndim == 3 and layer.shape[2] == 3:
        return _check_rgb(layer)
    if np.issubdtype(layer.dtype, np.floating):
        return heat_overlay(image, layer)
    return label_rgb(layer)


def _tile_size(h: int, w: int, tile: int) -> tuple[int, int]:
    scale = tile / max(h, w)
    return max(1, round(w * scale)), max(1, round(h * scale))


def _compose(tiles: Sequence[tuple[str, np.ndarray]], tile: int, columns: int,
             title: Optional[str] = None) -> Image.Image:
    """Tiles (caption, uint8 RGB) on a grid, each scaled to ``tile`` pixels on its long side."""
    h, w = tiles[0][1].shape[:2]
    tw, th = _tile_size(h, w, tile)
    columns = max(1, min(columns, len(tiles)))
    rows = math.ceil(len(tiles) / columns)
    top = CAPTION_HEIGHT if title else 0
    canvas = Image.new("RGB", (columns * tw, top + rows * (th + CAPTION_HEIGHT)), "white")
    draw = ImageDraw.Draw(canvas)
    if title:
        draw.text((2, 1), title, fill="black")
    for k, (caption, rgb) in enumerate(tiles):
        if rgb.shape[:2] != (h, w):
            raise ValueError(f"tile {caption!r} is {rgb.shape[:2]}, the others {(h, w)}")
        x, y = (k % columns) * tw, top + (k // columns) * (th + CAPTION_HEIGHT)
        # Nearest for small label maps keeps class boundaries crisp; pictures are smooth anyway.
        canvas.paste(Image.fromarray(rgb).resize((tw, th), Image.NEAREST), (x, y + CAPTION_HEIGHT))
        draw.text((x + 2, y + 1), caption[: max(4, tw // 6)], fill="black")
    return canvas


def render_image_panel(image: np.ndarray, gt: Optional[np.ndarray], layers: Mapping[str, np.ndarray],
                       out_png, title: Optional[str] = None, tile: int = 192,
                       columns: Optional[int] = None) -> Path:
    """One PNG: the image, the ground truth (when given), then each layer in order.

    ``layers``: caption -> float [H, W] score map in [0, 1] (drawn as a heat overlay), integer
    [H, W] class ids (VOC palette, 255 ignore) or uint8 [H, W, 3] picture. Tiles are ``tile``
    pixels on the long side, in one row unless ``columns`` says otherwise.
    """
    image = _check_rgb(image)
    tiles = [("image", image)]
    if gt is not None:
        tiles.append(("ground truth", label_rgb(gt)))
    for caption, layer in layers.items():
        layer = np.asarray(layer)
        if layer.shape[:2] != image.shape[:2]:
            raise ValueError(f"layer {caption!r} is {layer.shape[:2]} but the image is {image.shape[:2]}")
        tiles.append((caption, _layer_rgb(image, layer)))
    out_png = Path(out_png)
    save_png(out_png, _compose(tiles, tile, columns or len(tiles), title))
    return out_png


def render_step_montage(image: np.ndarray, step_scores: Sequence[np.ndarray], out_png,
                        gt: Optional[np.ndarray] = None, title: Optional[str] = None,
                        tile: int = 128, columns: Optional[int] = None) -> Path:
    """One PNG: the image (and ground truth), then the map after each step 0..K as heat overlays.

    ``step_scores``: [H, W] score maps in [0, 1], one per step (e.g. :func:`map_score` of each of
    ``RIBEngine(snapshot_steps=True)``'s ``Result.step_maps``, the accumulated map after that step).
    """
    if not step_scores:
        raise ValueError("render_step_montage needs at least one step map")
    layers = {f"step {k}": np.asarray(s, dtype=np.float32) for k, s in enumerate(step_scores)}
    n = len(layers) + 1 + (gt is not None)
    return render_image_panel(image, gt, layers, out_png, title=title, tile=tile,
                              columns=columns or min(n, 6))


def load_records(path) -> List[dict]:
    """The rib stage's records.jsonl (one JSON object per line)."""
    path = Path(path)
    records = []
    for n, line in enumerate(path.read_text().splitlines(), 1):
        if line.strip():
            try:
                records.append(json.loads(line))
            except ValueError as err:
                raise ValueError(f"{path}:{n}: not a JSON record ({err})") from err
    return records


def plot_logit_curves(records: Sequence[Mapping[str, Any]], margin: Optional[float], out_png,
                      title: str = "RIB: target logit sum per step") -> Path:
    """Every image's target logit sum after each step (its ``target_logit_sums``), the margin m
    as a dashed line, and the count of each stop reason in the legend."""
    from collections import Counter

    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    if not records:
        raise ValueError("plot_logit_curves: no records")
    fig = Figure(figsize=(6.4, 4.0), dpi=100)
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    stops = Counter(str(r.get("stop")) for r in records)
    colours = {s: f"C{i}" for i, s in enumerate(sorted(stops))}
    for r in records:
        sums = r.get("target_logit_sums") or []
        if sums:
            ax.plot(range(1, len(sums) + 1), sums, color=colours[str(r.get("stop"))], alpha=0.45,
                    linewidth=1)
    for s, n in sorted(stops.items()):
        ax.plot([], [], color=colours[s], label=f"stop: {s} ({n})")
    peak = max((max(r["target_logit_sums"]) for r in records if r.get("target_logit_sums")),
               default=0.0)
    if margin is not None:
        ax.axhline(margin, color="black", linestyle="--", label=f"margin m = {margin:g}")
        if margin > 4 * max(peak, 1e-9):
            ax.set_yscale("symlog")  # keep the curves readable when m is far above them
    ax.set_xlabel("step")
    ax.set_ylabel("sum of the target's labelled logits")
    ax.set_title(title, fontsize=10)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    return save_figure(out_png, fig)


# ---------------------------------------------------------------------------------------------
# Seeds and masks from files


def _best_threshold(result_json: Path) -> Optional[float]:
    try:
        return float(json.loads(result_json.read_text())["best_threshold"])
    except (OSError, ValueError, KeyError):
        return None


def _seed(maps: Mapping[str, Any], threshold: float) -> np.ndarray:
    from rib_ext.evaluation import seed_prediction

    return seed_prediction(maps["high_res"], maps["keys"], threshold).astype(np.uint8)


def _read_mask(path: Path) -> Optional[np.ndarray]:
    from rib_ext.data.images import load_label_png

    return load_label_png(path) if path.is_file() else None


def images_with_maps(maps_dir: Path, dataset, count: int = DEFAULT_COUNT) -> List[str]:
    """:func:`choose_images` over the images of ``dataset`` that have a map in ``maps_dir``."""
    have = [i for i in dataset.ids if (maps_dir / f"{i}.npy").is_file()]
    if not have:
        raise FileNotFoundError(f"{maps_dir}: no <id>.npy map of any image of the list "
                                f"({len(dataset)} ids, e.g. {dataset.ids[:2]})")
    return choose_images(have, count)


def visualize_maps(maps_dirs: Mapping[str, Any], dataset, out_dir, ids: Optional[Sequence[str]] = None,
                   count: int = DEFAULT_COUNT, gt: bool = True,
                   thresholds: Optional[Mapping[str, float]] = None,
                   masks: Optional[Mapping[str, Any]] = None, tile: int = 192) -> List[Path]:
    """One panel per image: image, ground truth (``gt``), each map set's heat overlay, its seed at
    ``thresholds[name]`` (when given) and each folder of ``masks`` (caption -> folder of label
    PNGs, drawn when the image's file exists). Writes ``out_dir/<id>.png``; returns the paths.

    ``maps_dirs``: caption -> folder of IRN-format ``<id>.npy`` maps. ``ids`` default to
    :func:`choose_images` over the images of ``dataset`` that have maps in the first folder.
    """
    maps_dirs = {k: Path(v) for k, v in maps_dirs.items()}
    masks = {k: Path(v) for k, v in (masks or {}).items()}
    thresholds = dict(thresholds or {})
    if not maps_dirs:
        raise ValueError("visualize_maps: no map folder given")
    if ids is None:
        ids = images_with_maps(next(iter(maps_dirs.values())), dataset, count)
    index = {name: i for i, name in enumerate(dataset.ids)}
    out_dir = Path(out_dir)
    written = []
    for name in ids:
        if name not in index:
            raise KeyError(f"image {name!r} is not in the dataset's list")
        i = index[name]
        image = dataset.image(i)
        truth = dataset.mask(i) if gt else None
        layers: Dict[str, np.ndarray] = {}
        seeds: Dict[str, np.ndarray] = {}
        for caption, d in maps_dirs.items():
            path = d / f"{name}.npy"
            if not path.is_file():
                continue
            keys, high_res = load_maps(path, dataset.num_classes, image.shape[:2],
                                       labels=dataset.labels(i))
            maps = {"keys": keys, "high_res": high_res}
            layers[f"{caption} map"] = map_score(maps)
            if caption in thresholds:
                t = thresholds[caption]
                seeds[f"{caption} seed t={t:.2f}"] = _seed(maps, t)
        layers.update(seeds)
        for caption, d in masks.items():
            mask = _read_mask(d / f"{name}.png")
            if mask is not None:
                layers[caption] = mask
        classes = [dataset.class_names[c] for c in np.nonzero(dataset.labels(i))[0]]
        written.append(render_image_panel(image, truth, layers, out_dir / f"{name}.png",
                                          title=f"{name}: {', '.join(classes)}", tile=tile,
                                          columns=4 if len(layers) + 2 > 6 else None))
    return written


# ---------------------------------------------------------------------------------------------
# A finished pipeline run


def step_maps_with_engine(model, pool, rib_cfg, dataset, ids: Sequence[str],
                          device="cpu") -> Dict[str, List[np.ndarray]]:
    """Re-adapt ``ids`` of ``dataset`` with snapshots on: id -> the score map after each step.

    Same settings and random draws as the rib stage (the engine seeds each image's draws by its
    index), so the last snapshot is the stage's map unless the run used other settings.
    """
    import torch

    from rib_ext.rib import RIBEngine, Target

    index = {name: i for i, name in enumerate(dataset.ids)}
    pool_index = {name: j for j, name in enumerate(pool.dataset.ids)}
    targets = [Target(index[n], n, dataset.image(index[n]), dataset.labels(index[n]),
                      pool_index.get(n)) for n in ids]
    engine = RIBEngine(model, pool, rib_cfg, torch.device(device), snapshot_steps=True)
    return {r.name: [map_score(m) for m in r.step_maps] for r in engine.run(targets)}


def visualize_run(out_dir, dataset, ids: Optional[Sequence[str]] = None, count: int = DEFAULT_COUNT,
                  model=None, pool=None, rib_cfg=None, montage_count: int = DEFAULT_MONTAGE_COUNT,
                  device="cpu", dest: Optional[str] = None, rank: int = 0,
                  world: int = 1) -> Dict[str, Any]:
    """Pictures of a finished run under ``out_dir/visualize`` (or ``dest``).

    * ``images/<id>.png``: image, ground truth, CAM and RIB maps, both seeds at eval_seed's best
      thresholds, the CRF masks (``crf/<set>/masks``) and IRN's pseudo masks (``make_sem_seg/<set>``)
      where those files exist;
    * ``steps/<id>.png``: RIB's map after each step, for ``montage_count`` of the images, when
      ``model``, ``pool`` (:class:`~rib_ext.rib.OtherImages`) and ``rib_cfg`` are given;
    * ``logit_curves.png``: every image's target logit sum per step, the margin and the stop
      reasons (from ``rib/records.jsonl``; the margin from ``rib_cfg`` or ``config.json``).

    With ``world`` > 1 (ranks of a torchrun), this call draws rank ``rank``'s share of the chosen
    panels and montages (the choice is the same on every rank) and rank 0 the logit curves; the
    pictures are those of one process. Returns ``{"images": [...], "steps": [...], "logit_curves":
    path or None, "dir": ...}`` with this call's pictures.
    """
    out_dir = Path(out_dir)
    layout = Layout(out_dir)
    dest_dir = Path(dest) if dest else layout.pictures
    maps_dirs = {name.upper(): layout.maps_dir(name) for name in MAP_SETS
                 if layout.maps_dir(name).is_dir()}
    if not maps_dirs:
        raise FileNotFoundError(f"{out_dir}: no map folder ({', '.join(str(layout.maps_dir(n)) for n in MAP_SETS)}): "
                                f"nothing to draw")
    thresholds = {}
    for caption in maps_dirs:
        t = _best_threshold(layout.seed_result(caption.lower()))
        if t is not None:
            thresholds[caption] = t
    masks = {}
    for caption in maps_dirs:
        s = caption.lower()
        for label, folder in ((f"{caption} + CRF", layout.crf_masks(s)),
                              (f"{caption} IRN mask", layout.mask_dir(s))):
            if folder.is_dir():
                masks[label] = folder
    chosen = list(ids) if ids is not None else images_with_maps(next(iter(maps_dirs.values())),
                                                                dataset, count)
    images = visualize_maps(maps_dirs, dataset, dest_dir / PICTURE_PANELS,
                            ids=distributed.shard(chosen, rank, world),
                            thresholds=thresholds, masks=masks)
    result: Dict[str, Any] = {"dir": str(dest_dir), "images": [str(p) for p in images], "steps": [],
                              "logit_curves": None}
    if model is not None and pool is not None and rib_cfg is not None and montage_count > 0:
        index = {name: i for i, name in enumerate(dataset.ids)}
        # An image of no class (kept on COCO) has no adaptation to show.
        few = distributed.shard([n for n in chosen if dataset.labels(index[n]).any()][:montage_count],
                                rank, world)
        for name, scores in step_maps_with_engine(model, pool, rib_cfg, dataset, few, device).items():
            i = index[name]
            path = render_step_montage(
                dataset.image(i), scores, dest_dir / PICTURE_STEPS / f"{name}.png", gt=dataset.mask(i),
                title=f"{name}: RIB map after step k (summed over steps 0..k, as the stage saves it)")
            result["steps"].append(str(path))
    records_path = layout.rib_records
    if rank == 0 and records_path.is_file():
        records = load_records(records_path)
        if records:
            margin = getattr(rib_cfg, "margin", None) if rib_cfg is not None else _saved_margin(out_dir)
            result["logit_curves"] = str(plot_logit_curves(records, margin,
                                                           dest_dir / PICTURE_LOGIT_CURVES))
    return result


def _saved_margin(out_dir: Path) -> Optional[float]:
    try:
        return float(json.loads(Layout(out_dir).config.read_text())["rib"]["margin"])
    except (OSError, ValueError, KeyError, TypeError):
        return None
