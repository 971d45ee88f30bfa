"""Training: the loss ignores 255, the data stream, and resume reproduces the straight run."""
import numpy as np
import pytest
import torch

from rib_ext.config import DemoDataConfig
from rib_ext.data import VOCDataset, generate_demo, save_label_png
from rib_ext.segment import SegmentConfig, SegmentationTrainSet, load_deeplab, read_log, segmentation_loss, train_segmenter
from rib_ext.segment.train import STATE_FILE, make_optimizer

from factories import TINY_SEGMENT, tiny_deeplab

# The tiny networks start from random weights on purpose.
pytestmark = [pytest.mark.filterwarnings("ignore:DeepLab-v2 resnet18 backbone randomly initialised"),
              pytest.mark.usefixtures("one_thread")]

TINY = dict(TINY_SEGMENT, iterations=3, use_crf=False)


@pytest.fixture(scope="module")
def demo(tmp_path_factory):
    root = generate_demo(tmp_path_factory.mktemp("seg") / "demo",
                         DemoDataConfig(seed=2, num_train=3, num_val=1, image_size=40))
    return VOCDataset(root, "train")


@pytest.fixture(scope="module")
def label_dir(demo, tmp_path_factory):
    out = tmp_path_factory.mktemp("labels")
    for i, name in enumerate(demo.ids):
        save_label_png(out / f"{name}.png", demo.mask(i))
    return out


def test_loss_ignores_255():
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(2, 4, 5, 6, generator=g)
    labels = torch.randint(0, 4, (2, 5, 6), generator=g)
    labels[0, :2] = 255
    labels[1, :, 3] = 255
    loss = segmentation_loss(logits, labels)
    changed = logits.clone()
    changed[0, :, :2] = torch.randn(4, 2, 6, generator=g) * 10
    changed[1, :, :, 3] = torch.randn(4, 5, generator=g) * 10
    assert segmentation_loss(changed, labels).item() == loss.item()
    changed[0, :, 4, 0] += torch.tensor([5.0, -5.0, 3.0, 0.0])  # a labelled pixel
    assert segmentation_loss(changed, labels).item() != loss.item()
    valid = labels != 255
    ref = torch.nn.functional.cross_entropy(logits.permute(0, 2, 3, 1)[valid], labels[valid])
    torch.testing.assert_close(loss, ref)
    every = torch.full_like(labels, 255)
    assert segmentation_loss(logits, every).item() == 0.0


def test_training_stream_is_a_function_of_position(demo, label_dir):
    a = SegmentationTrainSet(demo, label_dir, demo.ids, 21, (0.5, 1.5), seed=4)
    b = SegmentationTrainSet(demo, label_dir, demo.ids, 21, (0.5, 1.5), seed=4)
    for position in (0, 5, 7):  # 7 lies in the third epoch of 3 images
        (ia, la), (ib, lb) = a[position], b[position]
        assert ia.shape == (3, 21, 21) and la.shape == (21, 21) and la.dtype == torch.int64
        torch.testing.assert_close(ia, ib)
        torch.testing.assert_close(la, lb)
    # Each epoch visits every image once.
    from rib_ext.segment.data import stream_image
    assert sorted(stream_image(p, 3, 4) for p in range(3, 6)) == [0, 1, 2]


def test_resume_reproduces_the_straight_run(demo, label_dir, tmp_path):
    cfg = SegmentConfig(**TINY)
    straight = train_segmenter(demo, label_dir, tmp_path / "straight", cfg)
    assert straight["finished"] and straight["iterations"] == 3

    first = train_segmenter(demo, label_dir, tmp_path / "resumed", cfg, stop_after=2)
    assert not first["finished"] and first["iterations"] == 2
    assert (tmp_path / "resumed" / STATE_FILE).exists()
    with pytest.raises(ValueError, match="other training settings.*lr"):
        train_segmenter(demo, label_dir, tmp_path / "resumed", cfg.replace(lr=1e-3))
    with pytest.raises(ValueError, match="training images changed"):
        train_segmenter(demo, label_dir, tmp_path / "resumed", cfg, names=demo.ids[:2])
    resumed = train_segmenter(demo, label_dir, tmp_path / "resumed", cfg)
    assert resumed["finished"] and resumed["iterations"] == 3
    assert not (tmp_path / "resumed" / STATE_FILE).exists()

    log_a = read_log(tmp_path / "straight" / "log.csv")
    log_b = read_log(tmp_path / "resumed" / "log.csv")
    assert [r["iteration"] for r in log_b] == [1, 2, 3]
    assert abs(log_a[2]["loss"] - log_b[2]["loss"]) <= 1e-6
    lr = cfg.lr
    assert [r["lr"] for r in log_a] == pytest.approx([lr, lr * (2 / 3) ** 0.9, lr * (1 / 3) ** 0.9])
    assert log_a[2]["lr"] == log_b[2]["lr"]
    assert log_a[0]["loss"] != log_a[1]["loss"]  # batches differ, so the check has teeth
    model_a = load_deeplab(straight["model"]).state_dict()
    model_b = load_deeplab(resumed["model"]).state_dict()
    for key in model_a:
        torch.testing.assert_close(model_a[key], model_b[key], msg=key)
    # A finished run is not trained again.
    assert train_segmenter(demo, label_dir, tmp_path / "resumed", cfg)["skipped_existing"]


def test_optimizer_groups_follow_deeplab():
    model = tiny_deeplab()
    opt = make_optimizer(model, SegmentConfig(lr=1e-3))
    lrs = [(g["lr"], g["weight_decay"], g["momentum"], len(g["params"])) for g in opt.param_groups]
    assert lrs[1:] == [(1e-2, 5e-4, 0.9, 4), (2e-2, 0.0, 0.9, 4)]
    assert lrs[0][:3] == (1e-3, 5e-4, 0.9)


def test_wrong_labels_are_named(demo, tmp_path):
    bad = tmp_path / "bad"
    save_label_png(bad / f"{demo.ids[0]}.png", np.zeros((7, 7), np.uint8))
    with pytest.raises(ValueError, match=rf"{demo.ids[0]}\.png.*7x7"):
        SegmentationTrainSet(demo, bad, demo.ids[:1], 21, (1.0, 1.0))[0]
    with pytest.raises(FileNotFoundError, match="no training labels"):
        train_segmenter(demo, bad, tmp_path / "out", SegmentConfig(**TINY))


def test_killed_between_checkpoints_resumes_bitwise(demo, label_dir, tmp_path, monkeypatch):
    """Killed right after iteration 2 (state last written at 1): the resumed run ends bitwise equal."""
    from rib_ext.segment import train as train_mod

    cfg = SegmentConfig(**{**TINY, "checkpoint_every": 1})

    class Killed(Exception):
        pass

    real_step = train_mod.PolyOptimizer.step
    calls = []

    def dying_step(self, *a, **k):
        out = real_step(self, *a, **k)
        calls.append(1)
        if len(calls) == 2:
            raise Killed
        return out

    straight = train_segmenter(demo, label_dir, tmp_path / "straight", cfg)
    with monkeypatch.context() as m:
        m.setattr(train_mod.PolyOptimizer, "step", dying_step)
        with pytest.raises(Killed):
            train_segmenter(demo, label_dir, tmp_path / "killed", cfg)
    torch.manual_seed(7)
    resumed = train_segmenter(demo, label_dir, tmp_path / "killed", cfg)
    a, b = load_deeplab(straight["model"]).state_dict(), load_deeplab(resumed["model"]).state_dict()
    for key in a:
        assert torch.equal(a[key], b[key]), key
    assert [r["iteration"] for r in read_log(tmp_path / "killed" / "log.csv")] == [1, 2, 3]


def test_non_finite_loss_names_iteration_and_lr(demo, label_dir, tmp_path):
    from rib_ext.training import NonFiniteLossError

    with pytest.raises(NonFiniteLossError, match=r"segment: the loss is (nan|inf) at step \d with learning rate 1e\+30"):
        train_segmenter(demo, label_dir, tmp_path, SegmentConfig(**{**TINY, "lr": 1e30, "iterations": 3}))
