"""CIFAR-10 in its python-pickle layout (data_batch_1..5, test_batch, batches.meta).

Invariant: the batches are untrusted pickles. They are only ever read by
``SafeUnpickler``, whose ``find_class`` resolves nothing but what a real CIFAR
batch references (numpy array/dtype reconstruction and ``_codecs.encode`` for
protocol-2 bytes); any other global is refused with a ``UserInputError``
before it can be called. Loaded batches are checked for shape (N, 3072) uint8
data and labels in 0..9.
"""
from __future__ import annotations

import codecs
import io
import pickle
from pathlib import Path

import numpy as np

from edgeprune.data.memory import RawSplit
from edgeprune.errors import UserInputError

CIFAR10_CLASSES = ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck")
CIFAR10_MEAN = (0.4914, 0.4822, 0.4465)
CIFAR10_STD = (0.2470, 0.2435, 0.2616)
TRAIN_FILES = tuple(f"data_batch_{i}" for i in range(1, 6))
TEST_FILES = ("test_batch",)
_MAX_BYTES = 512 * 1024 * 1024


def _latin1_encode(text: str, encoding: str = "latin1") -> bytes:
    """What protocol-2 pickles use to carry bytes; no other codec is reachable through it."""
    if encoding not in ("latin1", "latin-1") or not isinstance(text, str):
        raise UserInputError("pickle refused: it asks _codecs.encode for something other than latin1 text",
                             "the file is not a genuine CIFAR-10 batch; do not load it")
    return codecs.encode(text, "latin1")


def _allowed() -> dict[tuple[str, str], object]:
    try:
        from numpy._core import multiarray
    except ImportError:  # numpy < 2
        from numpy.core import multiarray
    reconstruct, scalar = multiarray._reconstruct, multiarray.scalar
    return {
        ("numpy.core.multiarray", "_reconstruct"): reconstruct,
        ("numpy._core.multiarray", "_reconstruct"): reconstruct,
        ("numpy.core.multiarray", "scalar"): scalar,
        ("numpy._core.multiarray", "scalar"): scalar,
        ("numpy", "ndarray"): np.ndarray,
        ("numpy", "dtype"): np.dtype,
        ("_codecs", "encode"): _latin1_encode,
        ("builtins", "dict"): dict,
        ("builtins", "list"): list,
        ("__builtin__", "dict"): dict,
        ("__builtin__", "list"): list,
    }


class SafeUnpickler(pickle.Unpickler):
    """An unpickler that can rebuild numpy arrays, dicts, lists, bytes and numbers, and nothing else."""

    def __init__(self, file, *, source: str = "pickle"):
        super().__init__(file, encoding="bytes")
        self._source = source
        self._allowed = _allowed()

    def find_class(self, module: str, name: str):
        found = self._allowed.get((module, name))
        if found is None:
            raise UserInputError(f"{self._source} refused: it references {module}.{name}, "
                                 "which a CIFAR batch never needs",
                                 "the file is not a genuine CIFAR-10 batch; do not load it")
        return found


def safe_load(path: Path):
    size = path.stat().st_size
    if size > _MAX_BYTES:
        raise UserInputError(f"{path} is {size} bytes, too large for a CIFAR batch", "pass the original batches")
    try:
        return SafeUnpickler(io.BytesIO(path.read_bytes()), source=str(path)).load()
    except UserInputError:
        raise
    except (pickle.UnpicklingError, EOFError, ValueError, TypeError, IndexError, KeyError,
            AttributeError, UnicodeDecodeError) as exc:
        raise UserInputError(f"{path} is not a readable CIFAR batch: {exc}", "re-download the data set") from exc


def _text(key) -> str:
    return key.decode("latin1") if isinstance(key, bytes) else str(key)


def _batch(path: Path) -> tuple[np.ndarray, np.ndarray]:
    obj = safe_load(path)
    if not isinstance(obj, dict):
        raise UserInputError(f"{path} holds a {type(obj).__name__}, not a CIFAR batch dict", "pass the original batches")
    obj = {_text(k): v for k, v in obj.items()}
    data, labels = obj.get("data"), obj.get("labels")
    if not isinstance(data, np.ndarray) or data.dtype != np.uint8 or data.ndim != 2 or data.shape[1] != 3072:
        raise UserInputError(f"{path} has no uint8 (N, 3072) 'data' array", "pass the python version of CIFAR-10")
    labels = np.asarray(labels if labels is not None else [], dtype=np.int64)
    if labels.shape != (len(data),) or (len(labels) and (labels.min() < 0 or labels.max() > 9)):
        raise UserInputError(f"{path} labels do not match its {len(data)} images or fall outside 0..9",
                             "pass the original CIFAR-10 batches")
    return data.reshape(-1, 3, 32, 32), labels


def resolve_root(root: Path) -> Path:
    """Accept the extracted folder itself or its parent holding ``cifar-10-batches-py``."""
    nested = root / "cifar-10-batches-py"
    return nested if nested.is_dir() else root


def looks_like_cifar(root: Path) -> bool:
    root = resolve_root(root)
    return (root / "test_batch").is_file() or (root / "data_batch_1").is_file()


def _classes(root: Path) -> tuple[str, ...]:
    meta_path = root / "batches.meta"
    if not meta_path.is_file():
        return CIFAR10_CLASSES
    meta = safe_load(meta_path)
    names = meta.get(b"label_names", meta.get("label_names")) if isinstance(meta, dict) else None
    if not isinstance(names, list) or len(names) != 10:
        raise UserInputError(f"{meta_path} has no list of 10 label_names", "pass the original batches.meta")
    return tuple(_text(n) for n in names)


def load_cifar10(root: Path, split: str, image_size: int | None = None) -> RawSplit:
    root = resolve_root(root)
    files = [root / f for f in (TRAIN_FILES if split == "train" else TEST_FILES)]
    missing = [f.name for f in files if not f.is_file()]
    if missing:
        raise UserInputError(f"CIFAR-10 {split} batches {', '.join(missing)} not found in {root}",
                             "pass the folder extracted from cifar-10-python.tar.gz")
    parts = [_batch(f) for f in files]
    images = np.concatenate([p[0] for p in parts])
    labels = np.concatenate([p[1] for p in parts])
    return RawSplit(images=images, labels=labels, name="cifar10", classes=_classes(root),
                    mean=CIFAR10_MEAN, std=CIFAR10_STD, flip_ok=True)
