#!/usr/bin/env python3
"""edgeprune on a device: selfcheck, compile, measure and lut jobs, without torch.

Run as ``python3 edgeprune_device.py VERB --job JOB.json --out RESULT.json`` (``-`` for
stdin/stdout), where VERB is one of:

- ``selfcheck``: Python, numpy, onnx, every runtime (available, why not, versions), the CPU.
- ``compile``: job ``{"dir", "onnx", "profile", "precision", "calib", "holdout", "threads"}``;
  compiles through ``edgeprune.targets.<runtime>.compile`` into DIR/out/artifact, runs the
  held-out inputs through it into DIR/out/outputs.npy, and lists every file of DIR/out
  with its size and sha256.
- ``run``: job ``{"dir", "artifact", "holdout", "threads"}``; an artifact compiled elsewhere (the
  host, when the device has no converter) is inspected and loaded through its target module
  here, the held-out inputs run through it into DIR/out/outputs.npy, and DIR/out is listed.
  ``load`` refuses a precision this CPU would not honour (fp16 on a core without fp16
  arithmetic), exactly as for a compile job.
- ``measure``: job ``{"dir", "artifacts": {name: path}, "settings", "rounds", "seed"}``;
  ``edgeprune.measure.protocol.measure_interleaved`` here, each run in a fresh process.
- ``lut``: job ``{"profile", "layers", "precision", "threads", "in_stride", "rounds",
  "cache_dir", "timeout_s"}``; ``edgeprune.measure.lut_build.build_table`` here (its
  cache stays on this device); the result is the table as JSON.

Paths in a job are relative to its ``dir``. The host pushes this file beside the device
subset of the ``edgeprune`` package (``edgeprune/remote/transfer.py`` says which files).

Invariants:
- Only the standard library is imported at the top; numpy, the package and runtimes are
  imported by the verb, so a device without numpy or a runtime gets one clear line.
- stdout carries only the result JSON: file descriptor 1 is pointed at stderr before any
  job code runs, so a runtime that prints (even from C++) cannot corrupt the result.
- This folder is put first on ``PYTHONPATH``, so every child process (measurement and
  latency-table workers) imports the same pushed package.
- A failure is one stderr line ``edgeprune-device: error: <ErrorClass>: <message>`` and exit
  status 1 (2 for a bad command line); never 255, which is ssh's own failure status.
"""
from __future__ import annotations

import argparse
import importlib.util
import json
import os
import platform
import sys
import time
from pathlib import Path

ERROR = "edgeprune-device: error: "
HERE = Path(__file__).resolve().parent
# How to install each runtime on a device (pip names differ from edgeprune's extras).
INSTALL = {"openvino": "pip install openvino", "onnxruntime": "pip install onnxruntime",
           "ncnn": "pip install ncnn pnnx onnx", "mnn": "pip install MNN",
           "tensorrt": "JetPack 6 (TensorRT 10) from NVIDIA and pip install cuda-python onnx"}


def _use_this_package() -> None:
    if str(HERE) not in sys.path[:1]:
        sys.path.insert(0, str(HERE))
    old = os.environ.get("PYTHONPATH")
    os.environ["PYTHONPATH"] = os.pathsep.join(p for p in (str(HERE), old) if p)


def _need(module: str, pip_name: str) -> None:
    if importlib.util.find_spec(module) is None:
        from edgeprune.errors import RuntimeUnavailable

        raise RuntimeUnavailable(f"device lacks {module}: install it there with pip install {pip_name}")


def _runtime(name: str):
    """The target module for ``name``, or 'device lacks NAME: install it there with ...'."""
    from edgeprune.errors import RuntimeUnavailable
    from edgeprune.targets import get_runtime

    try:
        mod = get_runtime(name)
        ok, reason = mod.available()
    except ImportError as exc:
        ok, reason = False, str(exc)
    if not ok:
        raise RuntimeUnavailable(f"device lacks {name}: install it there with {INSTALL.get(name, 'its package')}"
                                 f" ({reason})")
    return mod


def _version(module: str) -> str | None:
    if importlib.util.find_spec(module) is None:
        return None
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version(module)
    except PackageNotFoundError:
        return "unknown"


def selfcheck(job: dict) -> dict:
    import edgeprune
    from edgeprune.measure.env import environment
    from edgeprune.targets import get_runtime, runtime_names

    runtimes = {}
    for name in runtime_names():
        entry = {"available": False, "reason": None, "versions": None, "install": INSTALL.get(name)}
        try:
            mod = get_runtime(name)
            ok, reason = mod.available()
            entry.update(available=ok, reason=reason or None)
            if ok:
                entry["versions"] = mod.versions()
        except Exception as exc:  # a broken runtime install is reported, not fatal
            entry["reason"] = f"{type(exc).__name__}: {exc}".splitlines()[0]
        runtimes[name] = entry
    env = environment(None)
    return {"python": platform.python_version(), "executable": sys.executable, "machine": platform.machine(),
            "cpu": env["cpu_model"], "cores": env["logical_cores"],
            "numpy": _version("numpy"), "onnx": _version("onnx"), "runtimes": runtimes,
            "available": sorted(n for n, e in runtimes.items() if e["available"]),
            "environment": env,
            "edgeprune": {"version": edgeprune.__version__, "path": str(Path(edgeprune.__file__).parent),
                          "package": HERE.name},
            "torch_imported": "torch" in sys.modules}


def _listing(folder: Path) -> dict:
    from edgeprune.targets.base import sha256_file

    return {p.relative_to(folder).as_posix(): {"bytes": p.stat().st_size, "sha256": sha256_file(p)}
            for p in sorted(folder.rglob("*")) if p.is_file()}


def compile_job(job: dict) -> dict:
    import numpy as np

    from edgeprune.errors import UnsupportedPrecision
    from edgeprune.measure.env import environment

    folder, profile, precision = Path(job["dir"]), job["profile"], job["precision"]
    threads = int(job.get("threads", 1))
    mod = _runtime(profile["runtime"])
    if precision not in profile.get("precisions", mod.PRECISIONS) or precision not in mod.PRECISIONS:
        offered = [p for p in profile.get("precisions", mod.PRECISIONS) if p in mod.PRECISIONS]
        raise UnsupportedPrecision(f"{profile['name']} ({profile['runtime']}) does not offer {precision}",
                                   f"choose one of: {', '.join(offered)}")
    calib = np.load(folder / job["calib"], allow_pickle=False) if job.get("calib") else None
    out = folder / "out"
    started = time.perf_counter()
    artifact = mod.compile(folder / job["onnx"], precision, calib, profile, out / "artifact")
    compile_s = time.perf_counter() - started
    result = {"artifact": "artifact", "outputs": None, "inspect": mod.inspect(artifact),
              "size_mb": artifact.size_bytes() / 1e6, "versions": mod.versions(), "compile_s": compile_s}
    if job.get("holdout"):
        result.update(_holdout_outputs(mod, artifact, folder / job["holdout"], out, threads))
    result.update(files=_listing(out), environment=environment(threads))
    return result


def _holdout_outputs(mod, artifact, holdout: Path, out: Path, threads: int) -> dict:
    """Run the held-out inputs through the artifact on this device; save them as ``out``/outputs.npy."""
    import numpy as np

    from edgeprune.measure.parity import run_batched

    started = time.perf_counter()
    x = np.load(holdout, allow_pickle=False)
    outputs = run_batched(mod.load(artifact, threads), x, artifact.input_shape[0])
    np.save(out / "outputs.npy", np.ascontiguousarray(outputs), allow_pickle=False)
    return {"outputs": "outputs.npy", "parity_s": time.perf_counter() - started}


def run_job(job: dict) -> dict:
    from edgeprune.measure.env import environment
    from edgeprune.targets.base import Artifact

    folder, threads = Path(job["dir"]), int(job.get("threads", 1))
    artifact = Artifact.open(folder / job["artifact"])
    mod = _runtime(artifact.runtime)
    result = {"inspect": mod.inspect(artifact), "versions": mod.versions(), "outputs": None}
    out = folder / "out"
    out.mkdir(parents=True, exist_ok=True)
    if job.get("holdout"):
        result.update(_holdout_outputs(mod, artifact, folder / job["holdout"], out, threads))
    result.update(files=_listing(out), environment=environment(threads))
    return result


def measure_job(job: dict) -> dict:
    from edgeprune.measure.protocol import MeasureSettings, measure_interleaved
    from edgeprune.targets.base import Artifact

    folder = Path(job["dir"])
    artifacts = {name: folder / path for name, path in job["artifacts"].items()}
    for path in artifacts.values():
        _runtime(Artifact.open(path).runtime)
    settings = MeasureSettings(**job.get("settings", {}))
    results = measure_interleaved(artifacts, settings, rounds=int(job.get("rounds", 3)), progress=False,
                                  seed=int(job.get("seed", 0)))
    return {"results": results}


def lut_job(job: dict) -> dict:
    from edgeprune.measure.lut import LayerSig
    from edgeprune.measure.lut_build import build_table

    _runtime(job["profile"]["runtime"])
    _need("onnx", "onnx")  # the micro-models are built with onnx's helper
    layers = [(LayerSig.from_dict(sig), int(cin), int(cout), [int(c) for c in fixed])
              for sig, cin, cout, fixed in job["layers"]]
    table = build_table(job["profile"], layers, precision=job["precision"], threads=int(job["threads"]),
                        in_stride=int(job.get("in_stride", 2)), rounds=int(job.get("rounds", 3)),
                        cache_dir=Path(job["cache_dir"]).expanduser() if job.get("cache_dir") else None,
                        progress=False, timeout_s=float(job.get("timeout_s", 900.0)))
    return {"meta": table["meta"], "rows": {key: row.to_dict() for key, row in table["rows"].items()}}


VERBS = {"selfcheck": selfcheck, "compile": compile_job, "run": run_job, "measure": measure_job, "lut": lut_job}


def _json_default(obj):
    for attr in ("item", "tolist"):  # numpy scalars and arrays
        if hasattr(obj, attr):
            return getattr(obj, attr)()
    if isinstance(obj, Path):
        return str(obj)
    raise TypeError(f"not JSON serialisable: {type(obj).__name__}")


def _write(dest: str, result: dict, stdout) -> None:
    text = json.dumps(result, default=_json_default) + "\n"
    if dest == "-":
        stdout.write(text)
        stdout.flush()
        return
    tmp = f"{dest}.partial-{os.getpid()}"
    with open(tmp, "w") as fh:
        fh.write(text)
    os.replace(tmp, dest)


def _run(args: argparse.Namespace) -> dict:
    if sys.version_info < (3, 10):
        raise RuntimeError(f"device Python {platform.python_version()} is too old: edgeprune needs 3.10+")
    _need("numpy", "numpy")
    text = sys.stdin.read() if args.job == "-" else (Path(args.job).read_text() if args.job else "{}")
    try:
        job = json.loads(text or "{}")
    except ValueError as exc:
        from edgeprune.errors import UserInputError

        raise UserInputError(f"the job is not valid JSON: {exc}") from None
    if "dir" in job:
        job["dir"] = str(Path(job["dir"]).expanduser())
    return VERBS[args.verb](job)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="edgeprune_device.py", description="Run an edgeprune job on this device.")
    parser.add_argument("verb", choices=sorted(VERBS))
    parser.add_argument("--job", help="job JSON file, or - for stdin (selfcheck needs none)")
    parser.add_argument("--out", default="-", help="result JSON file, or - for stdout. Default: -")
    args = parser.parse_args(argv)
    stdout = os.fdopen(os.dup(1), "w")  # the real stdout, for the result only
    os.dup2(2, 1)
    sys.stdout = sys.stderr
    _use_this_package()
    try:
        result = _run(args)
    except Exception as exc:  # every failure becomes the one line the host parses
        name = type(exc).__name__
        text = exc.one_line() if hasattr(exc, "one_line") else str(exc)
        lines = [ln.strip() for ln in text.splitlines() if ln.strip()]
        print(f"{ERROR}{name}: {lines[0] if lines else repr(exc)}", file=sys.stderr)
        return 1
    _write(args.out, result, stdout)
    return 0


if __name__ == "__main__":
    sys.exit(main())
