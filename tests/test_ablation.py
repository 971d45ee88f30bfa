"""The ablation runner on a tiny configuration: one row per value, and the per-step curve."""
import json
import warnings

from rib_ext import ablation, pipeline
from rib_ext.presets import demo as demo_preset

from pipeline_runs import TINY

# Four held-out images to sweep on and every map scale, on TINY's classifier.
TINY = TINY + ["--demo-images", "12", "--demo-val-images", "4",
               "--scales", "1.0", "0.5", "1.5", "2.0", "--thresholds", "0.20", "0.49", "0.01"]


def test_sweep_gives_one_row_per_value_and_a_curve(tmp_path, capsys):
    run = tmp_path / "run"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        pipeline.main(["--out", str(run), "--stages", "train_cam"] + TINY)
        assert ablation.main(["--run", str(run), "--option", "tau", "--values", "0.3", "0.5"]) == 0
        assert ablation.main(["--run", str(run), "--option", "margin,lr", "--values", "x1:x1",
                              "300:x2", "--out", str(tmp_path / "pairs")]) == 0
        assert ablation.main(["--run", str(run), "--suite", "curve", "--steps", "3"]) == 0
    rows = json.loads((run / "ablation" / "tau" / "results.json").read_text())
    assert [r["value"] for r in rows] == ["tau=0.3", "tau=0.5"]
    assert all(0 <= r["miou"] <= 1 for r in rows)
    assert "| tau=0.5 |" in (run / "ablation" / "tau" / "results.md").read_text()
    pairs = json.loads((tmp_path / "pairs" / "margin_lr" / "results.json").read_text())
    rib0 = demo_preset(64)["rib"]  # the run's own margin and lr (x1), then 300 and twice the lr
    assert [r["value"] for r in pairs] == [f"margin={rib0['margin']:g},lr={rib0['lr']:g}",
                                           f"margin=300,lr={2 * rib0['lr']:g}"]
    curve = json.loads((run / "ablation" / "curve" / "results.json").read_text())
    assert set(curve) == {"gap", "gndrp"} and all(len(v) == 3 for v in curve.values())
    assert (run / "ablation" / "curve" / "curve.png").stat().st_size > 0
    assert "per-step seed mIoU (gndrp)" in capsys.readouterr().out


def test_bad_option_is_refused():
    from rib_ext.config import RIBConfig
    import pytest

    with pytest.raises(SystemExit, match="unknown RIB option"):
        ablation.parse_value(RIBConfig(), ["taux"], "0.3")
    with pytest.raises(SystemExit, match="needs 2 part"):
        ablation.parse_value(RIBConfig(), ["margin", "lr"], "600")


def test_a_run_made_from_a_given_classifier_is_swept_on_that_classifier(tmp_path, tiny_classifier_run):
    """It looked for train_cam's file only and, finding none, trained another classifier on the
    embedded demo: the sweep then measured a network the run's maps never came from."""
    import torch

    from rib_ext.models import load_cam_net

    given = tiny_classifier_run / "train_cam" / "cam_net.pth"
    run = tmp_path / "run"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        assert pipeline.main(["--out", str(run), "--cam-checkpoint", str(given),
                              "--stages", "make_cam"] + TINY) == 0
    _, model, _, _ = ablation.load_run(run)
    assert not (run / "train_cam").exists()
    expected = load_cam_net(given, "cpu").state_dict()
    assert all(torch.equal(v, expected[k]) for k, v in model.state_dict().items())
