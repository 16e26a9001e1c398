"""Soft prompt-tuning (Lester et al. 2021) with peft, and a content-addressed adapter store.

The paper tunes a soft prompt between rounds on the round's scored children; later rounds
sample with it. A soft prompt is a few trained input embeddings prepended to every prompt:
the model's own weights stay frozen. The adapter id is a hash of everything that decides the
result (model, examples, settings, seed, starting adapter), so asking twice gives the same
id and the second ask reuses the stored adapter. Training is seeded and deterministic on CPU.
"""

import dataclasses
import hashlib
import json
import re
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any

import torch

from services.proposer.backends.base import InvalidRequest, TuneResult, TuneSettings, UnknownAdapter
from services.proposer.model_files import evo_home

ADAPTER_ID = re.compile(r"^sp-[0-9a-f]{24}$")
# Longer examples are cut: the memory of one step grows with batch x length.
MAX_EXAMPLE_TOKENS = 1024
_FORMAT = 1


def default_adapter_dir() -> Path:
    return evo_home() / "adapters"


def adapter_id_for(model_key: str, examples: list[str], settings: TuneSettings) -> str:
    """The content address of a soft prompt: same inputs, same id."""
    content = {
        "format": _FORMAT,
        "model": model_key,
        "examples": examples,
        "num_virtual_tokens": settings.num_virtual_tokens,
        "epochs": settings.epochs,
        "batch_size": settings.batch_size,
        "learning_rate": settings.learning_rate,
        "seed": settings.seed,
        "init_adapter_id": settings.init_adapter_id,
        "max_example_tokens": MAX_EXAMPLE_TOKENS,
    }
    digest = hashlib.sha256(json.dumps(content, sort_keys=True).encode()).hexdigest()
    return f"sp-{digest[:24]}"


class AdapterStore:
    """Soft prompts on disk (a volume in a cluster), one peft folder per adapter id."""

    def __init__(self, root: Path | None = None) -> None:
        self.root = root or default_adapter_dir()
        self.root.mkdir(parents=True, exist_ok=True)
        self._cache: dict[str, torch.Tensor] = {}

    def ids(self) -> list[str]:
        return sorted(
            p.name for p in self.root.iterdir() if ADAPTER_ID.match(p.name) and self._complete(p)
        )

    def _complete(self, folder: Path) -> bool:
        return (folder / "meta.json").exists()

    def exists(self, adapter_id: str) -> bool:
        return bool(ADAPTER_ID.match(adapter_id)) and self._complete(self.root / adapter_id)

    def meta(self, adapter_id: str) -> dict[str, Any]:
        self._check(adapter_id)
        return json.loads((self.root / adapter_id / "meta.json").read_text())

    def embeddings(self, adapter_id: str) -> torch.Tensor:
        """The soft prompt, [num_virtual_tokens, hidden]."""
        if adapter_id not in self._cache:
            from safetensors.torch import load_file

            self._check(adapter_id)
            weights = load_file(str(self.root / adapter_id / "adapter_model.safetensors"))
            self._cache[adapter_id] = weights["prompt_embeddings"]
        return self._cache[adapter_id]

    def _check(self, adapter_id: str) -> None:
        if not self.exists(adapter_id):
            raise UnknownAdapter(
                f"no soft prompt {adapter_id!r} in {self.root}; train one with TrainSoftPrompt"
            )

    def save(self, adapter_id: str, peft_model: Any, meta: dict[str, Any]) -> None:
        """Write atomically: a reader never sees half an adapter."""
        staging = Path(tempfile.mkdtemp(prefix=".saving-", dir=self.root))
        try:
            peft_model.save_pretrained(str(staging))
            (staging / "meta.json").write_text(json.dumps(meta, indent=2))
            final = self.root / adapter_id
            if final.exists():
                shutil.rmtree(final)
            staging.rename(final)
        finally:
            shutil.rmtree(staging, ignore_errors=True)


def _batches(encoded: list[list[int]], size: int, order: list[int], pad_id: int):  # type: ignore[no-untyped-def]
    """Right-padded (input_ids, attention_mask, labels); padding is masked from the loss."""
    for start in range(0, len(order), size):
        rows = [encoded[i] for i in order[start : start + size]]
        width = max(len(r) for r in rows)
        ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
        mask = torch.zeros((len(rows), width), dtype=torch.long)
        for i, row in enumerate(rows):
            ids[i, : len(row)] = torch.tensor(row)
            mask[i, : len(row)] = 1
        yield ids, mask, ids.masked_fill(mask == 0, -100)


def train(
    model: Any,
    tokenizer: Any,
    examples: list[str],
    settings: TuneSettings,
    init: torch.Tensor | None,
) -> tuple[Any, list[float]]:
    """Train a soft prompt on `examples` (causal LM loss); returns (peft model, epoch losses).

    The base model stays frozen and is shared: the caller must hold its lock.
    """
    from peft import PromptTuningConfig, PromptTuningInit, TaskType, get_peft_model

    torch.manual_seed(settings.seed)
    config = PromptTuningConfig(
        task_type=TaskType.CAUSAL_LM,
        num_virtual_tokens=settings.num_virtual_tokens,
        # Lester et al.: start from real vocabulary embeddings, not noise.
        prompt_tuning_init=PromptTuningInit.SAMPLE_VOCAB,
    )
    peft_model = get_peft_model(model, config)
    embedding = peft_model.prompt_encoder["default"].embedding
    if init is not None:
        if tuple(init.shape) != tuple(embedding.weight.shape):
            raise InvalidRequest(
                f"init adapter has {init.shape[0]} virtual tokens; this run asks for "
                f"{settings.num_virtual_tokens}"
            )
        embedding.weight.data.copy_(init)
    optimizer = torch.optim.AdamW([embedding.weight], lr=settings.learning_rate, weight_decay=0.0)
    encoded = [
        tokenizer(text, truncation=True, max_length=MAX_EXAMPLE_TOKENS)["input_ids"]
        for text in examples
    ]
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    device = next(model.parameters()).device  # a GPU when the hf backend found one
    order_rng = torch.Generator().manual_seed(settings.seed)
    losses: list[float] = []
    peft_model.eval()  # no dropout: the same inputs give the same soft prompt
    for _ in range(settings.epochs):
        order = torch.randperm(len(encoded), generator=order_rng).tolist()
        total = 0.0
        for ids, mask, labels in _batches(encoded, settings.batch_size, order, pad_id):
            ids, mask, labels = ids.to(device), mask.to(device), labels.to(device)
            loss = peft_model(input_ids=ids, attention_mask=mask, labels=labels).loss
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            total += loss.item() * ids.shape[0]
        losses.append(total / len(encoded))
    return peft_model, losses


def train_and_store(
    model: Any,
    tokenizer: Any,
    model_key: str,
    examples: list[str],
    settings: TuneSettings,
    store: AdapterStore,
) -> TuneResult:
    """Train (or reuse, when the same content was trained before) and store a soft prompt."""
    adapter_id = adapter_id_for(model_key, examples, settings)
    if store.exists(adapter_id):
        meta = store.meta(adapter_id)
        return TuneResult(adapter_id, meta["epoch_losses"], len(examples), 0.0)
    init = store.embeddings(settings.init_adapter_id) if settings.init_adapter_id else None
    started = time.perf_counter()
    peft_model, losses = train(model, tokenizer, examples, settings, init)
    seconds = time.perf_counter() - started
    meta = {
        "adapter_id": adapter_id,
        "model": model_key,
        "num_examples": len(examples),
        "settings": dataclasses.asdict(settings),
        "epoch_losses": losses,
        "train_seconds": seconds,
        "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }
    store.save(adapter_id, peft_model, meta)
    return TuneResult(adapter_id, losses, len(examples), seconds)
