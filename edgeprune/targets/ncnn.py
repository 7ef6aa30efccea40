"""ncnn target: ONNX -> ``model.param`` / ``model.bin`` through pnnx, fp32 or fp16.

Invariant: the manifest states the exact ncnn ``Option`` precision flags the
artifact runs with (``options.ncnn_options``), ``load`` applies exactly those,
and ``inspect`` reports what this host's ncnn really does with them, read from
the files and from real runs, never from the manifest alone. A failed compile
leaves no output folder (``base.staging_dir``); the folder holds only the ncnn
files and the manifest.

Conversion (``ncnn_convert``): pnnx in a subprocess with a timeout, in a scratch
folder inside the staging folder, ``inputshape=[1,...]`` and ``fp16=0|1``; an
operator ncnn lacks is named in the ``CompileError``. The native pnnx binary
loads no torch; the manifest records whether the converter that ran imports
torch (``converter.imports_torch``). The .bin's weight storage is read back
(``ncnn_format``) and must match the requested precision.

Precision (``options.ncnn_options``):
- fp32: pnnx ``fp16=0`` (fp32 weights on disk); ``use_fp16_packed``,
  ``use_fp16_storage``, ``use_fp16_arithmetic``, ``use_bf16_storage``,
  ``use_bf16_packed`` all False. ncnn's defaults turn fp16 on, so these flags
  must be set: with the defaults, fp32 weights give 2e-4 relative error here.
- fp16: pnnx ``fp16=1`` (conv/linear weights stored as IEEE half, tag
  0x01306B47, about half the .bin) and ``use_fp16_packed/storage/arithmetic``
  True, bf16 False.

What fp16 really is on x86 (measured with ncnn 1.0.20261020 on an AMD EPYC with
f16c, avx2, avx512f, avx512_bf16, no avx512_fp16): every layer reports
``support_fp16_storage = False`` (and ``support_bf16_storage = True``);
intermediate blobs extracted raw (``extract(name, type=1)``) stay 4 bytes per
element with the fp16 flags on; and outputs with the fp16 flags on are
bit-identical to the same fp16-weight model run with every reduced-precision flag
off. So on this host an fp16 artifact is fp16 *weights* widened to fp32 at load,
fp32 activations and fp32 arithmetic; its only runtime fp16 is that x86
InnerProduct keeps its weights as fp16 in memory (F16C) when
``use_fp16_storage`` is on (seen as a 5e-5 change of an fp32-weight model's
logits and nowhere else). fp16 storage and arithmetic are ARM features
(``cpu_support_arm_asimdhp``, ARMv8.2). ncnn on this CPU offers bf16 activation
storage instead (``use_bf16_storage``: 2-byte blobs, ~3e-3 relative error), which
edgeprune does not expose.

Hence: ``compile`` builds an fp16 artifact on any host (it is a deliverable for an
ARM device); ``inspect`` reports ``weights`` (from the .bin tags), ``storage``
(bytes per element of the intermediate blobs) and ``arithmetic`` (fp16 only if
turning ``use_fp16_arithmetic`` off changes the outputs), and ``precision`` is
"fp16" only when fp16 arithmetic really ran (that, and ncnn's
``cpu_support_arm_asimdhp``), else "fp32" with ``fp16_emulated``; and ``load`` raises
``UnsupportedPrecision`` for an fp16 artifact on a host that neither stores nor
computes activations in fp16, unless ``allow_emulated=True`` (parity checks), so
no measurement passes fp32 speed off as fp16 speed. int8 needs ncnn2table and
ncnn2int8, which the ncnn wheel does not ship: ``UnsupportedPrecision``.

Winograd (profile option ``winograd = true|false``, recorded as
``use_winograd_convolution`` when set; ncnn's default is on): on an ARMv8.2 core
(cortex-a76 under qemu) fp16 arithmetic with winograd moved a Conv-ReLU-Conv net's
outputs by 5.5% of their range, 0.4% with winograd off. ``precision_attempts``
is the policy: fp16 is tried with winograd on, then off if the parity gate fails;
the caller records which settings passed. On an ARMv8.0 core (cortex-a72 under
qemu, no ``asimdhp``) every blob stays fp32 and turning ``use_fp16_arithmetic``
off changes nothing, so fp16 is reported as fp32 and ``load`` refuses it; only
InnerProduct's fp16-storage path (ARMv8.0 has fp16 conversions) moves its output.

Nothing here imports torch; ncnn and onnx are imported inside the functions.
"""
from __future__ import annotations

import importlib.metadata
import os
from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np

from edgeprune.errors import CompileError, RuntimeUnavailable, UnsupportedPrecision, UserInputError
from edgeprune.targets import ncnn_convert as conv
from edgeprune.targets import onnx_input
from edgeprune.targets.base import Artifact, open_artifact, staging_dir, write_manifest
from edgeprune.targets.ncnn_convert import BIN_FILE, PARAM_FILE
from edgeprune.targets.ncnn_format import io_blobs, read_param, weight_storage, weights_precision

NAME = "ncnn"
EXTRA = "ncnn"
PRECISIONS = ("fp32", "fp16")

_PRECISION_FLAGS = ("use_fp16_packed", "use_fp16_storage", "use_fp16_arithmetic", "use_bf16_storage",
                    "use_bf16_packed")
_FP32_FLAGS = {flag: False for flag in _PRECISION_FLAGS}
_OPTIONS = {
    "fp32": {**_FP32_FLAGS, "lightmode": True},
    "fp16": {**_FP32_FLAGS, "use_fp16_packed": True, "use_fp16_storage": True, "use_fp16_arithmetic": True,
             "lightmode": True},
}
_CPU_FLAGS_OF_INTEREST = frozenset({"f16c", "avx2", "avx512f", "avx512_fp16", "avx512_bf16", "asimdhp", "fphp"})


def available() -> tuple[bool, str]:
    try:
        import ncnn  # noqa: F401
    except ImportError:
        return False, "the ncnn Python package is not installed"
    # Running needs only ncnn (a board); compiling also needs pnnx, which compile() checks itself.
    return True, ""


def versions() -> dict[str, str]:
    out = {}
    for pkg in ("ncnn", "pnnx"):
        try:
            out[pkg] = importlib.metadata.version(pkg)
        except importlib.metadata.PackageNotFoundError:
            continue
    return out


def _ncnn():
    """The ncnn module; running an artifact needs only ncnn (compiling also needs pnnx: ``_require_pnnx``)."""
    try:
        import ncnn
    except ImportError as exc:
        raise RuntimeUnavailable("runtime ncnn is not available here: the ncnn Python package is not installed",
                                 f"install it with: pip install 'edgeprune[{EXTRA}]'") from exc
    return ncnn


def _require_pnnx() -> tuple[Path, bool]:
    exe, imports_torch = conv.pnnx_exe()
    if exe is None:
        raise RuntimeUnavailable("compiling for ncnn needs the pnnx converter, which is not installed",
                                 f"install it with: pip install 'edgeprune[{EXTRA}]' (compile on a host, run anywhere)")
    return exe, imports_torch


def cpu_features() -> dict[str, Any]:
    """ncnn's own CPU feature queries plus the fp16-related flags of ``/proc/cpuinfo`` (Linux)."""
    import ncnn

    queries = {name[len("cpu_support_"):]: bool(getattr(ncnn, name)())
               for name in dir(ncnn) if name.startswith("cpu_support_")}
    from edgeprune.measure.env import cpu_flags

    return {"ncnn": queries, "cpuinfo": sorted((cpu_flags() or frozenset()) & _CPU_FLAGS_OF_INTEREST)}


# ----------------------------------------------------------------------------- running
def _net(ncnn, param: Path, weights: Path, flags: dict[str, bool], threads: int):
    net = ncnn.Net()
    for flag, value in flags.items():
        setattr(net.opt, flag, bool(value))
    if threads > 0:
        net.opt.num_threads = int(threads)
    if net.load_param(str(param)) != 0 or net.load_model(str(weights)) != 0:
        raise CompileError(f"ncnn cannot load {param.name}/{weights.name} in {param.parent}",
                           "rebuild the artifact with this ncnn version")
    return net


def _forward(ncnn, net, input_name: str, outputs: list[str], item: np.ndarray,
             raw_blobs: tuple[str, ...] = ()) -> tuple[list[np.ndarray], Counter[int]]:
    """Outputs for one batch-less item, and the bytes per element of ``raw_blobs`` as stored by ncnn."""
    ex = net.create_extractor()
    if ex.input(input_name, ncnn.Mat(np.ascontiguousarray(item, dtype=np.float32)).clone()) != 0:
        raise CompileError(f"ncnn rejected the input blob {input_name!r}", "rebuild the artifact")
    sizes: Counter[int] = Counter()
    for blob in raw_blobs:
        ret, mat = ex.extract(blob, 1)  # type 1: as stored (packed, fp16/bf16); never converted to numpy
        if ret == 0 and mat.elempack > 0 and mat.total() > 0:
            sizes[mat.elemsize // mat.elempack] += 1
    out = []
    for name in outputs:
        ret, mat = ex.extract(name)
        if ret != 0:
            raise CompileError(f"ncnn failed to compute output {name!r} (error {ret})", "rebuild the artifact")
        out.append(np.array(mat))
    return out, sizes


def _probe_input(input_shape: list[int]) -> np.ndarray:
    return np.random.default_rng(0).standard_normal(input_shape[1:]).astype(np.float32)


def _storage_word(sizes: Counter[int], flags: dict[str, bool]) -> str:
    half = "fp16" if flags.get("use_fp16_storage") else "bf16"
    words = {{4: "fp32", 2: half, 1: "int8"}.get(k, f"{8 * k}-bit") for k in sizes}
    return words.pop() if len(words) == 1 else ("mixed" if words else "unknown")


def runtime_probe(param: Path, weights: Path, input_shape: list[int], flags: dict[str, bool]) -> dict[str, Any]:
    """What ncnn does with ``flags`` on this host, from real single-thread runs on one fixed input.

    ``storage``: bytes per element of every intermediate blob; ``arithmetic``: fp16 only if
    switching ``use_fp16_arithmetic`` off changes the outputs; ``differs_from_fp32_runtime``:
    whether the outputs differ from a run with every reduced-precision flag off.
    """
    ncnn = _ncnn()
    layers = read_param(param)
    inputs, outputs = io_blobs(layers)
    blobs = tuple(t for layer in layers if layer.type != "Input" for t in layer.tops)
    x = _probe_input(input_shape)

    def run(run_flags: dict[str, bool], raw: tuple[str, ...] = ()) -> tuple[list[np.ndarray], Counter[int]]:
        return _forward(ncnn, _net(ncnn, param, weights, {**run_flags, "lightmode": False}, 1),
                        inputs[0], outputs, x, raw)

    out, sizes = run(flags, blobs)
    reduced = any(flags.get(flag) for flag in _PRECISION_FLAGS)
    arith_fp16 = bool(flags.get("use_fp16_arithmetic")) and \
        not _same(out, run({**flags, "use_fp16_arithmetic": False})[0])
    return {"storage": _storage_word(sizes, flags),
            "blob_bytes_per_element": {str(k): v for k, v in sorted(sizes.items())},
            "arithmetic": "fp16" if arith_fp16 else "fp32",
            "differs_from_fp32_runtime": reduced and not _same(out, run(_FP32_FLAGS)[0])}


def _same(a: list[np.ndarray], b: list[np.ndarray]) -> bool:
    return len(a) == len(b) and all(np.array_equal(p, q) for p, q in zip(a, b))


def _output_specs(stage: Path, model, input_shape: list[int], flags: dict[str, bool]) -> list[dict[str, Any]]:
    """Run the converted model once; each output's name and its shape with the batch axis (ONNX's where known)."""
    ncnn = _ncnn()
    inputs, outputs = io_blobs(read_param(stage / PARAM_FILE))
    if len(inputs) != 1 or len(outputs) != len(model.graph.output):
        raise CompileError(f"pnnx produced {len(inputs)} inputs and {len(outputs)} outputs, the ONNX model has 1 "
                           f"and {len(model.graph.output)}", "convert the model by hand with pnnx to inspect it")
    got, _ = _forward(ncnn, _net(ncnn, stage / PARAM_FILE, stage / BIN_FILE, flags, 1), inputs[0], outputs,
                      _probe_input(input_shape))
    specs = []
    for name, value, onnx_out in zip(outputs, got, model.graph.output):
        shape = conv.static_shape(onnx_out)
        if shape is not None and int(np.prod(shape)) != value.size:
            raise CompileError(f"ncnn output {name} has {value.size} values, ONNX output {onnx_out.name} has shape "
                               f"{shape}", "convert the model by hand with pnnx to inspect it")
        specs.append({"name": name, "onnx_name": onnx_out.name, "shape": shape or [1, *value.shape]})
    return specs


def precision_attempts(precision: str) -> list[dict[str, Any]]:
    """Profile option sets to try in order until the parity gate passes (see the module docstring)."""
    return [{"winograd": True}, {"winograd": False}] if precision == "fp16" else [{}]


def _runtime_flags(precision: str, profile: dict[str, Any] | None) -> dict[str, bool]:
    flags = dict(_OPTIONS[precision])
    winograd = ((profile or {}).get("options") or {}).get("winograd")
    if winograd is not None:
        if not isinstance(winograd, bool):
            raise UserInputError(f"ncnn option winograd must be true or false, got {winograd!r}",
                                 "fix the target profile's [options] table")
        flags["use_winograd_convolution"] = winograd
    return flags


def _check_weights(stage: Path, precision: str) -> dict[str, Any]:
    storage = weight_storage(stage / PARAM_FILE, stage / BIN_FILE)
    word = weights_precision(storage)
    if word not in (precision, "unknown"):
        raise CompileError(f"pnnx wrote {word} weights for a {precision} ncnn model ({storage['tagged']})",
                           "report this pnnx version; use the other precision meanwhile")
    return storage


def _check_request(onnx_path: Path, precision: str) -> None:
    if precision == "int8":
        raise UnsupportedPrecision("ncnn int8 needs ncnn2table and ncnn2int8, which the ncnn wheel does not ship",
                                   "use fp32 or fp16 on ncnn, or an openvino/mnn/onnxruntime target for int8")
    onnx_input.check_request(onnx_path, precision, None, runtime=NAME, precisions=PRECISIONS)


def compile(onnx_path: str | os.PathLike, precision: str, calib_data: np.ndarray | None,
            profile: dict[str, Any] | None, out_dir: str | os.PathLike) -> Artifact:
    """Convert ONNX to ncnn with pnnx at ``precision``; ``calib_data`` is not needed; ``profile`` may set
    ``options.winograd``."""
    onnx_path, out_dir = Path(onnx_path), Path(out_dir)
    _check_request(onnx_path, precision)
    flags = _runtime_flags(precision, profile)
    ncnn = _ncnn()
    exe, imports_torch = _require_pnnx()
    spec = onnx_input.read(onnx_path, runtime="ncnn")
    model, input_shape = spec.model, conv.require_batch_one(spec.input_shape, onnx_path)
    with staging_dir(out_dir) as stage:
        converter = conv.convert(ncnn, exe, model, input_shape, precision, stage, onnx_path)
        storage = _check_weights(stage, precision)
        options = {"ncnn_options": flags, "outputs": _output_specs(stage, model, input_shape, flags),
                   "weights": weights_precision(storage),
                   "converter": {**converter, "imports_torch": imports_torch}}
        built = write_manifest(stage, runtime=NAME, precision=precision, versions=versions(),
                               input_shape=input_shape, files={"model": PARAM_FILE, "weights": BIN_FILE},
                               options=options, source_onnx=onnx_path)
    return Artifact(out_dir, built.manifest)


# ----------------------------------------------------------------------------- artifacts
def _open(artifact: Artifact | str | os.PathLike) -> Artifact:
    return open_artifact(artifact, NAME)


def _flags(art: Artifact) -> dict[str, bool]:
    """The ncnn Option flags the manifest states; an artifact without them is rejected, never guessed."""
    flags = art.manifest.get("options", {}).get("ncnn_options")
    known = set(_PRECISION_FLAGS) | {"lightmode", "use_winograd_convolution"}
    if not isinstance(flags, dict) or not set(_PRECISION_FLAGS) <= set(flags) or not set(flags) <= known \
            or not all(isinstance(v, bool) for v in flags.values()):
        raise UserInputError(f"{art.path} does not state valid ncnn runtime options in its manifest",
                             "rebuild the artifact with this edgeprune version")
    return dict(flags)


def _precision_word(probe: dict[str, Any], asimdhp: bool) -> str:
    """fp16 only when fp16 arithmetic really ran on a CPU ncnn says has it; otherwise fp32."""
    return "fp16" if probe["arithmetic"] == "fp16" and asimdhp else "fp32"


def inspect(artifact: Artifact | str | os.PathLike) -> dict[str, Any]:
    """``{"precision", "weights", "storage", "arithmetic", "fp16_emulated", ...}`` of the artifact on this host.

    ``weights`` is read from the .bin blob tags; ``storage`` and ``arithmetic`` from real runs
    (see ``runtime_probe``); ``fp16_emulated``: fp16 weights but fp32 activations and arithmetic.
    """
    art = _open(artifact)
    flags = _flags(art)
    storage = weight_storage(art.file("model"), art.file("weights"))
    probe = runtime_probe(art.file("model"), art.file("weights"), art.input_shape, flags)
    weights = weights_precision(storage)
    features = cpu_features()
    precision = _precision_word(probe, bool(features["ncnn"].get("arm_asimdhp")))
    return {"precision": precision, "weights": weights, "storage": probe["storage"],
            "arithmetic": probe["arithmetic"],
            "fp16_emulated": art.precision == "fp16" and precision != "fp16",
            "weight_blobs": storage, "blob_bytes_per_element": probe["blob_bytes_per_element"],
            "differs_from_fp32_runtime": probe["differs_from_fp32_runtime"],
            "ncnn_options": flags, "cpu_features": features}


class NcnnRunner:
    """One ncnn Net; ``run`` feeds the batch item by item (ncnn has no batch axis) and stacks the outputs.

    Every item gets a fresh Extractor and an ncnn-owned copy of the input; outputs are copied
    into new numpy arrays, so results never alias ncnn memory or the caller's input.
    """

    def __init__(self, ncnn, net, input_name: str, outputs: list[dict[str, Any]], input_shape: list[int]):
        self._ncnn = ncnn
        self._net = net
        self._input = input_name
        self._outputs = [(o["name"], tuple(int(d) for d in o["shape"][1:])) for o in outputs]
        self.input_shape = tuple(int(d) for d in input_shape)

    def run(self, x: np.ndarray) -> list[np.ndarray]:
        x = np.asarray(x, dtype=np.float32)
        if x.ndim != len(self.input_shape) or x.shape[1:] != self.input_shape[1:] or len(x) == 0:
            raise UserInputError(f"input shape {list(x.shape)} does not match the artifact's input "
                                 f"{list(self.input_shape)} (any batch size >= 1)",
                                 f"pass arrays shaped [N, {', '.join(map(str, self.input_shape[1:]))}]")
        names = [name for name, _ in self._outputs]
        items = [_forward(self._ncnn, self._net, self._input, names, item)[0] for item in x]
        return [np.stack([out[i].reshape(shape) for out in items]) for i, (_, shape) in enumerate(self._outputs)]


def load(artifact: Artifact | str | os.PathLike, threads: int, *, allow_emulated: bool = False) -> NcnnRunner:
    """A runner with ``threads`` ncnn threads (0 = ncnn's default), lightmode, and the manifest's flags.

    An fp16 artifact on a host whose ncnn keeps activations and arithmetic in fp32 raises
    ``UnsupportedPrecision`` unless ``allow_emulated`` (then it runs: fp16 weights, fp32 compute).
    """
    art = _open(artifact)
    if int(threads) < 0:
        raise UserInputError(f"threads must be >= 0 (0 = runtime default), got {threads}")
    ncnn, flags = _ncnn(), _flags(art)
    if art.precision == "fp16" and not allow_emulated:
        probe = runtime_probe(art.file("model"), art.file("weights"), art.input_shape, flags)
        if probe["storage"] == "fp32" and probe["arithmetic"] == "fp32":
            raise UnsupportedPrecision(
                f"ncnn on this CPU runs the fp16 artifact {art.path} with fp32 activations and fp32 arithmetic "
                "(only its weights are fp16, widened at load), so it would not measure fp16",
                "run it on an ARMv8.2+ device (fp16 storage/arithmetic), or load with allow_emulated=True "
                "for a functional check")
    outputs = art.manifest.get("options", {}).get("outputs")
    inputs, names = io_blobs(read_param(art.file("model")))
    if not outputs or [o["name"] for o in outputs] != names or len(inputs) != 1:
        raise UserInputError(f"{art.path}: the manifest's outputs do not match {PARAM_FILE}", "rebuild the artifact")
    net = _net(ncnn, art.file("model"), art.file("weights"), flags, int(threads))
    return NcnnRunner(ncnn, net, inputs[0], outputs, art.input_shape)
