"""The idx format of MNIST and Fashion-MNIST, gzipped or not.

Invariant: ``read_idx`` returns an array only when the magic number is valid
(two zero bytes, a known element type, 1..4 dimensions) and the payload is
exactly the size the header declares; anything else is a ``UserInputError``
naming the file. The header is read first and its declared size checked against
``MAX_IDX_BYTES`` and (gzip) ``MAX_GZIP_RATIO`` times the compressed file's size
before any payload is read; the payload is streamed into one buffer and never more
than one byte past the declared size is decompressed. ``load_idx_split`` returns images as uint8 (N, 1, H, W) and
labels as int64 (N,), with equal N.
"""
from __future__ import annotations

import gzip
import io
import zlib
from pathlib import Path
from typing import BinaryIO

import numpy as np

from edgeprune.data.memory import RawSplit
from edgeprune.errors import UserInputError

# idx element type codes (third byte of the magic number) -> big-endian numpy dtype.
_DTYPES = {0x08: ">u1", 0x09: ">i1", 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}
_PREFIX = {"train": "train", "test": "t10k"}
# Bounds on what a header may declare: full MNIST train images are 47 MB and compress about 2-5x.
MAX_IDX_BYTES = 2 * 1024 ** 3
MAX_GZIP_RATIO = 200

FASHION_CLASSES = ("T-shirt/top", "Trouser", "Pullover", "Dress", "Coat",
                   "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot")
MNIST_CLASSES = tuple(str(d) for d in range(10))
FASHION_MEAN, FASHION_STD = (0.2860,), (0.3530,)
MNIST_MEAN, MNIST_STD = (0.1307,), (0.3081,)


def _is_gzip(path: Path) -> bool:
    with open(path, "rb") as fh:
        return fh.read(2) == b"\x1f\x8b"


def _read_header(fh: BinaryIO, name: str) -> tuple[tuple[int, ...], np.dtype, int]:
    """(dims, element dtype, header length) from the magic number and the dimension sizes."""
    magic = fh.read(4)
    if len(magic) < 4 or magic[0] != 0 or magic[1] != 0 or magic[2] not in _DTYPES or not 1 <= magic[3] <= 4:
        raise UserInputError(f"{name} is not an idx file (bad magic number {magic.hex() or 'empty'})",
                             "pass the original train-/t10k- idx files")
    ndim = magic[3]
    raw_dims = fh.read(4 * ndim)
    if len(raw_dims) < 4 * ndim:
        raise UserInputError(f"{name} is truncated inside its header", "re-download the data set")
    dims = tuple(int(d) for d in np.frombuffer(raw_dims, ">u4"))
    return dims, np.dtype(_DTYPES[magic[2]]), 4 + 4 * ndim


def _check_declared(name: str, dims: tuple[int, ...], dtype: np.dtype, header: int,
                    compressed: int | None) -> int:
    """The payload size the header declares, refused when beyond sane bounds or the gzip file's size."""
    payload = int(np.prod(dims, dtype=object)) * dtype.itemsize
    if payload > MAX_IDX_BYTES:
        raise UserInputError(f"{name}: its header declares {list(dims)}, {payload / 1e9:.1f} GB of data, more than "
                             f"the {MAX_IDX_BYTES / 1e9:.1f} GB an idx file may hold here",
                             "the file is corrupt; re-download the data set")
    if compressed is not None and header + payload > compressed * MAX_GZIP_RATIO:
        raise UserInputError(f"{name}: its header declares {list(dims)}, {payload / 1e6:.1f} MB of data, from a "
                             f"{compressed / 1e3:.1f} kB gzip file (over {MAX_GZIP_RATIO}x; real idx files compress "
                             "far less)", "the file is corrupt or hostile; re-download the data set")
    return payload


def _read_exactly(fh: BinaryIO, n: int) -> tuple[bytearray, int, bool]:
    """(buffer of n bytes, bytes actually read, whether more data follows): never reads past n + 1 bytes."""
    buf = bytearray(n)
    view, got = memoryview(buf), 0
    while got < n:
        k = fh.readinto(view[got:])
        if not k:
            break
        got += k
    return buf, got, bool(fh.read(1))


def read_idx_stream(fh: BinaryIO, name: str, compressed: int | None = None) -> np.ndarray:
    """Decode one idx stream: header first, declared size checked (``compressed``: the gzip file's size), then
    exactly that many bytes streamed into one buffer; a short or over-long payload is an error."""
    dims, dtype, header = _read_header(fh, name)
    payload = _check_declared(name, dims, dtype, header, compressed)
    buf, got, more = _read_exactly(fh, payload)
    if got != payload or more:
        size = f"{header + got} bytes" if not more else f"more than {header + payload} bytes"
        raise UserInputError(f"{name} has {size} but its header {list(dims)} says {header + payload}",
                             "the file is truncated or corrupt; re-download the data set")
    return np.frombuffer(buf, dtype).reshape(dims).astype(dtype.newbyteorder("="))


def parse_idx(data: bytes, name: str = "idx data") -> np.ndarray:
    """Decode idx bytes (already decompressed) into a native-endian array."""
    return read_idx_stream(io.BytesIO(data), name)


def read_idx(path: str | Path) -> np.ndarray:
    """An idx file, gzipped or not, streamed: at most its declared size is ever decompressed."""
    path = Path(path)
    if not _is_gzip(path):
        with open(path, "rb") as fh:
            return read_idx_stream(fh, str(path))
    try:
        with gzip.open(path, "rb") as fh:
            return read_idx_stream(fh, str(path), compressed=path.stat().st_size)
    except (OSError, EOFError, zlib.error) as exc:
        raise UserInputError(f"{path} is not a valid gzip file: {str(exc)[:100]}",
                             "re-download or re-install the data set") from None


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
