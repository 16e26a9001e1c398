"""Stream the sandbox image's root filesystem as a tar, from files already on this machine.

Run it with the Python environment the sandbox should have (the project's venv):

    .venv/bin/python images/sandbox/rootfs.py | docker import - evo-sandbox:local

No registry and no network: the image holds the interpreter install behind the venv
(standard library only), the venv's torch and numpy with their dependencies, the few
modules of `services` that the child imports, and the shared libraries all of that
links against. Paths mirror the host's, so the venv's absolute paths keep working.
Everything is owned by root and readable (never writable) by others, so the
unprivileged sandbox uid can run it and change nothing. Nothing else of the host goes
in: no shell, no /root contents beyond the interpreter, no engine socket, no databases.
"""

import argparse
import importlib.metadata as md
import io
import os
import re
import subprocess
import sys
import sysconfig
import tarfile
from collections.abc import Iterable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import BinaryIO

try:
    from packaging.requirements import Requirement
except ImportError:  # pragma: no cover - pip always vendors it
    from pip._vendor.packaging.requirements import Requirement  # type: ignore[no-redef]

REPO = Path(__file__).resolve().parents[2]
# What the child imports from this project (services/trainer/child.py and its parents).
CHILD_MODULES = [
    "services/__init__.py",
    "services/trainer/__init__.py",
    "services/trainer/child.py",
    "services/trainer/clrs_child.py",
    "services/trainer/gpu_child.py",
    "services/trainer/clrs_lib.py",
]
ROOT_PACKAGES = ["torch", "numpy"]
# The CLRS runner, where the clrs extra is installed: dm-clrs, JAX and Haiku, but not
# TensorFlow or tfds, which the runner never imports (services/trainer/clrs_lib.py).
CLRS_ROOT = "dm-clrs"
NOT_NEEDED = {"tensorflow", "tfds-nightly", "tensorflow-datasets"}
# Never needed at run time: headers, C++ test binaries, the standard library's own tests.
SKIP_PARTS = {
    "torch/include", "torch/test", "torch/bin", "torch/share",
    "test", "idlelib", "tkinter", "turtledemo", "ensurepip", "lib2to3/tests",
}  # fmt: skip
# torch checks at import time that its shared-memory helper exists.
KEEP_FROM_SKIPPED = ["torch/bin/torch_shm_manager"]
# Standard-library extensions for terminals, Tk and NIS: no use in a sandbox, and they
# would pull X11, ncurses and Kerberos libraries into the image.
SKIP_FILE_PREFIXES = ("_tkinter.", "_curses.", "_curses_panel.", "nis.", "readline.")
# Loaded with dlopen, so ldd does not list it; glibc needs it to unwind threads.
DLOPENED = ["libgcc_s.so.1"]
SANDBOX_UID = 61000


class RootFS:
    """An ordered set of tar entries; every parent directory and symlink on a path goes in."""

    def __init__(self) -> None:
        self.entries: dict[str, str] = {}  # image path -> kind ("dir", "link", "file", ...)
        self.files: list[str] = []

    def add(self, path: str, recursive: bool = True, skip: Iterable[str] = ()) -> None:
        """Add `path` as the host has it, following every symlink on the way."""
        parts = Path(os.path.abspath(path)).parts[1:]
        cur = "/"
        for i, part in enumerate(parts):
            nxt = os.path.join(cur, part)
            if os.path.islink(nxt):
                self.entries.setdefault(nxt, "link")
                target = os.path.normpath(os.path.join(cur, os.readlink(nxt)))
                self.add(os.path.join(target, *parts[i + 1 :]), recursive, skip)
                return
            if not os.path.exists(nxt):
                raise FileNotFoundError(nxt)
            if i < len(parts) - 1:
                self.entries.setdefault(nxt, "dir")
            cur = nxt
        if os.path.isdir(cur):
            self.entries.setdefault(cur, "dir")
            if recursive:
                self._walk(cur, tuple(skip))
        else:
            self._file(cur)

    def _file(self, path: str) -> None:
        if path not in self.entries:
            self.entries[path] = "file"
            self.files.append(path)

    def _walk(self, top: str, skip: tuple[str, ...]) -> None:
        for dirpath, dirnames, filenames in os.walk(top):
            kept = []
            for d in dirnames:
                full = os.path.join(dirpath, d)
                if any(full.endswith("/" + s) for s in skip):
                    continue
                if os.path.islink(full):
                    self.add(full)  # the link, and its target
                else:
                    self.entries.setdefault(full, "dir")
                    kept.append(d)
            dirnames[:] = kept
            for f in filenames:
                if f.startswith(SKIP_FILE_PREFIXES):
                    continue
                full = os.path.join(dirpath, f)
                if os.path.islink(full):
                    if os.path.exists(full):
                        self.add(full)
                else:
                    self._file(full)

    def covered(self, path: str) -> bool:
        return os.path.realpath(path) in self.entries


def closure(roots: list[str]) -> list[md.Distribution]:
    """The distributions `roots` need at run time (markers evaluated, extras left out)."""
    seen: dict[str, md.Distribution] = {}
    todo = list(roots)
    while todo:
        name = re.sub(r"[-_.]+", "-", todo.pop()).lower()
        if name in seen or name in NOT_NEEDED:
            continue
        try:
            dist = md.distribution(name)
        except md.PackageNotFoundError:
            raise SystemExit(f"rootfs: {name} is not installed in {sys.prefix}") from None
        seen[name] = dist
        for spec in dist.requires or []:
            req = Requirement(spec)
            if req.marker is None or req.marker.evaluate({"extra": ""}):
                todo.append(req.name)
    return list(seen.values())


def elf_needs(paths: list[str]) -> set[str]:
    """Every shared library (and the loader) these ELF files resolve to on this host."""

    def ldd(path: str) -> list[str]:
        out = subprocess.run(["ldd", path], capture_output=True, text=True).stdout
        return re.findall(r"(?:=> )?(/\S+) \(0x", out)

    elves = []
    for p in paths:
        with open(p, "rb") as f:
            if f.read(4) == b"\x7fELF":
                elves.append(p)
    with ThreadPoolExecutor(8) as pool:
        return {lib for libs in pool.map(ldd, elves) for lib in libs}


def ldconfig_path(soname: str) -> str | None:
    out = subprocess.run(["ldconfig", "-p"], capture_output=True, text=True).stdout
    found = re.search(rf"^\s*{re.escape(soname)} \(libc6,x86-64\) => (\S+)$", out, re.M)
    return found.group(1) if found else None


def build(fs: RootFS) -> Path:
    """Fill `fs`; return the site-packages directory in the image."""
    site = Path(sysconfig.get_paths()["purelib"])
    base, venv = Path(sys.base_prefix), Path(sys.prefix)
    stdlib = Path(sysconfig.get_paths()["stdlib"])
    fs.add(str(Path(sys.executable)))  # venv/bin/python and the links to the real binary
    fs.add(str(venv / "pyvenv.cfg"))
    fs.add(str(stdlib), skip=[*SKIP_PARTS, "site-packages"])
    fs.entries.setdefault(str(stdlib / "site-packages"), "dir")
    if (base / "include").is_dir():
        fs.entries.setdefault(str(base / "include"), "dir")
    # The venv's site-packages: only what torch and numpy (and the CLRS runner) need.
    fs.entries.setdefault(str(site), "dir")
    roots = list(ROOT_PACKAGES)
    try:
        md.distribution(CLRS_ROOT)
        roots.append(CLRS_ROOT)
    except md.PackageNotFoundError:
        pass
    for dist in closure(roots):
        tops = {Path(str(f)).parts[0] for f in dist.files or []}
        for top in sorted(t for t in tops if t != ".." and (site / t).exists()):
            fs.add(str(site / top), skip=SKIP_PARTS)
    for keep in KEEP_FROM_SKIPPED:
        if (site / keep).exists():
            fs.add(str(site / keep))
    for lib in sorted(elf_needs(fs.files) | {p for s in DLOPENED if (p := ldconfig_path(s))}):
        if not fs.covered(lib):
            fs.add(lib)
    return site


def tarinfo(tar: tarfile.TarFile, path: str, kind: str) -> tarfile.TarInfo:
    info = tar.gettarinfo(path, arcname=path.lstrip("/"))
    info.uid = info.gid = 0
    info.uname = info.gname = "root"
    if kind == "dir":
        info.mode = 0o755
    elif info.isreg():
        mode = info.mode & 0o755 | 0o444
        info.mode = mode | 0o111 if mode & 0o100 else mode
    return info


def synthetic(
    name: str, data: bytes = b"", mode: int = 0o644, dir: bool = False
) -> tuple[tarfile.TarInfo, bytes]:
    info = tarfile.TarInfo(name.lstrip("/"))
    info.type = tarfile.DIRTYPE if dir else tarfile.REGTYPE
    info.mode, info.size, info.uname, info.gname = mode, len(data), "root", "root"
    return info, data


def write(fs: RootFS, site: Path, out: BinaryIO) -> None:
    """Write the tar: synthetic files first, then the host's files in path order."""
    passwd = (
        "root:x:0:0:root:/root:/nonexistent\n"
        f"sandbox:x:{SANDBOX_UID}:{SANDBOX_UID}::/tmp:/nonexistent\n"
    )
    group = f"root:x:0:\nsandbox:x:{SANDBOX_UID}:\n"
    dirs = [("/etc", 0o755), ("/tmp", 0o1777), ("/proc", 0o555), ("/sys", 0o555), ("/dev", 0o755)]
    extra = [synthetic(d, mode=m, dir=True) for d, m in dirs] + [
        synthetic("/etc/passwd", passwd.encode()),
        synthetic("/etc/group", group.encode()),
    ]
    # The child's modules go straight into site-packages: no editable-install finder needed.
    for rel in CHILD_MODULES:
        parts = Path(rel).parts
        for i in range(1, len(parts)):
            parent = synthetic(str(site.joinpath(*parts[:i])), mode=0o755, dir=True)
            if all(parent[0].name != info.name for info, _ in extra):
                extra.append(parent)
        extra.append(synthetic(str(site / rel), (REPO / rel).read_bytes()))
    with tarfile.open(fileobj=out, mode="w|", format=tarfile.GNU_FORMAT) as tar:
        for info, data in extra:
            tar.addfile(info, io.BytesIO(data) if info.isreg() else None)
        made = {info.name for info, _ in extra}
        for path in sorted(fs.entries):
            info = tarinfo(tar, path, fs.entries[path])
            if info.name in made:
                continue  # a checkout under /tmp puts /tmp among the host's paths too
            if info.isreg():
                with open(path, "rb") as f:
                    tar.addfile(info, f)
            else:
                tar.addfile(info)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--list", action="store_true", help="print the paths instead of a tar")
    args = parser.parse_args()
    fs = RootFS()
    site = build(fs)
    if args.list:
        for path in sorted(fs.entries):
            print(fs.entries[path], path)
        return
    if sys.stdout.isatty():
        raise SystemExit("rootfs: refusing to write a tar to a terminal; pipe it to docker import")
    write(fs, site, sys.stdout.buffer)


if __name__ == "__main__":
    main()
