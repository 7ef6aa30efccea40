"""The model zoo (shapes, torchvision key compatibility) and pickle-free checkpoints."""
from __future__ import annotations

import json
import sys
import textwrap

import pytest
import torch
from torch import nn

from edgeprune.errors import UserInputError
from edgeprune.models import MODEL_NAMES, build_model, default_input_size, model_spec
from edgeprune.models.checkpoint import FORMAT, load_checkpoint, load_weights, save_checkpoint

CIFAR_STYLE = ("resnet20", "resnet32", "resnet56", "vgg16_bn")
IMAGENET_STYLE = ("mobilenet_v2", "resnet18")


class Unpicklable:
    """A plain Python object: weights_only loading must refuse files holding one."""


def _randomize_bn(model: nn.Module, seed: int = 0) -> nn.Module:
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.running_mean.copy_(torch.rand(m.num_features, generator=gen) * 0.4 - 0.2)
                m.running_var.copy_(torch.rand(m.num_features, generator=gen) + 0.5)
                m.weight.copy_(torch.rand(m.num_features, generator=gen) + 0.5)
                m.bias.copy_(torch.rand(m.num_features, generator=gen) * 0.2 - 0.1)
    return model.eval()


def _shapes(model: nn.Module) -> dict[str, tuple[int, ...]]:
    return {k: tuple(v.shape) for k, v in model.state_dict().items()}


# ---- the zoo ----

def test_registry_lists_every_model():
    assert set(MODEL_NAMES) == set(CIFAR_STYLE) | set(IMAGENET_STYLE)
    assert all(default_input_size(n) == 32 for n in CIFAR_STYLE)
    assert all(default_input_size(n) == 224 for n in IMAGENET_STYLE)


@pytest.mark.parametrize("name", CIFAR_STYLE)
@pytest.mark.parametrize("in_channels", [1, 3])
def test_cifar_models_run_on_32_and_28(name, in_channels):
    torch.manual_seed(0)
    model = build_model(name, num_classes=7, in_channels=in_channels).eval()
    with torch.no_grad():
        for side in (32, 28):
            out = model(torch.randn(2, in_channels, side, side))
            assert out.shape == (2, 7) and torch.isfinite(out).all()


@pytest.mark.parametrize("name", IMAGENET_STYLE)
@pytest.mark.parametrize("in_channels", [1, 3])
def test_imagenet_models_run_at_224(name, in_channels):
    torch.manual_seed(0)
    model = build_model(name, num_classes=13, in_channels=in_channels).eval()
    with torch.no_grad():
        out = model(torch.randn(2, in_channels, 224, 224))
    assert out.shape == (2, 13) and torch.isfinite(out).all()


def test_resnet18_matches_torchvision_layout():
    model = build_model("resnet18", num_classes=1000, in_channels=3)
    shapes = _shapes(model)
    assert sum(p.numel() for p in model.parameters()) == 11_689_512
    assert len(shapes) == 122
    assert shapes["conv1.weight"] == (64, 3, 7, 7)
    assert shapes["bn1.running_var"] == (64,) and shapes["bn1.num_batches_tracked"] == ()
    assert shapes["layer1.0.conv1.weight"] == (64, 64, 3, 3)
    assert shapes["layer2.0.conv1.weight"] == (128, 64, 3, 3)
    assert shapes["layer2.0.downsample.0.weight"] == (128, 64, 1, 1)
    assert shapes["layer2.0.downsample.1.running_mean"] == (128,)
    assert shapes["layer4.1.bn2.bias"] == (512,)
    assert shapes["fc.weight"] == (1000, 512) and shapes["fc.bias"] == (1000,)
    assert "layer1.0.downsample.0.weight" not in shapes


def test_mobilenet_v2_matches_torchvision_layout():
    model = build_model("mobilenet_v2", num_classes=1000, in_channels=3)
    shapes = _shapes(model)
    assert sum(p.numel() for p in model.parameters()) == 3_504_872
    assert len(shapes) == 314
    expected = {
        "features.0.0.weight": (32, 3, 3, 3), "features.0.1.weight": (32,),
        "features.1.conv.0.0.weight": (32, 1, 3, 3), "features.1.conv.0.1.running_var": (32,),
        "features.1.conv.1.weight": (16, 32, 1, 1), "features.1.conv.2.bias": (16,),
        "features.2.conv.0.0.weight": (96, 16, 1, 1), "features.2.conv.1.0.weight": (96, 1, 3, 3),
        "features.2.conv.2.weight": (24, 96, 1, 1), "features.2.conv.3.weight": (24,),
        "features.17.conv.2.weight": (320, 960, 1, 1), "features.18.0.weight": (1280, 320, 1, 1),
        "features.18.1.num_batches_tracked": (), "classifier.1.weight": (1000, 1280), "classifier.1.bias": (1000,),
    }
    assert {k: shapes.get(k) for k in expected} == expected
    half = _shapes(build_model("mobilenet_v2", num_classes=10, in_channels=1, width_mult=0.5))
    assert half["features.0.0.weight"] == (16, 1, 3, 3) and half["classifier.1.weight"] == (10, 1280)


def test_vgg16_bn_keeps_torchvision_feature_indices():
    model = build_model("vgg16_bn", num_classes=10, in_channels=1)
    shapes = _shapes(model)
    assert shapes["features.0.weight"] == (64, 1, 3, 3) and shapes["features.1.running_mean"] == (64,)
    assert shapes["features.7.weight"] == (128, 64, 3, 3)
    assert shapes["features.40.weight"] == (512, 512, 3, 3) and shapes["features.41.bias"] == (512,)
    assert shapes["classifier.weight"] == (10, 512)
    pools = [i for i, m in enumerate(model.features) if isinstance(m, nn.MaxPool2d)]
    assert pools == [6, 13, 23, 33, 43]


@pytest.mark.parametrize("name, blocks", [("resnet20", 3), ("resnet32", 5), ("resnet56", 9)])
def test_cifar_resnet_structure(name, blocks):
    model = build_model(name, num_classes=10, in_channels=1)
    assert [len(s) for s in (model.layer1, model.layer2, model.layer3)] == [blocks] * 3
    assert model.conv1.weight.shape == (16, 1, 3, 3) and model.fc.weight.shape == (10, 64)
    assert model.layer1[0].downsample is None
    assert model.layer2[0].downsample[0].weight.shape == (32, 16, 1, 1)
    assert model.layer3[0].downsample[1].num_features == 64
    convs = sum(isinstance(m, nn.Conv2d) and m.kernel_size == (3, 3) for m in model.modules())
    assert convs + 1 == 6 * blocks + 2  # 3x3 convs + fc = depth


def test_registry_rejects_bad_input():
    with pytest.raises(UserInputError, match="unknown model 'resnet999'.*resnet20.*mobilenet_v2"):
        build_model("resnet999")
    with pytest.raises(UserInputError, match="takes no option 'width_mult'"):
        build_model("resnet20", width_mult=0.5)
    with pytest.raises(UserInputError, match="num_classes"):
        build_model("resnet20", num_classes=0)
    with pytest.raises(UserInputError, match="unknown model"):
        default_input_size("nosuch")


def test_model_spec_is_json_and_rebuilds():
    spec = model_spec("mobilenet_v2", num_classes=5, in_channels=1, width_mult=0.75)
    assert json.loads(json.dumps(spec)) == spec
    assert spec == {"name": "mobilenet_v2", "num_classes": 5, "in_channels": 1, "kwargs": {"width_mult": 0.75}}


# ---- user factories ----

@pytest.fixture
def user_module(tmp_path, monkeypatch):
    """A real importable package ``ep_user_models.nets`` with a factory and a non-model."""
    pkg = tmp_path / "ep_user_models"
    pkg.mkdir()
    (pkg / "__init__.py").write_text("")
    (pkg / "nets.py").write_text(textwrap.dedent("""
        from torch import nn

        def small(num_classes=10, in_channels=3, width=8):
            return nn.Sequential(nn.Conv2d(in_channels, width, 3, padding=1), nn.BatchNorm2d(width), nn.ReLU(),
                                 nn.Conv2d(width, width, 3, padding=1), nn.BatchNorm2d(width), nn.ReLU(),
                                 nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(width, num_classes))

        def classes_only(num_classes):
            return nn.Linear(4, num_classes)

        NOT_A_MODEL = 3
        def not_a_model(num_classes=10, in_channels=3):
            return "nope"
    """))
    monkeypatch.syspath_prepend(str(tmp_path))
    yield "ep_user_models.nets"
    for mod in [m for m in sys.modules if m.startswith("ep_user_models")]:
        del sys.modules[mod]


def test_user_factory_builds(user_module):
    model = build_model(f"{user_module}:small", num_classes=4, in_channels=1, width=6)
    assert model(torch.randn(2, 1, 28, 28)).shape == (2, 4)
    assert build_model(f"{user_module}:classes_only", num_classes=3, in_channels=1).out_features == 3


@pytest.mark.parametrize("ref, message", [
    ("ep_no_such_pkg.nets:small", "cannot import module 'ep_no_such_pkg.nets'"),
    ("{mod}:missing", "has no attribute 'missing'"),
    ("{mod}:NOT_A_MODEL", "is not callable"),
    ("{mod}:not_a_model", "not a torch.nn.Module"),
    ("{mod}:", "bad model reference"),
])
def test_user_factory_errors(user_module, ref, message):
    with pytest.raises(UserInputError, match=message):
        build_model(ref.format(mod=user_module))


# ---- checkpoints ----

def test_checkpoint_round_trip_is_exact_and_pickle_free(tmp_path):
    torch.manual_seed(1)
    model = _randomize_bn(build_model("resnet20", num_classes=10, in_channels=1))
    spec = model_spec("resnet20", num_classes=10, in_channels=1)
    path = save_checkpoint(tmp_path / "m.pt", model, spec, {"accuracy": 0.5, "data": "fmnist"})
    assert [p.name for p in tmp_path.iterdir()] == ["m.pt"]  # no temp file left behind
    raw = torch.load(path, weights_only=True)
    assert raw["format"] == FORMAT and raw["layers"]["layer2.0.downsample.0"]["type"] == "Conv2d"
    loaded, spec2, meta = load_checkpoint(path)
    x = torch.randn(2, 1, 28, 28)
    with torch.no_grad():
        assert torch.equal(model(x), loaded(x))
    assert spec2 == spec and meta == {"accuracy": 0.5, "data": "fmnist"}


def _shrink_resnet20(model: nn.Module, keep: int) -> nn.Module:
    """Physically remove out-channels of layer1.0.conv1 (and its BN and the next conv's inputs)."""
    block = model.layer1[0]
    idx = torch.arange(keep) * 16 // keep
    old1, oldbn, old2 = block.conv1, block.bn1, block.conv2
    conv1 = nn.Conv2d(old1.in_channels, keep, 3, padding=1, bias=False)
    bn = nn.BatchNorm2d(keep)
    conv2 = nn.Conv2d(keep, old2.out_channels, 3, padding=1, bias=False)
    with torch.no_grad():
        conv1.weight.copy_(old1.weight[idx])
        conv2.weight.copy_(old2.weight[:, idx])
        for name in ("weight", "bias", "running_mean", "running_var"):
            getattr(bn, name).copy_(getattr(oldbn, name)[idx])
    block.conv1, block.bn1, block.conv2 = conv1, bn, conv2
    return model.eval()


def test_pruned_checkpoint_round_trip(tmp_path):
    torch.manual_seed(2)
    model = _shrink_resnet20(_randomize_bn(build_model("resnet20", num_classes=10, in_channels=1)), keep=10)
    path = save_checkpoint(tmp_path / "pruned.pt", model, model_spec("resnet20", 10, 1))
    loaded, _spec, _meta = load_checkpoint(path)
    assert loaded.layer1[0].conv1.out_channels == 10 and loaded.layer1[0].conv2.in_channels == 10
    x = torch.randn(2, 1, 28, 28)
    with torch.no_grad():
        assert torch.equal(model(x), loaded(x))


def test_torch_pruning_depthwise_round_trip(tmp_path):
    """A MobileNetV2 pruned by Torch-Pruning (depthwise groups shrink too) reloads exactly."""
    import torch_pruning as tp

    torch.manual_seed(3)
    model = _randomize_bn(build_model("mobilenet_v2", num_classes=10, in_channels=1, width_mult=0.35))
    x = torch.randn(2, 1, 32, 32)
    pruner = tp.pruner.MagnitudePruner(model, x, importance=tp.importance.MagnitudeImportance(p=1),
                                       pruning_ratio=0.5, ignored_layers=[model.classifier])
    pruner.step()
    model.eval()
    dw = model.features[2].conv[1][0]
    assert dw.groups == dw.out_channels < 6 * 8  # really pruned
    path = save_checkpoint(tmp_path / "mbv2.pt", model, model_spec("mobilenet_v2", 10, 1, width_mult=0.35))
    loaded, _spec, _meta = load_checkpoint(path)
    assert loaded.features[2].conv[1][0].groups == dw.groups
    with torch.no_grad():
        assert torch.equal(model(x), loaded(x))


def test_factory_spec_needs_the_users_consent(tmp_path, user_module):
    ref = f"{user_module}:small"
    model = _randomize_bn(build_model(ref, num_classes=3, in_channels=1))
    path = save_checkpoint(tmp_path / "user.pt", model, model_spec(ref, num_classes=3, in_channels=1))
    del sys.modules[user_module]
    with pytest.raises(UserInputError, match=f"pass --model {ref}"):
        load_checkpoint(path)
    with pytest.raises(UserInputError, match=f"pass --model {ref}"):
        load_checkpoint(path, allow_factory="other.mod:fn")
    assert user_module not in sys.modules  # refused before importing anything
    loaded, spec, _meta = load_checkpoint(path, allow_factory=ref)
    x = torch.randn(2, 1, 16, 16)
    with torch.no_grad():
        assert torch.equal(model(x), loaded(x)) and spec["name"] == ref


def test_unreadable_files_are_user_errors(tmp_path):
    bad = tmp_path / "bad.pt"
    bad.write_bytes(b"this is not a checkpoint")
    good = save_checkpoint(tmp_path / "good.pt", build_model("resnet20"), model_spec("resnet20"))
    truncated = tmp_path / "truncated.pt"
    truncated.write_bytes(good.read_bytes()[: good.stat().st_size // 2])
    for path in (bad, truncated):
        with pytest.raises(UserInputError, match=f"cannot read {path}"):
            load_checkpoint(path)
    with pytest.raises(UserInputError, match="checkpoint not found"):
        load_checkpoint(tmp_path / "missing.pt")
    plain = tmp_path / "plain.pt"
    torch.save(build_model("resnet20").state_dict(), plain)
    with pytest.raises(UserInputError, match="not an edgeprune checkpoint"):
        load_checkpoint(plain)


def test_pickled_objects_need_trust(tmp_path):
    model = build_model("resnet20", num_classes=10, in_channels=1)
    path = tmp_path / "pickled.pt"
    torch.save({"state_dict": model.state_dict(), "extra": Unpicklable()}, path)
    with pytest.raises(UserInputError, match="pickled Python objects.*--trust-checkpoint"):
        load_weights(build_model("resnet20", num_classes=10, in_channels=1), path)
    target = load_weights(build_model("resnet20", num_classes=10, in_channels=1), path, trust=True)
    assert torch.equal(target.conv1.weight, model.conv1.weight)


@pytest.mark.parametrize("wrap", ["plain", "state_dict", "model", "dataparallel", "edgeprune"])
def test_load_weights_accepts_common_layouts(tmp_path, wrap):
    torch.manual_seed(4)
    source = _randomize_bn(build_model("resnet18", num_classes=5, in_channels=1))
    sd = source.state_dict()
    path = tmp_path / "w.pt"
    if wrap == "edgeprune":
        save_checkpoint(path, source, model_spec("resnet18", 5, 1))
    else:
        payload = {"plain": sd, "state_dict": {"state_dict": sd, "epoch": 3}, "model": {"model": sd},
                   "dataparallel": {f"module.{k}": v for k, v in sd.items()}}[wrap]
        torch.save(payload, path)
    target = load_weights(build_model("resnet18", num_classes=5, in_channels=1), path).eval()
    x = torch.randn(1, 1, 64, 64)
    with torch.no_grad():
        assert torch.equal(source(x), target(x))


def test_load_weights_names_the_first_mismatch(tmp_path):
    path = tmp_path / "w.pt"
    torch.save(build_model("resnet20", num_classes=10, in_channels=1).state_dict(), path)
    with pytest.raises(UserInputError, match=r"'fc.weight' has shape \[10, 64\] but the model expects \[7, 64\]"):
        load_weights(build_model("resnet20", num_classes=7, in_channels=1), path)
    with pytest.raises(UserInputError, match="lacks 30 of the model's weights, first 'layer4.0.conv1.weight'"):
        load_weights(build_model("resnet18", num_classes=10, in_channels=1), path)


def test_save_is_atomic(tmp_path, monkeypatch):
    path = save_checkpoint(tmp_path / "m.pt", build_model("resnet20"), model_spec("resnet20"), {"v": 1})
    before = path.read_bytes()

    def failing_save(obj, f, *args, **kwargs):
        f.write(b"partial")
        raise OSError("disk full")

    monkeypatch.setattr(torch, "save", failing_save)
    with pytest.raises(OSError, match="disk full"):
        save_checkpoint(path, build_model("resnet20"), model_spec("resnet20"), {"v": 2})
    assert path.read_bytes() == before
    assert [p.name for p in tmp_path.iterdir()] == ["m.pt"]
