"""Small Python programs the host runs on a device with ``python3 -c PROGRAM ARGS...``.

They move files before the edgeprune package is on the device (and after), using only the
standard library of Python 3.8+, so a device needs no ``tar``, ``rsync`` or sftp.
Invariants:
- ``UNPACK`` extracts a tar stream from stdin into a fresh hidden sibling of DEST and
  renames it to DEST only when the whole stream was read; a cut stream leaves no DEST.
  It accepts only regular files and folders with relative names that stay inside DEST.
  If DEST already exists (another host pushed the same package first), the copy is dropped.
- ``PACK`` writes SRC's regular files and folders as one uncompressed tar to stdout,
  names relative to SRC, in sorted order.
- ``REMOVE_JOB`` deletes only CACHE/jobs/ID for an ID of hex digits: the host cannot be
  made to delete anything else through it.
- ``PROBE`` prints the device's Python version, the absolute cache folder, and whether the
  package folder for a hash is installed (it is iff its entry point exists: see ``UNPACK``).
"""
from __future__ import annotations

PROBE = """
import json, os, platform, sys
cache = os.path.abspath(os.path.expanduser(sys.argv[1]))
entry = os.path.join(cache, sys.argv[2], "edgeprune_device.py")
print(json.dumps({"python": platform.python_version(), "cache": cache, "installed": os.path.isfile(entry)}))
"""

UNPACK = """
import os, shutil, sys, tarfile, tempfile
dest = os.path.abspath(os.path.expanduser(sys.argv[1]))
parent = os.path.dirname(dest)
os.makedirs(parent, exist_ok=True)
tmp = tempfile.mkdtemp(prefix=".incoming-", dir=parent)
try:
    with tarfile.open(fileobj=sys.stdin.buffer, mode="r|*") as tf:
        for member in tf:
            parts = member.name.split("/")
            if member.name.startswith("/") or ".." in parts or not (member.isfile() or member.isdir()):
                sys.exit("edgeprune-device: error: refusing tar member %r" % member.name)
            kwargs = {"filter": "data"} if hasattr(tarfile, "data_filter") else {}
            tf.extract(member, tmp, set_attrs=False, **kwargs)
    try:
        os.rename(tmp, dest)
    except OSError:
        if not os.path.isdir(dest):
            raise
finally:
    shutil.rmtree(tmp, ignore_errors=True)
"""

PACK = """
import os, sys, tarfile
src = os.path.abspath(os.path.expanduser(sys.argv[1]))
if not os.path.isdir(src):
    sys.exit("edgeprune-device: error: no folder %s on the device" % src)
with tarfile.open(fileobj=sys.stdout.buffer, mode="w|") as tf:
    for root, dirs, files in os.walk(src):
        dirs.sort()
        for name in sorted(files):
            path = os.path.join(root, name)
            if os.path.isfile(path) and not os.path.islink(path):
                tf.add(path, arcname=os.path.relpath(path, src), recursive=False)
sys.stdout.buffer.flush()
"""

REMOVE_JOB = """
import os, re, shutil, sys
cache = os.path.abspath(os.path.expanduser(sys.argv[1]))
if not re.fullmatch("[0-9a-f]{8,64}", sys.argv[2]):
    sys.exit("edgeprune-device: error: refusing to remove job %r" % sys.argv[2])
shutil.rmtree(os.path.join(cache, "jobs", sys.argv[2]), ignore_errors=True)
"""
