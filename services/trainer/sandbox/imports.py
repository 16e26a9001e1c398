"""The import tree a sandbox sees: only what training needs.

One definition for both ways of building a sandbox's file tree: the bwrap backend binds
these paths read-only (services/trainer/sandbox/template.py), and the docker image copies
them (images/sandbox/rootfs.py). It is the interpreter and its standard library, from the
environment's site-packages only the distributions torch and numpy need (and, where the
clrs extra is installed, dm-clrs with JAX and Haiku), and from this project only the
modules the child imports. Never the data generators (mnist1d), nor the store's,
proposer's or services' libraries (sqlalchemy, grpc, transformers, ...): a candidate that
could import them could rebuild held-out data or talk to the services.
"""

import ast
import importlib.metadata as md
import re
import sys
import sysconfig
from dataclasses import dataclass
from functools import cache
from pathlib import Path

try:
    from packaging.requirements import Requirement
except ImportError:  # pragma: no cover - pip always vendors it
    from pip._vendor.packaging.requirements import Requirement  # type: ignore[no-redef]

import services

# Where `services` lives (the checkout, or the install target in the trainer image).
PROJECT_ROOT = Path(services.__file__).resolve().parent.parent
# The child's entry module; everything of this project it imports follows from it.
CHILD_ENTRY = "services/trainer/child.py"
ROOT_PACKAGES = ("torch", "numpy")
# The CLRS runner, where the clrs extra is installed: dm-clrs, JAX and Haiku, but not
# TensorFlow or tfds, which the runner never imports (services/trainer/clrs_lib.py).
CLRS_ROOT = "dm-clrs"
NOT_NEEDED = frozenset({"tensorflow", "tfds-nightly", "tensorflow-datasets"})


def child_modules(root: Path = PROJECT_ROOT) -> list[str]:
    """This project's files the child imports, relative to `root` (with their packages'
    `__init__.py`): CHILD_ENTRY and every `services.*` module it imports, transitively.

    Read from the source, so that a new module the child imports is bound (bwrap) and
    copied (docker image) without a list to keep in step."""
    found: set[str] = set()
    todo = [CHILD_ENTRY]
    while todo:
        rel = todo.pop()
        if rel in found or not (root / rel).is_file():
            continue
        found.add(rel)
        parts = Path(rel).parts
        todo += [str(Path(*parts[:i], "__init__.py")) for i in range(1, len(parts))]
        for name in _imported(root / rel):
            if name == "services" or name.startswith("services."):
                base = root / Path(*name.split("."))
                for candidate in (base.with_suffix(".py"), base / "__init__.py"):
                    if candidate.is_file():
                        todo.append(str(candidate.relative_to(root)))
    return sorted(found)


def _imported(path: Path) -> set[str]:
    """Every module name an import statement in `path` names (`from a import b`: a, a.b)."""
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
            names.add(node.module)
            names.update(f"{node.module}.{alias.name}" for alias in node.names)
    return names


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
            raise RuntimeError(
                f"the sandbox needs {name}, which is not installed in {sys.prefix}"
            ) from None
        seen[name] = dist
        for spec in dist.requires or []:
            req = Requirement(spec)
            if req.marker is None or req.marker.evaluate({"extra": ""}):
                todo.append(req.name)
    return list(seen.values())


def sandbox_roots() -> list[str]:
    """The distributions a sandbox needs: torch and numpy, and dm-clrs where installed."""
    roots = list(ROOT_PACKAGES)
    try:
        md.distribution(CLRS_ROOT)
        roots.append(CLRS_ROOT)
    except md.PackageNotFoundError:
        pass
    return roots


@dataclass(frozen=True)
class ImportTree:
    """The paths of one environment that make up a sandbox's import tree."""

    # The environment's site-packages, and its top-level entries the sandbox gets
    # (package directories, single-module files, .dist-info, vendored .libs).
    site_packages: Path
    site_entries: tuple[Path, ...]
    # The interpreter's standard library (its own site-packages is left out).
    stdlib: Path
    # This project's modules the child imports: (file on this machine, path relative to
    # site-packages). In the sandbox they sit in site-packages, where `python -I` finds them.
    child_files: tuple[tuple[Path, str], ...]


@cache
def import_tree() -> ImportTree:
    """This interpreter's import tree for sandboxes (computed once per process)."""
    site = Path(sysconfig.get_paths()["purelib"])
    entries: set[Path] = set()
    for dist in closure(sandbox_roots()):
        for top in {Path(str(f)).parts[0] for f in dist.files or []}:
            # Shared caches and .pth hooks belong to no one distribution: left out.
            if (
                top not in ("..", "__pycache__")
                and not top.endswith(".pth")
                and (site / top).exists()
            ):
                entries.add(site / top)
    return ImportTree(
        site_packages=site,
        site_entries=tuple(sorted(entries)),
        stdlib=Path(sysconfig.get_paths()["stdlib"]),
        child_files=tuple((PROJECT_ROOT / rel, rel) for rel in child_modules()),
    )
