"""ThiNet on real Fashion-MNIST images: statistics, greedy selection, least squares, accuracy, export."""
from __future__ import annotations

import copy

import numpy as np
import pytest
import torch
from torch import nn

from edgeprune.data import load_dataset
from edgeprune.data.memory import fetch, sample_indices
from edgeprune.errors import UserInputError
from edgeprune.export import export_onnx
from edgeprune.models import build_model
from edgeprune.prune import METHODS, prune_model, select, thinet
from edgeprune.prune.base import PruneContext, prune_with_scores
from edgeprune.prune.graph import PruneGraph
from edgeprune.prune.thinet_stats import Probe, collect, conv_patches
from edgeprune.train import evaluate, train
from tests.conftest import MINI_FMNIST, make_tiny_cnn

X1 = torch.zeros(1, 1, 28, 28)


@pytest.fixture(scope="module")
def mini():
    return (load_dataset(f"fashion-mnist:{MINI_FMNIST}", "train"),
            load_dataset(f"fashion-mnist:{MINI_FMNIST}", "test"))


@pytest.fixture(scope="module")
def trained(mini):
    """The conftest tiny residual CNN after 2 quick epochs on the mini set (~0.44 test accuracy)."""
    torch.manual_seed(0)
    model = make_tiny_cnn()
    train(model, mini[0], epochs=2, batch_size=32, lr=0.1, augment=False, seed=0, progress=False)
    return model.eval()


def _ctx(ds, seed=0, **options):
    return PruneContext(example_inputs=X1, train_ds=ds, progress=False, seed=seed, options=options)


def _random_keep(model, counts, seed):
    pruned = copy.deepcopy(model).eval()
    graph = PruneGraph(pruned, X1)
    rng = np.random.default_rng(seed)
    graph.apply({g.index: sorted(rng.choice(g.channels, n, replace=False).tolist())
                 for g, n in zip(graph.groups, counts)})
    return pruned


def _output(model, name, x):
    store = {}
    handle = dict(model.named_modules())[name].register_forward_hook(lambda m, i, o: store.setdefault("y", o))
    with torch.no_grad():
        model(x)
    handle.remove()
    return store["y"]


def _group_index(graph, root):
    return [g.root_name for g in graph.groups].index(root)


# -- statistics -------------------------------------------------------------------------------------
@pytest.mark.parametrize("conv", [
    nn.Conv2d(3, 5, 3, stride=2, padding=1),
    nn.Conv2d(3, 5, 3, dilation=2, padding="same"),
    nn.Conv2d(3, 5, (3, 1), stride=(1, 2), padding=(1, 0), padding_mode="reflect"),
    nn.Conv2d(3, 5, 1),
])
def test_sampled_windows_are_real_conv_outputs(conv, mini):
    """Every sampled window, under the conv's weights, gives the conv's output at some location of its image."""
    x, _ = fetch(mini[0], range(4))
    x = torch.cat([x, x.flip(-1), x.flip(-2)], dim=1)
    with torch.no_grad():
        out = (conv(x) - conv.bias.view(1, -1, 1, 1)).flatten(2)          # (N, O, P)
        patches = conv_patches(conv, x, 6, torch.Generator().manual_seed(0))  # (N*6, C, k)
        rows = torch.einsum("rck,ock->ro", patches, conv.weight.flatten(2))
    for r, row in enumerate(rows):
        gap = (out[r // 6] - row[:, None]).abs().max(dim=0).values.min()
        assert gap < 1e-4


def test_gram_equals_direct_partial_sums_for_flattened_linear(mini):
    """A Linear fed by a flattened map: x_hat_c sums channel c's H*W features (Torch-Pruning's mapping)."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(1, 4, 3, stride=2, padding=1), nn.ReLU(), nn.Flatten(),
                          nn.Linear(4 * 14 * 14, 10)).eval()
    graph = PruneGraph(model, X1)
    group = graph.groups[_group_index(graph, "0")]
    probes = thinet.measure(graph, [group], _ctx(mini[0], samples=40))[group.index]
    assert [p.name for p in probes] == ["3"]
    x, _ = fetch(mini[0], sample_indices(len(mini[0]), 40, 0))
    with torch.no_grad():
        feats = model[:3](x).view(-1, 4, 196)
    x_hat = torch.einsum("ncf,ocf->noc", feats, model[3].weight.view(10, 4, 196)).reshape(-1, 4).double()
    assert probes[0].rows == 40 * 10
    assert torch.allclose(probes[0].gram, x_hat.T @ x_hat, rtol=1e-4)


def test_gram_row_sums_are_the_consumer_output(mini):
    """With a 1x1 output map every sample is the same location: sum_c x_hat_c must be conv(x) - bias."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(1, 6, 3, stride=9), nn.ReLU(), nn.Conv2d(6, 5, 3)).eval()  # 28 -> 3 -> 1
    probe = Probe("2", model[2], range(6), range(6), 6, positions=2, out_per_row=5)
    collect(model, [probe], mini[0], images=30, seed=3)
    idx = sample_indices(len(mini[0]), 30, 3)
    with torch.no_grad():
        y = (model(fetch(mini[0], idx)[0]) - model[2].bias.view(1, -1, 1, 1)).flatten().double()
    assert probe.rows == 30 * 2 * 5
    assert float(probe.gram.sum()) == pytest.approx(2 * float(y @ y), rel=1e-4)


# -- the paper's two steps --------------------------------------------------------------------------
def test_greedy_removal_follows_algorithm_1():
    rng = np.random.default_rng(0)
    a = rng.standard_normal((200, 7))
    gram = a.T @ a
    order, values = thinet.greedy_removal(gram, 4)
    assert order[0] == int(np.argmin(np.diag(gram))) and len(set(order)) == 4
    for k in range(4):
        t = order[:k + 1]
        assert values[k] == pytest.approx(float(gram[np.ix_(t, t)].sum()))
        best = min(float(gram[np.ix_(t[:k] + [j], t[:k] + [j])].sum()) for j in range(7) if j not in t[:k])
        assert values[k] == pytest.approx(best)


def test_least_squares_recovers_a_redundant_channel():
    """Channel 2 is half of channel 0: removing it and scaling channel 0 by 1.5 is exact."""
    rng = np.random.default_rng(1)
    a = rng.standard_normal((500, 4))
    a[:, 2] = 0.5 * a[:, 0]
    gram = a.T @ a
    kept = [0, 1, 3]
    w = thinet.least_squares_scales(gram, kept)
    assert np.allclose(w, [1.5, 1.0, 1.0], atol=1e-6)
    assert thinet.reconstruction_error(gram, kept, w) < 1e-8 * gram.sum()
    assert thinet.reconstruction_error(gram, kept) == pytest.approx(float(gram[2, 2]))


def test_greedy_beats_random_selection_on_held_out_objective(trained, mini):
    graph = PruneGraph(copy.deepcopy(trained), X1)
    fit = thinet.measure(graph, graph.groups, _ctx(mini[0]))
    held = thinet.measure(graph, graph.groups, _ctx(mini[1], seed=1))
    rng = np.random.default_rng(0)
    for g in graph.groups:
        g_fit, g_held = thinet.objective(fit[g.index]), thinet.objective(held[g.index])
        removed, _ = thinet.greedy_removal(g_fit, g.channels // 2)
        value = float(g_held[np.ix_(removed, removed)].sum())
        draws = [rng.choice(g.channels, g.channels // 2, replace=False) for _ in range(40)]
        randoms = [float(g_held[np.ix_(t, t)].sum()) for t in draws]
        assert value < np.percentile(randoms, 5) and value < 0.75 * np.median(randoms), (g.root_name, value)


def test_least_squares_lowers_held_out_reconstruction_error(trained, mini):
    """Scales fitted on training samples lower ||Y - Y_hat|| on held-out samples, per consumer."""
    graph = PruneGraph(copy.deepcopy(trained), X1)
    fit = thinet.measure(graph, graph.groups, _ctx(mini[0]))
    held = thinet.measure(graph, graph.groups, _ctx(mini[1], seed=1))
    for g in graph.groups:
        removed, _ = thinet.greedy_removal(thinet.objective(fit[g.index]), g.channels // 2)
        kept = [c for c in range(g.channels) if c not in removed]
        for p_fit, p_held in zip(fit[g.index], held[g.index]):
            w = thinet.least_squares_scales(p_fit.mean_gram().numpy(), kept)
            plain = thinet.reconstruction_error(p_held.mean_gram().numpy(), kept)
            fitted = thinet.reconstruction_error(p_held.mean_gram().numpy(), kept, w)
            assert fitted < 0.9 * plain, (g.root_name, p_fit.name, plain, fitted)


def test_rescaling_lowers_real_output_error_of_pruned_consumers(trained, mini):
    """Prune one group for real and compare the consumer's output on held-out images with the original."""
    graph = PruneGraph(copy.deepcopy(trained), X1)
    x, _ = fetch(mini[1], range(200))
    residual, head = _group_index(graph, "conv1"), _group_index(graph, "conv3")
    errors = {}
    for rescale in (False, True):
        counts = [g.channels for g in graph.groups]
        counts[head] = 8
        res = prune_model(trained, X1, "thinet", 0.5, train_ds=mini[0], progress=False, counts=counts, rescale=rescale)
        errors["fc", rescale] = float((res.model(x) - trained(x)).detach().pow(2).sum())   # fc after pooling
        counts = [g.channels for g in graph.groups]
        counts[residual] = 8
        res = prune_model(trained, X1, "thinet", 0.5, train_ds=mini[0], progress=False, counts=counts, rescale=rescale)
        kept = [int((trained.conv1.weight == w).all(dim=(1, 2, 3)).nonzero()) for w in res.model.conv1.weight]
        y, y_hat = _output(trained, "conv2", x)[:, kept], _output(res.model, "conv2", x)
        errors["conv2", rescale] = float((y_hat - y).pow(2).sum())                       # a 3x3 conv consumer
    for layer in ("fc", "conv2"):
        assert errors[layer, True] < 0.9 * errors[layer, False], errors


# -- the method -------------------------------------------------------------------------------------
def test_thinet_beats_random_selection_right_after_pruning(trained, mini):
    base = evaluate(trained, mini[1], progress=False)
    counts = select.uniform_counts([16, 32], 0.5)
    ours, rand = [], []
    for seed in range(3):
        res = prune_model(trained, X1, "thinet", 0.5, train_ds=mini[0], progress=False, seed=seed)
        assert {g["group"]: g["after"] for g in res.groups} == {"conv1": counts[0], "conv3": counts[1]}
        ours.append(evaluate(res.model, mini[1], progress=False))
        graph_counts = [g["after"] for g in res.groups]
        rand.append(evaluate(_random_keep(trained, graph_counts, seed), mini[1], progress=False))
    assert base > 0.3
    assert np.mean(ours) > np.mean(rand) + 0.05, (base, ours, rand)


def test_removes_channels_physically_and_exports_with_parity(trained, mini, tmp_path):
    res = prune_model(trained, X1, "thinet", 0.5, train_ds=mini[0], progress=False, samples=128)
    model = res.model
    assert (model.conv1.out_channels, model.conv2.out_channels, model.conv3.out_channels) == (8, 8, 16)
    assert model.conv2.in_channels == model.conv3.in_channels == 8 and model.fc.in_features == 16
    assert (trained.conv1.out_channels, trained.conv3.out_channels) == (16, 32)   # input untouched
    assert res.summary()["channels_after"] == 24 and all(0 <= g["rel_error"] < 1 for g in res.groups)
    x, _ = fetch(mini[1], range(16))
    report = export_onnx(model, (1, 1, 28, 28), tmp_path / "thinet.onnx", check_inputs=x.numpy())
    assert report["max_abs_diff"] < 1e-3


@pytest.mark.parametrize("name,kwargs", [("resnet20", {}), ("mobilenet_v2", {"width_mult": 0.25})])
def test_zoo_models_residual_and_depthwise_groups(name, kwargs, mini, tmp_path):
    torch.manual_seed(0)
    model = build_model(name, num_classes=10, in_channels=1, **kwargs).eval()
    res = prune_model(model, X1, "thinet", 0.5, round_to=4, train_ds=mini[0], progress=False, samples=16)
    assert "fallback" not in res.extra                        # every group found a dense consumer
    widths = [g["before"] for g in res.groups]
    assert [g["after"] for g in res.groups] == select.uniform_counts(widths, 0.5, 4)
    assert all(g["after"] >= 1 for g in res.groups)
    before = sum(p.numel() for p in model.parameters())
    assert sum(p.numel() for p in res.model.parameters()) < 0.5 * before
    x, _ = fetch(mini[1], range(4))
    export_onnx(res.model, (1, 1, 28, 28), tmp_path / f"{name}.onnx", check_inputs=x.numpy())


def test_extreme_ratio_never_reaches_zero_width(trained, mini):
    res = prune_model(trained, X1, "thinet", 0.97, train_ds=mini[0], progress=False, min_ratio=0.0, samples=32)
    assert all(g["after"] >= 1 for g in res.groups)
    assert res.model(X1).shape == (1, 10)


def test_scores_rank_channels_in_greedy_order(trained, mini):
    graph = PruneGraph(copy.deepcopy(trained), X1)
    ctx = _ctx(mini[0], samples=64)
    scores = thinet.scores(graph, ctx)
    stats = thinet.measure(graph, graph.groups, ctx)
    for g, s in zip(graph.groups, scores):
        assert s.shape == (g.channels,) and np.all(s > 0)
        removed, _ = thinet.greedy_removal(thinet.objective(stats[g.index]), g.channels // 2)
        assert select.top_k(s, g.channels - g.channels // 2) == sorted(set(range(g.channels)) - set(removed))
    assert thinet.NORMALIZE is True
    res = prune_with_scores(trained, ctx, "thinet", thinet.scores, thinet.NORMALIZE)  # the search's path
    assert sum(g["after"] for g in res.groups) < 48


def test_finetune_between_layers_changes_weights(trained, mini):
    plain = prune_model(trained, X1, "thinet", 0.5, train_ds=mini[0], progress=False, samples=32)
    tuned = prune_model(trained, X1, "thinet", 0.5, train_ds=mini[0], progress=False, samples=32,
                        finetune_steps=2, finetune_lr=0.01)
    assert not torch.equal(plain.model.fc.weight, tuned.model.fc.weight)
    assert not tuned.model.training


def test_needs_data_and_valid_options(trained, mini):
    assert METHODS["thinet"] == "edgeprune.prune.thinet"
    with pytest.raises(UserInputError, match="training data"):
        prune_model(trained, X1, "thinet", 0.5, progress=False)
    with pytest.raises(UserInputError, match="counts"):
        prune_model(trained, X1, "thinet", 0.5, train_ds=mini[0], progress=False, counts=[4])
    with pytest.raises(UserInputError, match="positive"):
        prune_model(trained, X1, "thinet", 0.5, train_ds=mini[0], progress=False, samples=0)
