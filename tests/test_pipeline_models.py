"""The pipeline on classifiers other than CAMNet (`--model torchvision:NAME | timm:NAME`): trained,
mapped, adapted and evaluated end to end, saved and reloaded; bad model names refused."""
import json

import pytest
import torch

from pipeline_runs import TINY, main

timm = pytest.importorskip("timm", reason="timm is an optional extra: pip install '.[timm]'")

STAGES = "train_cam,make_cam,rib,eval_seed"


@pytest.mark.slow
@pytest.mark.parametrize("model", ["timm:resnet18", "timm:deit_tiny_patch16_224"])
def test_pipeline_runs_a_timm_model_end_to_end(tmp_path, model):
    out = tmp_path / "run"
    assert main(["--out", str(out), "--stages", STAGES, "--model", model, "--random-init"]
                + TINY) == 0
    cfg = json.loads((out / "config.json").read_text())
    assert cfg["train_cam"]["model"] == model
    for maps in ("make_cam", "rib"):
        assert any((out / maps / "maps").glob("*.npy"))
    summary = json.loads((out / "summary.json").read_text())
    assert "eval_seed" in json.dumps(summary)
    from rib_ext.models import CAMClassifier, load_cam_net

    net = load_cam_net(next((out / "train_cam").glob("*.pth")))
    assert isinstance(net, CAMClassifier) and net.model_spec == model


def test_checkpoint_of_an_adapted_model_round_trips(tmp_path):
    from rib_ext.models import load_cam_net, save_cam_net
    from rib_ext.models.zoo import build_classifier

    net = build_classifier("torchvision:resnet18", 4, random_init=True, split="layer4")
    save_cam_net(tmp_path / "c.pth", net)
    back = load_cam_net(tmp_path / "c.pth")
    assert back.split == "layer4" and back.model_spec == "torchvision:resnet18"
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        torch.testing.assert_close(back.eval()(x), net.eval()(x))


def test_user_weights_load_with_a_new_head(tmp_path):
    import torchvision

    from rib_ext.models.zoo import build_classifier

    torch.manual_seed(0)
    imagenet_like = torchvision.models.resnet18(num_classes=1000)
    torch.save(imagenet_like.state_dict(), tmp_path / "r18.pth")
    net = build_classifier("torchvision:resnet18", 5, weights=str(tmp_path / "r18.pth"))
    assert net.num_classes == 5
    torch.testing.assert_close(net.body.steps[0][0].conv1.weight, imagenet_like.layer3[0].conv1.weight)
    torch.save({"some": torch.zeros(3)}, tmp_path / "other.pth")
    with pytest.raises(ValueError, match="not a torchvision:resnet18 state dict"):
        build_classifier("torchvision:resnet18", 5, weights=str(tmp_path / "other.pth"))


@pytest.mark.parametrize("model, match", [("timm:no_such_net", "timm has no model"),
                                          ("torchvision:resnet51", "torchvision has no classifier"),
                                          ("keras:resnet50", "'camnet', 'torchvision:NAME'")])
def test_bad_model_names_are_refused(model, match):
    from rib_ext.models.zoo import build_classifier

    with pytest.raises(ValueError, match=match):
        build_classifier(model, 5, random_init=True)
