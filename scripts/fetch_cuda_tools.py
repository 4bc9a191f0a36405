#!/usr/bin/env python3
"""Fetches what graft's PTX checks need without a GPU or a CUDA toolkit: `ptxas` and
`libdevice.10.bc` from NVIDIA's PyPI wheel nvidia-cuda-nvcc-cu12 (checked against PyPI's
SHA-256), into DEST/bin/ptxas and DEST/libdevice.10.bc. Python's standard library only.

    python3 scripts/fetch_cuda_tools.py DEST
"""

import hashlib
import io
import json
import os
import stat
import sys
import urllib.request
import zipfile

PACKAGE = "nvidia-cuda-nvcc-cu12"
VERSION = "12.9.86"


def main():
    dest = sys.argv[1]
    # PyPI's simple index (PEP 691 JSON), which mirrors and proxies serve too.
    req = urllib.request.Request(
        f"https://pypi.org/simple/{PACKAGE}/",
        headers={"Accept": "application/vnd.pypi.simple.v1+json"},
    )
    files = json.load(urllib.request.urlopen(req))["files"]
    prefix = PACKAGE.replace("-", "_") + "-" + VERSION + "-"
    wheels = [
        f for f in files
        if f["filename"].startswith(prefix) and f["filename"].endswith(".whl")
        and "x86_64" in f["filename"] and "manylinux" in f["filename"]
    ]
    if not wheels:
        sys.exit(f"no x86-64 Linux wheel of {PACKAGE} {VERSION} on PyPI")
    wheel = wheels[0]
    wheel["digests"] = wheel["hashes"]
    data = urllib.request.urlopen(wheel["url"]).read()
    if hashlib.sha256(data).hexdigest() != wheel["digests"]["sha256"]:
        sys.exit(f"{wheel['filename']}: SHA-256 differs from PyPI's")
    z = zipfile.ZipFile(io.BytesIO(data))
    wanted = {"bin/ptxas": "bin/ptxas", "libdevice.10.bc": "libdevice.10.bc"}
    found = set()
    for name in z.namelist():
        for suffix, target in wanted.items():
            if name.endswith("/" + suffix):
                out = os.path.join(dest, target)
                os.makedirs(os.path.dirname(out), exist_ok=True)
                with open(out + ".partial", "wb") as f:
                    f.write(z.read(name))
                os.replace(out + ".partial", out)
                found.add(suffix)
    if found != set(wanted):
        sys.exit(f"{wheel['filename']} lacks {sorted(set(wanted) - found)}")
    ptxas = os.path.join(dest, "bin/ptxas")
    os.chmod(ptxas, os.stat(ptxas).st_mode | stat.S_IXUSR | stat.S_IXGRP | stat.S_IXOTH)
    print(f"fetch_cuda_tools: ptxas and libdevice from {wheel['filename']} in {dest}")


if __name__ == "__main__":
    main()
