"""Training and evaluation loops for (fine-)tuning CNNs on CPU or one device.

Invariant: ``train`` runs exactly ``min(ceil(epochs * steps_per_epoch), max_steps)``
SGD steps (Nesterov momentum, weight decay) with a cosine learning rate from
``lr`` down to 0 over those steps, drawing batches and augmentations only from a
generator seeded with ``seed``, so a run is reproducible. Per step: forward,
loss (cross-entropy, or Hinton knowledge distillation when a teacher is given
and ``kd_alpha > 0``), ``backward``, the ``after_backward(model)`` hook, then
the optimizer step. It returns the model in eval mode. Inside an initialised
process group (``torchrun``), the model runs wrapped in DDP, each rank trains on
its own shard of every epoch (``edgeprune.distributed``), only rank 0 shows
progress, and every rank ends with rank 0's buffers. ``evaluate`` and
``predict_logits`` never change weights or BN statistics.
"""
from __future__ import annotations

import math
import sys
import time
from contextlib import contextmanager
from typing import Callable

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from tqdm import tqdm

from edgeprune import ddp
from edgeprune.data.memory import fetch
from edgeprune.errors import UserInputError


@contextmanager
def _threads(num_threads: int | None):
    before = torch.get_num_threads()
    if num_threads:
        torch.set_num_threads(int(num_threads))
    try:
        yield
    finally:
        torch.set_num_threads(before)


def _device(model: nn.Module) -> torch.device:
    first = next(model.parameters(), None)
    return first.device if first is not None else torch.device("cpu")


def _flip_ok(ds) -> bool:
    """Mirror images only where the data set allows it (not for digits); a Subset asks its parent."""
    while isinstance(ds, torch.utils.data.Subset):
        ds = ds.dataset
    return bool(getattr(ds, "flip_ok", True))


def augment_batch(x: torch.Tensor, gen: torch.Generator, flip: bool = True) -> torch.Tensor:
    """Random crop after zero padding (2-4 px, by image size) and a random horizontal flip, per image."""
    b, c, h, w = x.shape
    pad = max(2, min(4, h // 8))
    padded = F.pad(x, (pad, pad, pad, pad), mode="replicate")
    oy = torch.randint(0, 2 * pad + 1, (b,), generator=gen)
    ox = torch.randint(0, 2 * pad + 1, (b,), generator=gen)
    rows = (oy[:, None] + torch.arange(h))[:, None, :, None]
    cols = (ox[:, None] + torch.arange(w))[:, None, None, :]
    out = padded[torch.arange(b)[:, None, None, None], torch.arange(c)[None, :, None, None], rows, cols]
    if flip:
        mirror = torch.rand(b, generator=gen) < 0.5
        out[mirror] = out[mirror].flip(-1)
    return out


def kd_loss(student: torch.Tensor, teacher: torch.Tensor, labels: torch.Tensor, alpha: float, t: float) -> torch.Tensor:
    """(1 - a) * CE(student, y) + a * T^2 * KL(softmax(teacher/T) || softmax(student/T)) (Hinton et al., 2015)."""
    ce = F.cross_entropy(student, labels)
    if alpha <= 0:
        return ce
    kl = F.kl_div(F.log_softmax(student / t, dim=1), F.log_softmax(teacher / t, dim=1),
                  reduction="batchmean", log_target=True)
    return (1.0 - alpha) * ce + alpha * (t * t) * kl


def _check_args(ds, epochs: float, lr: float, batch_size: int, kd_alpha: float, kd_temperature: float) -> None:
    if len(ds) == 0:
        raise UserInputError("the training set is empty", "pass a data set with images")
    if not epochs > 0 or not lr > 0 or batch_size < 1:
        raise UserInputError(f"epochs ({epochs}), lr ({lr}) and batch size ({batch_size}) must be positive",
                             "pass positive --epochs, --lr and --batch-size")
    if not 0.0 <= kd_alpha <= 1.0 or not kd_temperature > 0:
        raise UserInputError(f"kd_alpha {kd_alpha} must be in [0, 1] and the KD temperature positive",
                             "pass --kd-alpha between 0 and 1")


def _plan(n: int, batch_size: int, epochs: float, max_steps: int | None) -> tuple[int, int]:
    """(steps per epoch, total steps). A trailing batch of one image is dropped (BatchNorm needs two)."""
    per_epoch = n // batch_size + (1 if n % batch_size > 1 else 0)
    per_epoch = max(per_epoch, 1)
    total = math.ceil(epochs * per_epoch - 1e-9)
    return per_epoch, max(1, min(total, max_steps) if max_steps is not None else total)


def _optimizer(model: nn.Module, lr: float, momentum: float, weight_decay: float) -> torch.optim.SGD:
    return torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=lr, momentum=momentum,
                           nesterov=momentum > 0, weight_decay=weight_decay)


def train(model: nn.Module, train_ds, *, epochs: float, lr: float = 0.05, batch_size: int = 128,
          weight_decay: float = 5e-4, momentum: float = 0.9, augment: bool = True, teacher: nn.Module | None = None,
          kd_temperature: float = 4.0, kd_alpha: float = 0.0,
          after_backward: Callable[[nn.Module], None] | None = None, max_steps: int | None = None,
          progress: bool = True, desc: str = "train", seed: int = 0, num_threads: int | None = None) -> dict:
    """Train ``model`` in place; returns {"loss": [...], "acc": [...], "steps", "epochs", "seconds", ...} per epoch."""
    _check_args(train_ds, epochs, lr, batch_size, kd_alpha, kd_temperature)
    rank, world = (ddp.rank(), ddp.world_size()) if ddp.is_distributed() else (0, 1)
    per_epoch, total = _plan(ddp.shard_plan_size(len(train_ds), world), batch_size, epochs, max_steps)
    use_kd = teacher is not None and kd_alpha > 0
    progress = progress and rank == 0
    state = {"step": 0, "total": total, "gen": torch.Generator().manual_seed(seed + 7919 * rank),
             "rank": rank, "world": world, "seed": seed, "epoch": 0, "samples": 0, "fingerprint": 0,
             "net": ddp.wrap(model) if world > 1 else model,
             "opt": _optimizer(model, lr, momentum, weight_decay), "lr": lr, "device": _device(model),
             "flip": augment and _flip_ok(train_ds), "augment": augment,
             "teacher": teacher.eval() if use_kd else None, "alpha": kd_alpha, "t": kd_temperature,
             "hook": after_backward, "bs": batch_size}
    history = {"loss": [], "acc": [], "epoch_seconds": [], "steps": 0, "epochs": float(epochs),
               "steps_per_epoch": per_epoch, "batch_size": batch_size, "lr": lr, "kd_alpha": kd_alpha if use_kd else 0.0}
    start = time.perf_counter()
    torch.manual_seed(seed)
    with _threads(num_threads):
        model.train()
        epoch = 0
        while state["step"] < total:
            epoch += 1
            state["epoch"] = epoch
            steps = min(per_epoch, total - state["step"])
            t0 = time.perf_counter()
            loss, acc = _run_epoch(model, train_ds, steps, state, progress, f"{desc} {epoch}/{math.ceil(epochs)}")
            history["loss"].append(loss)
            history["acc"].append(acc)
            history["epoch_seconds"].append(time.perf_counter() - t0)
        model.eval()
    if world > 1:
        ddp.sync_buffers(model)
    history["steps"] = state["step"]
    history["samples"], history["fingerprint"] = state["samples"], state["fingerprint"]
    history["seconds"] = time.perf_counter() - start
    return history


def _run_epoch(model: nn.Module, ds, steps: int, state: dict, progress: bool, desc: str) -> tuple[float, float]:
    if state["world"] > 1:
        order = ddp.epoch_shard(len(ds), state["seed"], state["epoch"], state["rank"], state["world"])
    else:
        order = torch.randperm(len(ds), generator=state["gen"])
    bs, opt = state["bs"], state["opt"]
    loss_sum, correct, seen = 0.0, 0, 0
    bar = tqdm(range(steps), desc=desc, disable=not progress, file=sys.stderr, leave=False, dynamic_ncols=True)
    for i in bar:
        index = order[i * bs:(i + 1) * bs].tolist()
        x, y = fetch(ds, index)
        state["samples"] += len(index)
        state["fingerprint"] = (state["fingerprint"] + ddp.fingerprint(index)) % (1 << 64)
        if state["augment"]:
            x = augment_batch(x, state["gen"], flip=state["flip"])
        x, y = x.to(state["device"]), y.to(state["device"])
        for group in opt.param_groups:
            group["lr"] = 0.5 * state["lr"] * (1.0 + math.cos(math.pi * state["step"] / state["total"]))
        logits = state["net"](x)
        if state["teacher"] is not None:
            with torch.no_grad():
                t_logits = state["teacher"](x)
            loss = kd_loss(logits, t_logits, y, state["alpha"], state["t"])
        else:
            loss = F.cross_entropy(logits, y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        if state["hook"] is not None:
            state["hook"](model)
        opt.step()
        state["step"] += 1
        loss_sum += float(loss.detach()) * len(y)
        correct += int((logits.detach().argmax(1) == y).sum())
        seen += len(y)
        bar.set_postfix(loss=f"{loss_sum / seen:.3f}", acc=f"{correct / seen:.3f}", refresh=False)
    bar.close()
    if not math.isfinite(loss_sum):
        raise UserInputError(f"training diverged (loss {loss_sum / max(seen, 1)})", "lower --lr")
    return loss_sum / max(seen, 1), correct / max(seen, 1)


@contextmanager
def _inference(model: nn.Module):
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            yield
    finally:
        model.train(was_training)


def evaluate(model: nn.Module, ds, *, batch_size: int = 256, progress: bool = True, limit: int | None = None) -> float:
    """Top-1 accuracy in [0, 1] over the first ``limit`` items (all when None)."""
    n = len(ds) if limit is None else min(int(limit), len(ds))
    if n <= 0:
        raise UserInputError("nothing to evaluate on: the data set is empty or the limit is 0", "pass a positive limit")
    device, correct = _device(model), 0
    with _inference(model):
        for start in tqdm(range(0, n, batch_size), desc="evaluate", disable=not progress, file=sys.stderr, leave=False):
            x, y = fetch(ds, range(start, min(start + batch_size, n)))
            correct += int((model(x.to(device)).argmax(1).cpu() == y).sum())
    return correct / n


def predict_logits(model: nn.Module, x, batch_size: int = 256) -> np.ndarray:
    """Model outputs for a float batch (numpy or tensor, N x C x H x W) as float32 numpy, in eval mode."""
    data = torch.as_tensor(np.asarray(x) if not isinstance(x, torch.Tensor) else x, dtype=torch.float32)
    device, outs = _device(model), []
    with _inference(model):
        for start in range(0, len(data), batch_size):
            outs.append(model(data[start:start + batch_size].to(device)).float().cpu())
    return torch.cat(outs).numpy() if outs else np.zeros((0,), np.float32)


def train_baseline(model_name: str, data: str, out: str, *, epochs: float, lr: float, batch_size: int,
                   image_size: int | None, force: bool, seed: int, progress: bool,
                   augment: bool = False) -> dict:
    """Train zoo model ``model_name`` on ``data`` from scratch and write ``out``/model.pt and train.json.

    Both files appear together, only after training and evaluation succeeded (built in a
    staging folder, renamed into place); returns what train.json holds.
    """
    from edgeprune.data import load_dataset
    from edgeprune.loading import check_out_dir
    from edgeprune.models import build_model, model_spec
    from edgeprune.models.checkpoint import save_checkpoint
    from edgeprune.targets.base import staging_dir, write_json_atomic

    out_dir = check_out_dir(out, force)
    if not (isinstance(epochs, (int, float)) and math.isfinite(epochs) and epochs > 0):
        raise UserInputError(f"--epochs must be a finite number > 0, got {epochs}")
    train_ds = load_dataset(data, "train", image_size=image_size)
    test_ds = load_dataset(data, "test", image_size=image_size)
    torch.manual_seed(seed)
    model = build_model(model_name, num_classes=train_ds.num_classes, in_channels=train_ds.channels)
    spec = model_spec(model_name, num_classes=train_ds.num_classes, in_channels=train_ds.channels)
    history = train(model, train_ds, epochs=epochs, lr=lr, batch_size=batch_size, augment=augment,
                    progress=progress, seed=seed)
    accuracy = evaluate(model, test_ds, progress=progress)
    result = {"model": model_name, "data": train_ds.name, "epochs": epochs, "accuracy": accuracy,
              "image_size": train_ds.image_size, "channels": train_ds.channels, "history": history}
    with staging_dir(out_dir, must_contain="train.json") as stage:
        save_checkpoint(stage / "model.pt", model, spec, {"accuracy": accuracy, "data": train_ds.name})
        write_json_atomic(stage / "train.json", result)
    return result
