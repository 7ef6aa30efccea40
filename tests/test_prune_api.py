"""The documented Python API, the selection's rounding promises, and layers kept whole.

- ``edgeprune.prune_channels`` works on every call, after every edgeprune submodule was
  imported (the ``edgeprune.prune`` subpackage must not shadow it) and through
  ``from edgeprune import prune_channels``.
- Kept counts are multiples of round_to (or the full width), rounded half up; the floor too.
- ``ignored_layers`` names are checked, a prefix keeps every layer under it; min_ratio in [0, 1).
"""
from __future__ import annotations

import importlib
import pkgutil
import subprocess
import sys

import pytest
import torch
from torch import nn

import edgeprune
from edgeprune.errors import UserInputError
from edgeprune.models import build_model
from edgeprune.prune import prune_model
from edgeprune.prune.select import global_counts, keep_indices, min_keep, round_channels, uniform_counts
from tests.conftest import make_tiny_cnn

X = torch.zeros(1, 1, 28, 28)


def _import_every_submodule() -> None:
    for info in pkgutil.walk_packages(edgeprune.__path__, "edgeprune."):
        if info.name.endswith("__main__"):
            continue  # running it is the CLI
        try:
            importlib.import_module(info.name)
        except ImportError:
            pass  # an optional runtime missing here; what matters is what got imported


def _conv_widths(model: nn.Module) -> list[int]:
    return [m.out_channels for m in model.modules() if isinstance(m, nn.Conv2d)]


def test_prune_channels_works_twice_after_every_submodule_is_imported():
    _import_every_submodule()
    assert isinstance(edgeprune.prune, type(edgeprune))  # the subpackage, as DESIGN.md lays out
    model = make_tiny_cnn()
    first = edgeprune.prune_channels(model, X, method="l1", ratio=0.5)
    second = edgeprune.prune_channels(model, X, method="l1", ratio=0.5)
    assert _conv_widths(first) == _conv_widths(second) and sum(_conv_widths(first)) < sum(_conv_widths(model))


def test_from_import_prune_channels():
    from edgeprune import prune_channels

    pruned = prune_channels(make_tiny_cnn(), X, "l2", 0.5, round_to=4)
    assert all(w % 4 == 0 for w in _conv_widths(pruned))
    assert pruned(torch.randn(2, 1, 28, 28)).shape == (2, 10)


def test_package_imports_without_torch_until_the_api_is_used():
    code = "import sys, edgeprune; assert 'torch' not in sys.modules; print(edgeprune.__all__)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert "prune_channels" in out.stdout


def test_rounding_is_to_multiples_half_up_and_the_floor_is_rounded_too():
    assert uniform_counts([512], 0.95, 8) == [56]          # floor ceil(51.2) = 52 -> 56, a multiple of 8
    assert min_keep(512, 8, 0.1) == 56 and min_keep(20, 8, 0.1) == 8 and min_keep(6, 8, 0.5) == 6
    assert round_channels(20, 64, 8, 1) == 24              # half up, not half to even (16)
    assert round_channels(12, 64, 8, 1) == 16 and round_channels(11.9, 64, 8, 1) == 8
    assert round_channels(60, 64, 8, 1) == 64 and round_channels(62, 63, 8, 1) == 63  # full width allowed
    for w in (20, 37, 64, 100):
        for ratio in (0.1, 0.33, 0.5, 0.77, 0.95):
            for n in uniform_counts([w], ratio, 8) + global_counts([torch.rand(w).numpy()], ratio, 8):
                assert n == w or (n % 8 == 0 and n >= min_keep(w, 8, 0.1)), (w, ratio, n)


def test_keep_indices_spread_over_slices():
    scores = [9, 1, 2, 8, 1, 9, 3, 9]  # two slices of 4
    assert keep_indices(scores, 4, slices=2) == [0, 3, 5, 7]              # each slice its own top 2
    assert keep_indices(scores, 4, slices=2, aligned=True) == [0, 3, 4, 7]  # offsets by summed score: 17, 10
    with pytest.raises(ValueError):
        keep_indices(scores, 3, slices=2)


def test_kept_layer_prefix_keeps_every_conv_under_it():
    torch.manual_seed(0)
    model = build_model("resnet20", num_classes=10, in_channels=1).eval()
    full = {n: m.out_channels for n, m in model.named_modules() if isinstance(m, nn.Conv2d)}
    result = prune_model(model, X, "l1", 0.5, ignored_layers=("layer1.0.conv1", "layer2"), progress=False)
    after = {n: m.out_channels for n, m in result.model.named_modules() if isinstance(m, nn.Conv2d)}
    kept = [n for n in full if n == "layer1.0.conv1" or n.startswith("layer2.")]
    assert kept and all(after[n] == full[n] for n in kept)
    assert after["layer1.1.conv1"] < full["layer1.1.conv1"]  # the others are still pruned


def test_a_single_string_is_one_kept_layer():
    result = prune_model(make_tiny_cnn(), X, "l1", 0.5, ignored_layers="conv3", progress=False)
    assert result.model.conv3.out_channels == 32


def test_unknown_kept_layer_lists_prunable_names():
    with pytest.raises(UserInputError, match=r"--keep names no layer.*'layer9'.*conv1"):
        prune_model(make_tiny_cnn(), X, "l1", 0.5, ignored_layers=("layer9",), progress=False)


@pytest.mark.parametrize("min_ratio", [-0.1, 1.0, 1.5])
def test_min_ratio_out_of_range(min_ratio):
    with pytest.raises(UserInputError, match="minimum width"):
        prune_model(make_tiny_cnn(), X, "l1", 0.5, min_ratio=min_ratio, progress=False)


def test_min_ratio_is_honoured_and_rounded():
    result = prune_model(make_tiny_cnn(), X, "random", 0.95, round_to=8, min_ratio=0.3, progress=False)
    for g in result.groups:  # widths 16 and 32: floors ceil(4.8)=5 -> 8 and ceil(9.6)=10 -> 16
        assert g["after"] >= min_keep(g["before"], 8, 0.3) and g["after"] % 8 == 0
