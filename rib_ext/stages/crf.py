"""Stage ``crf``: dense-CRF refinement of the seeds (IRN's unary from the thresholded maps), written
as palette PNGs and evaluated with the same code as eval_seed."""
from __future__ import annotations

import time
from pathlib import Path

from rib_ext.config import CRFConfig
from rib_ext.crf import crf_from_maps
from rib_ext.data import load_label_png, save_label_png
from rib_ext.evaluation import confusion_matrix, summarize_confusion, write_report
from rib_ext.io import load_npy_dict
from rib_ext.stages.common import map_path, progress, require_maps


def crf(dataset, maps_dir: str | Path, threshold: float, cfg: CRFConfig, out_dir: str | Path,
        allow_missing: bool = False) -> dict:
    """Refine every image's seed at background ``threshold`` with the dense CRF.

    Writes ``out_dir/masks/<id>.png`` (VOC palette, class ids; existing ones are kept, so a rerun
    resumes) and, over the images with ground truth, ``out_dir/result.{json,md}``.
    """
    out_dir = Path(out_dir)
    mask_dir = out_dir / "masks"
    maps_dir = Path(maps_dir)
    names = require_maps(maps_dir, dataset.ids, "crf", allow_missing)
    index = {name: i for i, name in enumerate(dataset.ids)}
    conf = 0
    evaluated = 0
    t0 = time.time()
    for name in progress(names, "crf"):
        i = index[name]
        png = mask_dir / f"{name}.png"
        if png.exists():
            pred = load_label_png(png)
        else:
            maps = load_npy_dict(map_path(maps_dir, name))
            pred = crf_from_maps(dataset.image(i), maps["high_res"], maps["keys"], threshold, cfg)
            save_label_png(png, pred)
        gt = dataset.mask(i)
        if gt is not None:
            conf = conf + confusion_matrix(pred, gt, dataset.num_classes + 1)
            evaluated += 1
    result = {"threshold": threshold, "num_images": evaluated,
              "seconds": round(time.time() - t0, 1)}
    if evaluated:
        result.update(summarize_confusion(conf))
        write_report(out_dir, result, ("background",) + tuple(dataset.class_names),
                     title=f"CRF-refined seeds (threshold {threshold:.2f})")
    return result
