"""Pictures of maps (rib_ext.figures) and the run report (rib_ext.report)."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from rib_ext.data import VOCDataset, save_label_png
from rib_ext.data.voc import write_cls_labels
from rib_ext.io import save_json, save_npy
from rib_ext.report import PAPER_VOC, build_report, settings_diff, table_rows, write_report
from rib_ext.figures import (CAPTION_HEIGHT, choose_images, heat_overlay, load_records, map_score,
                               plot_logit_curves, render_image_panel, render_step_montage,
                               visualize_maps, visualize_run)

H, W = 24, 32


def _maps(score: np.ndarray, keys=(0,)) -> dict:
    high = np.stack([score] * len(keys)).astype(np.float32)
    return {"keys": np.array(keys), "cam": high[:, ::4, ::4], "high_res": high}


def _png(path) -> Image.Image:
    img = Image.open(path)
    img.verify()  # a truncated or corrupt PNG raises here
    return Image.open(path).convert("RGB")


def test_choose_images_is_deterministic_and_spread():
    ids = [f"i{k}" for k in range(100)]
    picks = choose_images(ids, 12)
    assert picks == choose_images(ids, 12)
    assert len(picks) == 12 and picks[0] == "i0" and picks[-1] == "i99"
    assert choose_images(ids[:5], 12) == ids[:5]
    assert choose_images(ids, 0) == []


def test_map_score_is_the_best_class_and_clipped():
    a = np.zeros((2, H, W), np.float32)
    a[0, :5] = 0.7
    a[1, :, :3] = 1.2
    s = map_score({"keys": np.array([0, 1]), "high_res": a})
    assert s[0, 10] == pytest.approx(0.7) and s[10, 0] == 1.0 and s[10, 10] == 0.0


def test_panel_size_and_pixels_follow_the_maps(tmp_path):
    rng = np.random.default_rng(0)
    image = rng.integers(0, 255, (H, W, 3), dtype=np.uint8)
    gt = np.zeros((H, W), np.uint8)
    gt[4:12, 4:20] = 1
    gt[3, 4:20] = 255
    left = np.zeros((H, W), np.float32)
    left[:, : W // 2] = 1.0  # the two maps differ only on the right half
    right = left.copy()
    right[:, W // 2:] = 1.0
    seed = (left > 0.5).astype(np.uint8) * 2
    tile = 64
    out = render_image_panel(image, gt, {"a": left, "b": right, "seed": seed}, tmp_path / "p.png",
                             title="t", tile=tile)
    img = np.asarray(_png(out)).astype(int)
    tw, th = tile, round(H * tile / W)
    assert img.shape == (CAPTION_HEIGHT + th + CAPTION_HEIGHT, 5 * tw, 3)
    top = 2 * CAPTION_HEIGHT

    def tile_px(k):
        return img[top:top + th, k * tw:(k + 1) * tw]

    a, b = tile_px(2), tile_px(3)
    # Same map on the left half: same pixels; different map on the right half: different pixels.
    assert np.array_equal(a[:, : tw // 2 - 1], b[:, : tw // 2 - 1])
    assert np.abs(a[:, tw // 2 + 1:] - b[:, tw // 2 + 1:]).mean() > 20
    # The heat overlay is the image blended with the colour map, not the colour map alone.
    assert np.array_equal(heat_overlay(image, right)[0, 0], heat_overlay(image, right)[0, 0])
    assert not np.array_equal(heat_overlay(image, right), heat_overlay(image[::-1].copy(), right))
    with pytest.raises(ValueError, match="layer 'x'"):
        render_image_panel(image, None, {"x": np.zeros((H + 1, W))}, tmp_path / "bad.png")


def test_step_montage_and_logit_curves(tmp_path):
    image = np.full((H, W, 3), 128, np.uint8)
    steps = [np.full((H, W), k / 3, np.float32) for k in range(4)]
    out = render_step_montage(image, steps, tmp_path / "m.png", tile=40, columns=5)
    img = np.asarray(_png(out)).astype(int)
    assert img.shape[1] == 5 * 40
    th = round(H * 40 / W)
    first = img[CAPTION_HEIGHT:CAPTION_HEIGHT + th, 40:80]
    last = img[CAPTION_HEIGHT:CAPTION_HEIGHT + th, 160:200]
    assert np.abs(first - last).mean() > 20  # step 0 (score 0) and step 3 (score 1) differ
    records = [{"name": "a", "stop": "steps", "target_logit_sums": [1.0, 5.0, 9.0]},
               {"name": "b", "stop": "margin", "target_logit_sums": [2.0, 40.0]}]
    (tmp_path / "records.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    curves = plot_logit_curves(load_records(tmp_path / "records.jsonl"), 30.0, tmp_path / "c.png")
    assert _png(curves).size == (640, 400)
    with pytest.raises(ValueError, match="no records"):
        plot_logit_curves([], 1.0, tmp_path / "none.png")


def _tiny_run(tmp_path):
    """A VOC-layout dataset of 3 images and a run folder with CAM / RIB maps, seeds' results,
    CRF masks, records and a summary."""
    root = tmp_path / "data"
    ids = ["2021_000000", "2021_000001", "2021_000002"]
    (root / "ImageSets" / "Segmentation").mkdir(parents=True)
    (root / "ImageSets" / "Segmentation" / "val.txt").write_text("".join(i + "\n" for i in ids))
    (root / "classes.txt").write_text("a\nb\n")
    rng = np.random.default_rng(0)
    out = tmp_path / "run"
    for k, name in enumerate(ids):
        (root / "JPEGImages").mkdir(exist_ok=True)
        Image.fromarray(rng.integers(0, 255, (H, W, 3), dtype=np.uint8)).save(root / "JPEGImages" / f"{name}.jpg")
        gt = np.zeros((H, W), np.uint8)
        gt[5:15, 5:25] = 1 + k % 2
        save_label_png(root / "SegmentationClass" / f"{name}.png", gt)
        cam = np.zeros((H, W), np.float32)
        cam[8:12, 8:14] = 1.0
        rib = cam.copy()
        rib[5:15, 5:25] = np.maximum(rib[5:15, 5:25], 0.6)
        save_npy(out / "make_cam" / "maps" / f"{name}.npy", _maps(cam, (k % 2,)))
        save_npy(out / "rib" / "maps" / f"{name}.npy", _maps(rib, (k % 2,)))
        save_label_png(out / "crf" / "rib" / "masks" / f"{name}.png", gt)
    write_cls_labels(root, ids, root / "cls_labels.npy", source="mask")
    per_class = {"cam": {"background": 0.9, "a": 0.2, "b": 0.3}, "rib": {"background": 0.92, "a": 0.5, "b": 0.4}}
    summary = {"eval_seed": {"stage_seconds": 1.5}, "crf": {"stage_seconds": 2.0}, "seconds": 9.0}
    for name, miou in (("cam", 0.4667), ("rib", 0.6067)):
        save_json(out / "eval_seed" / name / "result.json",
                  {"best_threshold": 0.3, "miou": miou, "per_class_iou": per_class[name]})
        summary["eval_seed"][name] = {"best_threshold": 0.3, "miou": miou, "precision": 0.5, "recall": 0.6}
    summary["crf"]["rib"] = {"threshold": 0.3, "miou": 0.7}
    save_json(out / "summary.json", summary)
    save_json(out / "config.json", {"dataset": "demo", "eval_list": "val", "rib": {"margin": 600.0, "lr": 1e-4}})
    (out / "rib" / "records.jsonl").write_text(json.dumps(
        {"name": ids[0], "stop": "steps", "steps": 3, "target_logit_sums": [1.0, 2.0, 3.0]}) + "\n")
    return VOCDataset(root, "val"), out


def test_visualize_run_and_cli_on_generated_maps(tmp_path):
    dataset, out = _tiny_run(tmp_path)
    result = visualize_run(out, dataset, count=2)
    assert [p.split("/")[-1] for p in result["images"]] == ["2021_000000.png", "2021_000002.png"]
    panel = np.asarray(_png(result["images"][0]))
    # image, gt, CAM map, RIB map, CAM seed, RIB seed, RIB + CRF: 4 columns, 2 rows of 192-px tiles.
    th = round(H * 192 / W)
    assert panel.shape[:2] == (CAPTION_HEIGHT + 2 * (th + CAPTION_HEIGHT), 4 * 192)
    assert result["logit_curves"] and _png(result["logit_curves"]).size == (640, 400)
    assert result["steps"] == []  # no model given: no re-adaptation

    from rib_ext.visualize.__main__ import main

    assert main([str(out / "rib" / "maps"), "--dataset", "voc", "--root", str(tmp_path / "data"),
                 "--list", "val", "--gt", "--ids", "2021_000001", "--out", str(tmp_path / "cli")]) == 0
    png = tmp_path / "cli" / "2021_000001.png"
    assert png.is_file() and _png(png).size == (3 * 192, CAPTION_HEIGHT + th + CAPTION_HEIGHT)
    with pytest.raises(FileNotFoundError, match="no <id>.npy"):
        visualize_maps({"x": tmp_path}, dataset, tmp_path / "none")


@pytest.mark.slow  # several ranks
def test_visualize_run_shares_the_panels_among_ranks(tmp_path):
    """Under torchrun each rank draws its share of the chosen panels (the same choice on every
    rank) and rank 0 the logit curves: together, one process's pictures byte for byte."""
    dataset, out = _tiny_run(tmp_path)
    one = visualize_run(out, dataset, count=3, dest=str(tmp_path / "one"))
    parts = [visualize_run(out, dataset, count=3, dest=str(tmp_path / "two"), rank=r, world=2)
             for r in range(2)]
    names = [[Path(p).name for p in part["images"]] for part in parts]
    assert names == [["2021_000000.png", "2021_000002.png"], ["2021_000001.png"]]
    assert sorted(sum(names, [])) == sorted(Path(p).name for p in one["images"])
    for p in one["images"]:
        assert Path(p).read_bytes() == (tmp_path / "two" / "images" / Path(p).name).read_bytes()
    assert parts[0]["logit_curves"] and parts[1]["logit_curves"] is None


def test_report_table_equals_summary(tmp_path):
    dataset, out = _tiny_run(tmp_path)
    visualize_run(out, dataset, count=1)
    preset = {"dataset": "demo", "eval_list": "val", "rib": {"margin": 600.0, "lr": 8e-6}}
    path = write_report(out, preset=preset)
    text = path.read_text()
    summary = json.loads((out / "summary.json").read_text())
    rows = table_rows(summary)
    assert rows["rib"]["seed"] == summary["eval_seed"]["rib"]["miou"]
    assert rows["rib"]["crf"] == summary["crf"]["rib"]["miou"] and rows["cam"]["crf"] is None
    table = [ln for ln in text.splitlines() if ln.startswith("| CAM |") or ln.startswith("| RIB |")]
    cells = {ln.split("|")[1].strip(): [c.strip() for c in ln.split("|")[2:-1]] for ln in table}
    for name in ("cam", "rib"):
        s = summary["eval_seed"][name]
        assert cells[name.upper()][0] == f"{100 * s['miou']:.1f}"
        assert cells[name.upper()][2:4] == [f"{100 * s['precision']:.1f}", f"{100 * s['recall']:.1f}"]
    assert cells["RIB"][4] == "70.0" and cells["CAM"][4] == "-"
    assert "| a | 20.0 | 50.0 | +30.0 |" in text  # per-class IoU side by side
    assert "| `rib.lr` | `8e-06` | `0.0001` |" in text and "rib.margin" not in text
    assert "![logit curves](visualize/logit_curves.png)" in text
    assert "(paper)" not in text  # the paper's figures are VOC's
    voc = build_report(out, used={"dataset": "voc"})
    assert f"| RIB (paper) | {PAPER_VOC['rib']['seed']:.1f} |" in voc
    assert settings_diff({"a": (1, 2)}, {"a": [1, 2]}) == []
    assert settings_diff({"a": {"b": 1}}, {"a": {"b": 2}, "stages": ["rib"]}) == [("a.b", 1, 2)]


def test_step_montage_from_the_engine(tmp_path):
    """visualize_run with a model re-adapts images with snapshots: one map per step, and the
    montage draws them (a tiny network, 2 steps)."""
    from factories import TinyDataset, tiny_cam_net
    from rib_ext.config import RIBConfig
    from rib_ext.rib import OtherImages
    from rib_ext.figures import step_maps_with_engine

    data = TinyDataset(n=4, k=3)
    pool = OtherImages(data, "cpu", resize_long=(40, 72), crop=48)
    cfg = RIBConfig.preset(behaviour="authors", steps=2, lr=0.02, num_others=2, margin=1e9,
                               stop_on_explosion=False,
                               scales=(1.0, 0.5), loss_scales=(1.0,), other_resize_long=(40, 72),
                               other_crop=48)
    maps = step_maps_with_engine(tiny_cam_net(k=3), pool, cfg, data, [data.ids[1]])
    scores = maps[data.ids[1]]
    assert len(scores) == 2 and scores[0].shape == data.image(1).shape[:2]
    assert not np.allclose(scores[0], scores[1])  # adaptation moved the map
    out = render_step_montage(data.image(1), scores, tmp_path / "s.png", tile=32)
    assert _png(out).size[0] == 3 * 32


def test_report_cli_diffs_against_the_runs_preset(tmp_path):
    from rib_ext.presets import demo as demo_preset
    from rib_ext.report import main, preset_of_run

    _, out = _tiny_run(tmp_path)
    preset = preset_of_run(out)
    m0 = demo_preset(128)["rib"]["margin"]
    assert preset["rib"]["margin"] == m0
    save_json(out / "config.json", {**preset, "stages": ["rib"]})
    assert main([str(out)]) == 0
    assert "None: the run used the preset as it is." in (out / "report.md").read_text()
    save_json(out / "config.json", {**preset, "rib": {**preset["rib"], "margin": 2 * m0}})
    main([str(out)])
    assert f"| `rib.margin` | `{m0}` | `{2 * m0}` |" in (out / "report.md").read_text()


def test_report_reading_says_which_way_it_went():
    from rib_ext.report import reading

    rows = {"cam": {"seed": 0.353, "crf": 0.532, "mask": 0.213},
            "rib": {"seed": 0.353, "crf": 0.441, "mask": 0.28}}
    text = "\n".join(reading(rows))
    assert "RIB left the seed level: +0.0 points over CAM" in text
    assert "CAM: the CRF above the seed (+17.9 points)" in text
    assert "RIB: IRN's masks not above the seed (-7.3 points)" in text
    rows["rib"]["seed"] = 0.40
    assert reading(rows)[0].startswith("- RIB raised the seed: +4.7")
    rows["rib"]["seed"] = 0.30
    assert reading(rows)[0].startswith("- RIB lowered the seed: -5.3")
