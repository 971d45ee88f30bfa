"""The run report: ``OUT/report.md`` from ``OUT/summary.json`` and the stage folders.

The paper's table layout (rows CAM and RIB; columns seed, + CRF, IRN mask, and the segmentation
network when it ran), the seeds' precision and recall, per-class IoU of CAM and RIB side by side,
each stage's time, the settings that differ from the preset, and the pictures of the visualize
stage inline. On VOC the paper's figures stand beside the run's.
"""
from __future__ import annotations

import json
import math
import os
from pathlib import Path
from typing import Any, Dict, Iterable, List, Mapping, Optional

from rib_ext.io import save_text
from rib_ext.layout import MAP_SETS, PICTURE_LOGIT_CURVES, PICTURE_PANELS, PICTURE_STEPS, Layout

# The paper's PASCAL VOC 2012 figures (mIoU %): RIB's Tables 1, 3 and 4 (seeds, CRF and IRN masks on
# train; the DeepLab-v2 segmentation on val).
PAPER_VOC = {"cam": {"seed": 48.8}, "rib": {"seed": 56.5, "crf": 62.9, "mask": 70.6, "segment": 68.3}}
COLUMNS = (("seed", "eval_seed", "seed mIoU"), ("crf", "crf", "+ CRF"), ("mask", "eval_mask", "IRN mask"))


def _load_json(path: Path) -> Optional[dict]:
    try:
        return json.loads(Path(path).read_text())
    except FileNotFoundError:
        return None
    except ValueError as err:
        raise ValueError(f"{path}: not valid JSON ({err})") from err


def _pct(x) -> str:
    if x is None or (isinstance(x, float) and math.isnan(x)):
        return "-"
    return f"{100 * float(x):.1f}"


def _miou(summary: Mapping[str, Any], stage: str, name: str) -> Optional[float]:
    entry = summary.get(stage)
    if not isinstance(entry, Mapping):
        return None
    value = entry.get(name)
    return value.get("miou") if isinstance(value, Mapping) else None


def table_rows(summary: Mapping[str, Any]) -> Dict[str, Dict[str, Optional[float]]]:
    """{cam|rib: {seed, precision, recall, crf, mask, segment}} as fractions (None: not run).

    The segmentation network is trained on one map set's masks (RIB's when present): its figure
    goes on that row only.
    """
    rows: Dict[str, Dict[str, Optional[float]]] = {}
    seg = summary.get("segment") if isinstance(summary.get("segment"), Mapping) else None
    seg_on = "rib" if _miou(summary, "eval_seed", "rib") is not None else "cam"
    for name in MAP_SETS:
        seed = (summary.get("eval_seed") or {}).get(name)
        if not isinstance(seed, Mapping) and _miou(summary, "eval_mask", name) is None:
            continue
        seed = seed if isinstance(seed, Mapping) else {}
        rows[name] = {"seed": seed.get("miou"), "precision": seed.get("precision"),
                      "recall": seed.get("recall"), "threshold": seed.get("best_threshold"),
                      "crf": _miou(summary, "crf", name), "mask": _miou(summary, "eval_mask", name),
                      "segment": seg.get("miou") if seg and name == seg_on else None}
    return rows


# The paper's gains on VOC 2012 train (points of mIoU), for the plain-words reading of a run.
PAPER_GAIN = {"seed": 56.5 - 48.8}


def reading(rows: Mapping[str, Mapping[str, Optional[float]]]) -> List[str]:
    """What the table says in words: RIB against CAM per column, the CRF against each seed, IRN's
    masks against their seeds. Stated whichever way it goes: a run where RIB does not help says so."""
    out = []
    cam, rib = rows.get("cam", {}), rows.get("rib", {})
    if cam.get("seed") is not None and rib.get("seed") is not None:
        d = 100 * (rib["seed"] - cam["seed"])
        verdict = ("RIB raised the seed" if d >= 0.5 else "RIB lowered the seed" if d <= -0.5
                   else "RIB left the seed level")
        out.append(f"- {verdict}: {d:+.1f} points over CAM (the paper on VOC: "
                   f"{PAPER_GAIN['seed']:+.1f}).")
    for name, row in rows.items():
        if row.get("seed") is None:
            continue
        for col, what in (("crf", "the CRF"), ("mask", "IRN's masks")):
            if row.get(col) is not None:
                d = 100 * (row[col] - row["seed"])
                out.append(f"- {name.upper()}: {what} {'above' if d > 0 else 'not above'} the seed "
                           f"({d:+.1f} points).")
    return out


def _main_table(rows, dataset: str, with_segment: bool) -> List[str]:
    head = ["maps", "seed mIoU", "threshold", "precision", "recall", "+ CRF", "IRN mask"]
    if with_segment:
        head.append("DeepLab val")
    lines = ["| " + " | ".join(head) + " |", "|---" + "|---:" * (len(head) - 1) + "|"]
    for name, r in rows.items():
        t = r.get("threshold")
        cells = [name.upper(), _pct(r["seed"]), "-" if t is None else f"{t:.2f}", _pct(r["precision"]),
                 _pct(r["recall"]), _pct(r["crf"]), _pct(r["mask"])]
        if with_segment:
            cells.append(_pct(r["segment"]))
        lines.append("| " + " | ".join(cells) + " |")
        if dataset == "voc" and name in PAPER_VOC:
            p = PAPER_VOC[name]
            paper = [f"{name.upper()} (paper)", _fmt(p.get("seed")), "-", "-", "-", _fmt(p.get("crf")),
                     _fmt(p.get("mask"))]
            if with_segment:
                paper.append(_fmt(p.get("segment")))
            lines.append("| " + " | ".join(paper) + " |")
    return lines


def _fmt(x) -> str:
    return "-" if x is None else f"{x:.1f}"


def per_class_table(out_dir: Path, stage: str = "eval_seed") -> List[str]:
    """Per-class IoU of each map set side by side (from ``<stage>/<set>/result.json``)."""
    results = {name: _load_json(Layout(out_dir).result(stage, name)) for name in MAP_SETS}
    results = {k: v for k, v in results.items() if v and isinstance(v.get("per_class_iou"), Mapping)}
    if not results:
        return []
    classes: List[str] = []
    for r in results.values():
        classes += [c for c in r["per_class_iou"] if c not in classes]
    head = ["class"] + [n.upper() for n in results]
    if set(results) == set(MAP_SETS):
        head.append("RIB - CAM")
    lines = ["| " + " | ".join(head) + " |", "|---" + "|---:" * (len(head) - 1) + "|"]
    for c in classes:
        vals = [r["per_class_iou"].get(c) for r in results.values()]
        cells = [c] + [_pct(v) for v in vals]
        if len(head) == len(vals) + 2:
            cam, rib = results["cam"]["per_class_iou"].get(c), results["rib"]["per_class_iou"].get(c)
            cells.append("-" if cam is None or rib is None else f"{100 * (rib - cam):+.1f}")
        lines.append("| " + " | ".join(cells) + " |")
    return lines


def stage_times(summary: Mapping[str, Any]) -> List[str]:
    lines = ["| stage | seconds |", "|---|---:|"]
    for stage, entry in summary.items():
        if isinstance(entry, Mapping) and "stage_seconds" in entry:
            lines.append(f"| {stage} | {entry['stage_seconds']:.1f} |")
    if "seconds" in summary:
        lines.append(f"| **total** | {float(summary['seconds']):.1f} |")
    return lines


def settings_diff(preset: Mapping[str, Any], used: Mapping[str, Any], prefix: str = "") -> List[tuple]:
    """``(dotted key, preset value, used value)`` for every leaf of ``preset`` where ``used``
    differs (a key ``used`` lacks shows as None); keys only ``used`` has (a run's stage list, its
    environment) are records, not settings, and are left out. Tuples and lists compare as lists."""
    out = []
    for key in sorted(preset, key=str):
        a, b = preset.get(key), used.get(key)
        name = f"{prefix}{key}"
        if isinstance(a, Mapping) and isinstance(b, Mapping):
            out += settings_diff(a, b, name + ".")
        elif _plain(a) != _plain(b):
            out.append((name, a, b))
    return out


def _plain(v):
    if isinstance(v, (list, tuple)):
        return [_plain(x) for x in v]
    if isinstance(v, Mapping):
        return {k: _plain(x) for k, x in v.items()}
    return v


def _pictures(out_dir: Path, report_dir: Path) -> List[str]:
    layout = Layout(out_dir)
    vis = layout.pictures
    lines = []
    rel = lambda p: Path(os.path.relpath(p, report_dir)).as_posix()  # noqa: E731
    if (vis / PICTURE_LOGIT_CURVES).is_file():
        lines += ["RIB's target logit sum per step for every image, the margin m and the stop "
                  "reasons:", "", f"![logit curves]({rel(vis / PICTURE_LOGIT_CURVES)})", ""]
    steps = sorted((vis / PICTURE_STEPS).glob("*.png")) if (vis / PICTURE_STEPS).is_dir() else []
    if steps:
        lines += ["RIB's map after each adaptation step:", ""]
        lines += [f"![steps {p.stem}]({rel(p)})" for p in steps] + [""]
    images = sorted((vis / PICTURE_PANELS).glob("*.png")) if (vis / PICTURE_PANELS).is_dir() else []
    if images:
        lines += ["Per image: the image, the ground truth, the CAM and RIB maps, their seeds at the "
                  "best thresholds, the CRF and IRN masks:", ""]
        lines += [f"![{p.stem}]({rel(p)})" for p in images] + [""]
    for name in MAP_SETS:
        sweep = layout.seed_sweep(name)
        if sweep.is_file():
            lines.append(f"![{name} threshold sweep]({rel(sweep)})")
    return lines


def build_report(out_dir, preset: Optional[Mapping[str, Any]] = None,
                 used: Optional[Mapping[str, Any]] = None, dataset: Optional[str] = None) -> str:
    """The report's markdown text (see :func:`write_report`)."""
    out_dir = Path(out_dir)
    summary = _load_json(Layout(out_dir).summary)
    if summary is None:
        raise FileNotFoundError(f"{Layout(out_dir).summary}: no summary: the run has not finished")
    if used is None:
        used = _saved_settings(out_dir)
    dataset = dataset or used.get("dataset") or "?"
    rows = table_rows(summary)
    with_segment = any(r["segment"] is not None for r in rows.values())
    lines = [f"# Run report: {out_dir}", "",
             f"Dataset: **{dataset}**" + (f", evaluated list `{used.get('eval_list')}`"
                                          if used.get("eval_list") else "") + ".", "",
             "## Localization maps and pseudo masks (mIoU %)", ""]
    if rows:
        lines += _main_table(rows, dataset, with_segment)
        lines += ["", "Seed: the maps thresholded at the best background threshold of the sweep; "
                  "precision / recall: foreground, per class, averaged (the paper's Table 6). "
                  "+ CRF: dense CRF on that seed. IRN mask: IRN's random-walk pseudo masks."]
        if dataset == "voc":
            lines += ["The (paper) rows: RIB's published PASCAL VOC 2012 train figures "
                      "(DeepLab: val)."]
        lines += [""] + reading(rows)
    else:
        lines.append("No map set was evaluated in this run.")
    per_class = per_class_table(out_dir)
    if per_class:
        lines += ["", "## Per-class seed IoU (%)", ""] + per_class
    lines += ["", "## Time per stage", ""] + stage_times(summary)
    if preset is not None:
        diff = settings_diff(preset, used)
        lines += ["", "## Settings that differ from the preset", ""]
        if diff:
            lines += ["| setting | preset | this run |", "|---|---|---|"]
            lines += [f"| `{k}` | `{json.dumps(_plain(a))}` | `{json.dumps(_plain(b))}` |"
                      for k, a, b in diff]
        else:
            lines.append("None: the run used the preset as it is.")
    pictures = _pictures(out_dir, out_dir)
    if pictures:
        lines += ["", "## Pictures", ""] + pictures
    return "\n".join(lines) + "\n"


def _saved_settings(out_dir: Path) -> Dict[str, Any]:
    """The run's config.json, laid out as today's (an earlier version wrote the run-wide settings
    inside the sections); as it is where its copies disagree (the report only shows it)."""
    from rib_ext.config import ConfigError, PipelineConfig

    used = _load_json(Layout(out_dir).config) or {}
    try:
        return PipelineConfig.upgrade_plain(used) if isinstance(used, dict) else used
    except ConfigError:
        return used


def write_report(out_dir, preset: Optional[Mapping[str, Any]] = None,
                 used: Optional[Mapping[str, Any]] = None, dataset: Optional[str] = None) -> Path:
    """Write ``OUT/report.md`` and return its path.

    ``preset``: the preset's settings as a (nested) dict, ``used``: the run's (default: OUT's
    config.json); the report lists the leaves that differ. ``dataset`` defaults to ``used``'s.
    """
    out_dir = Path(out_dir)
    path = Layout(out_dir).report
    save_text(path, build_report(out_dir, preset, used, dataset))
    return path


def main(argv: Optional[Iterable[str]] = None) -> int:
    import argparse

    p = argparse.ArgumentParser(prog="python -m rib_ext.report",
                                description="write OUT/report.md for a finished pipeline run")
    p.add_argument("out", help="the run's output folder")
    args = p.parse_args(argv)
    from rib_ext.stages.options import run_command

    def body() -> int:
        print(write_report(args.out, preset=preset_of_run(args.out)))
        return 0
    return run_command(body)


def preset_of_run(out_dir) -> Optional[dict]:
    """The settings a run's preset starts from (its dataset, preset and output folder, no other
    flag), as a plain dict; None when the run has no readable config.json."""
    from rib_ext.config import plain_dict
    from rib_ext.stages.options import config_from_argv

    used = _load_json(Layout(out_dir).config)
    if not used:
        return None
    argv = ["--out", str(out_dir), "--dataset", used.get("dataset", "demo")]
    if used.get("preset"):
        argv += ["--preset", used["preset"]]
    if used.get("root"):
        argv += ["--root", used["root"]]
    return plain_dict(config_from_argv(argv))


if __name__ == "__main__":
    raise SystemExit(main())
