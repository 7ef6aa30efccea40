"""Set up an emulated arm64 "device" on an x86 Debian host: qemu-user, an arm64 Python sysroot, aarch64 wheels.

Layout under ``root`` (``$EDGEPRUNE_ARM64_ROOT``, default ``~/.cache/edgeprune/arm64``):
``sysroot/`` (Debian's arm64 python3.11, libstdc++, libgomp unpacked with ``dpkg -x``),
``site/`` (aarch64 wheels of ncnn, MNN and numpy, the host's versions, installed with the host's
pip ``--target --platform``), ``apt/`` (a private apt configuration: arch arm64, its own state and
cache) and ``ready.json`` (what was set up and checked).

Invariants:
- Nothing arm64 is installed system-wide: apt is only used with a private configuration to
  *download* .debs (no ``dpkg --add-architecture``, no ``dpkg -i``). The one system-wide step
  is ``apt-get install qemu-user`` when qemu-aarch64 is missing and we are root.
- Each folder is built in a hidden sibling and renamed into place when complete, and
  ``ready.json`` is written last, after an emulated Python imported every wheel: a folder that
  exists is complete; ``ready.json`` that exists and matches the wanted wheel versions means set
  up, so a second run only re-checks it (about a second).
- Failure is one line naming the step and what to do (``SetupError``); nothing downloads at run
  time (``emulated.py`` only reads this layout).
"""
from __future__ import annotations

import importlib.metadata
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Sequence

from edgeprune.errors import EdgepruneError

ROOT_ENV = "EDGEPRUNE_ARM64_ROOT"
QEMU_ENV = "EDGEPRUNE_QEMU"
DEBS = ("python3.11", "libstdc++6", "libgomp1")
WHEELS = ("ncnn", "MNN", "numpy")  # pinned to the host's versions: host-converted artifacts must match
KEYRING = "/usr/share/keyrings/debian-archive-keyring.gpg"
READY = "ready.json"
LAYOUT = 2  # bump when the layout changes: an older ready.json is set up again
_PLATFORMS = ("manylinux2014_aarch64", "manylinux_2_17_aarch64", "manylinux_2_28_aarch64")


class SetupError(EdgepruneError):
    """The arm64 emulation could not be set up; the message says which step and what to do."""

    exit_code = 2


def default_root() -> Path:
    return Path(os.environ.get(ROOT_ENV) or Path.home() / ".cache" / "edgeprune" / "arm64").expanduser()


def find_qemu() -> str | None:
    """qemu-aarch64 (``$EDGEPRUNE_QEMU`` first), or None."""
    return os.environ.get(QEMU_ENV) or shutil.which("qemu-aarch64") or shutil.which("qemu-aarch64-static")


def _run(argv: Sequence[str], what: str, timeout: float, env: dict[str, str] | None = None) -> str:
    try:
        res = subprocess.run(list(argv), capture_output=True, text=True, timeout=timeout, env=env, check=False)
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise SetupError(f"arm64 setup: {what} failed ({type(exc).__name__}: {exc})") from None
    if res.returncode != 0:
        lines = [ln for ln in (res.stderr + res.stdout).splitlines() if ln.strip()]
        raise SetupError(f"arm64 setup: {what} failed (exit {res.returncode}): {lines[-1] if lines else 'no output'}")
    return res.stdout


def ensure_qemu(log) -> str:
    qemu = find_qemu()
    if qemu:
        return qemu
    if shutil.which("apt-get") and os.geteuid() == 0:
        log("installing Debian's qemu-user (apt-get install qemu-user)")
        env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
        cmd = ["apt-get", "install", "-y", "-q", "--no-install-recommends", "qemu-user"]
        try:
            _run(cmd, "apt-get install qemu-user", 900, env)
        except SetupError:
            _run(["apt-get", "update", "-q"], "apt-get update", 900, env)
            _run(cmd, "apt-get install qemu-user", 900, env)
        qemu = find_qemu()
    if not qemu:
        raise SetupError("arm64 setup: qemu-aarch64 is not installed",
                         "run 'sudo apt-get install qemu-user' (or set EDGEPRUNE_QEMU to a qemu-aarch64 binary)")
    return qemu


def _host_sources() -> list[tuple[str, str, str]]:
    """(uri, suite, components) of this machine's Debian apt sources (deb822 and one-line forms)."""
    texts = [p.read_text() for p in sorted(Path("/etc/apt/sources.list.d").glob("*.sources"))]
    found: list[tuple[str, str, str]] = []
    for text in texts:
        for stanza in re.split(r"\n\s*\n", text):
            fields = dict(re.findall(r"^([A-Za-z-]+):\s*(.+)$", stanza, re.M))
            if "deb" in fields.get("Types", "").split():
                for uri in fields.get("URIs", "").split():
                    found += [(uri, s, fields.get("Components", "main")) for s in fields.get("Suites", "").split()]
    lists = [Path("/etc/apt/sources.list"), *sorted(Path("/etc/apt/sources.list.d").glob("*.list"))]
    for path in lists:
        for line in (path.read_text().splitlines() if path.is_file() else []):
            m = re.match(r"^deb\s+(?:\[[^\]]*\]\s+)?(\S+)\s+(\S+)\s+(.+)$", line.strip())
            if m:
                found.append((m[1], m[2], m[3]))
    return [s for s in found if "/debian" in s[0]]


def _private_apt(folder: Path) -> dict[str, str]:
    """A private arm64 apt configuration under ``folder``; returns the environment that selects it."""
    sources = _host_sources()
    if not sources:
        raise SetupError("arm64 setup: no Debian mirror found in this machine's apt sources",
                         "this setup needs a Debian host whose /etc/apt sources name a Debian mirror")
    for sub in ("state/lists/partial", "cache/archives/partial", "etc/sources.list.d", "etc/preferences.d"):
        (folder / sub).mkdir(parents=True, exist_ok=True)
    (folder / "state/status").write_text("")
    signed = f" signed-by={KEYRING}" if Path(KEYRING).is_file() else ""
    (folder / "etc/sources.list").write_text("".join(f"deb [arch=arm64{signed}] {u} {s} {c}\n" for u, s, c in sources))
    conf = folder / "apt.conf"
    conf.write_text(
        'APT::Architecture "arm64"; APT::Architectures { "arm64"; };\n'
        f'Dir::State "{folder}/state"; Dir::State::status "{folder}/state/status"; Dir::Cache "{folder}/cache";\n'
        f'Dir::Etc::SourceList "{folder}/etc/sources.list"; Dir::Etc::SourceParts "{folder}/etc/sources.list.d";\n'
        f'Dir::Etc::Preferences "{folder}/etc/preferences"; Dir::Etc::PreferencesParts "{folder}/etc/preferences.d";\n'
        'APT::Sandbox::User "root";\n')
    return {**os.environ, "APT_CONFIG": str(conf), "DEBIAN_FRONTEND": "noninteractive"}


def _fresh(dest: Path) -> Path:
    dest.parent.mkdir(parents=True, exist_ok=True)
    return Path(tempfile.mkdtemp(prefix=f".{dest.name}.partial-", dir=dest.parent))


def _commit(tmp: Path, dest: Path) -> None:
    if dest.exists():
        shutil.rmtree(dest)
    os.replace(tmp, dest)


def _byte_compile(folder: Path, shown_as: str, log) -> None:
    """Write .pyc files with this (host) Python when it is 3.11 like the sysroot's: an emulated import of
    numpy then takes 3 s instead of 10 (Debian compiles them in postinst, which never runs here)."""
    if sys.version_info[:2] != (3, 11):
        log(f"note: host Python {sys.version_info[0]}.{sys.version_info[1]} cannot pre-compile for 3.11; "
            "emulated imports will be slower")
        return
    import compileall

    compileall.compile_dir(str(folder), ddir=shown_as, quiet=2, workers=0)


def ensure_sysroot(root: Path, log) -> Path:
    """Debian's arm64 python3.11 and C++ runtime unpacked under root/sysroot (download-only apt, dpkg -x)."""
    dest = root / "sysroot"
    if (dest / "usr/bin/python3.11").is_file():
        return dest
    if not shutil.which("apt-get") or not shutil.which("dpkg"):
        raise SetupError("arm64 setup: apt-get and dpkg are needed to fetch the arm64 Python",
                         "run this on a Debian/Ubuntu host")
    log(f"downloading Debian's arm64 {', '.join(DEBS)} into a private apt cache (no system install)")
    env = _private_apt(root / "apt")
    _run(["apt-get", "-q", "update"], "apt-get update (private arm64 configuration)", 900, env)
    _run(["apt-get", "-q", "install", "-y", "--download-only", "--no-install-recommends", *DEBS],
         "downloading the arm64 .debs", 1800, env)
    tmp = _fresh(dest)
    try:
        for deb in sorted((root / "apt/cache/archives").glob("*.deb")):
            _run(["dpkg", "-x", str(deb), str(tmp)], f"unpacking {deb.name}", 300)
        if not (tmp / "usr/bin/python3.11").is_file():
            raise SetupError("arm64 setup: the arm64 .debs held no usr/bin/python3.11", "check the Debian mirror")
        _byte_compile(tmp / "usr/lib/python3.11", "/usr/lib/python3.11", log)
        _commit(tmp, dest)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return dest


def wanted_wheels(names: Sequence[str] = WHEELS) -> list[str]:
    """``name==version`` of each wheel, pinned to this host's installed version where there is one."""
    out = []
    for name in names:
        try:
            out.append(f"{name}=={importlib.metadata.version(name)}")
        except importlib.metadata.PackageNotFoundError:
            out.append(name)
    return out


def ensure_site(root: Path, wheels: list[str], log) -> Path:
    """aarch64 cp311 wheels under root/site, installed by this host's pip (``--target``, no system install)."""
    dest, stamp = root / "site", root / "site" / ".wheels.json"
    if stamp.is_file() and json.loads(stamp.read_text()) == wheels:
        return dest
    log(f"downloading aarch64 wheels {' '.join(wheels)}")
    tmp = _fresh(dest)
    try:
        cmd = [sys.executable, "-m", "pip", "install", "-q", "--disable-pip-version-check", "--no-compile",
               "--target", str(tmp), "--only-binary=:all:", "--python-version", "3.11", "--implementation", "cp",
               "--abi", "cp311", *[a for p in _PLATFORMS for a in ("--platform", p)], *wheels]
        _run(cmd, "pip install of the aarch64 wheels", 1800)
        _byte_compile(tmp, str(dest), log)
        (tmp / ".wheels.json").write_text(json.dumps(wheels))
        _commit(tmp, dest)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return dest


_CHECK = ("import json, platform, numpy, ncnn, importlib.metadata as m; "
          "print(json.dumps({'machine': platform.machine(), 'python': platform.python_version(), "
          "'asimdhp': bool(ncnn.cpu_support_arm_asimdhp()), "
          "'versions': {p: m.version(p) for p in ('ncnn', 'MNN', 'numpy')}}))")


def check(qemu: str, sysroot: Path, site: Path, cpu: str = "cortex-a76") -> dict:
    """Import the wheels in an emulated Python; its machine, Python, versions and fp16 arithmetic flag."""
    argv = [qemu, "-L", str(sysroot), "-cpu", cpu, "-E", f"PYTHONPATH={site}", "-E", "PYTHONNOUSERSITE=1",
            "-E", "PATH=/nonexistent", str(sysroot / "usr/bin/python3.11"), "-c", _CHECK]
    out = _run(argv, f"running the emulated Python ({cpu})", 300)
    return json.loads(out.strip().splitlines()[-1])


def setup(root: Path | None = None, log=print) -> dict:
    """Make ``root`` ready (idempotent) and return ``ready.json``'s content."""
    root = Path(root) if root else default_root()
    started = time.perf_counter()
    qemu = ensure_qemu(log)
    wheels = wanted_wheels()
    ready = root / READY
    if ready.is_file():
        info = json.loads(ready.read_text())
        if info.get("layout") == LAYOUT and info.get("wheels") == wheels and Path(info.get("qemu", "")).is_file() \
                and (root / "site").is_dir():
            return info
    if ready.is_file():  # an older layout or other wheels: rebuild everything but the apt cache
        for stale in (root / "sysroot", root / "site"):
            shutil.rmtree(stale, ignore_errors=True)
        ready.unlink()
    sysroot = ensure_sysroot(root, log)
    site = ensure_site(root, wheels, log)
    a76, a72 = check(qemu, sysroot, site, "cortex-a76"), check(qemu, sysroot, site, "cortex-a72")
    qemu_version = _run([qemu, "--version"], "qemu-aarch64 --version", 30).splitlines()[0]
    info = {"layout": LAYOUT, "root": str(root), "qemu": qemu, "qemu_version": qemu_version, "sysroot": str(sysroot),
            "site": str(site), "python": str(sysroot / "usr/bin/python3.11"), "wheels": wheels,
            "check": {"cortex-a76": a76, "cortex-a72": a72}, "setup_s": round(time.perf_counter() - started, 1)}
    tmp = root / f".{READY}.partial"
    tmp.write_text(json.dumps(info, indent=2) + "\n")
    os.replace(tmp, ready)
    return info


def main(argv: list[str] | None = None) -> int:
    import argparse

    parser = argparse.ArgumentParser(prog="arm64-setup", description=__doc__.splitlines()[0])
    parser.add_argument("--root", help=f"cache folder (default: ${ROOT_ENV} or ~/.cache/edgeprune/arm64)")
    parser.add_argument("--optional", action="store_true",
                        help="exit 0 when it cannot be set up (the emulated tests then skip, saying why)")
    args = parser.parse_args(argv)
    log = lambda msg: print(f"[arm64-setup] {msg}", flush=True)  # noqa: E731
    try:
        info = setup(Path(args.root).expanduser() if args.root else None, log)
    except SetupError as exc:
        print(f"[arm64-setup] cannot set up arm64 emulation: {exc.one_line()}", file=sys.stderr)
        return 0 if args.optional else 2
    a76 = info["check"]["cortex-a76"]
    log(f"ready: {info['qemu_version']}, arm64 Python {a76['python']}, "
        f"{' '.join(f'{k} {v}' for k, v in a76['versions'].items())}; "
        f"cortex-a76 fp16 arithmetic: {a76['asimdhp']}, cortex-a72: {info['check']['cortex-a72']['asimdhp']} "
        f"({info['root']})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
