"""What a run folder's outputs were made with, and where they are: one layout answers every path
of the run folder; one record per stage (provenance.json) says what its outputs were made with,
including what the stage derived from another stage's result; a ground-truth edit reaches only
the stages that read the ground truth; --stages is what runs; a data folder the user named is
never rewritten under another run."""
import json
import re
from pathlib import Path

import pytest

from rib_ext.layout import MAP_SETS, OUTPUTS, PER_SET, Layout
from rib_ext.stages.registry import STAGES

PACKAGE = Path(__file__).resolve().parents[1] / "rib_ext"


def test_the_layout_declares_every_stage_and_answers_each_map_sets_folders(tmp_path):
    assert set(OUTPUTS) == set(STAGES)
    layout = Layout(tmp_path)
    assert layout.set_dirs("make_sem_seg", "rib") == [tmp_path / "make_sem_seg" / "rib",
                                                      tmp_path / "make_sem_seg" / "rib_scores",
                                                      tmp_path / "make_sem_seg" / "rib_saliency"]
    assert layout.set_dirs("rib", "rib") == [tmp_path / "rib" / "maps"]
    assert layout.set_dirs("rib", "cam") == [] and layout.set_dirs("visualize", "cam") == []
    assert set(PER_SET) == {"eval_seed", "crf", "ir_label", "train_irn", "make_sem_seg", "eval_mask"}
    assert set(MAP_SETS) == {"cam", "rib"}


def test_no_module_but_the_layout_spells_a_path_of_the_run_folder():
    stages = "|".join(STAGES)
    # A stage folder's name as a path part ("crf" / x, x / "crf", "crf/..."), the classifier's
    # file name, or the run's own files joined to a folder.
    pattern = re.compile(rf'/\s*"({stages})"|"({stages})"\s*/|"({stages})/|"cam_net\.pth"'
                         rf'|/\s*"(config|summary|provenance)\.json"|/\s*"report\.md"'
                         rf'|stage_dir\(\s*"({stages})"')
    found = []
    for path in PACKAGE.rglob("*.py"):
        if path.name == "layout.py" and path.parent == PACKAGE:
            continue
        for n, line in enumerate(path.read_text().splitlines(), 1):
            # A domain function's own folder keeps its files (segment's config.json, rib's
            # summary.json): they are the stage's outputs, named where they are written.
            own = path.parent.name in ("segment", "rib", "irn", "cam") and "out_dir /" in line
            if pattern.search(line) and not own:
                found.append(f"{path.relative_to(PACKAGE)}:{n}: {line.strip()}")
    assert not found, "\n".join(found)
