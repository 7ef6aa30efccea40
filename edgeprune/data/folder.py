"""Image folders: ``root/train/<class>/*`` + ``root/test/<class>/*``, or ``root/<class>/*`` split 80/20.

Invariant: classes are the sorted sub-folder names of ``train/`` (or of ``root``),
label i is ``classes[i]`` in both splits, and a test class unknown to train is an
error. The single-level layout is split per class by a hash of each file's name
(a file never changes split when others are added; 20% go to test, at least one
when the class has two or more images). Every image of the set is decoded to the
same mode, 1 channel if all are greyscale else RGB, and the same square size:
``image_size`` when given (PIL bilinear), else the images' common size.
A set has at least 2 classes, no empty class folder and no non-image file in one;
every image's declared size is bounded (``MAX_PIXELS``) from its header before any
is decoded; an unreadable or truncated image is a ``UserInputError`` naming it.
"""
from __future__ import annotations

import warnings
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
MAX_PIXELS = 8192 * 8192  # per image, checked from its header before decoding (PIL's own limit is a warning)
MAX_SPLIT_BYTES = 16 * 1024 ** 3  # decoded pixels of one split
_IGNORED = ("Thumbs.db", "desktop.ini")
_SHRINK = "remove the file, or shrink it first"


def _images_in(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if p.is_file() and p.suffix.lower() in EXTENSIONS)


def _class_images(folder: Path) -> list[Path]:
    """The images of one class folder; a class folder with none, or with a file that is not an image, is an error."""
    stray = sorted(p for p in folder.iterdir() if p.is_file() and p.suffix.lower() not in EXTENSIONS
                   and not p.name.startswith(".") and p.name not in _IGNORED)
    if stray:
        raise UserInputError(f"{stray[0]} is not an image edgeprune reads ({', '.join(EXTENSIONS)})",
                             "remove it or move it out of the class folder")
    images = _images_in(folder)
    if not images:
        raise UserInputError(f"class folder {folder} holds no images",
                             "add images to it or remove the folder")
    return images


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
    """(classes, {"train": [(file, label)], "test": [...]}) for either layout; at least 2 classes, none empty."""
    if is_split_layout(root):
        classes = tuple(d.name for d in _class_dirs(root / "train"))
        unknown = sorted({d.name for d in _class_dirs(root / "test")} - set(classes))
        if unknown:
            raise UserInputError(f"{root}/test has classes {unknown} that {root}/train lacks",
                                 "every test class needs a train folder of the same name")
        files = {s: [(f, i) for i, c in enumerate(classes) if (root / s / c).is_dir()
                     for f in _class_images(root / s / c)] for s in ("train", "test")}
    else:
        classes = tuple(d.name for d in _class_dirs(root))
        files = {"train": [], "test": []}
        for i, c in enumerate(classes):
            train, test = _hash_split(_class_images(root / c))
            files["train"] += [(f, i) for f in train]
            files["test"] += [(f, i) for f in test]
    if not classes or not files["train"]:
        raise UserInputError(f"no class folders with images under {root}",
                             "lay it out as DIR/train/<class>/*.png and DIR/test/<class>/*.png, or DIR/<class>/*.png")
    if len(classes) < 2:
        raise UserInputError(f"{root} has one class ({classes[0]}); a classifier needs at least 2",
                             "add a folder of images for every other class")
    return classes, files


def _probe(paths: list[Path]) -> tuple[str, set[tuple[int, int]]]:
    """Decode mode ('L' or 'RGB') and the set of (h, w) sizes, from headers only; oversized images refused."""
    grey, sizes = True, set()
    for path in paths:
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", Image.DecompressionBombWarning)  # refused below, by our own bound
                with Image.open(path) as im:
                    grey &= im.mode in _GREY_MODES
                    h, w = im.height, im.width
        except Image.DecompressionBombError as exc:
            raise UserInputError(f"image {path} is too large: {_first_line(exc)}", _SHRINK) from None
        except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as exc:
            raise UserInputError(f"cannot read image {path}: {_first_line(exc)}", "remove or replace the file") from None
        if h * w > MAX_PIXELS:
            raise UserInputError(f"image {path} is too large: {w}x{h} pixels, more than "
                                 f"{MAX_PIXELS // 1_000_000} million", _SHRINK)
        sizes.add((h, w))
    return ("L" if grey else "RGB"), sizes


def _first_line(exc: BaseException) -> str:
    return (str(exc).strip().splitlines() or [type(exc).__name__])[0][:120]


def _target_size(root: Path, sizes: set[tuple[int, int]], image_size: int | None) -> int:
    if image_size:
        return int(image_size)
    if len(sizes) == 1 and next(iter(sizes))[0] == next(iter(sizes))[1]:
        return next(iter(sizes))[0]
    shown = sorted(sizes)[:3]
    raise UserInputError(f"images under {root} are not all one square size ({shown}{'...' if len(sizes) > 3 else ''})",
                         "pass --image-size PX to resize them")


def _decode(path: Path, mode: str, size: int) -> np.ndarray:
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)  # sizes were bounded by _probe
            with Image.open(path) as im:
                im = im.convert(mode)
                if im.size != (size, size):
                    im = im.resize((size, size), Image.BILINEAR)
                arr = np.asarray(im, dtype=np.uint8)
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError, Image.DecompressionBombError) as exc:
        raise UserInputError(f"cannot decode image {path}: {_first_line(exc)}", "remove or replace the file") from None
    return arr[None] if arr.ndim == 2 else arr.transpose(2, 0, 1)


def load_folder(root: Path, split: str, image_size: int | None = None) -> RawSplit:
    classes, files = list_split(root, split)
    mode, sizes = _probe([f for s in ("train", "test") for f, _ in files[s]])
    size = _target_size(root, sizes, image_size)
    chosen = files[split]
    channels = 1 if mode == "L" else 3
    if len(chosen) * channels * size * size > MAX_SPLIT_BYTES:
        raise UserInputError(f"the {split} split under {root} would take {len(chosen) * channels * size * size / 1e9:.1f}"
                             f" GB decoded at {size}x{size}", "pass a smaller --image-size")
    images = np.empty((len(chosen), channels, size, size), dtype=np.uint8)
    for k, (path, _) in enumerate(chosen):
        images[k] = _decode(path, mode, size)
    labels = np.array([label for _, label in chosen], dtype=np.int64)
    return RawSplit(images=images, labels=labels, name=f"folder:{root.name}", classes=classes,
                    mean=MEAN, std=STD, flip_ok=True)
