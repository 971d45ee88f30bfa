"""Shared training helpers and the trainers built on them: kill-and-resume equality, loss logs,
non-finite losses, training states refused when made with other settings."""
import csv
import warnings

import numpy as np
import pytest
import torch

from factories import TinyDataset
from rib_ext.checkpoints import CheckpointError, MissingCheckpointError, read_checkpoint, write_checkpoint
from rib_ext.config import TrainCamConfig
from rib_ext.models import load_cam_net
from rib_ext.cam import train as train_cam_mod
from rib_ext.training import (LossLog, NonFiniteLossError, epoch_batches, load_training_state,
                              read_loss_log, save_training_state)


pytestmark = pytest.mark.usefixtures("one_thread")


class Killed(Exception):
    """Stands for a kill -9: raised from inside the training loop after a chosen optimizer step."""


def killing_optimizer(monkeypatch, module, after_steps):
    """Patch ``module.PolyOptimizer`` so that the run dies right after its ``after_steps``-th step."""
    base = module.PolyOptimizer

    class Dying(base):
        taken = 0

        def step(self, *a, **k):
            out = super().step(*a, **k)
            Dying.taken += 1
            if Dying.taken == after_steps:
                raise Killed(f"killed after step {after_steps}")
            return out

    monkeypatch.setattr(module, "PolyOptimizer", Dying)


def cam_cfg(**kw):
    base = dict(backbone="resnet_tiny", random_init=True, from_scratch=True, epochs=3, batch_size=2,
                crop_size=32, resize_long=(32, 48), lr=0.05, checkpoint_every=2, device="cpu", seed=3)
    base.update(kw)
    return TrainCamConfig(**base)


def _train(dataset, cfg, out):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return train_cam_mod.train_cam(dataset, cfg, out)


def _weights(path):
    return load_cam_net(path).state_dict()


@pytest.fixture(scope="module")
def straight_cam(tmp_path_factory):
    """An uninterrupted run: 7 images, batch 2 -> 3 steps per epoch, 9 steps in all."""
    out = tmp_path_factory.mktemp("straight")
    path = _train(TinyDataset(n=7, k=3, size=(36, 40)), cam_cfg(), out)
    return path, read_loss_log(out / train_cam_mod.LOSS_LOG)


# checkpoints fall at steps 2, 3 (epoch end), 4, 6, 8, 9; a kill right after step k (before its
# checkpoint) resumes from: k=1 nothing (fresh start), k=5 step 4 (mid-epoch 2), k=7 step 6 (epoch end)
@pytest.mark.parametrize("kill_after", [1, 5, 7])
def test_train_cam_killed_anywhere_resumes_to_identical_weights(tmp_path, monkeypatch, straight_cam, kill_after):
    dataset = TinyDataset(n=7, k=3, size=(36, 40))
    with monkeypatch.context() as m:
        killing_optimizer(m, train_cam_mod, kill_after)
        with pytest.raises(Killed):
            _train(dataset, cam_cfg(), tmp_path)
    assert not (tmp_path / train_cam_mod.MODEL_FILE).exists()
    torch.manual_seed(12345)  # whatever global RNG state the new process starts with
    np.random.seed(999)
    path = _train(dataset, cam_cfg(), tmp_path)
    straight, straight_log = straight_cam
    a, b = _weights(straight), _weights(path)
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k  # bitwise on CPU
    assert not (tmp_path / train_cam_mod.STATE_FILE).exists()
    # the loss log of the resumed run: the same rows, none twice, seconds aside
    log = read_loss_log(tmp_path / train_cam_mod.LOSS_LOG)
    assert [r["step"] for r in log] == list(range(1, 10))
    assert [(r["epoch"], r["loss"], r["lr"]) for r in log] == [(r["epoch"], r["loss"], r["lr"]) for r in straight_log]


def test_train_cam_loss_log_columns(straight_cam):
    _, log = straight_cam
    assert list(log[0]) == ["epoch", "step", "loss", "lr", "seconds"]
    assert [r["epoch"] for r in log] == [1, 1, 1, 2, 2, 2, 3, 3, 3]
    assert log[0]["lr"] == 0.05 and log[-1]["lr"] < log[0]["lr"]  # poly decay
    assert all(np.isfinite(r["loss"]) and r["seconds"] >= 0 for r in log)


def test_train_cam_refuses_a_state_made_with_other_settings(tmp_path, monkeypatch):
    dataset = TinyDataset(n=7, k=3, size=(36, 40))
    with monkeypatch.context() as m:
        killing_optimizer(m, train_cam_mod, 3)
        with pytest.raises(Killed):
            _train(dataset, cam_cfg(), tmp_path)
    with pytest.raises(CheckpointError, match=r"train_state.pth: written with other training settings "
                                              r"\(epochs: 3 -> 4; lr: 0.05 -> 0.1\)"):
        _train(dataset, cam_cfg(lr=0.1, epochs=4), tmp_path)
    # workers, device and checkpoint spacing do not change the weights: resuming with others is fine
    _train(dataset, cam_cfg(checkpoint_every=5), tmp_path)


def test_train_cam_stops_on_a_non_finite_loss(tmp_path):
    dataset = TinyDataset(n=4, k=3, size=(36, 40))
    with pytest.raises(NonFiniteLossError, match=r"train_cam: the loss is (nan|inf) at epoch 1/3, step \d+ "
                                                 r"with learning rate 1e\+30"):
        _train(dataset, cam_cfg(lr=1e30), tmp_path)
    assert not (tmp_path / train_cam_mod.MODEL_FILE).exists()


# ------------------------------------------------------------------------------------ the helpers

def test_epoch_batches_depend_on_seed_epoch_and_cover_the_images():
    a = epoch_batches(7, 2, seed=1, epoch=0)
    assert a == epoch_batches(7, 2, seed=1, epoch=0)
    assert a != epoch_batches(7, 2, seed=1, epoch=1) and a != epoch_batches(7, 2, seed=2, epoch=0)
    assert [len(b) for b in a] == [2, 2, 2]
    assert len({i for b in a for i, _ in b}) == 6
    full = epoch_batches(3, 4, seed=0, epoch=0, drop_last=False)
    assert sorted(i for b in full for i, _ in b) == [0, 1, 2]


def test_training_state_round_trip_restores_random_states(tmp_path):
    model, opt = torch.nn.Linear(3, 2), None
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    model(torch.randn(4, 3)).sum().backward()
    opt.step()
    torch.manual_seed(7)
    np.random.seed(7)
    import random
    random.seed(7)
    save_training_state(tmp_path / "s.pth", format="test", settings={"lr": 0.1, "sizes": (1, 2)},
                        step=5, model=model, optimizer=opt, seconds=1.5, extra={"k": [1]})
    expected = (torch.rand(3), np.random.rand(3), random.random())
    model2 = torch.nn.Linear(3, 2)
    opt2 = torch.optim.SGD(model2.parameters(), lr=0.1, momentum=0.9)
    state = load_training_state(tmp_path / "s.pth", format="test", settings={"lr": 0.1, "sizes": (1, 2)},
                                model=model2, optimizer=opt2)
    assert (state.step, state.seconds, state.extra) == (5, 1.5, {"k": [1]})
    assert torch.equal(torch.rand(3), expected[0]) and np.array_equal(np.random.rand(3), expected[1])
    assert random.random() == expected[2]
    assert torch.equal(model2.weight, model.weight)
    assert opt2.state_dict()["state"][0]["momentum_buffer"].equal(opt.state_dict()["state"][0]["momentum_buffer"])
    with pytest.raises(CheckpointError, match=r"s.pth: written with other training settings \(lr: 0.1 -> 0.2\)"):
        load_training_state(tmp_path / "s.pth", format="test", settings={"lr": 0.2, "sizes": (1, 2)},
                            model=model2, optimizer=opt2)
    with pytest.raises(CheckpointError, match=r"s.pth: not a other \(format 'test', expected 'x'\); delete it"):
        load_training_state(tmp_path / "s.pth", format="x", settings={}, model=model2, optimizer=opt2, what="other")


def test_read_checkpoint_names_the_problem(tmp_path):
    with pytest.raises(MissingCheckpointError, match=r"IRN checkpoint not found: .*absent.pth \(train_irn writes it\)"):
        read_checkpoint(tmp_path / "absent.pth", "f", 1, "IRN checkpoint", " (train_irn writes it)")
    assert issubclass(MissingCheckpointError, FileNotFoundError)
    write_checkpoint(tmp_path / "a.pth", {"format": "f", "version": 2, "w": torch.ones(2)})
    with pytest.raises(CheckpointError, match="a.pth: thing version 2 is not supported"):
        read_checkpoint(tmp_path / "a.pth", "f", 1, "thing")
    assert read_checkpoint(tmp_path / "a.pth", "f", 2)["w"].sum() == 2
    data = (tmp_path / "a.pth").read_bytes()
    (tmp_path / "a.pth").write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match="a.pth: not a readable thing"):
        read_checkpoint(tmp_path / "a.pth", "f", 1, "thing")
    torch.save([1, 2], tmp_path / "l.pth")
    with pytest.raises(CheckpointError, match="l.pth: not a thing: expected a state dict or a record \\(a dict\\), found a list"):
        read_checkpoint(tmp_path / "l.pth", "f", 1, "thing")


def test_loss_log_drops_rows_after_the_resumed_step_and_cut_rows(tmp_path):
    path = tmp_path / "loss.csv"
    with LossLog(path, ("epoch", "step", "loss")) as log:
        for s in range(1, 6):
            log.write(epoch=1, step=s, loss=s / 3)
    with open(path, "a") as f:
        f.write("1,6,0.")  # a row cut by a kill
    with LossLog(path, ("epoch", "step", "loss"), resume_step=3) as log:
        log.write(epoch=1, step=4, loss=9.0)
    rows = list(csv.reader(open(path)))
    assert rows[0] == ["epoch", "step", "loss"] and [r[1] for r in rows[1:]] == ["1", "2", "3", "4"]
    assert read_loss_log(path)[0]["loss"] == 1 / 3 and read_loss_log(path)[3]["loss"] == 9.0
    # a fresh start (step 0) truncates
    LossLog(path, ("epoch", "step", "loss")).close()
    assert path.read_text() == "epoch,step,loss\n"
