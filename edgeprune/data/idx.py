"""The idx format of MNIST and Fashion-MNIST, gzipped or not.

Invariant: ``read_idx`` returns an array only when the magic number is valid
(two zero bytes, a known element type, 1..4 dimensions) and the payload is
exactly the size the header declares; anything else is a ``UserInputError``
naming the file. ``load_idx_split`` returns images as uint8 (N, 1, H, W) and
labels as int64 (N,), with equal N.
"""
from __future__ import annotations

import gzip
import zlib
from pathlib import Path

import numpy as np

from edgeprune.data.memory import RawSplit
from edgeprune.errors import UserInputError

# idx element type codes (third byte of the magic number) -> big-endian numpy dtype.
_DTYPES = {0x08: ">u1", 0x09: ">i1", 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}
_PREFIX = {"train": "train", "test": "t10k"}

FASHION_CLASSES = ("T-shirt/top", "Trouser", "Pullover", "Dress", "Coat",
                   "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot")
MNIST_CLASSES = tuple(str(d) for d in range(10))
FASHION_MEAN, FASHION_STD = (0.2860,), (0.3530,)
MNIST_MEAN, MNIST_STD = (0.1307,), (0.3081,)


def _read_bytes(path: Path) -> bytes:
    raw = path.read_bytes()
    if raw[:2] != b"\x1f\x8b":
        return raw
    try:
        return gzip.decompress(raw)
    except (OSError, EOFError, zlib.error) as exc:
        raise UserInputError(f"{path} is not a valid gzip file: {exc}",
                             "re-download or re-install the data set") from exc


def parse_idx(data: bytes, name: str = "idx data") -> np.ndarray:
    """Decode idx bytes (already decompressed) into a native-endian array."""
    if len(data) < 4 or data[0] != 0 or data[1] != 0 or data[2] not in _DTYPES or not 1 <= data[3] <= 4:
        raise UserInputError(f"{name} is not an idx file (bad magic number {data[:4].hex() or 'empty'})",
                             "pass the original train-/t10k- idx files")
    ndim = data[3]
    header = 4 + 4 * ndim
    if len(data) < header:
        raise UserInputError(f"{name} is truncated inside its header", "re-download the data set")
    dims = tuple(int(d) for d in np.frombuffer(data, ">u4", count=ndim, offset=4))
    dtype = np.dtype(_DTYPES[data[2]])
    expected = header + int(np.prod(dims, dtype=np.int64)) * dtype.itemsize
    if len(data) != expected:
        raise UserInputError(f"{name} has {len(data)} bytes but its header {list(dims)} says {expected}",
                             "the file is truncated or corrupt; re-download the data set")
    return np.frombuffer(data, dtype, offset=header).reshape(dims).astype(dtype.newbyteorder("="))


def read_idx(path: str | Path) -> np.ndarray:
    path = Path(path)
    return parse_idx(_read_bytes(path), str(path))


def find_idx_file(root: Path, split: str, what: str) -> Path | None:
    """``train-images-idx3-ubyte[.gz]`` and the dotted variant ``train-images.idx3-ubyte``."""
    ndim = 3 if what == "images" else 1
    for sep in ("-", "."):
        for ext in (".gz", ""):
            candidate = root / f"{_PREFIX[split]}-{what}{sep}idx{ndim}-ubyte{ext}"
            if candidate.is_file():
                return candidate
    return None


def has_idx_files(root: Path) -> bool:
    return find_idx_file(root, "train", "images") is not None or find_idx_file(root, "test", "images") is not None


def load_idx_split(root: Path, split: str, label: str) -> tuple[np.ndarray, np.ndarray]:
    paths = {what: find_idx_file(root, split, what) for what in ("images", "labels")}
    missing = [w for w, p in paths.items() if p is None]
    if missing:
        raise UserInputError(f"{label} {split} {' and '.join(missing)} not found in {root}",
                             f"expected {_PREFIX[split]}-images-idx3-ubyte.gz and {_PREFIX[split]}-labels-idx1-ubyte.gz")
    images, labels = read_idx(paths["images"]), read_idx(paths["labels"])
    if images.ndim != 3 or images.dtype != np.uint8:
        raise UserInputError(f"{paths['images']} holds {images.dtype} {list(images.shape)}, not uint8 N x H x W images",
                             "pass the images-idx3-ubyte file")
    if labels.ndim != 1 or len(labels) != len(images):
        raise UserInputError(f"{paths['labels']} has {labels.shape} labels for {len(images)} images",
                             "images and labels files must come from the same split")
    return images[:, None, :, :], labels.astype(np.int64)


def _load(root: Path, split: str, name: str, classes, mean, std, flip_ok: bool) -> RawSplit:
    images, labels = load_idx_split(root, split, name)
    if len(labels) and (labels.min() < 0 or labels.max() >= len(classes)):
        raise UserInputError(f"{name} labels in {root} fall outside 0..{len(classes) - 1}",
                             "the labels file is corrupt or from another data set")
    return RawSplit(images=images, labels=labels, name=name, classes=tuple(classes),
                    mean=mean, std=std, flip_ok=flip_ok)


def load_fashion_mnist(root: Path, split: str, image_size: int | None = None) -> RawSplit:
    return _load(root, split, "fashion-mnist", FASHION_CLASSES, FASHION_MEAN, FASHION_STD, flip_ok=True)


def load_mnist(root: Path, split: str, image_size: int | None = None) -> RawSplit:
    # Digits are not mirror-symmetric: no horizontal flips when training on them.
    return _load(root, split, "mnist", MNIST_CLASSES, MNIST_MEAN, MNIST_STD, flip_ok=False)
