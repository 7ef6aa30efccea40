"""First-order Taylor importance: the group sum of g*w per channel, averaged over real batches."""
from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch.func import functional_call

from edgeprune.data import fetch, load_dataset
from edgeprune.errors import UserInputError
from edgeprune.export import export_onnx
from edgeprune.prune import prune_model
from edgeprune.prune.base import PruneContext
from edgeprune.prune.graph import PruneGraph
from edgeprune.prune.taylor import _conv_in_sums, batch_plan, group_contribution, scores
from tests.conftest import MINI_FMNIST, make_tiny_cnn

X = torch.zeros(1, 1, 28, 28)


@pytest.fixture(scope="module")
def mini_train():
    return load_dataset(f"fashion-mnist:{MINI_FMNIST}", "train")


# Every parameter slice that channel c of each tiny-CNN group owns, listed by hand.
def _slices(group_root: str, c: int) -> list[tuple[str, tuple]]:
    if group_root == "conv3":
        return [("conv3.weight", (c,)), ("bn3.weight", (c,)), ("bn3.bias", (c,)), ("fc.weight", (slice(None), c))]
    return [("conv1.weight", (c,)), ("bn1.weight", (c,)), ("bn1.bias", (c,)), ("conv2.weight", (c,)),
            ("conv2.weight", (slice(None), c)), ("bn2.weight", (c,)), ("bn2.bias", (c,)),
            ("conv3.weight", (slice(None), c))]


def _dloss_dscale(model, x, y, slices) -> float:
    """d/d(alpha) of the loss when every listed slice is scaled by alpha, at alpha = 1 (autograd)."""
    alpha = torch.ones((), dtype=torch.float64, requires_grad=True)
    params = {}
    for name, p in model.named_parameters():
        mask = torch.zeros_like(p)
        for slice_name, idx in slices:
            if slice_name == name:
                mask[idx] = 1.0  # a weight in two slices (conv2's W[c, c]) is one parameter, scaled once
        params[name] = p.detach() * (1 + (alpha - 1) * mask)
    loss = F.cross_entropy(functional_call(model, params, (x,)), y)
    (grad,) = torch.autograd.grad(loss, alpha)
    return float(grad)


def test_group_contribution_is_the_derivative_of_scaling_the_channel_away(mini_train):
    """z_c = sum g*w over the group equals dL/d(alpha) for alpha scaling all of channel c's parameters."""
    model = make_tiny_cnn().double().eval()
    x, y = fetch(mini_train, range(16))
    x = x.double()
    graph = PruneGraph(model, x[:1])
    model.zero_grad()
    F.cross_entropy(model(x), y).backward()
    for gi, group in enumerate(graph.groups):
        z = group_contribution(graph, gi)
        for c in (0, 3, group.channels - 1):
            expected = _dloss_dscale(model, x, y, _slices(group.root_name, c))
            assert z[c].item() == pytest.approx(expected, rel=1e-9, abs=1e-12), (group.root_name, c)


@pytest.mark.parametrize("groups", [1, 2, 8])
def test_conv_input_slices_for_grouped_and_depthwise_convs(groups):
    gw = torch.randn(8, 8 // groups, 3, 3, dtype=torch.float64)
    expected = torch.zeros(8, dtype=torch.float64)
    out_per_group, in_per_group = 8 // groups, 8 // groups
    for i in range(8):
        g = i // in_per_group
        expected[i] = gw[g * out_per_group:(g + 1) * out_per_group, i % in_per_group].sum()
    assert torch.allclose(_conv_in_sums(gw, groups), expected)


def _zero_channel(model, c_res: int, c3: int):
    with torch.no_grad():
        for name, idx in _slices("conv1", c_res) + _slices("conv3", c3):
            model.get_parameter(name)[idx] = 0.0
    return model


def _alive_cnn(ds):
    """The tiny CNN with BN statistics measured on real data, so no ReLU channel is dead
    (a dead channel's loss does not depend on it, so it scores exactly 0 as well)."""
    model = make_tiny_cnn()
    for bn in (model.bn1, model.bn2, model.bn3):
        bn.reset_running_stats()
        bn.momentum = None  # cumulative average over the calibration batch
    model.train()
    with torch.no_grad():
        model(fetch(ds, range(256))[0])
    return model.eval()


def test_zeroed_channel_ranks_lowest_and_is_removed(mini_train, tmp_path):
    model = _zero_channel(_alive_cnn(mini_train), c_res=6, c3=21)
    ctx = PruneContext(example_inputs=X, train_ds=mini_train, progress=False, options={"taylor_batches": 4})
    sc = {g.root_name: s for g, s in zip(PruneGraph(model, X).groups, scores(PruneGraph(model, X), ctx))}
    assert sc["conv1"][6] == 0.0 and sc["conv3"][21] == 0.0
    assert np.argmin(sc["conv1"]) == 6 and np.argmin(sc["conv3"]) == 21
    assert np.all(np.delete(sc["conv3"], 21) > 0) and np.all(np.delete(sc["conv1"], 6) > 0)
    result = prune_model(model, X, "taylor", ratio=2 / 48, train_ds=mini_train, progress=False, taylor_batches=4)
    pruned = result.model
    assert pruned.conv3.out_channels == 31 and pruned.conv1.out_channels == 15
    assert torch.all(pruned.conv3.weight.abs().sum(dim=(1, 2, 3)) > 0)  # the zero filter is the one that went
    assert torch.all(pruned.conv1.weight.abs().sum(dim=(1, 2, 3)) > 0)
    assert all(p.grad is None for p in pruned.parameters())  # scoring leaves no gradients behind
    check = np.random.default_rng(1).standard_normal((4, 1, 28, 28)).astype(np.float32)
    info = export_onnx(pruned, (1, 1, 28, 28), tmp_path / "taylor.onnx", check)
    assert info["max_abs_diff"] < 1e-3


def test_deterministic_given_seed_and_model_untouched(mini_train):
    model = make_tiny_cnn()
    before = {k: v.clone() for k, v in model.state_dict().items()}

    def run(seed: int, square: bool = False):
        ctx = PruneContext(example_inputs=X, train_ds=mini_train, progress=False, seed=seed,
                           options={"taylor_batches": 3, "taylor_batch_size": 16, "taylor_square": square})
        return scores(PruneGraph(model, X), ctx)

    a, b, other = run(0), run(0), run(1)
    assert all(np.array_equal(s, t) for s, t in zip(a, b))
    assert not all(np.array_equal(s, t) for s, t in zip(a, other))
    squared = run(0, square=True)
    assert all(np.all(s >= 0) for s in squared) and not all(np.allclose(s, t) for s, t in zip(a, squared))
    assert all(torch.equal(v, model.state_dict()[k]) for k, v in before.items())  # BN stats included


def test_pruned_model_keeps_width_and_exports_at_high_ratio(mini_train, tmp_path):
    result = prune_model(make_tiny_cnn(), X, "taylor", ratio=0.7, round_to=4, train_ds=mini_train,
                         progress=False, taylor_batches=2)
    summary = result.summary()
    assert summary["channels_after"] < 0.5 * summary["channels_before"]
    assert all(g["after"] >= 4 and g["after"] % 4 == 0 for g in summary["groups"])
    export_onnx(result.model, (1, 1, 28, 28), tmp_path / "taylor70.onnx")


def test_batch_plan_and_errors(mini_train):
    plan = batch_plan(100, 10, 32, seed=0)
    assert [len(b) for b in plan] == [32, 32, 32, 4]  # capped at one pass over the data
    assert sorted(i for b in plan for i in b) == list(range(100))
    with pytest.raises(UserInputError, match="needs training data"):
        prune_model(make_tiny_cnn(), X, "taylor", ratio=0.5, progress=False)
    with pytest.raises(UserInputError, match="taylor_batches"):
        prune_model(make_tiny_cnn(), X, "taylor", ratio=0.5, train_ds=mini_train, progress=False, taylor_batches=0)
