"""Bad inputs about outputs, threads, signals and child processes (issue 9, part C).

Every CLI case fails with one ``edgeprune: error:`` line, its exit code, and leaves the case's
folder exactly as it was (a canary file next to and inside the refused target stays).
"""
from __future__ import annotations

import errno
import os
import stat
from pathlib import Path

import pytest

from edgeprune.cores import usable_cores
from edgeprune.errors import UserInputError
from tests.badinput import DATA, Case, ids, run_case

TRAIN = ["train", "--model", "resnet20", "--data", DATA, "--epochs", "0.05", "--no-progress"]
CORES = usable_cores()


@pytest.fixture(autouse=True)
def private_tmp(tmp_path_factory, monkeypatch):
    """A temp folder of this test's own, so other runs' ``edgeprune-*`` scratch does not count as ours."""
    import tempfile

    tmp = tmp_path_factory.mktemp("scratch")
    monkeypatch.setattr(tempfile, "tempdir", str(tmp))
    monkeypatch.setenv("TMPDIR", str(tmp))
    return tmp


def _canary(folder: Path) -> None:
    (folder / "keep.txt").write_text("keep\n")


def _foreign(folder: Path) -> None:
    _canary(folder)
    (folder / "mine").mkdir()
    (folder / "mine" / "notes.txt").write_text("mine\n")


def _symlink(folder: Path) -> None:
    _foreign(folder)
    (folder / "link").symlink_to(folder / "mine", target_is_directory=True)


def _file(folder: Path) -> None:
    _canary(folder)
    (folder / "out.txt").write_text("not a folder\n")


def _onnx(folder: Path) -> None:
    from tests.conftest import export_onnx, make_tiny_cnn

    _canary(folder)
    export_onnx(make_tiny_cnn(), (1, 1, 28, 28), folder / "tiny.onnx")


BENCH = ["bench", "tiny.onnx", "--targets", "onnxruntime", "--precisions", "fp32", "--data", DATA,
         "--rounds", "1", "--min-seconds", "0.1", "--holdout-images", "50", "--no-progress"]
BUILD = ["build", "--target", "onnxruntime", "--model", "resnet20", "--data", DATA, "--finetune-epochs", "0",
         "--rounds", "1", "--min-seconds", "0.1", "--holdout-images", "50", "--eval-limit", "50", "--no-progress"]

CASES = [
    Case("out-dot-force", [*TRAIN, "--out", ".", "--force"], 2, "current folder", _canary),
    Case("out-parent-force", lambda f: [*TRAIN, "--out", "..", "--force"], 2, "current folder or one of its parents",
         _canary),
    Case("out-root-force", [*TRAIN, "--out", "/", "--force"], 2, "root folder", _canary),
    Case("out-home-force", lambda f: [*TRAIN, "--out", str(Path.home()), "--force"], 2, "home folder", _canary),
    Case("out-symlink-force", [*TRAIN, "--out", "link", "--force"], 2, "symbolic link", _symlink),
    Case("out-foreign-force", [*TRAIN, "--out", "mine", "--force"], 2, "not written by edgeprune", _foreign),
    Case("out-file-force", [*TRAIN, "--out", "out.txt", "--force"], 2, "existing file", _file),
    Case("out-file", [*TRAIN, "--out", "out.txt"], 2, "existing file", _file),
    Case("out-proc", [*TRAIN, "--out", "/proc/x"], 2, "/proc", _canary),
    Case("out-missing-parent", [*TRAIN, "--out", "no/such/dir/out"], 2, "does not exist", _canary),
    Case("bench-threads-huge", [*BENCH, "--threads", "10000"], 2, f"--threads must be in 0..{CORES}", _onnx),
    Case("bench-threads-negative", [*BENCH, "--threads", "-1"], 2, "--threads: -1 is outside", _onnx),
    Case("build-threads-huge", [*BUILD, "--threads", "10000", "--out", "b"], 2, f"0..{CORES}", _canary),
    Case("lut-threads-huge", ["lut", "--target", "onnxruntime", "--model", "resnet20", "--input-shape", "1,3,8,8",
                              "--threads", "10000", "--no-progress"], 2, f"0..{CORES}", _canary),
]

CLI_CASES = [
    Case("json-missing-dir", [*BENCH, "--json", "/missing/dir/r.json"], 2, "does not exist", _onnx),
    Case("json-is-dir", lambda f: [*BENCH, "--json", str(f)], 2, "is a folder", _onnx),
    Case("csv-is-dir", lambda f: [*BENCH, "--csv", str(f)], 2, "is a folder", _onnx),
    Case("json-proc", [*BENCH, "--json", "/proc/x.json"], 2, "pseudo-filesystem", _onnx),
]


@pytest.mark.parametrize("case", CASES, ids=ids(CASES))
def test_bad_output_or_threads(case, tmp_path, capsys):
    line = run_case(case, tmp_path, capsys)
    assert (tmp_path / "keep.txt").read_text() == "keep\n", line


@pytest.mark.parametrize("case", CLI_CASES, ids=ids(CLI_CASES))
def test_bad_output_file_flags(case, tmp_path, capsys):
    run_case(case, tmp_path, capsys)


def test_force_replaces_own_output_and_follows_umask(tmp_path, monkeypatch, capsys):
    from edgeprune.cli import main
    from edgeprune.outputs import MARKER

    monkeypatch.chdir(tmp_path)
    old = os.umask(0o022)
    try:
        assert main([*TRAIN, "--out", "run"]) == 0
        first = (tmp_path / "run" / "model.pt").stat().st_ino
        assert (tmp_path / "run" / MARKER).is_file()
        assert main([*TRAIN, "--out", "run", "--force"]) == 0
    finally:
        os.umask(old)
    run = tmp_path / "run"
    assert (run / "model.pt").stat().st_ino != first  # really replaced
    assert stat.S_IMODE(run.stat().st_mode) == 0o755
    for name in ("model.pt", "train.json", MARKER):
        assert stat.S_IMODE((run / name).stat().st_mode) == 0o644, name
    assert sorted(p.name for p in tmp_path.iterdir()) == ["run"]  # no staging or old folder left


def test_disk_full_while_saving_is_one_line(tmp_path, monkeypatch, capsys):
    import edgeprune.models.checkpoint as ckpt
    from edgeprune.cli import main

    def full(*_a, **_k):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(ckpt.torch, "save", full)
    monkeypatch.chdir(tmp_path)
    capsys.readouterr()
    assert main([*TRAIN, "--out", "run"]) == 1
    err = capsys.readouterr().err
    assert err.strip().splitlines()[-1] == ("edgeprune: error: no space left on device writing run "
                                            "(free space or choose another --out)"), err
    assert "Traceback" not in err
    assert list(tmp_path.iterdir()) == []


def test_export_does_not_blame_an_operator_for_a_full_disk(tmp_path, monkeypatch, tiny_model):
    import edgeprune.export as export

    def full(*_a, **_k):
        raise RuntimeError("exporter wrapped it") from OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(export, "_torch_export", full)
    with pytest.raises(RuntimeError) as info:
        export.export_onnx(tiny_model, (1, 1, 28, 28), tmp_path / "m.onnx")
    assert "operator" not in str(info.value)
    monkeypatch.setattr(export, "_torch_export", lambda *a: (_ for _ in ()).throw(OSError(errno.EDQUOT, "quota")))
    with pytest.raises(OSError):
        export.export_onnx(tiny_model, (1, 1, 28, 28), tmp_path / "m.onnx")
    assert list(tmp_path.iterdir()) == []


def test_staging_names_the_output_when_the_disk_fills(tmp_path):
    from edgeprune.outputs import OutOfSpace
    from edgeprune.targets.base import staging_dir

    with pytest.raises(OutOfSpace, match=r"no space left on device writing .*art"):
        with staging_dir(tmp_path / "art") as stage:
            raise OSError(errno.ENOSPC, "No space left on device", str(stage / "model.bin"))
    assert list(tmp_path.iterdir()) == []


def test_staging_never_replaces_a_foreign_folder(tmp_path):
    from edgeprune.targets.base import staging_dir

    (tmp_path / "art").mkdir()
    (tmp_path / "art" / "keep.txt").write_text("keep")
    with pytest.raises(UserInputError, match="not written by edgeprune"):
        with staging_dir(tmp_path / "art") as stage:
            (stage / "manifest.json").write_text("{}")
    assert [p.name for p in tmp_path.iterdir()] == ["art"]
    assert (tmp_path / "art" / "keep.txt").read_text() == "keep"


@pytest.mark.parametrize("bad, message", [
    ("{tmp}", "is a folder"), ("{tmp}/", "is a folder"), ("{tmp}/no/such/r.json", "does not exist"),
    ("/proc/x.json", "pseudo-filesystem"), ("{tmp}/dangling", "dangling"),
])
def test_check_output_file_refuses_without_creating(tmp_path, bad, message):
    from edgeprune.outputs import check_output_file

    (tmp_path / "dangling").symlink_to(tmp_path / "nowhere")
    before = sorted(tmp_path.iterdir())
    with pytest.raises(UserInputError, match=message):
        check_output_file(bad.format(tmp=tmp_path), "--json")
    assert sorted(tmp_path.iterdir()) == before


def test_check_output_file_accepts_files_stdout_and_devices(tmp_path):
    from edgeprune.outputs import check_output_file

    (tmp_path / "old.json").write_text("{}")
    assert check_output_file(tmp_path / "old.json", "--json") == tmp_path / "old.json"
    assert check_output_file(tmp_path / "new.csv", "--csv") == tmp_path / "new.csv"
    assert check_output_file("-", "--json") is None and check_output_file(None, "--json") is None
    assert check_output_file("/dev/null", "--json") == Path("/dev/null")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["old.json"]


@pytest.mark.parametrize("threads", [-1, 10000, CORES + 1, 1.5, "two"])
def test_thread_counts_are_bounded_by_the_machine(threads):
    from edgeprune.measure.protocol import MeasureSettings
    from edgeprune.profiles import resolve_threads

    with pytest.raises(UserInputError, match=rf"0\.\.{CORES}"):
        MeasureSettings(threads=threads)
    with pytest.raises(UserInputError, match=rf"0\.\.{CORES}"):
        resolve_threads({"threads": 0}, threads)


def test_thread_counts_in_range_and_profile_values():
    from edgeprune.measure.protocol import MeasureSettings
    from edgeprune.profiles import resolve_threads

    assert MeasureSettings(threads=0).threads == 0 and MeasureSettings(threads=CORES).threads == CORES
    assert resolve_threads({"threads": 0}) == CORES and resolve_threads({"threads": 0}, 1) == 1
    assert resolve_threads({"threads": 4096}) == CORES  # a board's profile value is capped at this machine
    assert resolve_threads({"threads": 0}, 8, cores=8) == 8  # a remote device's own core count
    assert MeasureSettings(threads=8, max_threads=8).threads == 8


# ---- signals and child processes ----

def _children_of(pid: int) -> dict[int, str]:
    """Live (non-zombie) processes whose parent is ``pid``: pid -> command line."""
    found = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
            if int(fields[1]) == pid and fields[0] != "Z":
                found[int(entry.name)] = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode()
        except (OSError, IndexError, ValueError):
            continue
    return found


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return False
    return state != "Z"


@pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="needs Linux /proc")
def test_sigterm_mid_build_unwinds_and_kills_the_worker(tmp_path, private_tmp):
    import signal
    import subprocess
    import sys
    import time

    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parent.parent), "TMPDIR": str(private_tmp)}
    argv = [sys.executable, "-m", "edgeprune", *BUILD, "--rounds", "20", "--min-seconds", "2", "--out", "X"]
    proc = subprocess.Popen(argv, cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    workers: dict[int, str] = {}
    deadline = time.time() + 240
    try:
        while time.time() < deadline and proc.poll() is None and not workers:
            workers = {p: c for p, c in _children_of(proc.pid).items() if "edgeprune.measure.worker" in c}
            time.sleep(0.05)
        assert workers, f"no measurement worker seen; exit {proc.poll()}"
        time.sleep(0.3)
        proc.send_signal(signal.SIGTERM)
        _out, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 143, err
    lines = [ln for ln in err.strip().splitlines() if ln.strip()]
    assert lines[-1].startswith("edgeprune: error: interrupted by SIGTERM"), err
    assert "Traceback" not in err
    assert sorted(p.name for p in tmp_path.iterdir()) == [], "output or partial folder left"
    assert not list(private_tmp.glob("edgeprune-*")), "scratch folder left"
    time.sleep(0.2)
    assert not [pid for pid in workers if _alive(pid)], "a measurement worker outlived edgeprune"


def test_run_child_kills_its_whole_group_when_interrupted(tmp_path):
    import signal
    import sys
    import threading
    import time

    from edgeprune import interrupt

    pidfile = tmp_path / "grandchild.pid"
    script = ("import subprocess, sys, time;"
              "p = subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(60)']);"
              f"open({str(pidfile)!r}, 'w').write(str(p.pid)); time.sleep(60)")

    def term_when_started():
        for _ in range(400):
            if pidfile.exists() and pidfile.read_text():
                break
            time.sleep(0.05)
        os.kill(os.getpid(), signal.SIGTERM)

    threading.Thread(target=term_when_started, daemon=True).start()
    with pytest.raises(interrupt.Interrupted) as info:
        with interrupt.signals_as_exceptions():
            interrupt.run_child([sys.executable, "-c", script], timeout=60)
    assert info.value.exit_code == 143
    grandchild = int(pidfile.read_text())
    for _ in range(50):
        if not _alive(grandchild):
            break
        time.sleep(0.05)
    assert not _alive(grandchild), "the child's own child survived"
    assert signal.getsignal(signal.SIGTERM) is signal.SIG_DFL  # handlers restored


def test_deferred_holds_a_signal_until_the_swap_is_done():
    import signal

    from edgeprune import interrupt

    done = []
    with pytest.raises(interrupt.Interrupted) as info:
        with interrupt.signals_as_exceptions():
            with interrupt.deferred():
                signal.raise_signal(signal.SIGINT)
                done.append("swap finished")
    assert done == ["swap finished"] and info.value.exit_code == 130


def test_run_child_timeout_kills_and_reports(tmp_path):
    import subprocess
    import sys

    from edgeprune import interrupt

    with pytest.raises(subprocess.TimeoutExpired):
        interrupt.run_child([sys.executable, "-c", "import time; print('started', flush=True); time.sleep(60)"],
                            timeout=2)
    assert not interrupt._children
