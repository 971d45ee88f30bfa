"""The run folder: every path under ``--out``, derived from what each stage declares it writes.

One table, :data:`OUTPUTS`, says what each stage makes under ``OUT/<stage>/``, as path patterns
(``{set}``: a map set, ``{id}``: an image id); :class:`Layout` answers every path of a run folder
from it. The run context, the pictures, the report, ``python -m rib_ext.visualize`` and the
ablation ask a ``Layout``; no other module spells a path of the run folder. The folder::

    config.json, summary.json, report.md   the run's resolved settings, its figures, its report
    data/                                  the demo dataset, generated when no --root is given
    <stage>/provenance.json                what the stage's outputs were made with
    <stage>/...                            the stage's outputs, below

A stage whose patterns hold ``{set}`` keeps each map set's outputs apart (``crf/cam``,
``crf/rib``): a change of one map set (RIB's settings) leaves the other's outputs valid.
"""
from __future__ import annotations

from pathlib import Path
from typing import Dict, List, Tuple

# The map sets a run makes and every later stage reads, in order (the baseline, then RIB's):
# name -> (the stage that makes it, its folder there).
MAP_SETS: Dict[str, Tuple[str, str]] = {"cam": ("make_cam", "maps"), "rib": ("rib", "maps")}

CLASSIFIER_FILE = "cam_net.pth"
IRN_MODEL_FILE = "irn.pth"
RECORD_FILE = "provenance.json"

# What each stage writes under OUT/<stage>/ (the main files; a stage's domain function may add
# logs and resume states beside them).
OUTPUTS: Dict[str, Tuple[str, ...]] = {
    "train_cam": (CLASSIFIER_FILE, "loss.csv"),
    "make_cam": ("maps/{id}.npy",),
    "rib": ("maps/{id}.npy", "records.jsonl", "summary.json"),
    "eval_seed": ("{set}/result.json", "{set}/result.md", "{set}/sweep.png"),
    "crf": ("{set}/masks/{id}.png", "{set}/result.json"),
    "ir_label": ("{set}/{id}.png",),
    "train_irn": ("{set}/" + IRN_MODEL_FILE,),
    "make_sem_seg": ("{set}/{id}.png", "{set}_scores/{id}.npy", "{set}_saliency/{id}.png"),
    "eval_mask": ("{set}/result.json", "{set}/result.md"),
    "visualize": ("images/{id}.png", "steps/{id}.png", "logit_curves.png"),
    "segment": ("train/model.pth", "val/result.json"),
}
# The stages that keep each map set's outputs apart.
PER_SET: Tuple[str, ...] = tuple(s for s, patterns in OUTPUTS.items()
                                 if any("{set}" in p for p in patterns))


def set_folders(stage: str, name: str) -> List[str]:
    """The folders (relative to the stage's) holding map set ``name``'s outputs of ``stage``."""
    found: List[str] = []
    for pattern in OUTPUTS.get(stage, ()):
        head = pattern.split("/")[0]
        if "{set}" in head and head.format(set=name) not in found:
            found.append(head.format(set=name))
    return found


class Layout:
    """Every path of one run folder ``out``."""

    def __init__(self, out):
        self.out = Path(out)

    # ---------------------------------------------------------------------------- run files
    @property
    def config(self) -> Path:
        return self.out / "config.json"

    @property
    def summary(self) -> Path:
        return self.out / "summary.json"

    @property
    def report(self) -> Path:
        return self.out / "report.md"

    @property
    def demo_data(self) -> Path:
        """Where the demo is generated when no --root is given."""
        return self.out / "data"

    # ------------------------------------------------------------------------------- stages
    def stage_dir(self, stage: str, *sub: str) -> Path:
        return self.out.joinpath(stage, *sub)

    def record(self, stage: str) -> Path:
        return self.stage_dir(stage, RECORD_FILE)

    def set_dirs(self, stage: str, name: str) -> List[Path]:
        """The folders of ``stage`` that hold map set ``name``'s outputs (none for a stage that
        does not keep map sets apart; the maps folder for the stage that makes the set)."""
        if MAP_SETS.get(name, ("",))[0] == stage:
            return [self.maps_dir(name)]
        return [self.stage_dir(stage, f) for f in set_folders(stage, name)]

    @property
    def classifier(self) -> Path:
        """train_cam's classifier (make_cam and rib start from it, unless --cam-checkpoint)."""
        return self.stage_dir("train_cam", CLASSIFIER_FILE)

    @property
    def classifier_dir(self) -> Path:
        return self.stage_dir("train_cam")

    def maps_dir(self, name: str) -> Path:
        stage, sub = MAP_SETS[name]
        return self.stage_dir(stage, sub)

    def map_sets(self) -> Dict[str, Path]:
        """The map sets made so far (folders holding at least one map), in :data:`MAP_SETS` order."""
        found = {}
        for name in MAP_SETS:
            d = self.maps_dir(name)
            if d.is_dir() and any(d.glob("*.npy")):
                found[name] = d
        return found

    @property
    def rib_dir(self) -> Path:
        return self.stage_dir("rib")

    @property
    def rib_records(self) -> Path:
        """RIB's per-image records (steps, stop reasons, logit sums)."""
        return self.stage_dir("rib", "records.jsonl")

    def seed_dir(self, name: str) -> Path:
        return self.stage_dir("eval_seed", name)

    def seed_result(self, name: str) -> Path:
        """eval_seed's result of a map set (its best threshold, mIoU...)."""
        return self.seed_dir(name) / "result.json"

    def seed_sweep(self, name: str) -> Path:
        return self.seed_dir(name) / "sweep.png"

    def crf_dir(self, name: str) -> Path:
        return self.stage_dir("crf", name)

    def crf_masks(self, name: str) -> Path:
        return self.crf_dir(name) / "masks"

    def ir_label_dir(self, name: str) -> Path:
        return self.stage_dir("ir_label", name)

    def irn_dir(self, name: str) -> Path:
        return self.stage_dir("train_irn", name)

    def irn_model(self, name: str) -> Path:
        return self.irn_dir(name) / IRN_MODEL_FILE

    def mask_dir(self, name: str) -> Path:
        """make_sem_seg's pseudo masks of a map set."""
        return self.stage_dir("make_sem_seg", name)

    def score_dir(self, name: str) -> Path:
        """make_sem_seg's random-walk scores of a map set (the segment stage re-trains from them)."""
        return self.stage_dir("make_sem_seg", f"{name}_scores")

    def saliency_mask_dir(self, name: str) -> Path:
        return self.stage_dir("make_sem_seg", f"{name}_saliency")

    def mask_eval_dir(self, name: str) -> Path:
        return self.stage_dir("eval_mask", name)

    def result(self, stage: str, name: str) -> Path:
        """An evaluating stage's (eval_seed, crf, eval_mask) result of a map set."""
        return self.stage_dir(stage, name, "result.json")

    @property
    def pictures(self) -> Path:
        return self.stage_dir("visualize")

    @property
    def segment_dir(self) -> Path:
        return self.stage_dir("segment")


# What the visualize stage draws under its folder (rib_ext.figures writes them, the report shows them).
PICTURE_PANELS = "images"
PICTURE_STEPS = "steps"
PICTURE_LOGIT_CURVES = "logit_curves.png"
