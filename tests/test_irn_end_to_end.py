"""The IRN stages on a tiny generated dataset: ir_label -> train_irn -> make_sem_seg -> eval_mask,
with resume, missing inputs and inputs from another dataset."""
import warnings

import numpy as np
import pytest
import torch

from rib_ext.config import DemoDataConfig
from rib_ext.data import VOCDataset, generate_demo, load_label_png
from rib_ext.io import save_npy
from rib_ext.irn import (IRNConfig, eval_mask_stage, ir_label_stage, load_irnet,
                         make_sem_seg_stage, train_irn_stage)

pytest.importorskip("pydensecrf.densecrf")

# resnet18 from random weights; crop 96 -> a 24x24 label grid, enough for path radius 10.
TRAIN = dict(backbone="resnet18", random_init=True, crop_size=96, batch_size=1, epochs=1,
             device="cpu", allow_missing=False)


@pytest.fixture(scope="module")
def demo(tmp_path_factory):
    root = generate_demo(tmp_path_factory.mktemp("irn") / "demo",
                         DemoDataConfig(seed=1, num_train=2, num_val=1, image_size=64))
    return VOCDataset(root, "train")


def _maps_from_masks(ds, folder, extra_key=None):
    """IRN map files made from the ground truth: 0.9 on each object, 0.2 on the void outline."""
    for i, name in enumerate(ds.ids):
        mask = ds.mask(i)
        keys = np.nonzero(ds.labels(i))[0]
        if extra_key is not None:
            keys = np.append(keys, extra_key)
        high = np.stack([(mask == k + 1) * 0.9 + (mask == 255) * 0.2 for k in keys]).astype(np.float32)
        save_npy(folder / f"{name}.npy", {"keys": keys, "cam": torch.from_numpy(high[:, ::4, ::4].copy()),
                                          "high_res": high})
    return folder


@pytest.fixture(scope="module")
def maps_dir(demo, tmp_path_factory):
    return _maps_from_masks(demo, tmp_path_factory.mktemp("maps"))


@pytest.fixture(scope="module")
def labels_dir(demo, maps_dir, tmp_path_factory):
    out = tmp_path_factory.mktemp("ir_label")
    summary = ir_label_stage(demo, maps_dir, out, IRNConfig())
    assert summary["written"] == 2 and summary["skipped_existing"] == 0
    return out


@pytest.fixture(scope="module")
def irn_dir(demo, labels_dir, tmp_path_factory):
    out = tmp_path_factory.mktemp("irn_net")
    with pytest.warns(UserWarning, match="randomly initialised"):
        summary = train_irn_stage(demo, labels_dir, out, IRNConfig(**TRAIN))
    assert summary["finished"] and summary["steps"] == summary["max_step"] == 2
    assert np.isfinite(summary["loss"]["total"])
    return out


def test_ir_labels_and_resume(demo, maps_dir, labels_dir):
    for i, name in enumerate(demo.ids):
        labels = load_label_png(labels_dir / f"{name}.png")
        mask = demo.mask(i)
        assert labels.shape == mask.shape
        allowed = {0, 255} | {int(k) + 1 for k in np.nonzero(demo.labels(i))[0]}
        assert set(np.unique(labels)) <= allowed
        assert (labels == mask)[mask != 255].mean() > 0.9  # the maps came from this mask
    stamps = [(labels_dir / f"{n}.png").stat().st_mtime_ns for n in demo.ids]
    again = ir_label_stage(demo, maps_dir, labels_dir, IRNConfig())
    assert again["written"] == 0 and again["skipped_existing"] == 2
    assert stamps == [(labels_dir / f"{n}.png").stat().st_mtime_ns for n in demo.ids]
    with pytest.raises(ValueError, match="other settings"):
        ir_label_stage(demo, maps_dir, labels_dir, IRNConfig(conf_fg=0.5))


def test_missing_maps_error_or_skip(demo, maps_dir, tmp_path):
    partial = tmp_path / "maps"
    partial.mkdir()
    first = demo.ids[0]
    (partial / f"{first}.npy").write_bytes((maps_dir / f"{first}.npy").read_bytes())
    with pytest.raises(FileNotFoundError, match=f"1 of 2 images have no maps .*{demo.ids[1]}"):
        ir_label_stage(demo, partial, tmp_path / "out", IRNConfig())
    with pytest.warns(UserWarning, match=f"no maps .*{demo.ids[1]}.*skipped"):
        summary = ir_label_stage(demo, partial, tmp_path / "out", IRNConfig(allow_missing=True))
    assert summary["written"] == 1 and summary["missing"] == 1


def test_maps_from_another_dataset(demo, irn_dir, tmp_path):
    maps = _maps_from_masks(demo, tmp_path / "maps", extra_key=17)  # the demo has 5 classes
    with pytest.raises(ValueError, match=r"keys .*17.* exceed the dataset's 5 classes.*another dataset"):
        ir_label_stage(demo, maps, tmp_path / "out", IRNConfig())
    with pytest.raises(ValueError, match="another dataset"):
        make_sem_seg_stage(demo, maps, irn_dir, tmp_path / "sem", IRNConfig(device="cpu"))


def test_train_resume_equals_uninterrupted(demo, labels_dir, irn_dir, tmp_path):
    cfg = IRNConfig(**TRAIN)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        first = train_irn_stage(demo, labels_dir, tmp_path, cfg, stop_after=1)
        assert not first["finished"] and first["steps"] == 1
        assert (tmp_path / "irn_train_state.pth").exists() and not (tmp_path / "irn.pth").exists()
        second = train_irn_stage(demo, labels_dir, tmp_path, cfg)
    assert second["finished"] and second["steps"] == 2
    assert not (tmp_path / "irn_train_state.pth").exists()
    resumed = load_irnet(tmp_path / "irn.pth").state_dict()
    straight = load_irnet(irn_dir / "irn.pth").state_dict()
    assert resumed.keys() == straight.keys()
    for k in straight:
        torch.testing.assert_close(resumed[k], straight[k], rtol=1e-5, atol=1e-6, msg=k)
    # the heads did train, and the frozen backbone did not
    fresh = load_irnet(irn_dir / "irn.pth")
    assert fresh.mean_shift.running_mean.abs().sum() > 0
    assert not any(p.requires_grad for p in fresh.stages.parameters())
    done = train_irn_stage(demo, labels_dir, tmp_path, cfg)
    assert done["skipped_existing"] and done["finished"]


def test_resume_refuses_other_settings(demo, labels_dir, tmp_path):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        train_irn_stage(demo, labels_dir, tmp_path, IRNConfig(**TRAIN), stop_after=1)
        with pytest.raises(ValueError, match="other training settings.*lr"):
            train_irn_stage(demo, labels_dir, tmp_path, IRNConfig(**{**TRAIN, "lr": 0.5}))


def test_sem_seg_masks_and_eval(demo, maps_dir, irn_dir, tmp_path):
    out = tmp_path / "sem_seg"
    summary = make_sem_seg_stage(demo, maps_dir, irn_dir, out, IRNConfig(device="cpu"))
    assert summary["written"] == 2
    for i, name in enumerate(demo.ids):
        mask = load_label_png(out / f"{name}.png")
        assert mask.shape == demo.mask(i).shape
        assert set(np.unique(mask)) <= {0} | {int(k) + 1 for k in np.nonzero(demo.labels(i))[0]}
    (out / f"{demo.ids[0]}.png").unlink()
    again = make_sem_seg_stage(demo, maps_dir, irn_dir, out, IRNConfig(device="cpu"))
    assert again["written"] == 1 and again["skipped_existing"] == 1

    result = eval_mask_stage(demo, out, tmp_path / "eval")
    assert result["num_images"] == 2 and 0.0 <= result["miou"] <= 1.0
    assert set(result["per_class_iou"]) == {"background", *demo.class_names}
    for f in ("result.json", "result.md", "confusion.npy"):
        assert (tmp_path / "eval" / f).is_file()


def test_eval_mask_counts_what_it_reads(demo, tmp_path):
    # The ground truth itself scores 1.0; a wrong-sized mask is named.
    from rib_ext.data import save_label_png
    for i, name in enumerate(demo.ids):
        save_label_png(tmp_path / "gt" / f"{name}.png", np.where(demo.mask(i) == 255, 0, demo.mask(i)))
    assert eval_mask_stage(demo, tmp_path / "gt", tmp_path / "e1")["miou"] == pytest.approx(1.0)
    save_label_png(tmp_path / "gt" / f"{demo.ids[1]}.png", np.zeros((5, 5), np.uint8))
    with pytest.raises(ValueError, match=f"{demo.ids[1]}.png: mask is 5x5"):
        eval_mask_stage(demo, tmp_path / "gt", tmp_path / "e2")


def test_sem_seg_writes_the_scores_its_masks_come_from(demo, maps_dir, irn_dir, tmp_path):
    """The random-walk scores saved for the segment stage's re-training give back the masks."""
    import torch.nn.functional as F

    from rib_ext.segment.retrain import load_scores

    cfg = IRNConfig(device="cpu")
    make_sem_seg_stage(demo, maps_dir, irn_dir, tmp_path / "masks", cfg, score_dir=tmp_path / "scores")
    for i, name in enumerate(demo.ids):
        keys, scores = load_scores(tmp_path / "scores" / f"{name}.npy", demo.num_classes,
                                   demo.image_size(i))
        padded = F.pad(torch.from_numpy(scores), (0, 0, 0, 0, 1, 0), value=cfg.sem_seg_bg_thres)
        lut = np.concatenate([[0], keys + 1])
        from_scores = lut[padded.argmax(dim=0).numpy()]
        mask = load_label_png(tmp_path / "masks" / f"{name}.png")
        # float16 storage may flip pixels whose score ties the background threshold
        assert (from_scores == mask).mean() > 0.99


def test_train_killed_between_checkpoints_resumes_bitwise_and_logs_once(demo, labels_dir, tmp_path, monkeypatch):
    """A kill right after step 3 (state last written at step 2) resumes to the uninterrupted weights."""
    from rib_ext.irn import train_irn as train_irn_mod
    from rib_ext.training import read_loss_log

    cfg = IRNConfig(**{**TRAIN, "epochs": 2, "checkpoint_every": 2})  # 2 images, batch 1: 4 steps

    class Killed(Exception):
        pass

    class Dying(train_irn_mod.PolyOptimizer):
        taken = 0

        def step(self, *a, **k):
            out = super().step(*a, **k)
            Dying.taken += 1
            if Dying.taken == 3:
                raise Killed
            return out

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        train_irn_stage(demo, labels_dir, tmp_path / "straight", cfg)
        with monkeypatch.context() as m:
            m.setattr(train_irn_mod, "PolyOptimizer", Dying)
            with pytest.raises(Killed):
                train_irn_stage(demo, labels_dir, tmp_path / "killed", cfg)
        torch.manual_seed(99)
        train_irn_stage(demo, labels_dir, tmp_path / "killed", cfg)
    a = load_irnet(tmp_path / "straight" / "irn.pth").state_dict()
    b = load_irnet(tmp_path / "killed" / "irn.pth").state_dict()
    for k in a:
        assert torch.equal(a[k], b[k]), k
    log_a = read_loss_log(tmp_path / "straight" / "loss.csv")
    log_b = read_loss_log(tmp_path / "killed" / "loss.csv")
    assert [r["step"] for r in log_b] == [1, 2, 3, 4] and [r["epoch"] for r in log_b] == [1, 1, 2, 2]
    assert [(r["loss"], r["lr"]) for r in log_a] == [(r["loss"], r["lr"]) for r in log_b]


def test_train_stops_on_a_non_finite_loss(demo, labels_dir, tmp_path, monkeypatch):
    from rib_ext.irn import train_irn as train_irn_mod
    from rib_ext.training import NonFiniteLossError

    real = train_irn_mod.irn_loss

    def diverging(*a, **k):
        terms = real(*a, **k)
        return {**terms, "total": terms["total"] * float("nan")}

    monkeypatch.setattr(train_irn_mod, "irn_loss", diverging)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        with pytest.raises(NonFiniteLossError, match=r"train_irn: the loss is nan at epoch 1/1, step 1 with learning rate 0.1"):
            train_irn_stage(demo, labels_dir, tmp_path, IRNConfig(**TRAIN))
    assert not (tmp_path / "irn.pth").exists()
