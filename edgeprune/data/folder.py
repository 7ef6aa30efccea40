"""Image folders: ``root/train/<class>/*`` + ``root/test/<class>/*``, or ``root/<class>/*`` split 80/20.

Invariant: classes are the sorted sub-folder names of ``train/`` (or of ``root``),
label i is ``classes[i]`` in both splits, and a test class unknown to train is an
error. The single-level layout is split per class by a hash of each file's name
(a file never changes split when others are added; 20% go to test, at least one
when the class has two or more images). Every image of the set is decoded to the
same mode, 1 channel if all are greyscale else RGB, and the same square size:
``image_size`` when given (PIL bilinear), else the images' common size.
"""
from __future__ import annotations

import zlib
from pathlib import Path

import numpy as np
from PIL import Image, UnidentifiedImageError

from edgeprune.data.memory import RawSplit
from edgeprune.errors import UserInputError

EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".webp", ".gif")
MEAN, STD = (0.5,), (0.5,)
_GREY_MODES = ("1", "L", "LA", "I", "I;16", "F")
TEST_FRACTION = 0.2


def _images_in(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if p.is_file() and p.suffix.lower() in EXTENSIONS)


def _class_dirs(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if p.is_dir() and not p.name.startswith("."))


def is_split_layout(root: Path) -> bool:
    return (root / "train").is_dir() and (root / "test").is_dir()


def looks_like_folder(root: Path) -> bool:
    base = root / "train" if is_split_layout(root) else root
    return any(_images_in(d) for d in _class_dirs(base)) if base.is_dir() else False


def _hash_split(files: list[Path]) -> tuple[list[Path], list[Path]]:
    ordered = sorted(files, key=lambda p: (zlib.crc32(p.name.encode()), p.name))
    n_test = max(1, round(len(files) * TEST_FRACTION)) if len(files) >= 2 else 0
    return sorted(ordered[n_test:]), sorted(ordered[:n_test])


def list_split(root: Path, split: str) -> tuple[tuple[str, ...], dict[str, list[tuple[Path, int]]]]:
    """(classes, {"train": [(file, label)], "test": [...]}) for either layout."""
    if is_split_layout(root):
        classes = tuple(d.name for d in _class_dirs(root / "train"))
        unknown = sorted({d.name for d in _class_dirs(root / "test")} - set(classes))
        if unknown:
            raise UserInputError(f"{root}/test has classes {unknown} that {root}/train lacks",
                                 "every test class needs a train folder of the same name")
        files = {s: [(f, i) for i, c in enumerate(classes) if (root / s / c).is_dir()
                     for f in _images_in(root / s / c)] for s in ("train", "test")}
    else:
        classes = tuple(d.name for d in _class_dirs(root))
        files = {"train": [], "test": []}
        for i, c in enumerate(classes):
            train, test = _hash_split(_images_in(root / c))
            files["train"] += [(f, i) for f in train]
            files["test"] += [(f, i) for f in test]
    if not classes or not files["train"]:
        raise UserInputError(f"no class folders with images under {root}",
                             f"lay it out as DIR/train/<class>/*.png and DIR/test/<class>/*.png, or DIR/<class>/*.png")
    return classes, files


def _probe(paths: list[Path]) -> tuple[str, set[tuple[int, int]]]:
    """Decode mode ('L' or 'RGB') and the set of (h, w) sizes, from headers only."""
    grey, sizes = True, set()
    for path in paths:
        try:
            with Image.open(path) as im:
                grey &= im.mode in _GREY_MODES
                sizes.add((im.height, im.width))
        except (UnidentifiedImageError, OSError) as exc:
            raise UserInputError(f"cannot read image {path}: {exc}", "remove or replace the file") from exc
    return ("L" if grey else "RGB"), sizes


def _target_size(root: Path, sizes: set[tuple[int, int]], image_size: int | None) -> int:
    if image_size:
        return int(image_size)
    if len(sizes) == 1 and next(iter(sizes))[0] == next(iter(sizes))[1]:
        return next(iter(sizes))[0]
    shown = sorted(sizes)[:3]
    raise UserInputError(f"images under {root} are not all one square size ({shown}{'...' if len(sizes) > 3 else ''})",
                         "pass --image-size PX to resize them")


def _decode(path: Path, mode: str, size: int) -> np.ndarray:
    with Image.open(path) as im:
        im = im.convert(mode)
        if im.size != (size, size):
            im = im.resize((size, size), Image.BILINEAR)
        arr = np.asarray(im, dtype=np.uint8)
    return arr[None] if arr.ndim == 2 else arr.transpose(2, 0, 1)


def load_folder(root: Path, split: str, image_size: int | None = None) -> RawSplit:
    classes, files = list_split(root, split)
    mode, sizes = _probe([f for s in ("train", "test") for f, _ in files[s]])
    size = _target_size(root, sizes, image_size)
    chosen = files[split]
    channels = 1 if mode == "L" else 3
    images = np.empty((len(chosen), channels, size, size), dtype=np.uint8)
    for k, (path, _) in enumerate(chosen):
        images[k] = _decode(path, mode, size)
    labels = np.array([label for _, label in chosen], dtype=np.int64)
    return RawSplit(images=images, labels=labels, name=f"folder:{root.name}", classes=classes,
                    mean=MEAN, std=STD, flip_ok=True)
