"""Network Slimming: L1 sparsity on prunable BN scales, global |gamma| threshold, multi-pass, ONNX parity."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from edgeprune.data import load_dataset
from edgeprune.errors import UserInputError
from edgeprune.export import export_onnx
from edgeprune.prune import prune_model
from edgeprune.prune.base import PruneContext
from edgeprune.prune.graph import PruneGraph
from edgeprune.prune.slimming import (gamma_histogram, l1_subgradient_hook, pass_targets, prunable_bns, scores,
                                      small_gamma_share)
from edgeprune.train import train
from tests.conftest import MINI_FMNIST, make_tiny_cnn

X = torch.zeros(1, 1, 28, 28)


@pytest.fixture(scope="module")
def mini_train():
    return load_dataset(f"fashion-mnist:{MINI_FMNIST}", "train")


def _set_gammas(model, values: dict[str, torch.Tensor]):
    with torch.no_grad():
        for name, gamma in values.items():
            getattr(model, name).weight.copy_(gamma)
    return model


def test_hook_adds_l1_subgradient_only_to_prunable_bns():
    model = make_tiny_cnn()
    graph = PruneGraph(model, X, ignored_layers=("conv3",))  # conv3's group is not prunable -> bn3 is free
    bns = prunable_bns(graph)
    assert {id(b) for b in bns} == {id(model.bn1), id(model.bn2)}
    with torch.no_grad():
        model.bn1.weight[:4] = torch.tensor([-0.5, 0.0, 0.3, -2.0])
    for p in model.parameters():
        p.grad = torch.zeros_like(p)
    l1_subgradient_hook(bns, 0.25)(model)
    assert torch.equal(model.bn1.weight.grad[:4], torch.tensor([-0.25, 0.0, 0.25, -0.25]))
    assert torch.equal(model.bn2.weight.grad, 0.25 * torch.sign(model.bn2.weight.detach()))
    for name in ("bn3", "bn1.bias", "conv1"):
        mod = model.get_submodule(name.split(".")[0])
        assert not (mod.bias if name.endswith("bias") else mod.weight).grad.any(), name


@pytest.fixture(scope="module")
def plain_and_sparse(mini_train):
    """Same seed, same data, 2 epochs on the carried subset: without and with the L1 term (bn3's group ignored)."""
    args = dict(epochs=2, lr=0.05, batch_size=32, weight_decay=1e-4, augment=False, progress=False, seed=0)
    plain, sparse = make_tiny_cnn(width=8), make_tiny_cnn(width=8)  # seeds 0-2: 44-56% of gammas < 1e-2
    initial = gamma_histogram([plain.bn1, plain.bn2], EDGES)
    train(plain, mini_train, **args)
    graph = PruneGraph(sparse, X, ignored_layers=("conv3",))
    train(sparse, mini_train, after_backward=l1_subgradient_hook(prunable_bns(graph), 0.15), **args)
    return initial, plain, sparse


EDGES = [0.0, 1e-3, 1e-2, 0.1, 0.5, 1.0, 2.0, 10.0]


def test_sparsity_training_drives_prunable_bn_scales_down(plain_and_sparse):
    """The penalty makes many prunable gammas ~0 and leaves bn3 (ignored group) alone."""
    _, plain, sparse = plain_and_sparse
    regularised = lambda m: [m.bn1, m.bn2]  # noqa: E731
    assert small_gamma_share(regularised(plain)) == 0.0
    assert small_gamma_share(regularised(sparse)) >= 0.25, [b.weight for b in regularised(sparse)]
    mean_abs = lambda bn: float(bn.weight.detach().abs().mean())  # noqa: E731
    assert mean_abs(sparse.bn1) < 0.5 * mean_abs(plain.bn1)
    # bn3 is outside every prunable group: no penalty, its scales stay where plain training puts them
    assert small_gamma_share([sparse.bn3]) == 0.0
    assert abs(mean_abs(sparse.bn3) - mean_abs(plain.bn3)) < 0.05


def test_sparsity_moves_the_gamma_histogram_below_0_01(plain_and_sparse):
    """The |gamma| histogram (what bench/methods.py plots): plain training leaves every scale above 0.1, the
    L1 term moves at least a quarter of them into the bins below 0.01 and empties the top bins."""
    initial, plain, sparse = plain_and_sparse
    h_plain, h_sparse = (gamma_histogram([m.bn1, m.bn2], EDGES) for m in (plain, sparse))
    assert sum(initial) == sum(h_plain) == sum(h_sparse) == 16  # every prunable channel counted once
    assert initial[:3] == [0, 0, 0] and h_plain[:3] == [0, 0, 0]
    assert sum(h_sparse[:2]) >= 4  # |gamma| < 0.01
    assert sum(h_sparse[4:]) < sum(h_plain[4:])  # mass leaves |gamma| >= 0.5
    direct = torch.cat([sparse.bn1.weight, sparse.bn2.weight]).detach().abs()
    assert sum(h_sparse[:2]) == int((direct < 1e-2).sum())


def test_prunes_lowest_gammas_physically_with_group_mean():
    model = make_tiny_cnn()
    g1, g2, g3 = torch.full((16,), 1.0), torch.full((16,), 1.0), torch.full((32,), 1.0)
    g3[[1, 4, 9, 20, 30]] = 0.01                          # lowest: must go first
    g1[[2, 5]], g2[[2, 5]] = 0.02, 0.04                   # residual group: mean 0.03
    g1[7], g2[7] = 0.0, 1.9                               # one BN ~0 but the group mean is 0.95: kept
    _set_gammas(model, {"bn1": g1, "bn2": g2, "bn3": g3})
    ctx = PruneContext(example_inputs=X)
    sc = scores(PruneGraph(model, X), ctx)
    assert sorted(len(s) for s in sc) == [16, 32]
    res16 = next(s for s in sc if len(s) == 16)
    assert np.isclose(res16[2], 0.03) and np.isclose(res16[7], 0.95)
    result = prune_model(model, X, "slim", ratio=7 / 48, sparsity_epochs=0, progress=False)
    pruned = result.model
    assert pruned.conv3.out_channels == 27 and pruned.conv1.out_channels == pruned.conv2.out_channels == 14
    assert torch.all(pruned.bn3.weight > 0.5)
    assert torch.equal(pruned.bn1.weight[[4, 5]].detach(), torch.tensor([1.0, 0.0]))  # old 7 (gamma 0) is new 5
    assert pruned.fc.in_features == 27 and pruned(torch.randn(2, 1, 28, 28)).shape == (2, 10)
    assert model.conv3.out_channels == 32  # the input model is untouched


def test_all_zero_gamma_layer_keeps_a_channel_and_exports(tmp_path):
    """The reference code's classic crash: one BN's gammas all ~0 -> a zero-width layer."""
    model = _set_gammas(make_tiny_cnn(), {"bn3": torch.zeros(32)})
    result = prune_model(model, X, "slim", ratio=0.5, sparsity_epochs=0, min_ratio=0.0, progress=False)
    pruned = result.model
    assert 1 <= pruned.conv3.out_channels < 32 and pruned.bn3.num_features == pruned.fc.in_features
    assert pruned.conv1.out_channels == 16  # every survivor of the global threshold sits in the residual group
    assert pruned(torch.randn(3, 1, 28, 28)).shape == (3, 10)
    check = np.random.default_rng(0).standard_normal((4, 1, 28, 28)).astype(np.float32)
    info = export_onnx(pruned, (1, 1, 28, 28), tmp_path / "slim.onnx", check)
    assert info["max_abs_diff"] < 1e-3


@pytest.mark.parametrize("passes,round_to", [(3, None), (2, 4)])
def test_multi_pass_reaches_requested_ratio(mini_train, tmp_path, passes, round_to):
    result = prune_model(make_tiny_cnn(width=8), X, "slim", ratio=0.5, round_to=round_to, train_ds=mini_train,
                         progress=False, passes=passes, sparsity=0.05, sparsity_epochs=1, sparsity_max_steps=6,
                         batch_size=32, pass_finetune_epochs=1 if passes == 2 else 0)
    summary = result.summary()
    assert len(summary["passes"]) == passes and all("sparsity" in p for p in summary["passes"])
    assert [p["channels_after"] for p in summary["passes"]] == sorted(
        (p["channels_after"] for p in summary["passes"]), reverse=True)
    assert summary["channels_before"] == 24
    tolerance = 1 if round_to is None else round_to
    assert abs(summary["channels_after"] - 12) <= tolerance, summary
    if round_to:
        assert all(g["after"] % round_to == 0 for g in summary["groups"])
    export_onnx(result.model, (1, 1, 28, 28), tmp_path / f"slim{passes}.onnx")


def test_pass_targets_are_geometric():
    assert pass_targets(1000, 0.5, 1) == [500]
    assert pass_targets(1000, 0.5, 2) == [707, 500]
    assert pass_targets(1000, 0.75, 3) == [630, 397, 250]


def test_groups_without_bn_are_left_whole():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(1, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(), nn.Flatten(),
                          nn.Linear(8 * 28 * 28, 32), nn.ReLU(), nn.Linear(32, 10)).eval()
    _set_gammas(model, {"1": torch.arange(1.0, 9.0) / 8})
    result = prune_model(model, X, "slim", ratio=0.5, sparsity_epochs=0, progress=False)
    assert result.model[0].out_channels == 4 and result.model[4].out_features == 32
    assert result.summary()["unscored_groups"] == ["4"]


def test_bad_options_and_missing_data_are_user_errors():
    with pytest.raises(UserInputError, match="needs training data"):
        prune_model(make_tiny_cnn(), X, "slim", ratio=0.5, progress=False)
    with pytest.raises(UserInputError, match="passes"):
        prune_model(make_tiny_cnn(), X, "slim", ratio=0.5, sparsity_epochs=0, passes=0, progress=False)
    with pytest.raises(UserInputError, match="BatchNorm"):
        prune_model(nn.Sequential(nn.Conv2d(1, 4, 3), nn.ReLU(), nn.Conv2d(4, 4, 3)).eval(), X, "slim",
                    ratio=0.5, sparsity_epochs=0, progress=False)
