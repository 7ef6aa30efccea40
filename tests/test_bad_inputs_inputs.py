"""Bad-input catalogue, untrusted inputs: checkpoints vs data, weights files, data sets, target
profiles, the latency-table cache and sample counts (issue 9, part B).

Every CLI case must end in one ``edgeprune: error:`` line with exit 2, before any long step,
leaving nothing behind (``tests.badinput.run_case``). Library-level checks that a CLI case
would make slow are unit tests below the cases.
"""
from __future__ import annotations

import gzip
import json
import shutil
import struct
import tempfile
import zlib
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from edgeprune.errors import UserInputError
from tests.badinput import DATA, Case, ids, run_case
from tests.conftest import MINI_FMNIST

FAST = ["--no-progress", "--finetune-epochs", "0"]


@pytest.fixture(autouse=True)
def _private_tmp(tmp_path_factory, monkeypatch):
    """A temp folder of our own, so the harness's scratch-folder check never sees other runs' folders."""
    private = tmp_path_factory.mktemp("scratch")
    monkeypatch.setenv("TMPDIR", str(private))
    monkeypatch.setattr(tempfile, "tempdir", str(private))


# ---- fixtures written into each case's folder ----

def _png(path: Path, size: int = 8, mode: str = "L", seed: int = 0) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    pixels = np.random.default_rng(seed).integers(0, 256, (size, size, 3) if mode == "RGB" else (size, size))
    Image.fromarray(pixels.astype(np.uint8), mode).save(path)


def _folder(root: Path, classes=("a", "b"), mode: str = "L", per_class: int = 3) -> None:
    """root/train/<class>/*.png and root/test/<class>/*.png, 8x8."""
    for split in ("train", "test"):
        for c in classes:
            for i in range(per_class):
                _png(root / split / c / f"{i}.png", mode=mode, seed=i)


def _checkpoint(path: Path, num_classes: int = 10, in_channels: int = 1) -> None:
    from edgeprune.models import build_model, model_spec
    from edgeprune.models.checkpoint import save_checkpoint

    save_checkpoint(path, build_model("resnet20", num_classes, in_channels), model_spec("resnet20", num_classes, in_channels))


def _state_dict(path: Path, num_classes: int = 10, in_channels: int = 1) -> None:
    from edgeprune.models import build_model

    torch.save(build_model("resnet20", num_classes, in_channels).state_dict(), path)


def _hostile_spec(path: Path, **fields) -> None:
    from edgeprune.models.checkpoint import FORMAT

    spec = {"name": "resnet20", "num_classes": 2, "in_channels": 1, "kwargs": {}, **fields}
    torch.save({"format": FORMAT, "spec": spec, "layers": {}, "state_dict": {"w": torch.zeros(1)}, "meta": {}}, path)


def _bomb_png(path: Path, side: int = 30000) -> None:
    """A PNG whose header declares side x side greyscale pixels, with almost no data."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
    ihdr = struct.pack(">IIBBBBB", side, side, 8, 0, 0, 0, 0)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\0" * 64))
                     + chunk(b"IEND", b""))


def _mini_copy(folder: Path) -> Path:
    dest = folder / "fm"
    shutil.copytree(MINI_FMNIST, dest)
    return dest


def _idx_gz(path: Path, dims: tuple[int, ...], payload: bytes, code: int = 0x08) -> None:
    header = bytes([0, 0, code, len(dims)]) + b"".join(struct.pack(">I", d) for d in dims)
    path.write_bytes(gzip.compress(header + payload))


def _toml(text: str | bytes):
    def setup(folder: Path) -> None:
        (folder / "t.toml").write_bytes(text if isinstance(text, bytes) else text.encode())
    return setup


GOOD_PROFILE = ('name = "t"\nruntime = "onnxruntime"\nprecisions = ["fp32"]\ndefault_precision = "fp32"\n'
                'channel_multiple = 8\nthreads = 1\n')


def _profile(**changes) -> str:
    lines = [ln for ln in GOOD_PROFILE.splitlines() if ln.split(" = ")[0] not in changes]
    return "\n".join(lines + [f"{k} = {v}" for k, v in changes.items()]) + "\n"


def _prune(weights: str, data: str, *extra: str):
    return lambda f: ["prune", "--weights", str(f / weights), "--data", data.format(f=f), "--out", str(f / "out"),
                      *FAST, *extra]


def _train(data: str):
    return lambda f: ["train", "--model", "resnet20", "--data", data.format(f=f), "--out", str(f / "out"),
                      "--epochs", "1", "--no-progress"]


def _build_target(f: Path) -> list[str]:
    return ["build", "--target", str(f / "t.toml"), "--model", "resnet20", "--data", DATA, "--out", str(f / "out"),
            *FAST]


def _build(*extra: str):
    return lambda f: ["build", "--target", "x86", "--model", "resnet20", "--data", DATA, "--out", str(f / "out"),
                      *FAST, *extra]


def _two(*setups):
    def setup(folder: Path) -> None:
        for s in setups:
            s(folder)
    return setup


CASES = [
    # 1. checkpoint vs data
    Case("ckpt-10-classes-on-2-class-folder", _prune("m.pt", "folder:{f}/d"), 2, "for 10 classes but",
         _two(lambda f: _folder(f / "d"), lambda f: _checkpoint(f / "m.pt"))),
    Case("ckpt-1-channel-on-rgb-folder", _prune("m.pt", "folder:{f}/d"), 2, "takes 1-channel images",
         _two(lambda f: _folder(f / "d", mode="RGB"), lambda f: _checkpoint(f / "m.pt", num_classes=2))),
    Case("state-dict-10-classes-on-2-class-folder", _prune("w.pt", "folder:{f}/d", "--model", "resnet20"), 2,
         "the weights are for 10 classes, the data has 2",
         _two(lambda f: _folder(f / "d"), lambda f: _state_dict(f / "w.pt"))),
    Case("state-dict-1-channel-on-rgb-folder", _prune("w.pt", "folder:{f}/d", "--model", "resnet20"), 2,
         "the weights take 1-channel images",
         _two(lambda f: _folder(f / "d", mode="RGB"), lambda f: _state_dict(f / "w.pt", num_classes=2))),
    # 2. weights files
    Case("weights-empty", _prune("w.pt", DATA), 2, "the file is empty", lambda f: (f / "w.pt").write_bytes(b"")),
    Case("weights-not-torch", _prune("w.pt", DATA), 2, "not a PyTorch file",
         lambda f: (f / "w.pt").write_text("hello, not a model")),
    Case("weights-truncated", _prune("w.pt", DATA), 2, "truncated", lambda f: (
        _checkpoint(f / "full.pt"), (f / "w.pt").write_bytes((f / "full.pt").read_bytes()[:5000]))),
    Case("spec-num-classes-string", _prune("w.pt", DATA), 2, "num_classes must be an integer",
         lambda f: _hostile_spec(f / "w.pt", num_classes="abc")),
    Case("spec-num-classes-huge", _prune("w.pt", DATA), 2, "num_classes must be an integer from 1 to 100000",
         lambda f: _hostile_spec(f / "w.pt", num_classes=10 ** 12)),
    Case("spec-num-classes-negative", _prune("w.pt", DATA), 2, "num_classes must be an integer",
         lambda f: _hostile_spec(f / "w.pt", num_classes=-3)),
    Case("spec-in-channels-zero", _prune("w.pt", DATA), 2, "in_channels must be an integer",
         lambda f: _hostile_spec(f / "w.pt", in_channels=0)),
    Case("spec-unknown-model", _prune("w.pt", DATA), 2, "w.pt: unknown model 'resnet9000'",
         lambda f: _hostile_spec(f / "w.pt", name="resnet9000")),
    Case("spec-extra-key", _prune("w.pt", DATA), 2, "unexpected field 'evil'",
         lambda f: _hostile_spec(f / "w.pt", evil=1)),
    Case("spec-huge-width-option", _prune("w.pt", DATA), 2, "width_mult",
         lambda f: _hostile_spec(f / "w.pt", name="mobilenet_v2", kwargs={"width_mult": 1e6})),
    # 3. data
    Case("png-truncated", _train("folder:{f}/d"), 2, "t.png", _two(
        lambda f: _folder(f / "d"), lambda f: _png(f / "d/train/a/t.png", size=8, seed=9),
        lambda f: (f / "d/train/a/t.png").write_bytes((f / "d/train/a/t.png").read_bytes()[:-30]))),
    Case("png-decompression-bomb", _train("folder:{f}/d"), 2, "bomb.png is too large",
         _two(lambda f: _folder(f / "d"), lambda f: _bomb_png(f / "d/train/a/bomb.png"))),
    Case("folder-one-class", _train("folder:{f}/d"), 2, "at least 2", lambda f: _folder(f / "d", classes=("a",))),
    Case("folder-empty-class", _train("folder:{f}/d"), 2, "holds no images",
         _two(lambda f: _folder(f / "d"), lambda f: (f / "d/train/c").mkdir())),
    Case("folder-non-image-file", _train("folder:{f}/d"), 2, "notes.txt is not an image",
         _two(lambda f: _folder(f / "d"), lambda f: (f / "d/train/a/notes.txt").write_text("x"))),
    Case("idx-gzip-bomb-header", _train("fashion-mnist:{f}/fm"), 2, "from a", lambda f: _idx_gz(
        _mini_copy(f) / "t10k-images-idx3-ubyte.gz", (60000, 28, 28), b"\0" * (60000 * 28 * 28))),
    Case("idx-huge-header", _train("fashion-mnist:{f}/fm"), 2, "more than the", lambda f: _idx_gz(
        _mini_copy(f) / "t10k-images-idx3-ubyte.gz", (4_000_000_000, 1000, 1000), b"")),
    Case("idx-trailing-data", _train("fashion-mnist:{f}/fm"), 2, "has more than 1584 bytes but its header [2, 28, 28]", lambda f: _idx_gz(
        _mini_copy(f) / "t10k-images-idx3-ubyte.gz", (2, 28, 28), b"\x01" * (2 * 28 * 28 + 10_000))),
    Case("idx-count-mismatch", _train("fashion-mnist:{f}/fm"), 2, "labels for 300 images", lambda f: _idx_gz(
        _mini_copy(f) / "t10k-labels-idx1-ubyte.gz", (5,), bytes(5))),
    # 4. target profiles
    Case("profile-channel-multiple-string", _build_target, 2, "channel_multiple must be a whole number",
         _toml(_profile(channel_multiple='"abc"'))),
    Case("profile-runtime-list", _build_target, 2, "runtime must be one of", _toml(_profile(runtime='["ncnn"]'))),
    Case("profile-not-utf8", _build_target, 2, "not UTF-8", _toml(GOOD_PROFILE.encode() + b"# caf\xe9\n")),
    Case("profile-invalid-toml", _build_target, 2, "not valid TOML", _toml("name = \n")),
    Case("profile-options-wrong-type", _build_target, 2, "options must be a table", _toml(_profile(options='"fast"'))),
    Case("profile-precisions-not-list", _build_target, 2, "precisions must be a list", _toml(_profile(precisions='"fp32"'))),
    Case("profile-precisions-unknown", _build_target, 2, "precisions must be a list",
         _toml(_profile(precisions='["fp32", "fp64"]'))),
    Case("profile-threads-negative", _build_target, 2, "threads must be a whole number", _toml(_profile(threads="-2"))),
    Case("profile-file-missing", lambda f: ["build", "--target", str(f / "nope.toml"), "--model", "resnet20", "--data",
                                            DATA, "--out", str(f / "out"), *FAST], 2, "target profile file not found"),
    # 6. sample counts
    Case("calib-images-zero", _build("--precision", "int8", "--calib-images", "0"), 2, "--calib-images"),
    Case("holdout-images-zero", _build("--holdout-images", "0"), 2, "--holdout-images"),
]


@pytest.mark.parametrize("case", CASES, ids=ids(CASES))
def test_bad_input(case, tmp_path, capsys):
    run_case(case, tmp_path, capsys)


def test_one_bad_profile_does_not_hide_the_others(tmp_path, monkeypatch, capsys):
    from edgeprune.profiles import list_profiles, load_profile

    (tmp_path / "broken.toml").write_text(_profile(channel_multiple='"abc"'))
    (tmp_path / "mine.toml").write_text(GOOD_PROFILE)
    monkeypatch.setenv("EDGEPRUNE_PROFILES", str(tmp_path))
    rows = dict(list_profiles())
    assert isinstance(rows["broken"], UserInputError) and "broken.toml: channel_multiple" in str(rows["broken"])
    assert rows["mine"]["runtime"] == "onnxruntime" and rows["x86"]["runtime"] == "openvino"
    assert load_profile("x86")["name"] == "x86"
    run_case(Case("profile-broken-in-env", ["build", "--target", "broken", "--model", "resnet20", "--data", DATA,
                                            "--out", str(tmp_path / "out"), *FAST], 2, "broken.toml"), tmp_path, capsys)


# ---- library-level checks (fast, no CLI) ----

@pytest.mark.parametrize("fields, message", [
    ({"num_classes": True}, "num_classes must be an integer"),
    ({"num_classes": 2.0}, "num_classes must be an integer"),
    ({"in_channels": 65}, "in_channels must be an integer from 1 to 64"),
    ({"kwargs": ["x"]}, "options must be a table"),
    ({"name": "x" * 500}, "model name must be a short string"),
    ({"name": "not a ref:"}, "bad model reference"),
    ({"name": "resnet20", "kwargs": {"depth": 1000}}, "takes no option 'depth'"),
])
def test_hostile_spec_fields(tmp_path, fields, message):
    from edgeprune.models.checkpoint import load_checkpoint

    _hostile_spec(tmp_path / "w.pt", **fields)
    with pytest.raises(UserInputError, match=message):
        load_checkpoint(tmp_path / "w.pt")


def test_spec_without_a_field(tmp_path):
    from edgeprune.models.checkpoint import FORMAT, load_checkpoint

    torch.save({"format": FORMAT, "spec": {"name": "resnet20"}, "layers": {}, "state_dict": {}}, tmp_path / "w.pt")
    with pytest.raises(UserInputError, match="w.pt: the model spec lacks the field 'num_classes'"):
        load_checkpoint(tmp_path / "w.pt")


@pytest.mark.parametrize("change, message", [
    ({"out_channels": 10 ** 9}, "out_channels must be an integer"),
    ({"out_channels": 8}, "recorded with weight \\[8, 1, 3, 3\\] but the file holds \\[16, 1, 3, 3\\]"),
    ({"groups": 3}, "divide by groups"),
    ({"kernel_size": "big"}, "kernel_size"),
])
def test_hostile_layer_records_are_checked_against_the_tensors(tmp_path, change, message):
    """A record that would build a layer of another shape than the saved tensors is refused before building it."""
    from edgeprune.models.checkpoint import load_checkpoint

    _checkpoint(tmp_path / "m.pt")
    obj = torch.load(tmp_path / "m.pt", weights_only=True)
    obj["layers"]["conv1"].update(change)
    torch.save(obj, tmp_path / "m.pt")
    with pytest.raises(UserInputError, match=f"m.pt: .*conv1.*{message}"):
        load_checkpoint(tmp_path / "m.pt")


def test_load_model_says_why_weights_are_unreadable(tmp_path):
    from edgeprune.loading import load_model

    (tmp_path / "w.pt").write_bytes(b"\x80\x02garbage")
    with pytest.raises(UserInputError, match="cannot read .*w.pt: it is truncated or damaged"):
        load_model("resnet20", str(tmp_path / "w.pt"), num_classes=10, in_channels=1)
    _state_dict(tmp_path / "sd.pt")
    with pytest.raises(UserInputError, match="no model given: .*sd.pt holds weights without the architecture"):
        load_model(None, str(tmp_path / "sd.pt"), num_classes=10, in_channels=1)
    _checkpoint(tmp_path / "m.pt")
    with pytest.raises(UserInputError, match="m.pt is a resnet20 for 10 classes but fashion-mnist has 3"):
        load_model(None, str(tmp_path / "m.pt"), num_classes=3, in_channels=1, data="fashion-mnist")
    model, spec = load_model(None, str(tmp_path / "m.pt"), num_classes=10, in_channels=1)
    assert spec["num_classes"] == 10 and not model.training


def test_idx_is_streamed_and_bounded(tmp_path):
    from edgeprune.data.idx import parse_idx, read_idx

    path = tmp_path / "x.gz"
    _idx_gz(path, (3, 2), bytes(range(6)))
    assert read_idx(path).tolist() == [[0, 1], [2, 3], [4, 5]]
    _idx_gz(path, (3, 2), bytes(5))
    with pytest.raises(UserInputError, match="has 17 bytes but its header \\[3, 2\\] says 18"):
        read_idx(path)
    path.write_bytes(gzip.compress(bytes([0, 0, 8, 1, 0, 0, 0, 9]) + bytes(9))[:-12])  # cut inside the stream
    with pytest.raises(UserInputError, match="not a valid gzip file"):
        read_idx(path)
    with pytest.raises(UserInputError, match="truncated inside its header"):
        parse_idx(bytes([0, 0, 8, 3, 0, 0]))


def test_lut_cache_damaged_file_is_a_miss(tmp_path, monkeypatch, capsys):
    from edgeprune.measure import lut_build
    from edgeprune.measure.lut import LayerSig, SigTable, cache_key
    from edgeprune.profiles import load_profile

    measured = []

    def fake_measure(profile, precision, threads, sig, ins, outs, rounds, timeout_s):
        measured.append(sig)
        return SigTable(sig, ins, outs, [[1.0 + i + j for j in range(len(outs))] for i in range(len(ins))])

    monkeypatch.setattr(lut_build, "_measure_row", fake_measure)
    profile = load_profile("onnxruntime")
    sigs = [LayerSig("conv", (3, 3), (1, 1), (1, 1), (8, 8)), LayerSig("conv", (1, 1), (1, 1), (0, 0), (8, 8))]
    context = lut_build.table_context(profile, "fp32", 1)
    for sig, damage in zip(sigs, ('{"sig": {"kind": "co', '{"sig": 1, "ins": []}')):
        ins, outs = lut_build.plan_points(sig, 16, 16, 8, 2)
        (tmp_path / f"{cache_key(context, sig, ins, outs)}.json").write_text(damage)
    build = lambda: lut_build.build_table(profile, [(s, 16, 16) for s in sigs], precision="fp32", threads=1,
                                          cache_dir=tmp_path, progress=False)
    table = build()
    err = capsys.readouterr().err
    assert err.count("warning: latency-table cache file") == 1 and len(measured) == 2
    assert table["meta"]["rows_measured"] == 2 and table["rows"][sigs[0].key()].lookup(8, 16) == 2.0
    assert all(json.loads(p.read_text())["ins"] == [8, 16] for p in tmp_path.glob("*.json"))
    assert not [p for p in tmp_path.iterdir() if p.suffix != ".json"]  # no temp files left
    assert build()["meta"]["rows_from_cache"] == 2 and len(measured) == 2 and not capsys.readouterr().err


def test_sample_counts(capsys):
    from edgeprune.data import calibration_batch, load_dataset
    from edgeprune.deploy_check import make_holdout

    test = load_dataset(DATA, "test")
    for bad in (0, -5, 2.5, True):
        with pytest.raises(UserInputError, match="--holdout-images must be a whole number from 1 to 300"):
            make_holdout(test, bad, lambda x: x)
        with pytest.raises(UserInputError, match="--calib-images must be a whole number from 1 to 300"):
            calibration_batch(test, bad)
    capsys.readouterr()
    holdout = make_holdout(test, 10_000, lambda x: x[:, :1, 0, 0])
    assert len(holdout.x) == 300 and "note: --holdout-images 10000 is more than the 300" in capsys.readouterr().err
    assert calibration_batch(test, 7).shape == (7, 1, 28, 28) and not capsys.readouterr().err


@pytest.mark.parametrize("text, message", [
    (_profile(default_precision='"int8"'), "default_precision must be one of its precisions"),
    (_profile(int8_channel_multiple="0"), "int8_channel_multiple must be a whole number"),
    (_profile(threads="true"), "threads must be a whole number"),
    (_profile(runtime='"tflite"'), "runtime must be one of"),
    ('alias = 3\n', "alias must be a target name"),
    ('[select]\nx86_64 = 1\n', "select must be a table"),
    ('name = "t"\n', "lacks runtime"),
])
def test_profile_fields(tmp_path, text, message):
    from edgeprune.profiles import load_profile

    (tmp_path / "p.toml").write_text(text)
    with pytest.raises(UserInputError, match=f"p.toml.*{message}"):
        load_profile(str(tmp_path / "p.toml"))
