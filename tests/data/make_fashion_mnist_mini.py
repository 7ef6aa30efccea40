"""Regenerate tests/data/fashion-mnist-mini from the Debian package's Fashion-MNIST.

    python tests/data/make_fashion_mnist_mini.py [SOURCE_DIR]

Takes, in file order, the first 60 images of each class from the train split and
the first 30 of each class from the test split (600 + 300, class-balanced), keeps
their original order, and writes them in the original idx format, gzipped with a
zero timestamp so the output is byte-for-byte reproducible. Needs only numpy.
SOURCE_DIR defaults to /usr/share/datasets/fashion-mnist
(``sudo apt-get install dataset-fashion-mnist``).
"""
from __future__ import annotations

import gzip
import struct
import sys
from pathlib import Path

import numpy as np

PER_CLASS = {"train": 60, "t10k": 30}
OUT = Path(__file__).resolve().parent / "fashion-mnist-mini"


def read_idx(path: Path) -> np.ndarray:
    data = gzip.decompress(path.read_bytes())
    ndim = data[3]
    dims = struct.unpack(f">{ndim}I", data[4:4 + 4 * ndim])
    return np.frombuffer(data, np.uint8, offset=4 + 4 * ndim).reshape(dims)


def write_idx(path: Path, array: np.ndarray) -> None:
    header = bytes([0, 0, 0x08, array.ndim]) + struct.pack(f">{array.ndim}I", *array.shape)
    with open(path, "wb") as raw, gzip.GzipFile(filename="", mode="wb", fileobj=raw, mtime=0, compresslevel=9) as gz:
        gz.write(header + np.ascontiguousarray(array, dtype=np.uint8).tobytes())


def balanced_rows(labels: np.ndarray, per_class: int) -> np.ndarray:
    rows = [np.flatnonzero(labels == c)[:per_class] for c in range(10)]
    return np.sort(np.concatenate(rows))


def main(source: Path) -> None:
    OUT.mkdir(parents=True, exist_ok=True)
    for prefix, per_class in PER_CLASS.items():
        images = read_idx(source / f"{prefix}-images-idx3-ubyte.gz")
        labels = read_idx(source / f"{prefix}-labels-idx1-ubyte.gz")
        keep = balanced_rows(labels, per_class)
        write_idx(OUT / f"{prefix}-images-idx3-ubyte.gz", images[keep])
        write_idx(OUT / f"{prefix}-labels-idx1-ubyte.gz", labels[keep])
        print(f"{prefix}: {len(keep)} images, {np.bincount(labels[keep]).tolist()} per class")


if __name__ == "__main__":
    main(Path(sys.argv[1] if len(sys.argv) > 1 else "/usr/share/datasets/fashion-mnist"))
