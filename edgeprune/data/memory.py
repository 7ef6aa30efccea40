"""An image classification set held in memory as uint8, converted on access.

Invariant: ``ArrayDataset`` keeps its pixels as one uint8 tensor (N, C0, H0, W0)
and its labels as int64; every read, one item (``ds[i]``) or many
(``ds.batch(indices)``), goes through the same conversion: scale to [0, 1],
adapt channels (1 -> 3 repeats, 3 -> 1 takes luma), resize bilinearly to
``image_size`` and normalize with the set's mean/std. So ``ds[i]`` equals
``ds.batch([i])[0][0]``, and ``calibration_batch`` rows are exactly the items
``sample_indices`` names. A requested count below 1 is a ``UserInputError`` naming
its flag and range; more than the set holds is clamped with a note (``check_count``).
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import Dataset, Subset

from edgeprune.errors import UserInputError

_LUMA = (0.299, 0.587, 0.114)


@dataclass
class RawSplit:
    """What a format reader returns: uint8 images (N, C, H, W), int64 labels, and constants."""

    images: np.ndarray
    labels: np.ndarray
    name: str
    classes: tuple[str, ...]
    mean: tuple[float, ...]
    std: tuple[float, ...]
    flip_ok: bool = True


class ArrayDataset(Dataset):
    """(float32 C x H x W normalized tensor, int label) pairs over in-memory uint8 pixels."""

    def __init__(self, raw: RawSplit, *, image_size: int | None = None, channels: int | None = None):
        if raw.images.ndim != 4 or raw.images.dtype != np.uint8:
            raise ValueError(f"images must be uint8 (N, C, H, W), got {raw.images.dtype} {raw.images.shape}")
        self._pixels = torch.from_numpy(np.ascontiguousarray(raw.images))
        self._labels = torch.from_numpy(np.asarray(raw.labels, dtype=np.int64))
        self._source_channels = int(raw.images.shape[1])
        self.channels = int(channels or self._source_channels)
        if self.channels not in (1, 3) or self._source_channels not in (1, 3):
            raise UserInputError(f"cannot turn {self._source_channels}-channel images into {self.channels} channels",
                                 "use a model whose input has 1 or 3 channels")
        self.image_size = int(image_size or raw.images.shape[2])
        self._source_hw = tuple(raw.images.shape[2:])
        self.name = raw.name
        self.classes = tuple(raw.classes)
        self.num_classes = len(self.classes)
        self.flip_ok = raw.flip_ok
        mean, std = _adapt_stats(raw.mean, raw.std, self._source_channels, self.channels)
        self.mean, self.std = mean, std
        self._mean = torch.tensor(mean, dtype=torch.float32).view(1, -1, 1, 1)
        self._std = torch.tensor(std, dtype=torch.float32).view(1, -1, 1, 1)

    def __len__(self) -> int:
        return int(self._labels.shape[0])

    def __getitem__(self, index: int):
        x, y = self.batch([int(index)])
        return x[0], int(y[0])

    @property
    def labels(self) -> np.ndarray:
        return self._labels.numpy()

    def batch(self, indices) -> tuple[torch.Tensor, torch.Tensor]:
        """Convert many items at once: float32 (B, C, H, W) and int64 (B,)."""
        idx = torch.as_tensor(np.asarray(indices, dtype=np.int64))
        x = self._pixels[idx].to(torch.float32).div_(255.0)
        if self.channels != self._source_channels:
            x = x.repeat(1, 3, 1, 1) if self.channels == 3 else _to_luma(x)
        if (self.image_size, self.image_size) != self._source_hw:
            x = F.interpolate(x, size=(self.image_size, self.image_size), mode="bilinear",
                              align_corners=False, antialias=self.image_size < min(self._source_hw))
        return (x - self._mean) / self._std, self._labels[idx]

    def __repr__(self) -> str:
        return (f"ArrayDataset({self.name}, n={len(self)}, classes={self.num_classes}, "
                f"shape=({self.channels}, {self.image_size}, {self.image_size}))")


def _to_luma(x: torch.Tensor) -> torch.Tensor:
    w = torch.tensor(_LUMA, dtype=x.dtype).view(1, 3, 1, 1)
    return (x * w).sum(dim=1, keepdim=True)


def _adapt_stats(mean, std, source: int, target: int) -> tuple[tuple[float, ...], tuple[float, ...]]:
    mean, std = tuple(float(m) for m in mean), tuple(float(s) for s in std)
    if len(mean) == 1 and source == 3:
        mean, std = mean * 3, std * 3
    if target == source:
        return mean, std
    if target == 3:
        return mean * 3, std * 3
    # 3 -> 1 by luma: a weighted sum of channels; the weighted stats are a close enough estimate.
    return (sum(w * m for w, m in zip(_LUMA, mean)),), (sum(w * s for w, s in zip(_LUMA, std)),)


def sample_indices(length: int, n: int, seed: int = 0) -> np.ndarray:
    """The first ``n`` of a seeded permutation of ``range(length)``: the rows every helper here takes."""
    if n < 0:
        raise UserInputError(f"asked for {n} samples", "pass a positive count")
    return np.random.default_rng(seed).permutation(length)[: min(n, length)]


def fetch(dataset, indices) -> tuple[torch.Tensor, torch.Tensor]:
    """Items ``indices`` of any map-style dataset as (float32 batch, int64 labels); fast for ArrayDataset."""
    indices = [int(i) for i in indices]
    if isinstance(dataset, Subset):
        return fetch(dataset.dataset, [int(dataset.indices[i]) for i in indices])
    if hasattr(dataset, "batch"):
        return dataset.batch(indices)
    items = [dataset[i] for i in indices]
    x = torch.stack([torch.as_tensor(it[0], dtype=torch.float32) for it in items])
    return x, torch.as_tensor([int(it[1]) for it in items], dtype=torch.int64)


def check_count(n, available: int, flag: str, what: str) -> int:
    """How many of ``available`` items to take for ``flag``: an integer >= 1; more than there are is
    clamped to all of them with a note on stderr (a small data set is not an error)."""
    if isinstance(n, bool) or not isinstance(n, (int, np.integer)) or n < 1:
        upto = f" to {available}" if available >= 1 else ""
        raise UserInputError(f"{flag} must be a whole number from 1{upto} ({what}), got {n!r}",
                             f"pass {flag} N with N >= 1")
    if available < 1:
        raise UserInputError(f"there are no {what} to take {flag} {n} from", "pass a data set with images")
    if n > available:
        from edgeprune.ui import info

        info(f"note: {flag} {n} is more than the {available} {what}; using all {available}")
        return available
    return int(n)


def calibration_batch(dataset, n: int, seed: int = 0, flag: str = "--calib-images") -> np.ndarray:
    """``n`` deterministic samples as float32 (n, C, H, W): rows ``sample_indices(len(dataset), n, seed)``.

    ``n`` is checked by ``check_count`` (``flag`` names it in the message).
    """
    n = check_count(n, len(dataset), flag, "training images to calibrate on")
    idx = sample_indices(len(dataset), n, seed)
    return np.ascontiguousarray(fetch(dataset, idx)[0].numpy(), dtype=np.float32)


def split_holdout(dataset, n: int, seed: int = 0) -> tuple[Subset, Subset]:
    """Disjoint (rest, holdout) subsets; holdout holds rows ``sample_indices(len(dataset), n, seed)``."""
    idx = sample_indices(len(dataset), n, seed)
    chosen = set(idx.tolist())
    rest = [i for i in range(len(dataset)) if i not in chosen]
    return Subset(dataset, rest), Subset(dataset, idx.tolist())


def labeled_batch(dataset, n: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Like ``calibration_batch`` but also the int64 labels of the same rows."""
    idx = sample_indices(len(dataset), n, seed)
    x, y = fetch(dataset, idx)
    return np.ascontiguousarray(x.numpy(), dtype=np.float32), y.numpy()
