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


# ------------------------------------------- records checked without running a stage (cheap)

def _fake_run(out: Path, argv, threshold=0.3):
    """Every stage's record written over a placeholder output in each of its folders, as a
    finished run leaves them (eval_seed's result with ``threshold`` for both map sets)."""
    from rib_ext.layout import PER_SET
    from rib_ext.stages.context import RunContext
    from rib_ext.stages.options import config_from_argv
    from rib_ext.stages.provenance import Provenance

    ctx = RunContext(config_from_argv(["--out", str(out)] + argv))
    layout = ctx.layout
    for stage in STAGES:
        folders = [d for n in MAP_SETS for d in layout.set_dirs(stage, n)] if stage in PER_SET \
            else [layout.stage_dir(stage)]
        if stage in ("make_cam", "rib"):
            folders = [layout.maps_dir("cam" if stage == "make_cam" else "rib")]
        for folder in folders:
            folder.mkdir(parents=True, exist_ok=True)
            (folder / "placeholder.npy").write_bytes(b"x")
    for name in MAP_SETS:
        layout.seed_result(name).write_text(json.dumps({"best_threshold": threshold}))
    prov = Provenance(ctx, list(STAGES))
    for stage in STAGES:
        prov.write(stage)
    return ctx


def _plan(out: Path, argv, stages=None, overwrite=False):
    from rib_ext.stages.context import RunContext
    from rib_ext.stages.options import config_from_argv
    from rib_ext.stages.provenance import Provenance
    from rib_ext.stages.registry import DEFAULT_STAGES

    ctx = RunContext(config_from_argv(["--out", str(out)] + argv), overwrite=overwrite)
    return Provenance(ctx, list(STAGES)), list(stages or DEFAULT_STAGES)


@pytest.fixture
def voc_root(tiny_demo):
    """A small VOC-layout folder (the demo generator's, read as VOC)."""
    return tiny_demo


def test_a_ground_truth_edit_reaches_only_the_stages_that_read_the_ground_truth(tmp_path, voc_root):
    """It blamed make_cam ("annotations changed"): --overwrite recomputed the maps (hours of RIB
    on VOC) for a change that touches the evaluation only."""
    from rib_ext.data import load_label_png, save_label_png
    from rib_ext.stages.provenance import ProvenanceError

    out = tmp_path / "run"
    argv = ["--dataset", "voc", "--root", str(voc_root)]
    _fake_run(out, argv)
    first = (voc_root / "ImageSets" / "Segmentation" / "train.txt").read_text().split()[0]
    png = voc_root / "SegmentationClass" / f"{first}.png"
    mask = load_label_png(png)
    mask[:4, :4] = 255 - mask[:4, :4].max()  # a corrected corner: the image-level labels stay
    save_label_png(png, mask)

    prov, stages = _plan(out, argv)
    with pytest.raises(ProvenanceError) as err:
        prov.plan(stages)
    text = str(err.value)
    assert "ground-truth masks have changed" in text
    blamed = {s for s in STAGES if f"{out / s}" in text}
    assert blamed == {"eval_seed", "crf", "eval_mask", "visualize"}, text

    prov, stages = _plan(out, argv, overwrite=True)
    assert prov.plan(stages) == stages
    for kept in ("train_cam", "make_cam", "rib", "ir_label", "train_irn", "make_sem_seg"):
        assert (out / kept).is_dir(), kept
    for gone in ("eval_seed", "crf", "eval_mask", "visualize"):
        assert not (out / gone).exists(), gone


def test_a_label_edit_reaches_the_maps(tmp_path, voc_root):
    from rib_ext.stages.provenance import ProvenanceError

    out = tmp_path / "run"
    argv = ["--dataset", "voc", "--root", str(voc_root)]
    _fake_run(out, argv)
    first = (voc_root / "ImageSets" / "Segmentation" / "train.txt").read_text().split()[0]
    xml = voc_root / "Annotations" / f"{first}.xml"
    names = (voc_root / "classes.txt").read_text().split()
    text = xml.read_text()
    old = next(n for n in names if f"<name>{n}</name>" in text)
    new = next(n for n in names if f"<name>{n}</name>" not in text)
    xml.write_text(text.replace(f"<name>{old}</name>", f"<name>{new}</name>"))
    prov, stages = _plan(out, argv)
    with pytest.raises(ProvenanceError, match="image-level labels have changed") as err:
        prov.plan(stages)
    assert f"{out / 'train_cam'} was made" in str(err.value)


def test_a_value_derived_from_another_stages_result_is_checked_before_the_stage_runs(tmp_path):
    """crf's threshold is eval_seed's best one: masks made at 0.3 stayed beside masks made at
    0.2 once eval_seed moved; ir_label's auto thresholds likewise, and --overwrite did not clear
    ir_label's refusal."""
    from rib_ext.stages.provenance import ProvenanceError

    out = tmp_path / "run"
    argv = ["--irn-auto-thresholds", "true"]
    ctx = _fake_run(out, argv, threshold=0.3)
    ctx.layout.seed_result("cam").write_text(json.dumps({"best_threshold": 0.2}))
    prov, _ = _plan(out, argv)
    # eval_seed is not run: its result is what the stage will use, checked before anything runs.
    with pytest.raises(ProvenanceError, match=r"sets.cam.derived.threshold 0.3 -> 0.2"):
        prov.plan(["crf"])
    # eval_seed runs first: its result is known only then, and checked before crf runs.
    prov, _ = _plan(out, argv)
    assert prov.plan(["eval_seed", "crf"]) == ["eval_seed", "crf"]
    with pytest.raises(ProvenanceError) as err:
        prov.begin("crf")
    assert "sets.cam.derived.threshold 0.3 -> 0.2" in str(err.value)
    assert "crf/rib" not in str(err.value)
    prov, _ = _plan(out, argv, overwrite=True)
    prov.begin("ir_label")
    assert not ctx.layout.ir_label_dir("cam").exists()
    assert ctx.layout.ir_label_dir("rib").is_dir()
    # What was made from ir_label's cam labels goes with them; the rib branch stays.
    assert not ctx.layout.irn_dir("cam").exists() and not ctx.layout.mask_dir("cam").exists()
    assert ctx.layout.irn_dir("rib").is_dir() and ctx.layout.mask_dir("rib").is_dir()
    record = json.loads(ctx.layout.record("ir_label").read_text())
    assert record["sets"]["cam"]["derived"] == {"conf_fg": 0.3, "conf_bg": 0.1}


def test_the_walks_background_threshold_follows_eval_seed_and_is_checked(tmp_path):
    """With --irn-auto-thresholds make_sem_seg's background threshold is the map set's best seed
    threshold: recorded as the value used, and masks walked at another one are refused."""
    from rib_ext.stages.provenance import ProvenanceError

    out = tmp_path / "run"
    argv = ["--irn-auto-thresholds", "true"]
    ctx = _fake_run(out, argv, threshold=0.46)
    record = json.loads(ctx.layout.record("make_sem_seg").read_text())
    assert record["sets"]["rib"]["derived"]["sem_seg_bg_thres"] == 0.46
    ctx.layout.seed_result("rib").write_text(json.dumps({"best_threshold": 0.5}))
    prov, _ = _plan(out, argv)
    with pytest.raises(ProvenanceError, match=r"sets.rib.derived.sem_seg_bg_thres 0.46 -> 0.5"):
        prov.plan(["make_sem_seg"])
    # Without the rule the walk's threshold is the setting's, whatever eval_seed found.
    ctx = _fake_run(tmp_path / "fixed", ["--irn-auto-thresholds", "false"], threshold=0.46)
    record = json.loads(ctx.layout.record("make_sem_seg").read_text())
    assert "sem_seg_bg_thres" not in record["sets"]["rib"]["derived"]
    assert record["settings"]["sem_seg_bg_thres"] == ctx.cfg.irn.sem_seg_bg_thres


def test_overwrite_removes_only_the_named_stages_and_their_map_sets_descendants(tmp_path):
    out = tmp_path / "run"
    ctx = _fake_run(out, [])
    prov, _ = _plan(out, ["--rib-steps", "3"], overwrite=True)
    assert prov.plan(["rib"]) == ["rib"]
    layout = ctx.layout
    assert not layout.rib_dir.exists()
    for name, present in (("cam", True), ("rib", False)):
        for stage in ("eval_seed", "crf", "ir_label", "train_irn", "make_sem_seg", "eval_mask"):
            assert all(d.is_dir() == present for d in layout.set_dirs(stage, name)), (stage, name)
    assert layout.maps_dir("cam").is_dir() and layout.classifier_dir.is_dir()


def test_the_figures_of_removed_outputs_leave_the_summary(tmp_path):
    """The report is made from summary.json: a figure of outputs --overwrite removed stayed in it
    (and in report.md) until the stage ran again."""
    out = tmp_path / "run"
    ctx = _fake_run(out, [])
    ctx.layout.summary.write_text(json.dumps({
        "rib": {"images": 3}, "eval_seed": {"cam": {"miou": 0.2}, "rib": {"miou": 0.3}},
        "crf": {"cam": {"miou": 0.25}, "rib": {"miou": 0.35}}, "train_cam": {"model": "m"}}))
    prov, _ = _plan(out, ["--rib-steps", "3"], overwrite=True)
    prov.plan(["rib"])
    summary = json.loads(ctx.layout.summary.read_text())
    assert summary == {"eval_seed": {"cam": {"miou": 0.2}}, "crf": {"cam": {"miou": 0.25}},
                       "train_cam": {"model": "m"}}


def test_a_stale_stage_not_named_is_never_recomputed_silently(tmp_path, capsys):
    from rib_ext.stages.provenance import ProvenanceError

    out = tmp_path / "run"
    _fake_run(out, [])
    prov, _ = _plan(out, ["--rib-steps", "3"], overwrite=True)
    with pytest.raises(ProvenanceError, match="--stages is what runs"):
        prov.plan(["eval_seed"])
    assert (out / "rib").is_dir()


def test_an_old_record_still_loads_and_is_compared_on_its_settings(tmp_path):
    from rib_ext.stages.provenance import ProvenanceError

    out = tmp_path / "run"
    ctx = _fake_run(out, [])
    path = ctx.layout.record("rib")
    record = json.loads(path.read_text())
    old = {"stage": "rib", "settings": record["settings"],
           "inputs": {"train_cam": "0123456789abcdef", "data:eval": {"dataset": "demo"}},
           "fingerprint": "fedcba9876543210"}
    path.write_text(json.dumps(old))
    prov, _ = _plan(out, [])
    assert prov.plan(["rib"]) == ["rib"]
    prov, _ = _plan(out, ["--rib-steps", "3"])
    with pytest.raises(ProvenanceError, match="settings.steps"):
        prov.plan(["rib"])


# --------------------------------------------------------------- a data folder the user named

def test_a_named_demo_folder_is_never_regenerated_under_another_run(tmp_path, tiny_demo, capsys):
    from pipeline_runs import main

    root = tiny_demo
    stamp = (root / "demo_stamp.json").read_text()
    image = next((root / "JPEGImages").glob("*.jpg"))
    before = image.stat().st_mtime_ns
    code = main(["--out", str(tmp_path / "other"), "--root", str(root), "--demo-images", "4",
                 "--demo-val-images", "2", "--demo-size", "64", "--stages", "eval_seed"])
    err = capsys.readouterr().err
    assert code == 2 and err.startswith("error: ") and str(root) in err
    assert "--demo-size 48 -> 64" in err and "Traceback" not in err
    assert (root / "demo_stamp.json").read_text() == stamp and image.stat().st_mtime_ns == before


def test_a_runs_records_name_the_data_folder_they_were_made_from(tmp_path, tiny_demo):
    root = tiny_demo
    argv = ["--root", str(root), "--demo-images", "4", "--demo-val-images", "2", "--demo-size", "48"]
    prov, _ = _plan(tmp_path / "run", argv)
    data = prov.record("make_cam")["inputs"]["data:eval"]
    assert data["root"] == str(root.resolve()) and data["demo"]["image_size"] == 48
    prov, _ = _plan(tmp_path / "own", [])
    assert prov.record("make_cam")["inputs"]["data:eval"]["root"] == "<out>/data"


# ------------------------------------------------------------------ the pipeline, end to end

@pytest.fixture(scope="module")
def finished(tmp_path_factory):
    from pipeline_runs import finish_run

    return finish_run(tmp_path_factory, "trust", "train_cam,make_cam,rib,eval_seed,crf")


def test_crf_masks_follow_the_threshold_they_were_made_at(finished, tmp_path, capsys):
    """eval_seed's best threshold moved (a peek with --allow-missing, or an edited mask) after
    crf made its masks: crf kept the masks on disk, made at the old threshold, and exited 0 with a
    figure mixing two thresholds."""
    from pipeline_runs import TINY, copy_run, main

    out = copy_run(finished, tmp_path)
    result = out / "eval_seed" / "cam" / "result.json"
    seed = json.loads(result.read_text())
    moved = 0.2 if seed["best_threshold"] != 0.2 else 0.4
    result.write_text(json.dumps({**seed, "best_threshold": moved}))
    rib_masks = {p: p.stat().st_mtime_ns for p in (out / "crf" / "rib" / "masks").glob("*.png")}
    args = ["--out", str(out), "--stages", "crf"] + TINY
    capsys.readouterr()
    assert main(args) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and f"derived.threshold {seed['best_threshold']} -> {moved}" in err
    assert main(args + ["--overwrite"]) == 0
    record = json.loads((out / "crf" / "provenance.json").read_text())
    assert record["sets"]["cam"]["derived"]["threshold"] == moved
    assert json.loads((out / "crf" / "cam" / "result.json").read_text())["threshold"] == moved
    # The rib masks, made at rib's own (unchanged) threshold, were kept.
    assert {p: p.stat().st_mtime_ns for p in rib_masks} == rib_masks


def test_overwrite_of_rib_runs_rib_alone_and_keeps_the_cam_branch(finished, tmp_path):
    """`--overwrite --stages rib` ran every stage after rib and removed and rebuilt the CAM
    branch (crf/cam) though nothing of it had changed."""
    from pipeline_runs import TINY, copy_run, main

    out = copy_run(finished, tmp_path)
    cam = {p: p.stat().st_mtime_ns for p in (out / "crf" / "cam").rglob("*") if p.is_file()}
    assert main(["--out", str(out), "--stages", "rib", "--overwrite"] + TINY + ["--rib-steps", "1"]) == 0
    assert {p: p.stat().st_mtime_ns for p in cam if p.exists()} == cam
    assert not (out / "crf" / "rib").exists() and not (out / "eval_seed" / "rib").exists()
    assert json.loads((out / "config.json").read_text())["stages"] == ["rib"]
    summary = json.loads((out / "summary.json").read_text())
    assert "rib" not in summary["crf"] and "cam" in summary["crf"]


def test_a_record_made_before_a_settings_rename_reads_under_todays_name():
    from rib_ext.stages.provenance import _current_names

    old = {"stage": "rib", "settings": {"gndrp_mode": "authors", "lr": 8e-6}}
    assert _current_names(old) == {"stage": "rib", "settings": {"gndrp_behaviour": "authors", "lr": 8e-6}}


def test_the_irn_stages_run_at_the_thresholds_eval_seed_found(tmp_path, monkeypatch):
    """--irn-auto-thresholds: ir_label labels at best +- 0.1 and make_sem_seg walks with the
    background at best, per map set (the stages' own functions see those values), and
    config.json records the values used."""
    import rib_ext.irn as irn
    from rib_ext import pipeline
    from rib_ext.layout import Layout
    from rib_ext.stages.options import config_from_argv

    seen = []
    monkeypatch.setattr(irn, "ir_label_stage", lambda data, maps, out, cfg, **kw: seen.append(
        ("ir_label", out.name, cfg.conf_fg, cfg.conf_bg)) or {})
    monkeypatch.setattr(irn, "make_sem_seg_stage", lambda data, maps, irn_dir, out, cfg, **kw: seen.append(
        ("make_sem_seg", out.name, cfg.sem_seg_bg_thres)) or {})
    out = tmp_path / "run"
    layout = Layout(out)
    for name, best in (("cam", 0.42), ("rib", 0.5)):
        layout.maps_dir(name).mkdir(parents=True)
        (layout.maps_dir(name) / "x.npy").write_bytes(b"")  # a map set exists; the fakes never read it
        layout.seed_result(name).parent.mkdir(parents=True, exist_ok=True)
        layout.seed_result(name).write_text(json.dumps({"best_threshold": best}))
    cfg = config_from_argv(["--out", str(out), "--demo-images", "4", "--demo-val-images", "2",
                            "--demo-size", "48", "--device", "cpu", "--irn-auto-thresholds", "true"])
    pipeline.run(cfg, ["ir_label", "make_sem_seg"])
    assert sorted(seen) == [("ir_label", "cam", 0.52, 0.32), ("ir_label", "rib", 0.6, 0.4),
                            ("make_sem_seg", "cam", 0.42), ("make_sem_seg", "rib", 0.5)]
    # config.json says what ran: the values taken from eval_seed, per stage and map set; a
    # rerun from it (--config) takes the rule again, not the values.
    saved = json.loads(layout.config.read_text())
    assert saved["derived"] == {
        "ir_label": {"cam": {"conf_fg": 0.52, "conf_bg": 0.32}, "rib": {"conf_fg": 0.6, "conf_bg": 0.4}},
        "make_sem_seg": {"cam": {"sem_seg_bg_thres": 0.42}, "rib": {"sem_seg_bg_thres": 0.5}}}
    again = config_from_argv(["--config", str(layout.config)])
    assert again.irn_auto_thresholds and again.irn.sem_seg_bg_thres == cfg.irn.sem_seg_bg_thres
