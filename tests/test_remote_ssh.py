"""Remote devices over a REAL sshd on 127.0.0.1: this machine acts as an x86 device with OpenVINO.

A module fixture starts ``/usr/sbin/sshd -D`` (Debian's openssh-server) on a free loopback port
with a host key, a client key and authorized_keys in a temp folder; every test talks to it
with the plain OpenSSH client through ``edgeprune.remote`` — no mocks. The device's Python is
this interpreter (``sys.executable``), so the device has the same runtimes installed.
"""
from __future__ import annotations

import getpass
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest

from edgeprune.errors import RuntimeUnavailable, UserInputError
from edgeprune.measure.parity import check_gates, compare_outputs
from edgeprune.measure.protocol import MeasureSettings
from edgeprune.profiles import load_profile
from edgeprune.remote import (AuthFailed, ConnectionDropped, DeviceSpec, HostKeyChanged, HostKeyUnknown,
                              RemoteDevice, RemoteError, RemoteTimeout, Unreachable, measure_many_remote,
                              remote_build_table, remote_compile_and_measure)
from edgeprune.remote.transfer import TransferError, file_listing, verify_artifact
from edgeprune.targets.base import sha256_file

SSHD = "/usr/sbin/sshd"
pytestmark = pytest.mark.skipif(not Path(SSHD).is_file() or shutil.which("ssh") is None,
                                reason="needs Debian's openssh-server (/usr/sbin/sshd) and the ssh client: "
                                       "apt-get install -y openssh-server openssh-client")
FAST = MeasureSettings(threads=1, warmup_s=0.1, min_iters=20, min_seconds=0.2, timeout_s=60)


@dataclass
class Server:
    port: int
    pid: int
    folder: Path
    known_hosts: Path   # holds this server's real host key
    client_key: Path
    host_pub: str       # "ssh-ed25519 AAAA..."
    user: str

    def spec(self) -> str:
        return f"{self.user}@127.0.0.1:{self.port}"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _keygen(path: Path) -> str:
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(path)], check=True)
    return " ".join(path.with_suffix(".pub").read_text().split()[:2])


def _wait_listening(port: int, proc: subprocess.Popen, log: Path) -> None:
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            pytest.fail(f"sshd exited: {log.read_text()}")
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.05)
    pytest.fail(f"sshd did not listen on {port}: {log.read_text()}")


@pytest.fixture(scope="module")
def sshd(tmp_path_factory):
    if os.geteuid() == 0 and not Path("/run/sshd").is_dir():
        os.makedirs("/run/sshd", mode=0o755)  # sshd's privilege-separation folder, made by its service normally
    folder = tmp_path_factory.mktemp("sshd")
    host_pub = _keygen(folder / "host_key")
    client_pub = _keygen(folder / "client_key")
    (folder / "authorized_keys").write_text(client_pub + "\n")
    port, user = _free_port(), getpass.getuser()
    (folder / "sshd_config").write_text(
        f"ListenAddress 127.0.0.1\nPort {port}\nHostKey {folder / 'host_key'}\n"
        f"AuthorizedKeysFile {folder / 'authorized_keys'}\nPidFile {folder / 'sshd.pid'}\n"
        "UsePAM no\nStrictModes no\nPermitRootLogin prohibit-password\nPasswordAuthentication no\n"
        f"KbdInteractiveAuthentication no\nPubkeyAuthentication yes\nAllowUsers {user}\nMaxSessions 30\n")
    log = folder / "sshd.log"
    with open(log, "wb") as fh:
        proc = subprocess.Popen([SSHD, "-D", "-f", str(folder / "sshd_config"), "-e"], stdout=fh, stderr=fh)
    _wait_listening(port, proc, log)
    known = folder / "known_hosts"
    known.write_text(f"[127.0.0.1]:{port} {host_pub}\n")
    yield Server(port, proc.pid, folder, known, folder / "client_key", host_pub, user)
    proc.terminate()
    proc.wait(timeout=10)


def _device(server: Server, cache: Path, **kw) -> RemoteDevice:
    kw.setdefault("known_hosts", str(server.known_hosts))
    kw.setdefault("python", sys.executable)
    return RemoteDevice.from_spec(server.spec(), identity=str(server.client_key), cache_dir=str(cache), **kw)


@pytest.fixture(scope="module")
def device(sshd, tmp_path_factory):
    # A cache folder with a space, a quote and shell syntax: every remote call must quote it.
    cache = tmp_path_factory.mktemp("device") / "cache dir 'q\" $(touch pwned);x"
    with _device(sshd, cache) as dev:
        yield dev


def test_selfcheck_lists_openvino_and_uses_the_pushed_package(device):
    info = device.selfcheck()
    assert info["runtimes"]["openvino"]["available"] is True
    assert "openvino" in info["runtimes"]["openvino"]["versions"]
    assert "openvino" in info["available"] and info["numpy"] == np.__version__
    assert info["cpu"] == info["environment"]["cpu_model"] and info["machine"] == os.uname().machine
    cache = device.cache_dir()
    assert cache.endswith("cache dir 'q\" $(touch pwned);x") and Path(cache).is_dir()
    assert info["edgeprune"]["path"].startswith(cache + "/")  # the pushed package, not this checkout
    assert info["torch_imported"] is False  # the device side runs without torch
    assert not (Path(cache).parent / "pwned").exists() and not Path("pwned").exists()


def test_package_is_pushed_once_per_content(device, sshd):
    pkg = Path(device.ensure_package())
    entry = pkg / "edgeprune_device.py"
    before = entry.stat().st_mtime_ns
    with _device(sshd, Path(device.cache_dir())) as again:
        assert again.ensure_package() == str(pkg)
        again.selfcheck()
    assert entry.stat().st_mtime_ns == before
    assert [p.name for p in pkg.parent.iterdir() if p.name != "jobs"] == [pkg.name]


def test_remote_arguments_survive_quoting(device):
    tricky = ["a b", "it's", '"dq"', "$(touch pwned)", "; rm -rf /tmp/nothing", "`id`", "back\\slash", "*", ""]
    proc = device.run(device.python("-c", "import json,sys; print(json.dumps(sys.argv[1:]))", *tricky),
                      what="echo")
    assert json.loads(proc.stdout) == tricky
    assert not Path.home().joinpath("pwned").exists()


def test_remote_compile_and_measure_openvino_fp32(device, tiny_onnx, tiny_model, random_inputs, tmp_path):
    import torch

    reference = tiny_model(torch.from_numpy(random_inputs)).detach().numpy()
    out = tmp_path / "result dir 'with quote"
    res = remote_compile_and_measure(device, tiny_onnx, load_profile("x86"), "fp32", None, random_inputs,
                                     FAST, 2, out)
    assert res["status"] == "ok" and res["device"] == device.label and res["runtime"] == "openvino"
    lat = res["measurement"]["latency"]
    assert 0 < lat["min_ms"] <= lat["p50_ms"] <= lat["p90_ms"] <= lat["p99_ms"]
    assert len(res["measurement"]["rounds"]) == 2 and res["measurement"]["peak_rss_mb"] > 0
    assert res["inspect"]["precision"] == "fp32"
    manifest = verify_artifact(Path(res["artifact"]))
    for entry in manifest["files"].values():
        assert sha256_file(Path(res["artifact"]) / entry["name"]) == entry["sha256"]
    assert file_listing(out).keys() >= set(res["files"])  # everything listed arrived (plus result.json)
    outputs = np.load(res["outputs"], allow_pickle=False)
    ok, why = check_gates(compare_outputs(outputs, reference), "fp32")
    assert ok, why
    assert (out / "result.json").is_file()
    assert list(Path(device.cache_dir(), "jobs").iterdir()) == []  # the device's job folder was removed


def test_failing_gate_skips_measurement(device, tiny_onnx, random_inputs, tmp_path):
    def gate(outputs):
        return {"ok": False, "reason": "deliberately rejected", "parity": {"n": len(outputs)}}

    res = remote_compile_and_measure(device, tiny_onnx, load_profile("x86"), "fp32", None, random_inputs,
                                     FAST, 1, tmp_path / "gated", gate=gate)
    assert res["status"] == "parity failed" and res["measurement"] is None
    assert res["parity"] == {"n": len(random_inputs)} and res["reason"] == "deliberately rejected"


def test_unknown_host_key_refused_then_accepted_with_accept_new(sshd, tmp_path):
    empty = tmp_path / "known_hosts"
    empty.write_text("")
    with _device(sshd, tmp_path / "c", known_hosts=str(empty)) as dev:
        with pytest.raises(HostKeyUnknown, match="not in .*known_hosts: refusing to connect.*accept-new-host-key"):
            dev.ensure_package()
    assert empty.read_text() == ""
    with _device(sshd, tmp_path / "c", known_hosts=str(empty), accept_new=True) as dev:
        dev.ensure_package()
    assert sshd.host_pub in empty.read_text()
    with _device(sshd, tmp_path / "c", known_hosts=str(empty)) as dev:  # now known: strict checking passes
        dev.ensure_package()


@pytest.mark.parametrize("accept_new", [False, True])
def test_changed_host_key_refused(sshd, tmp_path, accept_new):
    wrong = tmp_path / "known_hosts"
    wrong.write_text(f"[127.0.0.1]:{sshd.port} {_keygen(tmp_path / 'other_key')}\n")
    with _device(sshd, tmp_path / "c", known_hosts=str(wrong), accept_new=accept_new) as dev:
        with pytest.raises(HostKeyChanged, match="has CHANGED"):
            dev.ensure_package()


def test_wrong_key_is_auth_failure(sshd, tmp_path):
    _keygen(tmp_path / "stranger")
    dev = RemoteDevice.from_spec(sshd.spec(), known_hosts=str(sshd.known_hosts), identity=str(tmp_path / "stranger"))
    with dev, pytest.raises(AuthFailed, match="authentication to .* failed"):
        dev.ensure_package()


def test_unreachable_port_fails_fast_and_clearly(sshd, tmp_path):
    started = time.monotonic()
    dev = RemoteDevice.from_spec(f"{sshd.user}@127.0.0.1:{_free_port()}", known_hosts=str(sshd.known_hosts),
                                 connect_timeout=3)
    with dev, pytest.raises(Unreachable, match="is unreachable: .*Connection refused"):
        dev.selfcheck()
    assert time.monotonic() - started < 5


@pytest.mark.parametrize("spec", ["a;rm -rf /", "root@a;rm -rf /", "-oProxyCommand=touch x", "root@-oFoo",
                                  "root@host:0", "root@host:70000", "root@host:22x", "ro ot@host", "`id`@host",
                                  "root@$(whoami)", "ssh://root:secret@host", "ssh://root@host/path", "",
                                  "root@host:22:33", "a@b@c", "root@[::1;id]:22"])
def test_malicious_or_malformed_device_specs_are_rejected(spec):
    with pytest.raises(UserInputError):
        RemoteDevice.from_spec(spec)


def test_device_spec_forms():
    assert DeviceSpec.parse("ssh://pi@raspberrypi.local:2222").label == "pi@raspberrypi.local:2222"
    spec = DeviceSpec.parse("pi@10.0.0.5")
    assert (spec.user, spec.host, spec.port, spec.python) == ("pi", "10.0.0.5", 22, "python3")
    assert DeviceSpec.parse("admin@[::1]:2200").destination == "admin@::1"
    profile = {**load_profile("x86"), "device": {"host": "orin.lan", "user": "nvidia", "port": 2022,
                                                  "python": "/usr/bin/python3"}}
    dev = RemoteDevice.from_spec(profile)
    assert (dev.spec.destination, dev.spec.port, dev.spec.python) == ("nvidia@orin.lan", 2022, "/usr/bin/python3")
    assert DeviceSpec.from_table({"host": "h", "identity_file": "~/k"}).identity_file == "~/k"
    with pytest.raises(UserInputError, match="identity file"):
        RemoteDevice.from_spec("pi@h", identity="/nonexistent/key")
    with pytest.raises(UserInputError, match="unknown key"):
        DeviceSpec.from_table({"host": "h", "password": "x"})


def test_device_without_numpy_or_python_says_so(sshd, tmp_path):
    with _device(sshd, tmp_path / "c", python="/nonexistent/python3") as dev:
        with pytest.raises(RuntimeUnavailable, match="no usable Python at '/nonexistent/python3'"):
            dev.selfcheck()
    system = "/usr/bin/python3"
    if not Path(system).is_file() or subprocess.run([system, "-c", "import numpy"],
                                                    capture_output=True).returncode == 0:
        pytest.skip("needs a system python3 without numpy to play a bare device")
    with _device(sshd, tmp_path / "c", python=system) as dev:
        with pytest.raises(RuntimeUnavailable, match="device lacks numpy: install it there with pip install numpy"):
            dev.selfcheck()


def test_runtime_missing_on_device_is_one_clear_line(device, tiny_onnx, tmp_path):
    from edgeprune.targets import get_runtime, runtime_names

    if "tensorrt" not in runtime_names() or get_runtime("tensorrt").available()[0]:
        pytest.skip("needs a device-side runtime that is absent here (TensorRT)")
    profile = {"name": "jetson", "runtime": "tensorrt", "precisions": ["fp16"], "options": {}}
    with pytest.raises(RuntimeUnavailable, match=r"device lacks tensorrt: install it there with") as err:
        remote_compile_and_measure(device, tiny_onnx, profile, "fp16", None, None, FAST, 1, tmp_path / "trt")
    assert "\n" not in str(err.value) and str(err.value).startswith(device.label)
    assert not (tmp_path / "trt").exists()


def _children(pid: int) -> set[int]:
    kids = set()
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[1]) == pid:
            kids.add(int(stat.parent.name))
    return kids


def _big_remote_folder(folder: Path, gib: float) -> dict:
    folder.mkdir()
    (folder / "manifest.json").write_text("{}")
    with open(folder / "weights.bin", "wb") as fh:  # sparse: costs no disk on the "device"
        fh.truncate(int(gib * (1 << 30)))
    return {"manifest.json": {"bytes": 2, "sha256": sha256_file(folder / "manifest.json")},
            "weights.bin": {"bytes": int(gib * (1 << 30)), "sha256": "not computed"}}


def _leftovers(parent: Path, name: str) -> list[Path]:
    return [p for p in parent.iterdir() if p.name == name or p.name.startswith(f".{name}.")]


def test_connection_killed_mid_pull_leaves_no_result(sshd, tmp_path):
    listing = _big_remote_folder(tmp_path / "remote", 1.0)
    before = _children(sshd.pid)
    dev = _device(sshd, tmp_path / "c")
    dev.ensure_package()  # opens the master connection: its sshd session is the new child
    session = _children(sshd.pid) - before
    assert session, "no sshd session process found for the device's connection"
    dest, errors = tmp_path / "local" / "pulled", []

    def pull():
        try:
            dev.pull_dir(str(tmp_path / "remote"), dest, listing, timeout=60)
        except RemoteError as exc:
            errors.append(exc)

    worker = threading.Thread(target=pull)
    worker.start()
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline and not any(
            f.stat().st_size > (1 << 20) for f in (tmp_path / "local").glob(".pulled.pulling-*/weights.bin")):
        time.sleep(0.01)
    for pid in session:  # drop the connection: end the sshd processes serving it
        os.kill(pid, signal.SIGKILL)
    worker.join(30)
    dev.close()
    assert not worker.is_alive() and len(errors) == 1, errors
    assert isinstance(errors[0], (ConnectionDropped, TransferError)), errors
    assert _leftovers(tmp_path / "local", "pulled") == []


def test_pull_timeout_leaves_no_result(device, tmp_path):
    listing = _big_remote_folder(tmp_path / "remote", 2.0)
    dest = tmp_path / "local" / "pulled"
    started = time.monotonic()
    with pytest.raises(RemoteTimeout, match="did not finish within 0.3 s"):
        device.pull_dir(str(tmp_path / "remote"), dest, listing, timeout=0.3)
    assert time.monotonic() - started < 5
    assert _leftovers(tmp_path / "local", "pulled") == []


def test_tampered_pull_is_refused(device, tmp_path):
    (tmp_path / "remote").mkdir()
    (tmp_path / "remote" / "a.txt").write_text("hello")
    listing = {"a.txt": {"bytes": 5, "sha256": "0" * 64}}
    with pytest.raises(RemoteError, match="does not match the device's sha256"):
        device.pull_dir(str(tmp_path / "remote"), tmp_path / "local", listing)
    assert _leftovers(tmp_path, "local") == []
    (tmp_path / "remote" / "b.bin").write_bytes(b"unasked-for")
    with pytest.raises(RemoteError, match="which its listing does not hold"):
        device.pull_dir(str(tmp_path / "remote"), tmp_path / "local", listing)
    assert _leftovers(tmp_path, "local") == []
    (tmp_path / "remote" / "b.bin").unlink()
    listing["a.txt"]["sha256"] = sha256_file(tmp_path / "remote" / "a.txt")
    assert device.pull_dir(str(tmp_path / "remote"), tmp_path / "local", listing) == 5
    assert (tmp_path / "local" / "a.txt").read_text() == "hello"


def test_two_devices_measured_concurrently(sshd, tiny_onnx, random_inputs, tmp_path):
    cache = tmp_path / "shared cache"  # both install the same package at once: one must win cleanly
    devices = [_device(sshd, cache), _device(sshd, cache),
               RemoteDevice.from_spec(f"{sshd.user}@127.0.0.1:{_free_port()}", known_hosts=str(sshd.known_hosts))]
    try:
        rows = measure_many_remote(devices, tiny_onnx, load_profile("x86"), "fp32", None, random_inputs,
                                   FAST, 1, tmp_path / "many")
    finally:
        for dev in devices:
            dev.close()
    assert [r["status"] for r in rows] == ["ok", "ok", "device error"]
    assert "unreachable" in rows[2]["reason"]
    assert rows[0]["out_dir"] != rows[1]["out_dir"]
    for row in rows[:2]:
        assert row["measurement"]["latency"]["p50_ms"] > 0
        verify_artifact(Path(row["artifact"]))
    assert [p.name for p in cache.iterdir() if p.name != "jobs"] == [Path(devices[0].ensure_package()).name]


def test_remote_latency_table(device, tmp_path):
    from edgeprune.measure.lut import LayerSig

    sig = LayerSig("conv", (3, 3), (1, 1), (1, 1), (8, 8), True)
    profile = {**load_profile("x86"), "channel_multiple": 4}
    cache = tmp_path / "lut cache"
    table = remote_build_table(device, profile, [(sig, 8, 8)], precision="fp32", threads=1, rounds=1,
                               cache_dir=str(cache), out_json=tmp_path / "table.json")
    row = table["rows"][sig.key()]
    assert row.ins == [4, 8] and row.outs == [4, 8]
    assert all(v > 0 for line in row.ms for v in line) and row.lookup(8, 8) > 0
    assert table["meta"]["device"] == device.label and table["meta"]["rows_measured"] == 1
    assert len(list(cache.glob("*.json"))) == 1 and (tmp_path / "table.json").is_file()
    again = remote_build_table(device, profile, [(sig, 8, 8)], precision="fp32", threads=1, rounds=1,
                               cache_dir=str(cache))
    assert again["meta"]["rows_from_cache"] == 1 and again["rows"][sig.key()].ms == row.ms


def test_device_check_command_reads_the_profile_device_table(sshd, tmp_path, capsys):
    from edgeprune.cli import main

    profile = tmp_path / "board.toml"
    profile.write_text(Path(load_profile("x86")["path"]).read_text() + (
        f'\n[device]\nhost = "127.0.0.1"\nuser = "{sshd.user}"\nport = {sshd.port}\n'
        f'python = "{sys.executable}"\nidentity_file = "{sshd.client_key}"\nknown_hosts = "{sshd.known_hosts}"\n'
        f'cache_dir = "{tmp_path / "cache"}"\n'))
    assert main(["device-check", "--target", str(profile), "--json", str(tmp_path / "check.json")]) == 0
    table = capsys.readouterr().out
    assert f"127.0.0.1:{sshd.port}" in table and "openvino 20" in table
    assert json.loads((tmp_path / "check.json").read_text())[0]["runtimes"]["openvino"]["available"]


def test_remote_compile_checked_gates_against_torch(device, tiny_onnx, tiny_model, random_inputs, tmp_path):
    import torch

    from edgeprune.deploy_check import Holdout
    from edgeprune.remote.checked import remote_compile_checked

    reference = tiny_model(torch.from_numpy(random_inputs)).detach().numpy()
    holdout = Holdout(random_inputs, reference.argmax(1), reference)
    row = remote_compile_checked(device, tiny_onnx, load_profile("x86"), "fp32", tmp_path / "row", holdout, None,
                                 FAST, 1)
    assert row["status"] == "ok" and row["accuracy"] == 1.0 and row["parity"]["max_rel_diff"] < 1e-3
    assert row["measurement"]["latency"]["p50_ms"] > 0
    bad = Holdout(random_inputs, reference.argmax(1), -reference)  # a reference the artifact cannot match
    row = remote_compile_checked(device, tiny_onnx, load_profile("x86"), "fp32", tmp_path / "bad", bad, None, FAST, 1)
    assert row["status"] == "parity failed" and "top-1 agreement" in row["reason"] and row["measurement"] is None


def test_local_artifacts_measured_interleaved_on_the_device(device, tiny_onnx, tmp_path):
    from edgeprune.remote import remote_measure_interleaved
    from edgeprune.targets import get_runtime

    profile = load_profile("x86")
    a = get_runtime("openvino").compile(tiny_onnx, "fp32", None, profile, tmp_path / "baseline")
    b = get_runtime("openvino").compile(tiny_onnx, "fp32", None, profile, tmp_path / "pruned")
    res = remote_measure_interleaved(device, {"baseline": a.path, "pruned": b.path}, FAST, rounds=1)
    assert set(res) == {"baseline", "pruned"}
    for name, r in res.items():
        assert r["latency"]["p50_ms"] > 0 and r["artifact"] == str(tmp_path / name)
        assert r["artifact_on_device"].startswith(device.cache_dir() + "/jobs/")
    assert list(Path(device.cache_dir(), "jobs").iterdir()) == []
    (b.path / "model.bin").write_bytes(b"tampered")
    with pytest.raises(RemoteError, match="does not match manifest.json"):
        remote_measure_interleaved(device, {"pruned": b.path}, FAST, rounds=1)


def test_remote_build_matches_local_build(sshd, tmp_path):
    """`edgeprune build --device` compiles and measures on the device; its numbers match a local build's."""
    from edgeprune.cli import main
    from tests.conftest import MINI_FMNIST

    common = ["build", "--target", "x86", "--model", "resnet20", "--data", f"fashion-mnist:{MINI_FMNIST}",
              "--ratio", "0.5", "--finetune-epochs", "0", "--threads", "1", "--rounds", "2", "--max-rounds", "2",
              "--min-seconds", "0.3", "--no-progress"]
    assert main([*common, "--out", str(tmp_path / "local")]) == 0
    assert main([*common, "--out", str(tmp_path / "remote"), "--device", sshd.spec(), "--known-hosts",
                 str(sshd.known_hosts), "--identity", str(sshd.client_key), "--device-python", sys.executable]) == 0
    local = json.loads((tmp_path / "local" / "report.json").read_text())
    remote = json.loads((tmp_path / "remote" / "report.json").read_text())
    assert remote["config"]["device"] == f"{sshd.user}@127.0.0.1:{sshd.port}"
    for name in ("baseline", "pruned"):
        assert remote[name]["flops"] == local[name]["flops"]
        assert remote[name]["parity"]["max_rel_diff"] < 1e-3
        assert (tmp_path / "remote" / remote[name]["artifact"] / "manifest.json").is_file()
        # measured on the device, fresh process per round; agreement with local timings is a benchmark figure
        # (see the README), not a test assertion on this shared, noisy box
        assert remote[name]["latency"]["p50_ms"] > 0 and len(remote[name]["latency_rounds_p50_ms"]) == 2
        print(f"{name}: p50 local {local[name]['latency']['p50_ms']:.4f} ms, remote {remote[name]['latency']['p50_ms']:.4f} ms")


def test_bench_on_two_devices_gives_a_row_each(sshd, tiny_onnx, tmp_path, capsys):
    from edgeprune.cli import main
    from tests.conftest import MINI_FMNIST

    ssh = ["--known-hosts", str(sshd.known_hosts), "--identity", str(sshd.client_key), "--device-python", sys.executable]
    code = main(["bench", str(tiny_onnx), "--targets", "openvino", "--precisions", "fp32,fp16",
                 "--data", f"fashion-mnist:{MINI_FMNIST}", "--rounds", "1", "--min-seconds", "0.1",
                 "--device", sshd.spec(), "--device", f"ssh://{sshd.user}@127.0.0.1:{sshd.port}", *ssh,
                 "--json", str(tmp_path / "b.json"), "--no-progress"])
    assert code == 0
    rows = json.loads((tmp_path / "b.json").read_text())["rows"]
    assert len(rows) == 4 and {r["device"] for r in rows} == {f"{sshd.user}@127.0.0.1:{sshd.port}"}
    fp32 = [r for r in rows if r["precision"] == "fp32"]
    assert all(r["status"] == "ok" and r["p50_ms"] > 0 for r in fp32)
    from edgeprune.targets.openvino import device_capabilities

    if "FP16" not in device_capabilities()["capabilities"]:
        # fp16 on a CPU without native FP16 runs as bf16/f32 in OpenVINO: refused on the device, never measured
        assert all(r["status"] == "unsupported" and r["p50_ms"] is None for r in rows if r["precision"] == "fp16")


def test_lut_command_measures_the_table_on_the_device(sshd, tmp_path, capsys):
    """`edgeprune lut` with a profile's [device]: every entry measured on the board, cached there."""
    from edgeprune.cli import main

    profile = tmp_path / "board.toml"
    profile.write_text(Path(load_profile("x86")["path"]).read_text().replace("channel_multiple = 8",
                                                                             "channel_multiple = 16") + (
        f'\n[device]\nhost = "127.0.0.1"\nuser = "{sshd.user}"\nport = {sshd.port}\n'
        f'python = "{sys.executable}"\nidentity_file = "{sshd.client_key}"\nknown_hosts = "{sshd.known_hosts}"\n'
        f'cache_dir = "{tmp_path / "board-cache"}"\n'))
    argv = ["lut", "--target", str(profile), "--model", "resnet20", "--input-shape", "1,1,8,8", "--threads", "1",
            "--in-stride", "4", "--no-progress", "--json", str(tmp_path / "t.json")]
    assert main(argv) == 0
    table = json.loads((tmp_path / "t.json").read_text())
    assert table["meta"]["device"].endswith(f"127.0.0.1:{sshd.port}") and table["meta"]["rows_measured"] > 0
    assert all(layer["ms_full_width"] > 0 for layer in table["layers"])
    assert list((tmp_path / "board-cache" / "lut").glob("*.json"))  # the board's own cache holds the rows
    assert main(argv) == 0
    again = json.loads((tmp_path / "t.json").read_text())
    assert again["meta"]["rows_measured"] == 0 and again["meta"]["rows_from_cache"] == table["meta"]["rows_measured"]


def test_budget_search_measures_table_and_models_on_the_device(device, tmp_path):
    """``HardwareSearch`` with a device: the table is measured on the board, and the calibration's models and
    any checked model are compiled and measured there (interleaved rounds, a fresh process each)."""
    import torch

    from edgeprune.models import build_model
    from edgeprune.search.hardware import HardwareSearch

    torch.manual_seed(0)
    model = build_model("resnet20", num_classes=10, in_channels=1).eval()
    profile = {**load_profile("x86"), "channel_multiple": 16, "precision": "fp32"}
    hs = HardwareSearch(model, torch.zeros(1, 1, 8, 8), profile, "fp32", 1, FAST, progress=False, device=device)
    assert hs.table["meta"]["device"] == device.label and hs.table["meta"]["rows_measured"] > 0
    fit = hs.calibrate(rounds=2, mixed=0)  # the uniform variants only: a short test of the device path
    assert fit["samples"] == 4 and all(ms > 0 for _, ms in hs.samples) and hs.baseline_ms == hs.samples[0][1]
    assert set(fit["calibration"]["models"]) == {"unpruned", "uniform-0.25", "uniform-0.5", "uniform-0.75"}
    assert hs.measure_model(hs.prune_counts(hs.samples[2][0], [np.ones(w) for w in hs.widths]), repeats=1) > 0
    assert list(Path(device.cache_dir(), "lut").glob("*.json"))  # the board's own cache holds the rows
    assert list(Path(device.cache_dir(), "jobs").iterdir()) == []  # every job folder removed


def test_budget_build_on_the_device_is_not_refused(sshd, tmp_path):
    """`edgeprune build --budget-ms 0.8x` against a profile's [device] runs the search there: the board's cache
    holds the table. The budget's outcome on this shared box (met, missed, unreachable by a noisy calibration,
    undecided) is not what is tested; a written report must show the search ran on the device."""
    from edgeprune.cli import main
    from tests.conftest import MINI_FMNIST

    cache = tmp_path / "board-cache"
    profile = tmp_path / "board.toml"  # channel multiple 16: a small table, so the test stays short
    profile.write_text(Path(load_profile("x86")["path"]).read_text().replace("channel_multiple = 8",
                                                                             "channel_multiple = 16") + (
        f'\n[device]\nhost = "127.0.0.1"\nuser = "{sshd.user}"\nport = {sshd.port}\n'
        f'python = "{sys.executable}"\nidentity_file = "{sshd.client_key}"\nknown_hosts = "{sshd.known_hosts}"\n'
        f'cache_dir = "{cache}"\n'))
    code = main(["build", "--target", str(profile), "--model", "resnet20", "--data", f"fashion-mnist:{MINI_FMNIST}",
                 "--budget-ms", "0.8x", "--finetune-epochs", "0", "--threads", "1", "--rounds", "2",
                 "--max-rounds", "3", "--min-seconds", "0.3", "--no-progress", "--out", str(tmp_path / "out"),
                 "--search-steps", "1", "--search-step-batches", "0", "--search-candidates", "0",
                 "--search-holdout", "100", "--search-refits", "0", "--search-finalist-batches", "0",
                 "--search-calibration", "1", "--search-progressive-steps", "0"])
    assert code in (0, 1, 2, 3)
    assert list((cache / "lut").glob("*.json"))  # the table was measured on the board
    if (tmp_path / "out" / "report.json").is_file():
        report = json.loads((tmp_path / "out" / "report.json").read_text())
        assert report["search"]["table"]["device"] == f"{sshd.user}@127.0.0.1:{sshd.port}"
        assert report["search"]["predictor"]["samples"] >= 3
        assert report["config"]["device"] == f"{sshd.user}@127.0.0.1:{sshd.port}"
