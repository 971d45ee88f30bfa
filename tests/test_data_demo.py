"""The embedded demo: deterministic, complete VOC layout, and scenes with a small distinctive part
and a body of weaker class evidence."""
from __future__ import annotations

import time

import numpy as np
import pytest

from rib_ext.config import DemoDataConfig
from rib_ext.data import DatasetError, VOCDataset, build_dataset, generate_demo, labels_from_mask, labels_from_xml
from rib_ext.data.demo import CLASS_NAMES, DEMO_CLASSES, STAMP_NAME, render_scene

SMALL = DemoDataConfig(seed=3, num_train=10, num_val=4, image_size=64)


@pytest.fixture(scope="module")
def small_demo(tmp_path_factory):
    return generate_demo(tmp_path_factory.mktemp("demo") / "d", SMALL)


def test_default_generation_time(tmp_path):
    cfg = DemoDataConfig()
    start = time.perf_counter()
    root = generate_demo(tmp_path / "demo", cfg)
    elapsed = time.perf_counter() - start
    print(f"\ndemo generation ({cfg.num_train} train + {cfg.num_val} val at {cfg.image_size}px): {elapsed:.2f} s")
    assert len(VOCDataset(root, "train")) == cfg.num_train
    assert len(VOCDataset(root, "val")) == cfg.num_val


def test_same_seed_same_bytes(small_demo, tmp_path):
    again = generate_demo(tmp_path / "again", SMALL)
    for rel in ("SegmentationClass/2021_000005.png", "JPEGImages/2021_000005.jpg", "cls_labels.npy", "Annotations/2021_000012.xml"):
        assert (again / rel).read_bytes() == (small_demo / rel).read_bytes(), rel
    other = generate_demo(tmp_path / "other", DemoDataConfig(seed=4, num_train=10, num_val=4, image_size=64))
    assert (other / "SegmentationClass/2021_000005.png").read_bytes() != (small_demo / "SegmentationClass/2021_000005.png").read_bytes()


def test_layout_loads_as_voc(small_demo):
    train, val = VOCDataset(small_demo, "train"), VOCDataset(small_demo, "val")
    assert train.ids == [f"2021_{i:06d}" for i in range(10)] and val.ids == [f"2021_{i:06d}" for i in range(10, 14)]
    assert train.class_names == CLASS_NAMES and train.num_classes == 5
    assert (small_demo / "classes.txt").read_text().split() == list(CLASS_NAMES)
    for ds in (train, val):
        for i in range(len(ds)):
            img, mask = ds.image(i), ds.mask(i)
            assert img.shape == (64, 64, 3) and mask.shape == (64, 64)
            xml_labels = labels_from_xml(small_demo / "Annotations" / f"{ds.ids[i]}.xml", CLASS_NAMES)
            np.testing.assert_array_equal(ds.labels(i), xml_labels)  # from cls_labels.npy
            np.testing.assert_array_equal(labels_from_mask(mask, 5), xml_labels)
            assert 1 <= ds.labels(i).sum() <= 3
            assert set(np.unique(mask)) <= {0, 1, 2, 3, 4, 5, 255} and (mask == 255).any()


def test_ignore_band_is_a_thin_outline():
    _, mask, objects = render_scene(0, 1, 128)
    band = mask == 255
    assert objects and band.any()
    pad = np.pad(mask, 1, mode="edge")
    shifted = [pad[1 + dy:129 + dy, 1 + dx:129 + dx] for dy in (-1, 0, 1) for dx in (-1, 0, 1)]
    # the band separates objects from background: no object pixel touches a background pixel...
    touches_bg = np.zeros_like(band)
    for s in shifted:
        touches_bg |= s == 0
    assert not (touches_bg & (mask > 0) & (mask < 255)).any()
    # ...and it is thin: every band pixel lies within 2 px of a labelled pixel (wider only where
    # outlines of touching objects meet)
    pad2 = np.pad(mask, 2, mode="edge")
    near_clear = np.zeros_like(band)
    for dy in range(5):
        for dx in range(5):
            near_clear |= pad2[dy:dy + 128, dx:dx + 128] != 255
    assert near_clear[band].all()
    assert band.mean() < 0.5 * ((mask > 0) & (mask < 255)).mean()


def _chroma(px: np.ndarray) -> np.ndarray:
    """Colour with its grey level removed: what tells a tinted body from an earthy one."""
    return px - px.mean(-1, keepdims=True)


def test_scenes_have_distinctive_head_and_weaker_class_body():
    heads = np.array([c[1] for c in DEMO_CLASSES] + [c[2] for c in DEMO_CLASSES], np.float32)
    main = np.array([c[1] for c in DEMO_CLASSES], np.float32)
    head_share, head_colour_in_bg, bg_chroma = [], [], []
    body_chroma = {c: [] for c in range(1, 6)}
    for index in range(80):
        img, mask, _ = render_scene(0, index, 128)
        px = img.astype(np.float32)
        near_head = np.linalg.norm(px[:, :, None] - heads[None, None], axis=-1) < 45  # [H, W, 10]
        for c in np.unique(mask[(mask > 0) & (mask < 255)]):
            region = mask == c
            head_share.append(near_head[..., c - 1][region].mean())  # main head colour of class c
            body_chroma[c].append(_chroma(px[region & ~near_head.any(-1)]).mean(0))
        head_colour_in_bg.append(near_head.any(-1)[mask == 0].mean())
        bg_chroma.append(np.linalg.norm(_chroma(px[mask == 0]), axis=-1).mean())
    # The class colour covers a small part of each object and none of the background...
    assert 0.03 < np.mean(head_share) < 0.3
    assert np.mean(head_colour_in_bg) < 0.005  # only the brightest backgrounds come near a white or pink
    # ...the body leans towards its own class colour (weaker evidence, not none): away from the
    # average body (the earthy bases), each class's bodies move towards their own class colour...
    per_class = np.array([np.mean(body_chroma[c], 0) for c in range(1, 6)])
    lean, hue = per_class - per_class.mean(0), _chroma(main) - _chroma(main).mean(0)
    cos = (lean @ hue.T) / (np.linalg.norm(lean, axis=1)[:, None] * np.linalg.norm(hue, axis=1)[None])
    assert (cos.argmax(1) == np.arange(5)).all()
    # ...but far weaker than the head's, and the clutter and background stay greyer than bodies.
    strength = np.linalg.norm(per_class, axis=1) / np.linalg.norm(_chroma(main), axis=1)
    assert (strength < 0.45).all() and (np.linalg.norm(lean, axis=1) > 2.0).all()
    assert np.mean(bg_chroma) < 0.8 * np.linalg.norm(per_class, axis=1).mean()


def test_regeneration_skipped_or_redone(tmp_path):
    root = generate_demo(tmp_path / "d", SMALL)
    stamp = (root / STAMP_NAME).stat().st_mtime_ns
    jpg = (root / "JPEGImages/2021_000000.jpg").stat().st_mtime_ns
    generate_demo(root, SMALL)
    assert (root / STAMP_NAME).stat().st_mtime_ns == stamp and (root / "JPEGImages/2021_000000.jpg").stat().st_mtime_ns == jpg
    (root / "SegmentationClass/2021_000003.png").unlink()  # incomplete: regenerate
    generate_demo(root, SMALL)
    assert (root / "SegmentationClass/2021_000003.png").is_file()
    bigger = DemoDataConfig(seed=3, num_train=12, num_val=4, image_size=64)
    ds = build_dataset("demo", root, "train", demo=bigger)
    assert len(ds) == 12 and not (root / "JPEGImages/2021_000016.jpg").exists()


def test_refuses_foreign_folder(tmp_path):
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "thesis.tex").write_text("precious")
    with pytest.raises(DatasetError, match="mine.*not made by generate_demo"):
        generate_demo(tmp_path / "mine", SMALL)
    assert (tmp_path / "mine" / "thesis.tex").read_text() == "precious"


def test_demo_preset_names_real_settings():
    from rib_ext.config import PipelineConfig
    from rib_ext.presets import demo as demo_preset

    cfg = PipelineConfig()
    preset = demo_preset(128)
    for section, fields in preset.items():
        target = cfg if section == "pipeline" else getattr(cfg, section)
        missing = [k for k in fields if not hasattr(target, k)]
        assert not missing, (section, missing)
    assert preset["train_cam"]["crop_size"] == 128 and demo_preset(66)["irn"]["crop_size"] == 64
