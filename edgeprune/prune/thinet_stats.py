"""ThiNet's layer statistics: the Gram matrix of per-channel contributions to a consumer's output.

For a consumer layer L (a conv with ``groups == 1``, or a Linear) fed by channel group g, one
sampled output of L — one image, one output position, one output channel o — splits over
g's channels (the paper's Section 3.2, in this project's words):

    y = sum_c x_hat_c,    x_hat_c = sum_{i owned by c} sum_{k in the kernel window} W[o, i, k] * x[i, k]

A conv in-channel i is owned by one group channel; a Linear fed by a flattened H x W map owns
H*W features per channel (Torch-Pruning's index mapping says which), a Linear after global
pooling one feature per channel ("1x1 kernels on pooled features"). L's bias and the
in-channels L takes from other groups do not depend on g and are left out of y.

Every ThiNet quantity is a quadratic form in x_hat, so a ``Probe`` keeps only
G = sum over sampled rows of x_hat x_hat^T (C x C, float64) and the row count, accumulated by a
forward hook while images stream through the model: ``positions`` random output positions per
image and, at each, ``out_per_row`` random output channels (the paper samples one channel per
location; taking several at the same window costs almost nothing and lowers the variance).

Invariant: a probe's Gram is symmetric positive semi-definite, ``rows`` counts the sampled
outputs it sums, and the sampling is a pure function of the probe's seed and the images;
``collect`` cuts a forward pass short (after the last probed layer) only when a full pass
showed every probed layer runs exactly once, so cutting cannot change what the probes see.
"""
from __future__ import annotations

import contextlib
from typing import Iterator, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from edgeprune.data.memory import fetch, sample_indices
from edgeprune.prune.graph import ChannelGroup, PruneGraph

_CHUNK_ELEMENTS = 1 << 22  # bound on the per-chunk (rows x channels x in-features x window) product


def is_usable_consumer(module: nn.Module) -> bool:
    """A layer whose output splits into per-input-channel partial sums: a dense conv or a Linear.

    Depthwise and grouped convs are skipped: a depthwise conv is pruned together with its input
    group (it is one of the group's out-convs), so the group's next dense layer is its consumer.
    """
    return isinstance(module, nn.Linear) or (isinstance(module, nn.Conv2d) and module.groups == 1)


class Probe:
    """Gram statistics of one consumer layer's output split over one group's channels."""

    def __init__(self, name: str, module: nn.Module, in_idx: Sequence[int], owner: Sequence[int],
                 channels: int, *, positions: int = 10, out_per_row: int = 16, seed: int = 0):
        self.name = name
        self.module = module
        self.in_idx = torch.as_tensor(list(in_idx), dtype=torch.long)
        self.owner = torch.as_tensor(list(owner), dtype=torch.long)
        self.channels = int(channels)
        self.positions = max(1, int(positions))
        self.out_per_row = max(1, int(out_per_row))
        self.gen = torch.Generator().manual_seed(int(seed))
        self.gram = torch.zeros(self.channels, self.channels, dtype=torch.float64)
        self.rows = 0

    # -- the hook ---------------------------------------------------------------------------
    def hook(self, module: nn.Module, inputs, output) -> None:
        x = inputs[0].detach()
        if isinstance(module, nn.Conv2d):
            patches = conv_patches(module, x, self.positions, self.gen)
            weight = module.weight.detach().flatten(2)
        else:
            patches = linear_rows(x, self.positions, self.gen)
            weight = module.weight.detach().unsqueeze(-1)
        idx = self.in_idx.to(x.device)
        self.accumulate(patches[:, idx, :], weight[:, idx, :])

    def accumulate(self, patches: torch.Tensor, weight: torch.Tensor) -> None:
        """Add rows for ``patches`` (R, m, k) under ``weight`` (O, m, k) to the Gram."""
        n_out = weight.shape[0]
        q = min(n_out, self.out_per_row)
        per_row = q * patches.shape[1] * patches.shape[2]
        step = max(1, _CHUNK_ELEMENTS // max(1, per_row))
        owner = self.owner.to(patches.device)
        for start in range(0, patches.shape[0], step):
            chunk = patches[start:start + step]
            if q == n_out:
                part = torch.einsum("rmk,omk->rom", chunk, weight)
            else:
                pick = torch.rand(len(chunk), n_out, generator=self.gen).argsort(dim=1)[:, :q]
                part = (weight[pick.to(chunk.device)] * chunk[:, None]).sum(-1)
            x_hat = part.new_zeros(len(chunk), part.shape[1], self.channels).index_add_(2, owner, part)
            rows = x_hat.reshape(-1, self.channels).double().cpu()
            self.gram += rows.T @ rows
            self.rows += rows.shape[0]

    # -- derived quantities -----------------------------------------------------------------
    def mean_gram(self) -> torch.Tensor:
        """G / rows: the per-sample objective, so consumers of different sizes weigh alike."""
        return self.gram / max(1, self.rows)

    def scale_inputs(self, kept: Sequence[int], scales: Sequence[float]) -> None:
        """Multiply the consumer's weights on each kept channel's inputs by that channel's scale."""
        factor = torch.ones(self.channels, dtype=torch.float64)
        factor[torch.as_tensor(list(kept), dtype=torch.long)] = torch.as_tensor(list(scales), dtype=torch.float64)
        weight = self.module.weight
        per_input = factor[self.owner].to(weight.dtype).to(weight.device)
        shape = [1, -1] + [1] * (weight.dim() - 2)
        with torch.no_grad():
            weight[:, self.in_idx.to(weight.device)] *= per_input.view(shape)


def _same_padding(conv: nn.Conv2d) -> tuple[int, int, int, int]:
    pads = []
    for k, d in zip(reversed(conv.kernel_size), reversed(conv.dilation)):
        total = d * (k - 1)
        pads += [total // 2, total - total // 2]
    return tuple(pads)


def _padded(conv: nn.Conv2d, x: torch.Tensor) -> torch.Tensor:
    """``x`` padded exactly as ``conv`` pads it (zeros, 'same', 'valid' or another padding mode)."""
    if isinstance(conv.padding, str):
        pads = _same_padding(conv) if conv.padding == "same" else (0, 0, 0, 0)
    else:
        ph, pw = conv.padding
        pads = (pw, pw, ph, ph)
    mode = "constant" if conv.padding_mode == "zeros" else conv.padding_mode
    return F.pad(x, pads, mode=mode) if any(pads) else x


def conv_patches(conv: nn.Conv2d, x: torch.Tensor, positions: int, gen: torch.Generator) -> torch.Tensor:
    """Input windows of ``positions`` random output locations per image: (N * positions, C, kh * kw)."""
    xp = _padded(conv, x)
    n, c, hp, wp = xp.shape
    (kh, kw), (sh, sw), (dh, dw) = conv.kernel_size, conv.stride, conv.dilation
    h_out, w_out = (hp - dh * (kh - 1) - 1) // sh + 1, (wp - dw * (kw - 1) - 1) // sw + 1
    oy = torch.randint(h_out, (n * positions,), generator=gen).to(x.device)
    ox = torch.randint(w_out, (n * positions,), generator=gen).to(x.device)
    img = torch.arange(n, device=x.device).repeat_interleave(positions)
    rows = oy[:, None] * sh + torch.arange(kh, device=x.device) * dh          # (R, kh)
    cols = ox[:, None] * sw + torch.arange(kw, device=x.device) * dw          # (R, kw)
    chan = torch.arange(c, device=x.device)
    win = xp[img[:, None, None, None], chan[None, :, None, None], rows[:, None, :, None], cols[:, None, None, :]]
    return win.reshape(n * positions, c, kh * kw)


def linear_rows(x: torch.Tensor, positions: int, gen: torch.Generator) -> torch.Tensor:
    """A Linear's input as (R, features, 1): every image once, or ``positions`` random tokens of each."""
    if x.dim() <= 2:
        return x.reshape(-1, x.shape[-1], 1)
    flat = x.reshape(x.shape[0], -1, x.shape[-1])
    pick = torch.randint(flat.shape[1], (flat.shape[0], positions), generator=gen).to(x.device)
    return flat[torch.arange(flat.shape[0], device=x.device)[:, None], pick].reshape(-1, x.shape[-1], 1)


def group_probes(graph: PruneGraph, group: ChannelGroup, *, positions: int, out_per_row: int,
                 seed: int) -> list[Probe]:
    """One probe per usable consumer of ``group``, with its current in-index -> channel mapping.

    The mapping is re-derived from the dependency graph now (not from the group as built), so
    it is right even after other groups were removed (e.g. concatenation offsets moved).
    """
    root = group.tp_group[0].dep.target.module
    handler = group.tp_group[0].dep.handler
    fresh = graph.dg.get_pruning_group(root, handler, list(range(group.channels)))
    names = {mod: name for name, mod in graph.model.named_modules()}
    pairs: dict[str, dict[int, int]] = {}
    for item in fresh.items:
        mod = item.dep.target.module
        name = names.get(mod)
        if name not in group.context.get("consumers", ()) or not is_usable_consumer(mod):
            continue
        if graph.dg.is_out_channel_pruning_fn(item.dep.handler):
            continue
        roots = item.root_idxs if item.root_idxs is not None else item.idxs
        pairs.setdefault(name, {}).update({int(i): int(r) for i, r in zip(item.idxs, roots)})
    modules = dict(graph.model.named_modules())
    return [Probe(name, modules[name], list(mapping), list(mapping.values()), group.channels,
                  positions=positions, out_per_row=out_per_row, seed=seed + 7919 * k)
            for k, (name, mapping) in enumerate(sorted(pairs.items()))]


class _Enough(Exception):
    """Raised by a hook once every probe has seen the batch: the rest of the forward pass is not needed."""


class _Stream:
    """Hooks ``probes`` into their layers; after one full pass in which each probed layer ran once,
    later passes stop right after the last probe (layers called twice per pass keep full passes)."""

    def __init__(self, probes: Sequence[Probe]):
        self.probes = list(probes)
        self.calls = [0] * len(self.probes)
        self.early_stop = False

    def _hook(self, k: int):
        def hook(module, inputs, output) -> None:
            self.probes[k].hook(module, inputs, output)
            self.calls[k] += 1
            if self.early_stop and all(self.calls):
                raise _Enough
        return hook

    @contextlib.contextmanager
    def attached(self) -> Iterator[None]:
        handles = [p.module.register_forward_hook(self._hook(k)) for k, p in enumerate(self.probes)]
        try:
            yield
        finally:
            for h in handles:
                h.remove()

    def run(self, model: nn.Module, x: torch.Tensor) -> None:
        self.calls = [0] * len(self.probes)
        try:
            model(x)
        except _Enough:
            return
        self.early_stop = all(c == 1 for c in self.calls)


def collect(model: nn.Module, probes: Sequence[Probe], dataset, *, images: int, seed: int = 0,
            batch_size: int = 64) -> None:
    """Stream ``images`` sampled training images through ``model`` (eval mode) into ``probes``."""
    if not probes:
        return
    idx = sample_indices(len(dataset), images, seed)
    device = next(model.parameters()).device
    stream = _Stream(probes)
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad(), stream.attached():
            for start in range(0, len(idx), batch_size):
                x, _ = fetch(dataset, idx[start:start + batch_size])
                stream.run(model, x.to(device))
    finally:
        model.train(was_training)
