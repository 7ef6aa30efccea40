"""Gate Decorator: real Tick-Tock training on the Fashion-MNIST mini subset, physical removal,
FLOPs stop, group (residual) score sums, exact gate melting, unchanged exported operators."""
from __future__ import annotations

import copy

import numpy as np
import onnx
import pytest
import torch
import torch_pruning as tp
from torch import nn

from edgeprune.data import load_dataset
from edgeprune.errors import UserInputError
from edgeprune.export import export_onnx
from edgeprune.prune import prune_model
from edgeprune.prune.base import PruneContext
from edgeprune.prune.gate import GateSettings, gate_scores, scores, tick_counts
from edgeprune.prune.gate_gbn import GATE, GateSet, group_anchors
from edgeprune.prune.graph import PruneGraph
from edgeprune.prune.select import min_keep
from tests.conftest import MINI_FMNIST, make_tiny_cnn

X = torch.zeros(1, 1, 28, 28)
# Small budgets: a tick is 2 batches of 32, a tock 2 steps.
FAST = {"batch_size": 32, "tick_batches": 2, "tick_ratio": 0.15, "tock_every": 2, "tock_steps": 2}


@pytest.fixture(scope="module")
def train_ds():
    return load_dataset(f"fashion-mnist:{MINI_FMNIST}", "train")


@pytest.fixture(scope="module")
def resnet20_run(train_ds):
    """resnet20 pruned to at most 60% of its MACs (channel multiple 4), with its unpruned original."""
    from edgeprune.models import build_model

    torch.manual_seed(0)
    model = build_model("resnet20", num_classes=10, in_channels=1).eval()
    opts = {"batch_size": 16, "tick_batches": 1, "tick_ratio": 0.2, "tock_every": 2, "tock_steps": 1}
    result = prune_model(model, X, "gate", 0.5, round_to=4, train_ds=train_ds, progress=False,
                         flops_target=0.6, **opts)
    return model, result


def _types(model: nn.Module) -> list[str]:
    return [type(m).__name__ for m in model.modules()]


def _widths(model: nn.Module) -> dict[str, int]:
    return {n: m.out_channels for n, m in model.named_modules() if isinstance(m, nn.Conv2d)}


def _assert_plain(model: nn.Module) -> None:
    assert not any(GATE in name for name in model.state_dict())
    assert not any(m._forward_hooks for m in model.modules())


def test_melting_gates_preserves_outputs_and_module_types():
    model = make_tiny_cnn()
    original_types = _types(model)
    graph = PruneGraph(model, X)
    gates = GateSet(model, [n for a in group_anchors(graph) for n, _ in a])
    assert set(gates.gates) == {"bn1", "bn2", "bn3"}
    gates.attach()
    gen = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for g in gates.gates.values():
            g.copy_(torch.rand(g.shape, generator=gen) * 1.5 + 0.1)
    x = torch.randn(8, 1, 28, 28, generator=gen)
    with torch.no_grad():
        gated = model(x)
        gates.melt()
        melted = model(x)
    _assert_plain(model)
    assert _types(model) == original_types
    assert torch.allclose(gated, melted, atol=1e-5, rtol=0)
    assert not torch.allclose(gated, make_tiny_cnn()(x), atol=1e-2)  # the gates did change the function


def test_residual_group_scores_are_sums_of_member_gate_scores(train_ds):
    model = make_tiny_cnn()
    graph = PruneGraph(model, X)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    ctx = PruneContext(example_inputs=X, train_ds=train_ds, progress=False, options=dict(FAST))
    theta = gate_scores(model, graph, train_ds, GateSettings.from_context(ctx), seed=0)
    group = scores(graph, ctx)
    residual = next(g for g in graph.groups if g.is_residual)
    plain = next(g for g in graph.groups if g.root_name == "conv3")
    assert {n for n, _ in group_anchors(graph)[residual.index]} == {"bn1", "bn2"}
    assert np.allclose(group[residual.index], theta["bn1"] + theta["bn2"], rtol=1e-9, atol=0)
    assert np.allclose(group[plain.index], theta["bn3"], rtol=1e-9, atol=0)
    assert all(np.all(theta[n] > 0) for n in theta) and not np.allclose(theta["bn1"], theta["bn2"])
    # scoring trains nothing and leaves no gate behind
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    _assert_plain(model)


def test_taylor_modes_batch_sum_bounds_sum_of_batches(train_ds):
    """|sum_b g_b*phi| <= sum_b |g_b*phi| (per channel), equal for a single batch."""
    model = make_tiny_cnn()
    graph = PruneGraph(model, X)

    def get(mode: str, batches: int) -> dict[str, np.ndarray]:
        return gate_scores(model, graph, train_ds, GateSettings(batch_size=32, tick_batches=batches, taylor=mode))

    per_batch, summed = get("batch", 3), get("sum", 3)
    assert all(np.all(summed[n] <= per_batch[n] + 1e-12) for n in per_batch)
    assert any(np.any(summed[n] < per_batch[n] - 1e-9) for n in per_batch)
    one_b, one_s = get("batch", 1), get("sum", 1)
    assert all(np.allclose(one_b[n], one_s[n]) for n in one_b)


def test_gate_prunes_tiny_cnn_physically_by_ratio(train_ds):
    model = make_tiny_cnn()
    result = prune_model(model, X, "gate", 0.5, train_ds=train_ds, progress=False, **FAST)
    pruned = result.model
    assert _widths(model) == {"conv1": 16, "conv2": 16, "conv3": 32}  # input untouched
    after = _widths(pruned)
    assert sum(after.values()) < sum(_widths(model).values())
    assert pruned.conv1.out_channels == pruned.conv2.out_channels == pruned.bn2.num_features
    assert result.extra["stopped"] == "target" and result.extra["ticks"] >= 2 and result.extra["tocks"] >= 1
    assert 0.5 <= result.extra["channels_removed_share"] < 0.5 + FAST["tick_ratio"]
    assert all(g["after"] >= min_keep(g["before"], None, 0.1) for g in result.groups)
    assert _types(pruned) == _types(model)
    _assert_plain(pruned)
    assert pruned(torch.randn(2, 1, 28, 28)).shape == (2, 10)


def test_extreme_ratio_stops_at_minimum_width_never_zero(train_ds):
    opts = dict(FAST, tick_ratio=0.5, tock_every=0)
    with pytest.warns(UserWarning, match="before its target"):
        result = prune_model(make_tiny_cnn(), X, "gate", 0.97, train_ds=train_ds, progress=False,
                             min_ratio=0.25, **opts)
    assert result.extra["stopped"] == "floor"
    assert {g["group"]: g["after"] for g in result.groups} == {"conv1": 4, "conv3": 8}


def test_resnet20_meets_flops_target_within_one_tick(resnet20_run):
    model, result = resnet20_run
    base = tp.utils.count_ops_and_params(model, X)[0]
    macs = tp.utils.count_ops_and_params(result.model, X)[0]
    history = result.extra["history"]
    assert result.extra["stopped"] == "target" and macs == result.extra["macs_after"]
    assert macs <= 0.6 * base
    assert len(history) >= 2 and history[-2]["macs_share"] > 0.6  # stopped at the first tick that met it
    assert any(h["tock"] for h in history)


def test_resnet20_channels_rounded_and_never_zero(resnet20_run):
    model, result = resnet20_run
    widths, before = _widths(result.model), _widths(model)
    assert sum(widths.values()) < sum(before.values())
    assert min(widths.values()) >= 4
    for g in result.groups:
        assert g["after"] % 4 == 0 and g["after"] >= min_keep(g["before"], 4, 0.1)


def test_resnet20_exports_same_operators_and_passes_parity(resnet20_run, tmp_path):
    model, result = resnet20_run
    assert _types(result.model) == _types(model)
    _assert_plain(result.model)
    x = np.random.default_rng(0).standard_normal((4, 1, 28, 28)).astype(np.float32)
    ops = []
    for name, m in (("base", model), ("pruned", result.model)):
        info = export_onnx(m, (1, 1, 28, 28), tmp_path / f"{name}.onnx", check_inputs=x)  # raises on mismatch
        assert info["max_abs_diff"] <= 1e-4 * 10
        ops.append({node.op_type for node in onnx.load(info["path"]).graph.node})
    assert ops[0] == ops[1]


def test_stop_when_callable_sees_plain_models(train_ds):
    seen = []
    limit = 0.7 * sum(p.numel() for p in make_tiny_cnn().parameters())

    def small_enough(m: nn.Module) -> bool:
        seen.append(m)
        return sum(p.numel() for p in m.parameters()) <= limit

    result = prune_model(make_tiny_cnn(), X, "gate", 0.5, train_ds=train_ds, progress=False,
                         stop_when=small_enough, **dict(FAST, tock_every=0))
    assert result.extra["stopped"] == "target"
    assert sum(p.numel() for p in result.model.parameters()) <= limit
    assert len(seen) == result.extra["ticks"] + 1  # once before the first tick, then after every tick
    for m in seen:
        _assert_plain(m)


def test_tick_counts_round_and_always_progress():
    rng = np.random.default_rng(0)
    s = [rng.random(16), rng.random(32)]
    counts = tick_counts(s, [16, 32], [4, 4], 2, round_to=8)  # 2 channels would round back: cut a whole 8
    assert counts in ([8, 32], [16, 24])
    assert sum(tick_counts(s, [16, 32], [2, 4], 5, round_to=None)) == 48 - 5  # unrounded: exactly the share
    # floors hold and ungated (infinite-score) groups are never cut, even if the share cannot be met
    assert tick_counts([np.zeros(4), np.full(8, np.inf)], [4, 8], [1, 1], 6, None) == [1, 8]


def test_bad_inputs_are_user_errors(train_ds):
    with pytest.raises(UserInputError, match="needs training data"):
        prune_model(make_tiny_cnn(), X, "gate", 0.5, progress=False)
    with pytest.raises(UserInputError, match="tick_ratio"):
        prune_model(make_tiny_cnn(), X, "gate", 0.5, train_ds=train_ds, progress=False, tick_ratio=0.9)
    with pytest.raises(UserInputError, match="flops target"):
        prune_model(make_tiny_cnn(), X, "gate", 0.5, train_ds=train_ds, progress=False, flops_target=1.5)


def test_gate_score_is_the_taylor_term_of_bn_affine_gradients(train_ds):
    """At phi = 1, dL/dphi_c = dL/dgamma_c * gamma_c + dL/dbeta_c * beta_c: Theta checked against the plain model."""
    from edgeprune.data import fetch

    model = make_tiny_cnn()
    graph = PruneGraph(model, X)
    theta = gate_scores(model, graph, train_ds, GateSettings(batch_size=32, tick_batches=1), seed=3)
    order = torch.randperm(len(train_ds), generator=torch.Generator().manual_seed(3))
    x, y = fetch(train_ds, order[:32].tolist())
    plain = copy.deepcopy(model).train()
    torch.nn.functional.cross_entropy(plain(x), y).backward()
    for name in ("bn1", "bn2", "bn3"):
        bn = getattr(plain, name)
        expected = (bn.weight.grad * bn.weight + bn.bias.grad * bn.bias).abs().detach().double().numpy()
        assert np.allclose(theta[name], expected, rtol=1e-4, atol=1e-9)


def test_tick_removes_exactly_the_lowest_scored_channels(train_ds):
    """One real tick on the tiny CNN: the channels that go are the global lowest by summed Theta,
    computed here independently from the raw gate scores (residual group = bn1 + bn2, conv3's = bn3)."""
    from edgeprune.prune.gate import _Run, _tick

    model = make_tiny_cnn()
    ctx = PruneContext(example_inputs=X, ratio=0.5, train_ds=train_ds, progress=False,
                       options=dict(FAST, tick_ratio=0.2, tock_every=0))
    run = _Run(model, ctx, GateSettings.from_context(ctx))
    before_w = {n: getattr(run.model, n).weight.detach().clone() for n in ("conv1", "conv3")}  # rows identify channels
    run.gates.attach()
    _tick(run.model, run.gates, train_ds, run.s, run.classifier, seed=0)
    run.gates.detach()
    theta, phi = run.gates.scores(), run.gates.values()
    n_remove = run.to_remove()
    assert n_remove == 10  # ceil(0.2 * 48)
    flat = [("res", i, theta["bn1"][i] + theta["bn2"][i]) for i in range(16)]
    flat += [("c3", i, theta["bn3"][i]) for i in range(32)]
    lowest = sorted(flat, key=lambda t: t[2])[:n_remove]
    assert lowest[-1][2] < sorted(t[2] for t in flat)[n_remove]  # no tie at the cut
    gone = {(g, i) for g, i, _ in lowest}
    assert run.prune_tick() == n_remove

    kept_res = [j for j in range(16) if ("res", j) not in gone]
    kept_c3 = [j for j in range(32) if ("c3", j) not in gone]
    assert run.model.conv1.out_channels == len(kept_res) and run.model.conv3.out_channels == len(kept_c3)
    assert torch.equal(run.model.conv1.weight.detach(), before_w["conv1"][kept_res])
    assert torch.equal(run.model.conv3.weight.detach(), before_w["conv3"][kept_c3][:, kept_res])
    # the gates (and their scores) that stay are the kept channels' own
    assert torch.equal(run.gates.values()["bn1"], phi["bn1"][kept_res])
    assert torch.equal(run.gates.values()["bn3"], phi["bn3"][kept_c3])
    assert np.array_equal(run.gates.scores()["bn3"], theta["bn3"][kept_c3])
