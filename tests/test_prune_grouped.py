"""Grouped convolutions (ResNeXt-style blocks) and the whole zoo: every method prunes, exports, matches.

A grouped conv (groups > 1, not depthwise) needs kept counts that are multiples of its groups
(combined with round_to: lcm) and spread evenly over the groups; a grouped conv's *input*
channels need the same offsets in every group slice. Every model here is pruned by every
method and exported to ONNX with parity against PyTorch (``export_onnx`` checks it).
"""
from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from edgeprune.data import load_dataset
from edgeprune.export import export_onnx
from edgeprune.models import MODEL_NAMES, build_model
from edgeprune.prune import METHODS, prune_model
from edgeprune.prune.base import keep_lists
from edgeprune.prune.graph import PruneGraph
from edgeprune.prune.magnitude import magnitude_scores
from tests.conftest import MINI_FMNIST

X = torch.zeros(1, 1, 28, 28)
SIZE = 16  # the zoo runs at 16x16 (every model still has >= 1x1 maps) to stay fast
# Per method: the options that make it take a second on a tiny subset.
FAST = {
    "l1": {}, "l2": {}, "random": {},
    "taylor": {"taylor_batches": 1, "taylor_batch_size": 4},
    "taylor_bn": {"taylor_batches": 1, "taylor_batch_size": 4},
    "slim": {"sparsity_epochs": 0},
    "gate": {"batch_size": 4, "tick_batches": 1, "tick_ratio": 0.5, "tock_every": 0, "augment": False},
    "thinet": {"samples": 4, "positions": 1, "channels_per_location": 2, "batch_size": 4},
}
ZOO_KWARGS = {"mobilenet_v2": {"width_mult": 0.25}}


class Block(nn.Module):
    """1x1 -> 3x3 grouped -> 1x1 with a residual addition, BN everywhere (ResNeXt's bottleneck)."""

    def __init__(self, channels: int, mid: int, groups: int):
        super().__init__()
        self.conv1, self.bn1 = nn.Conv2d(channels, mid, 1, bias=False), nn.BatchNorm2d(mid)
        self.conv2 = nn.Conv2d(mid, mid, 3, padding=1, groups=groups, bias=False)
        self.bn2 = nn.BatchNorm2d(mid)
        self.conv3, self.bn3 = nn.Conv2d(mid, channels, 1, bias=False), nn.BatchNorm2d(channels)

    def forward(self, x):
        y = torch.relu(self.bn1(self.conv1(x)))
        y = torch.relu(self.bn2(self.conv2(y)))
        return torch.relu(self.bn3(self.conv3(y)) + x)


class TinyResNeXt(nn.Module):
    def __init__(self, groups: int = 8, width: int = 32):
        super().__init__()
        self.stem, self.bn = nn.Conv2d(1, width, 3, padding=1, bias=False), nn.BatchNorm2d(width)
        self.block = Block(width, width, groups)
        self.fc = nn.Linear(width, 10)

    def forward(self, x):
        x = self.block(torch.relu(self.bn(self.stem(x))))
        return self.fc(torch.flatten(nn.functional.adaptive_avg_pool2d(x, 1), 1))


def tiny_resnext(groups: int = 8) -> TinyResNeXt:
    torch.manual_seed(0)
    model = TinyResNeXt(groups)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.weight.uniform_(0.2, 1.5)
                m.bias.uniform_(-0.1, 0.1)
                m.running_var.uniform_(0.5, 1.5)
    return model.eval()


def _data(size: int | None):
    train = load_dataset(f"fashion-mnist:{MINI_FMNIST}", "train", limit=16, image_size=size)
    test = load_dataset(f"fashion-mnist:{MINI_FMNIST}", "test", limit=4, image_size=size)
    return train, test


@pytest.fixture(scope="module")
def data():
    return _data(None)


@pytest.fixture(scope="module")
def small_data():
    return _data(SIZE)


def _prune_and_export(model, method, data, tmp_path, round_to=None, ratio=0.4):
    x = torch.stack([data[1][i][0] for i in range(4)])
    example = torch.zeros(1, *x.shape[1:])
    result = prune_model(model, example, method, ratio, round_to=round_to, train_ds=data[0], progress=False,
                         **FAST[method])
    export_onnx(result.model, tuple(example.shape), tmp_path / f"{method}.onnx", check_inputs=x.numpy(), slim=False)
    return result


def _grouped_widths(model: nn.Module) -> list[tuple[int, int, int]]:
    return [(m.groups, m.in_channels, m.out_channels) for m in model.modules()
            if isinstance(m, nn.Conv2d) and 1 < m.groups < m.out_channels]


@pytest.mark.parametrize("method", list(METHODS))
def test_every_method_prunes_a_grouped_block_and_exports(method, data, tmp_path):
    result = _prune_and_export(tiny_resnext(8), method, data, tmp_path)
    assert result.summary()["channels_after"] < result.summary()["channels_before"]
    for groups, cin, cout in _grouped_widths(result.model):
        assert groups == 8 and cin % groups == 0 and cout % groups == 0


def test_grouped_counts_use_the_lcm_with_round_to(data, tmp_path):
    result = _prune_and_export(tiny_resnext(4), "l1", data, tmp_path, round_to=6, ratio=0.5)
    by_group = {g["group"]: g for g in result.groups}
    for name in ("block.conv1", "block.conv2"):  # the groups a 4-group conv reads or writes
        after = by_group[name]["after"]
        assert after % math.lcm(4, 6) == 0 or after == by_group[name]["before"], by_group[name]


def test_grouped_input_pruning_removes_exactly_the_chosen_channels():
    """Pruning conv1's channels == zeroing the grouped conv's weights on them (same offsets per group)."""
    model = tiny_resnext(4)
    graph = PruneGraph(model, X)
    index = next(g.index for g in graph.groups if g.root_name == "block.conv1")
    group = graph.groups[index]
    assert group.slices == 4 and group.aligned
    scores = magnitude_scores(graph)
    counts = [g.channels for g in graph.groups]
    counts[index] = 16
    kept = keep_lists(graph, scores, counts)[index]
    reference = tiny_resnext(4)
    with torch.no_grad():
        dropped = [c for c in range(32) if c not in kept]
        per = 32 // 4
        for c in dropped:  # conv2 output o reads input slice o // 8; input channel c sits at c % 8 there
            rows = slice((c // per) * per, (c // per + 1) * per)
            reference.block.conv2.weight[rows, c % per] = 0
    graph.apply({index: kept})
    x = torch.randn(3, 1, 28, 28)
    assert torch.allclose(graph.model(x), reference(x), atol=1e-5)


# By default one method per zoo model (every model and every structure: residual, plain, depthwise);
# the full matrix takes minutes on a shared 2-core box, so the rest is marked slow (-m slow).
DIAGONAL = {("resnet20", "thinet"), ("resnet32", "taylor"), ("resnet56", "l2"), ("vgg16_bn", "slim"),
            ("mobilenet_v2", "random"), ("resnet18", "gate"), ("resnet20", "l1")}
ZOO_MATRIX = [pytest.param(n, m, id=f"{n}-{m}", marks=() if (n, m) in DIAGONAL else pytest.mark.slow)
              for n in MODEL_NAMES for m in METHODS]


@pytest.mark.parametrize("name,method", ZOO_MATRIX)
def test_every_method_on_every_zoo_model_exports_with_parity(name, method, small_data, tmp_path):
    torch.manual_seed(0)
    model = build_model(name, num_classes=10, in_channels=1, **ZOO_KWARGS.get(name, {})).eval()
    result = _prune_and_export(model, method, small_data, tmp_path, round_to=4)
    for g in result.groups:
        assert g["after"] >= 1 and (g["after"] % 4 == 0 or g["after"] == g["before"]), g
