"""RIB over a dataset: every image's localization map, resumable and sharded across ranks.

Writes ``out_dir/maps/<id>.npy`` (IRN's format, ready for eval_seed and crf) and
``out_dir/records/<id>.json`` (steps taken, why adaptation stopped, the target logit sums), then
``out_dir/records.jsonl`` and ``out_dir/summary.json`` over all images. Images whose maps exist are
skipped, so an interrupted run resumes; under torchrun each rank takes a deterministic shard.
"""
from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

from rib_ext.config import RIBConfig
from rib_ext.io import file_is_complete, save_json, save_npy, save_text
from rib_ext.outputs import MapChecker, map_path, no_class_maps
from rib_ext.rib.engine import RIBEngine
from rib_ext.rib.sampling import OtherImages
from rib_ext.rib.state import Result
from rib_ext.rib.targets import Target
from rib_ext.runner import ImageResult, Output, PerImageStage, main_rank, rank_label, run_stage
from rib_ext.runtime import resolve_device

CAUSE = ("the per-image adaptation diverged (lower --rib.lr) or the classifier activates nowhere "
         "for the image's classes (check make_cam's map of it)")


def adapt_dataset(model, dataset, pool_dataset, cfg: RIBConfig, out_dir: str | Path) -> dict:
    """Adapt the classifier ``model`` (θ0) to every image of ``dataset``, drawing the other images
    from ``pool_dataset`` (the classifier's training list). Returns a summary dict."""
    out_dir = Path(out_dir)
    records_dir = out_dir / "records"
    device = resolve_device(cfg.device)  # under torchrun, "cuda" is this rank's current device
    index = {name: i for i, name in enumerate(dataset.ids)}
    checker = MapChecker("rib", CAUSE)

    def drive(_, todo, emit) -> None:
        pool = OtherImages(pool_dataset, device, cfg.other_resize_long, cfg.other_crop,
                           cache_bytes=cfg.image_cache_mb << 20)
        pool_index = {name: j for j, name in enumerate(pool_dataset.ids)}

        def write(result) -> None:
            checker.check(result.maps, result.name)
            checker.written(result.maps, result.name, map_path(out_dir / "maps", result.name))
            emit(result.name, ImageResult(files={"record": result.record, "maps": result.maps}))

        def targets():
            for name in todo:
                i = index[name]
                labels = dataset.labels(i)
                if not labels.any():  # COCO's images of no class: nothing to adapt to (the authors'
                    write(no_class_result(i, name, dataset.image_size(i)))  # code writes keys only)
                    continue
                yield Target(i, name, dataset.image(i), labels, pool_index.get(name))

        largest = None
        if cfg.group_size == 0 and device.type == "cuda":
            # The automatic G must fit the largest image's step (image headers only, no decoding).
            largest = max((dataset.image_size(index[n]) for n in todo), key=lambda hw: hw[0] * hw[1])
        RIBEngine(model, pool, cfg, device).run(targets(), on_result=write, largest=largest)

    # Done = a whole record and a whole map. The record is written first: the map's existence
    # marks the image done, so a kill between the two writes leaves a record without map, which
    # the next run redoes (and rewrites).
    stage = PerImageStage("rib", {"record": Output("records/{id}.json", save_json),
                                  "maps": Output("maps/{id}.npy", save_npy)}, drive=drive)
    run = run_stage(stage, None, dataset.ids, out_dir, label=rank_label("rib"))
    checker.already_done = len(run.done)
    checker.finish()
    written, seconds = len(run.todo), run.seconds
    summary = {"written": written, "skipped": len(run.done), "seconds": seconds,
               "images_per_second": round(written / seconds, 3) if written and seconds > 0 else None}
    if main_rank():
        summary.update(merge_records(dataset, records_dir, out_dir))
    return summary


def no_class_result(index: int, name: str, image_size) -> Result:
    """The result of an image with no class: keys-only maps, no step taken."""
    record = {"name": name, "index": index, "steps": 0, "stop": "no_class", "target_logit_sums": [],
              "final_target_logit_sum": None, "seconds": 0.0}
    return Result(name, no_class_maps(image_size), record)


def merge_records(dataset, records_dir: Path, out_dir: Path) -> dict:
    """records.jsonl in list order, and counts of the stop reasons and steps."""
    records = []
    for name in dataset.ids:
        path = records_dir / f"{name}.json"
        if path.exists() and file_is_complete(map_path(out_dir / "maps", name)):
            records.append(json.loads(path.read_text()))
    save_text(out_dir / "records.jsonl", "".join(json.dumps(r) + "\n" for r in records))
    stops = Counter(r["stop"] for r in records)
    steps = [r["steps"] for r in records]
    stats = {"images": len(records), "stop_reasons": dict(stops),
             "mean_steps": round(sum(steps) / len(steps), 2) if steps else None}
    save_json(out_dir / "summary.json", stats)
    return stats
