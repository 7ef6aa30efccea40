"""Adaptive BatchNorm: re-estimate BN statistics of a pruned network on a few training images.

Removing channels changes what every later layer sees, so the running mean and variance a BN
layer learned for the full network are wrong for the pruned one; a pruned network evaluated with
them often predicts one class (top-1 = one class's share). EagleEye (Li et al., ECCV 2020) re-estimates
them on a few hundred training images, with the weights frozen, and shows the accuracy of the
recalibrated sub-network ranks candidates much as their accuracy after fine-tuning does.

``recalibrate_bn(model, ds, images=512)``: every BatchNorm's running statistics reset and
re-estimated as the plain average over the batches of the first ``images`` items of a
permutation of ``ds`` seeded with ``seed`` (momentum ``None``, i.e. a cumulative average).
Invariant: only BN running statistics change (weights, biases and affine parameters do not);
the model comes back in the train/eval mode it was in, with each BN's momentum restored; a model
without BN layers is returned untouched.
"""
from __future__ import annotations

import numpy as np
import torch
from torch import nn

from edgeprune.data.memory import fetch


def batchnorms(model: nn.Module) -> list[nn.modules.batchnorm._BatchNorm]:
    return [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.track_running_stats]


def recalibrate_bn(model: nn.Module, ds, images: int = 512, batch_size: int = 128, seed: int = 0) -> nn.Module:
    """Re-estimate every BN layer's running statistics of ``model`` (in place) on ``images`` items of ``ds``."""
    bns = batchnorms(model)
    if not bns or ds is None or len(ds) == 0:
        return model
    n = min(int(images), len(ds))
    order = np.random.default_rng(seed).permutation(len(ds))[:n]
    was_training = model.training
    momenta = [bn.momentum for bn in bns]
    device = next(model.parameters()).device
    try:
        for bn in bns:
            bn.reset_running_stats()
            bn.momentum = None  # cumulative moving average: every batch weighs the same
        model.eval()
        for bn in bns:
            bn.train()
        with torch.no_grad():
            for start in range(0, n, batch_size):
                idx = [int(i) for i in order[start:start + batch_size]]
                if len(idx) < 2 and start > 0:
                    break  # a one-image batch has no variance to estimate
                x, _ = fetch(ds, idx)
                model(x.to(device))
    finally:
        for bn, momentum in zip(bns, momenta):
            bn.momentum = momentum
        model.train(was_training)
    return model
