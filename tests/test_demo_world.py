"""The demo world (the pretraining set), the pretraining recipe and the shipped backbone."""
from __future__ import annotations

import hashlib
import shutil
import tomllib
from fnmatch import fnmatch
from pathlib import Path

import numpy as np
import pytest
import torch

from rib_ext.data.demo import DEMO_SPECIES, render_scene
from rib_ext.data.demo_world import FAMILIES, WORLD_SPECIES, world_arrays, world_scene
from rib_ext.models import pretrained
from rib_ext.models.pretrained import SHIPPED, ShippedWeightsError, shipped_path

ROOT = Path(__file__).resolve().parents[1]


def test_the_demo_draws_the_same_images_as_before_the_world_shared_its_code():
    # sha256 of images 0, 1, 2 and 241 (a held-out one) at 64 pixels, from the drawing code as it
    # was before the species table (the demo's version-2 images).
    h = hashlib.sha256()
    for i in (0, 1, 2, 241):
        img, mask, _ = render_scene(0, i, 64)
        h.update(img.tobytes())
        h.update(mask.tobytes())
    assert h.hexdigest() == "7b8cbcbb8c4d0e971fea594b1b468adfee127192d43feda04e1db018654ab038"


def test_world_has_tens_of_classes_none_of_them_the_demos():
    assert len(WORLD_SPECIES) == 4 * FAMILIES >= 20
    assert len({s.name for s in WORLD_SPECIES}) == len(WORLD_SPECIES)
    demo_heads = {(s.head, s.head2, s.pattern) for s in DEMO_SPECIES}
    for s in WORLD_SPECIES:
        assert s not in DEMO_SPECIES
        assert (s.head, s.head2, s.pattern) not in demo_heads, s.name
    assert len(set(WORLD_SPECIES)) == len(WORLD_SPECIES)


def _parts(s):
    return {"head": (s.head, s.head2, s.pattern), "body": (s.body, s.body2, s.body_pattern),
            "shape": (s.aspect, s.head_ratio)}


def test_heads_bodies_and_shapes_each_tell_some_classes_apart():
    """In each family of four, each variant differs from the first in exactly one part."""
    for f in range(FAMILIES):
        base, *variants = WORLD_SPECIES[4 * f: 4 * f + 4]
        for variant, part in zip(variants, ("head", "body", "shape")):
            a, b = _parts(base), _parts(variant)
            assert [k for k in a if a[k] != b[k]] == [part], (base.name, variant.name)


def test_world_images_single_and_multiple_objects_and_none_is_a_demo_image():
    images, labels = world_arrays(60, seed=0, size=64)
    counts = labels.sum(1)
    assert counts.min() >= 1 and (counts == 1).any() and (counts >= 2).any()
    assert labels.shape == (60, len(WORLD_SPECIES))
    img, lab = world_scene(0, 5, 64)
    assert np.array_equal(img, images[5]) and np.array_equal(lab, labels[5])  # a function of (seed, index)
    # The demo's held-out images (the default demo: 240 training, 60 held-out) and its training ones.
    demo = {hashlib.sha256(render_scene(0, i, 64)[0].tobytes()).digest() for i in range(300)}
    assert not demo & {hashlib.sha256(x.tobytes()).digest() for x in images}
    # Same seed and index, still a different image: the world's random stream is its own.
    assert not np.array_equal(render_scene(0, 0, 64)[0], world_scene(0, 0, 64)[0])


def test_pretraining_recipe_is_reproducible_bit_for_bit(tmp_path):
    from rib_ext.cam.pretrain import PretrainConfig, pretrain

    cfg = PretrainConfig(images=16, held_out=4, epochs=2, batch_size=8, image_size=48,
                         resize_long=(40, 56), crop=40)
    a = pretrain(cfg, tmp_path / "a.pth", log=lambda *_: None)
    b = pretrain(cfg, tmp_path / "b.pth", log=lambda *_: None)
    assert a.read_bytes() == b.read_bytes()
    c = pretrain(PretrainConfig(**{**cfg.__dict__, "seed": 1}), tmp_path / "c.pth", log=lambda *_: None)
    assert c.read_bytes() != a.read_bytes()


def test_pretrain_command_rejects_a_bad_setting(capsys):
    from rib_ext.cam.pretrain import main

    assert main(["--images", "4", "--batch-size", "8", "--out", "/nonexistent/x.pth"]) == 2
    assert "error: pretraining needs --images >= --batch-size" in capsys.readouterr().err


def test_shipped_backbone_is_small_recorded_and_loads():
    entry = SHIPPED["demo_world"]
    path = shipped_path("demo_world")  # checks the sha256
    assert path.stat().st_size <= 5 * 1024 * 1024
    assert hashlib.sha256(path.read_bytes()).hexdigest() == entry.sha256
    from rib_ext.models import build_cam_net

    net = build_cam_net("resnet_tiny", 5, weights="rib_ext:demo_world", strides=(2, 2, 1, 1))
    record = torch.load(path, weights_only=True)
    assert torch.equal(net.stage4.layer4[0].conv1.weight, record["state_dict"]["layer4.0.conv1.weight"])
    # The learnt statistics come along (a fixed batch norm of the fine-tuning uses them).
    assert not torch.equal(net.stage1.bn1.running_var, torch.ones_like(net.stage1.bn1.running_var))


def test_shipped_weights_are_package_data():
    spec = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["package-data"]
    rel = (Path("weights") / SHIPPED["demo_world"].file).as_posix()
    assert any(fnmatch(rel, pattern) for pattern in spec["rib_ext.models"])
    assert (ROOT / "rib_ext" / "models" / rel).is_file()


@pytest.fixture
def altered_weights(tmp_path, monkeypatch):
    copy = tmp_path / "weights"
    copy.mkdir()
    data = bytearray(shipped_path("demo_world").read_bytes())
    data[-100] ^= 1
    (copy / SHIPPED["demo_world"].file).write_bytes(bytes(data))
    monkeypatch.setattr(pretrained, "WEIGHTS_DIR", copy)
    return copy / SHIPPED["demo_world"].file


def test_altered_or_missing_shipped_file_is_an_error_naming_it(altered_weights):
    from rib_ext.models import build_cam_net

    with pytest.raises(ShippedWeightsError, match=r"demo_world_resnet_tiny\.pth: sha256 .* altered"):
        build_cam_net("resnet_tiny", 5, weights="rib_ext:demo_world")
    altered_weights.unlink()
    with pytest.raises(ShippedWeightsError, match="missing from the installed package"):
        build_cam_net("resnet_tiny", 5, weights="rib_ext:demo_world")
    with pytest.raises(ShippedWeightsError, match="rib_ext:imagenet: no such shipped weights"):
        build_cam_net("resnet_tiny", 5, weights="rib_ext:imagenet")


def test_pipeline_stops_on_an_altered_shipped_file(altered_weights, tmp_path, capsys):
    from rib_ext.pipeline import main

    out = tmp_path / "run"
    code = main(["--out", str(out), "--demo-images", "4", "--demo-val-images", "2", "--demo-size", "48",
                 "--stages", "train_cam", "--epochs", "1"])
    assert code == 2
    err = capsys.readouterr().err
    assert "error:" in err and "demo_world_resnet_tiny.pth: sha256" in err
    assert not (out / "train_cam" / "cam_net.pth").exists()


def test_irn_starts_from_the_shipped_backbone():
    from rib_ext.irn.network import build_irnet

    net = build_irnet("resnet_tiny", "rib_ext:demo_world")
    record = torch.load(shipped_path("demo_world"), weights_only=True)
    view = net.backbone_view().state_dict()
    assert torch.equal(view["layer3.0.conv1.weight"], record["state_dict"]["layer3.0.conv1.weight"])
