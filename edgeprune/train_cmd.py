"""``edgeprune train``: train a zoo model and write a pickle-free checkpoint.

Invariant: ``OUT/model.pt`` and ``OUT/train.json`` appear together, only after training
and evaluation succeeded (built in a staging folder, renamed into place).
"""
from __future__ import annotations

from typing import Any

import torch

from edgeprune.data import load_dataset
from edgeprune.errors import UserInputError
from edgeprune.loading import check_out_dir
from edgeprune.models import build_model, model_spec
from edgeprune.models.checkpoint import save_checkpoint
from edgeprune.targets.base import staging_dir, write_json_atomic
from edgeprune.train import evaluate, train


def run_train(model_name: str, data: str, out: str, *, epochs: float, lr: float, batch_size: int,
              image_size: int | None, force: bool, seed: int, progress: bool,
              augment: bool = False) -> dict[str, Any]:
    out_dir = check_out_dir(out, force)
    if epochs <= 0:
        raise UserInputError(f"--epochs must be > 0, got {epochs}")
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
