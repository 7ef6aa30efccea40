"""Data sets by spec: ``load_dataset("fashion-mnist", "train")`` and friends.

Invariant: a spec names one reader in ``READERS`` and one folder; every reader
returns a ``RawSplit`` (uint8 pixels + labels + constants) that becomes an
``ArrayDataset`` of (float32 C x H x W normalized tensor, int label). Spec forms:

- ``fashion-mnist`` (folder from $EDGEPRUNE_FASHION_MNIST, else the Debian
  package's /usr/share/datasets/fashion-mnist) or ``fashion-mnist:DIR``
- ``mnist:DIR`` (idx files, like Fashion-MNIST)
- ``cifar10:DIR`` (python pickles: data_batch_1..5, test_batch, batches.meta)
- ``folder:DIR`` (DIR/train/<class>/*, DIR/test/<class>/*, or DIR/<class>/* split 80/20)
- ``DIR``: an existing folder whose layout is detected in that order.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Callable

import numpy as np

from edgeprune.data import cifar, folder, idx
from edgeprune.data.memory import (ArrayDataset, RawSplit, calibration_batch, check_count, fetch, labeled_batch,
                                   sample_indices, split_holdout)
from edgeprune.errors import UserInputError

__all__ = ["ArrayDataset", "RawSplit", "calibration_batch", "check_count", "dataset_info", "fetch", "labeled_batch",
           "load_dataset", "parse_spec", "sample_indices", "split_holdout", "SPEC_FORMS"]

DEFAULT_FASHION_MNIST = "/usr/share/datasets/fashion-mnist"
FASHION_ENV = "EDGEPRUNE_FASHION_MNIST"
SPLITS = ("train", "test")
SPEC_FORMS = "fashion-mnist, fashion-mnist:DIR, mnist:DIR, cifar10:DIR, folder:DIR, or an existing DIR"

READERS: dict[str, Callable[[Path, str, int | None], RawSplit]] = {
    "fashion-mnist": idx.load_fashion_mnist,
    "mnist": idx.load_mnist,
    "cifar10": cifar.load_cifar10,
    "folder": folder.load_folder,
}
_ALIASES = {"fashion_mnist": "fashion-mnist", "fmnist": "fashion-mnist", "cifar-10": "cifar10", "cifar": "cifar10"}
_LABELS = {"fashion-mnist": "Fashion-MNIST", "mnist": "MNIST", "cifar10": "CIFAR-10", "folder": "image folder"}


def _detect(path: Path) -> str | None:
    if idx.has_idx_files(path):
        low = str(path).lower()
        return "mnist" if "mnist" in low and "fashion" not in low else "fashion-mnist"
    if cifar.looks_like_cifar(path):
        return "cifar10"
    if folder.looks_like_folder(path):
        return "folder"
    return None


def parse_spec(spec: str) -> tuple[str, Path]:
    """(reader name, folder) for a spec; the folder is not checked to exist here."""
    if not isinstance(spec, (str, os.PathLike)) or not str(spec).strip():
        raise UserInputError("no data set given", f"pass --data as one of: {SPEC_FORMS}")
    spec = str(spec).strip()
    name, sep, rest = spec.partition(":")
    kind = _ALIASES.get(name.lower(), name.lower())
    if sep and kind in READERS and rest:
        return kind, Path(rest).expanduser()
    if kind == "fashion-mnist" and not sep:
        return kind, Path(os.environ.get(FASHION_ENV) or DEFAULT_FASHION_MNIST)
    path = Path(spec).expanduser()
    if path.is_dir():
        detected = _detect(path)
        if detected is None:
            raise UserInputError(f"cannot tell what data set {path} holds",
                                 f"expected idx files, CIFAR-10 batches or class folders; or name it: {SPEC_FORMS}")
        return detected, path
    if kind in READERS:
        raise UserInputError(f"data spec '{spec}' needs a folder", f"pass {kind}:DIR")
    if "/" in spec or spec.startswith("."):
        raise UserInputError(f"data folder {spec} not found", f"pass an existing folder, or one of: {SPEC_FORMS}")
    raise UserInputError(f"unknown data set '{spec}'", f"pass one of: {SPEC_FORMS}")


def _missing(kind: str, path: Path) -> UserInputError:
    label = _LABELS[kind]
    if kind == "fashion-mnist" and str(path) == os.environ.get(FASHION_ENV):
        hint = f"${FASHION_ENV} points there; fix it, unset it, or pass --data PATH"
    elif kind == "fashion-mnist" and str(path) == DEFAULT_FASHION_MNIST:
        hint = "install it with 'sudo apt-get install dataset-fashion-mnist' or pass --data PATH"
    else:
        hint = f"pass --data {kind}:DIR pointing at the extracted files"
    return UserInputError(f"{label} not found at {path}", hint)


def _limit(raw: RawSplit, limit: int | None) -> RawSplit:
    if limit is None or limit >= len(raw.labels):
        return raw
    if limit <= 0:
        raise UserInputError(f"limit must be positive, got {limit}", "pass a positive number of images")
    keep = np.sort(sample_indices(len(raw.labels), limit, seed=0))
    return RawSplit(images=raw.images[keep], labels=raw.labels[keep], name=raw.name, classes=raw.classes,
                    mean=raw.mean, std=raw.std, flip_ok=raw.flip_ok)


def load_dataset(spec: str, split: str, *, image_size: int | None = None, channels: int | None = None,
                 limit: int | None = None) -> ArrayDataset:
    """The ``split`` ("train" or "test") of the data set ``spec``, optionally resized/re-channelled/limited.

    ``limit`` keeps a deterministic random subset of that many images (same rows every call).
    """
    if split not in SPLITS:
        raise UserInputError(f"unknown split '{split}'", "use 'train' or 'test'")
    if image_size is not None and not 8 <= int(image_size) <= 4096:
        raise UserInputError(f"image size {image_size} is out of range", "pass --image-size between 8 and 4096")
    if channels is not None and channels not in (1, 3):
        raise UserInputError(f"channels must be 1 or 3, got {channels}",
                             "the model's input must have 1 or 3 channels to read image data")
    kind, path = parse_spec(spec)
    if not path.is_dir():
        raise _missing(kind, path)
    raw = _limit(READERS[kind](path, split, image_size), limit)
    if len(raw.labels) == 0:
        raise UserInputError(f"the {split} split of {raw.name} at {path} has no images", "add images to it")
    if len(raw.classes) < 2:
        raise UserInputError(f"{raw.name} at {path} has {len(raw.classes)} class; a classifier needs at least 2",
                             "add the other classes' images")
    return ArrayDataset(raw, image_size=image_size, channels=channels)


def dataset_info(spec: str, *, image_size: int | None = None, channels: int | None = None) -> dict:
    """name, num_classes, channels, image_size and classes of ``spec``, read from its test split."""
    ds = load_dataset(spec, "test", image_size=image_size, channels=channels)
    return {"name": ds.name, "num_classes": ds.num_classes, "channels": ds.channels,
            "image_size": ds.image_size, "classes": list(ds.classes), "test_size": len(ds)}
