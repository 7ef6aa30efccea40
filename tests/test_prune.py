"""Pruning removes channels physically, keeps coupled groups consistent, rounds, never reaches zero."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from edgeprune.errors import UserInputError
from edgeprune.prune import prune, prune_model
from edgeprune.prune.graph import PruneGraph
from edgeprune.prune.select import global_counts, round_channels, top_k
from tests.conftest import make_tiny_cnn


def _conv_widths(model):
    return {n: m.out_channels for n, m in model.named_modules() if isinstance(m, nn.Conv2d)}


def _n_params(model):
    return sum(p.numel() for p in model.parameters())


def test_l1_removes_channels_physically_and_keeps_io():
    model = make_tiny_cnn()
    x = torch.randn(2, 1, 28, 28)
    pruned = prune(model, x, method="l1", ratio=0.5)
    before, after = _conv_widths(model), _conv_widths(pruned)
    assert sum(after.values()) < sum(before.values())
    assert _n_params(pruned) < 0.6 * _n_params(model)
    assert pruned(x).shape == model(x).shape == (2, 10)
    # the input model is untouched
    assert _conv_widths(model) == {"conv1": 16, "conv2": 16, "conv3": 32}


def test_residual_group_stays_consistent():
    """conv1 and conv2 feed the same residual addition: they must keep the same channels."""
    model = make_tiny_cnn()
    graph = PruneGraph(model, torch.randn(1, 1, 28, 28))
    roots = {g.root_name: g for g in graph.groups}
    residual = [g for g in graph.groups if g.is_residual]
    assert len(residual) == 1 and {"conv1", "conv2"} <= set(residual[0].context["out_convs"])
    assert "fc" not in roots  # the classifier never loses outputs
    pruned = prune(model, torch.randn(1, 1, 28, 28), ratio=0.6)
    assert pruned.conv1.out_channels == pruned.conv2.out_channels == pruned.bn2.num_features
    assert pruned.conv3.in_channels == pruned.conv1.out_channels


def test_l1_keeps_the_largest_filters():
    model = make_tiny_cnn()
    with torch.no_grad():
        model.conv3.weight.mul_(0.01)
        model.conv3.weight[[3, 7, 11, 19]] *= 1000.0
    pruned = prune(model, torch.randn(1, 1, 28, 28), ratio=0.5)
    kept = pruned.conv3.weight.abs().sum(dim=(1, 2, 3))
    big = model.conv3.weight[[3, 7, 11, 19]].abs().sum(dim=(1, 2, 3))
    for value in big:
        assert torch.isclose(kept, value).any()


@pytest.mark.parametrize("round_to", [4, 8])
def test_channel_counts_are_rounded(round_to):
    result = prune_model(make_tiny_cnn(), torch.randn(1, 1, 28, 28), "l1", 0.37, round_to=round_to)
    for g in result.groups:
        assert g["after"] % round_to == 0 or g["after"] == g["before"]


def test_no_group_reaches_zero_width_even_at_extreme_ratio():
    result = prune_model(make_tiny_cnn(), torch.randn(1, 1, 28, 28), "random", 0.99)
    assert all(g["after"] >= 1 for g in result.groups)
    assert result.model(torch.randn(1, 1, 28, 28)).shape == (1, 10)


def test_selection_rules():
    assert round_channels(13, 64, 8, 1) == 16
    assert round_channels(2, 64, 8, 8) == 8
    assert round_channels(70, 64, 8, 1) == 64
    counts = global_counts([np.arange(1, 17, dtype=float), np.ones(8)], 0.5, round_to=None, min_ratio=0.25)
    assert all(c >= 2 for c in counts) and sum(counts) <= 16
    assert top_k(np.array([0.1, 0.9, 0.5, 0.7]), 2) == [1, 3]


@pytest.mark.parametrize("ratio", [0.0, 1.0, -0.2, 1.5])
def test_ratio_out_of_range_is_rejected(ratio):
    with pytest.raises(UserInputError, match="ratio"):
        prune(make_tiny_cnn(), torch.randn(1, 1, 28, 28), ratio=ratio)


def test_unknown_method_is_rejected():
    with pytest.raises(UserInputError, match="unknown pruning method"):
        prune(make_tiny_cnn(), torch.randn(1, 1, 28, 28), method="nope")
