"""A local Hugging Face causal LM: batched sampling, seeding, soft prompts.

All samples of one prompt come from one `generate` call (`num_return_sequences=n`): the
prompt is encoded once and the n sequences decode as one batch, which on a CPU or GPU costs
little more per step than one sequence. Generation and tuning share one model, so a lock
serialises them; torch's global RNG is seeded inside that lock, which makes a seeded call
reproducible whatever runs around it.

A grammar (`Sampling.grammar`) masks each row's logits through a logits processor, with
the same two-phase constraint as the llamacpp backend (services.proposer.grammar). The
model runs on the GPU when there is one (tuning and sampling); float32 on a CPU.
"""

import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from services.proposer import grammar, model_files, prompt_tuning
from services.proposer.backends.base import (
    Backend,
    Capabilities,
    Completion,
    Info,
    InvalidRequest,
    Sampling,
    TuneResult,
    TuneSettings,
)


class HFBackend(Backend):
    name = "hf"

    def __init__(
        self,
        model: str | None = None,
        adapter_dir: Path | None = None,
        cache_dir: Path | None = None,
    ) -> None:
        from transformers import AutoModelForCausalLM, AutoTokenizer

        folder, self.model_id = model_files.resolve(model, cache_dir)
        self.tokenizer = AutoTokenizer.from_pretrained(folder)
        self.model = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32)
        self.device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
        self.model.to(self.device)
        self.model.eval()
        self._lltokenizer: Any = None
        # Adapters are tied to the weights they were trained on: the folder names them.
        self.model_key = f"{self.model_id}@{folder.resolve().name}"
        self.store = prompt_tuning.AdapterStore(adapter_dir)
        self.eos_ids = self._eos_ids()
        self.pad_id = self.eos_ids[0]
        self._lock = threading.Lock()
        max_positions = getattr(self.model.config, "max_position_embeddings", 0) or 2048
        self.max_context = int(max_positions)

    def _eos_ids(self) -> list[int]:
        """Every token that ends a turn: a GGUF's metadata and the generation config differ."""
        found: list[int] = []
        configured = self.model.generation_config.eos_token_id
        for value in [configured, self.tokenizer.eos_token_id]:
            for token in value if isinstance(value, list) else [value]:
                if token is not None and token not in found:
                    found.append(int(token))
        for text in ("<|endoftext|>", "<|im_end|>", "<|eot_id|>", "</s>"):
            token = self.tokenizer.convert_tokens_to_ids(text)
            if isinstance(token, int) and token != self.tokenizer.unk_token_id:
                found.append(token) if token not in found else None
        return found

    def info(self) -> Info:
        return Info(
            backend=self.name,
            model_id=self.model_id,
            capabilities=Capabilities(
                prompt_tuning=True,
                adapters=True,
                batched_sampling=True,
                max_context_tokens=self.max_context,
                grammar="mask",
            ),
            adapter_ids=self.store.ids(),
        )

    def generate(
        self,
        prompt: str,
        n: int,
        sampling: Sampling,
        adapter_id: str = "",
        cancelled: Callable[[], bool] | None = None,
    ) -> list[Completion]:
        soft = self.store.embeddings(adapter_id) if adapter_id else None
        input_ids = self.tokenizer(prompt, return_tensors="pt")["input_ids"].to(self.device)
        prompt_tokens = int(input_ids.shape[1])
        virtual = 0 if soft is None else int(soft.shape[0])
        if prompt_tokens + virtual + sampling.max_new_tokens > self.max_context:
            raise InvalidRequest(
                f"prompt ({prompt_tokens} tokens) + max_new_tokens "
                f"({sampling.max_new_tokens}) exceed the model's {self.max_context} tokens"
            )
        rows = n if sampling.temperature > 0 else 1
        processors = self._grammar_mask(sampling.grammar, rows) if sampling.grammar else None
        with self._lock, torch.inference_mode():
            started = time.perf_counter()
            if sampling.seed is None:
                torch.seed()
            else:
                torch.manual_seed(sampling.seed)
            out = self.model.generate(
                logits_processor=processors,
                **self._inputs(input_ids, soft),
                **self._sampling_kwargs(sampling),
                # Greedy decoding gives n copies of one sequence: decode it once.
                num_return_sequences=rows,
                max_new_tokens=sampling.max_new_tokens,
                eos_token_id=self.eos_ids,
                pad_token_id=self.pad_id,
                stop_strings=list(sampling.stop) or None,
                tokenizer=self.tokenizer,
                # A caller that gave up (a deadline, Ctrl-C) stops the model at the next
                # token instead of holding it, and the next caller, for minutes on a CPU.
                stopping_criteria=_stop_when(cancelled) if cancelled else None,
            )
            latency = time.perf_counter() - started
        # With input_ids the output repeats the prompt; with inputs_embeds it does not.
        new = out[:, prompt_tokens:] if soft is None else out
        rows = list(new) if len(new) == n else [new[0]] * n
        return [self._completion(row, prompt_tokens, latency, sampling) for row in rows]

    def _inputs(self, input_ids: torch.Tensor, soft: torch.Tensor | None) -> dict[str, Any]:
        if soft is None:
            return {"input_ids": input_ids, "attention_mask": torch.ones_like(input_ids)}
        embeds = self.model.get_input_embeddings()(input_ids)
        embeds = torch.cat([soft.to(embeds.device, embeds.dtype)[None], embeds], dim=1)
        return {
            "inputs_embeds": embeds,
            "attention_mask": torch.ones(embeds.shape[:2], dtype=torch.long, device=self.device),
        }

    def _grammar_mask(self, text: str, rows: int) -> Any:
        from transformers import LogitsProcessorList

        if self._lltokenizer is None:
            self._lltokenizer = _lltokenizer(self.tokenizer, self.eos_ids[0])
        compiled = grammar.Compiled.of(text)
        try:
            constraints = [grammar.Constraint(compiled, self._lltokenizer) for _ in range(rows)]
        except grammar.GrammarError as e:
            raise InvalidRequest(str(e)) from e
        return LogitsProcessorList([_GrammarMask(constraints, self.eos_ids[0])])

    @staticmethod
    def _sampling_kwargs(sampling: Sampling) -> dict[str, Any]:
        if sampling.temperature <= 0:
            return {"do_sample": False, "temperature": None, "top_p": None, "top_k": None}
        return {
            "do_sample": True,
            "temperature": sampling.temperature,
            "top_p": sampling.top_p if 0 < sampling.top_p < 1 else None,
            "top_k": None,
        }

    def _completion(
        self, row: torch.Tensor, prompt_tokens: int, latency: float, sampling: Sampling
    ) -> Completion:
        ids = row.tolist()
        end = next((i for i, t in enumerate(ids) if t in self.eos_ids), None)
        text = self.tokenizer.decode(ids[:end], skip_special_tokens=False)
        if any(stop and stop in text for stop in sampling.stop):
            # Stopped on a stop string; the padding after it is not the model's output.
            reason, count = "stop_sequence", len(ids) if end is None else end
        elif end is not None:
            reason, count = "eos_token", end + 1
        else:
            reason, count = "length", len(ids)
        return Completion(text, prompt_tokens, count, latency, reason)

    def train_soft_prompt(self, examples: list[str], settings: TuneSettings) -> TuneResult:
        with self._lock:
            try:
                return prompt_tuning.train_and_store(
                    self.model, self.tokenizer, self.model_key, examples, settings, self.store
                )
            finally:
                self.model.eval()


def _lltokenizer(tokenizer: Any, eos_id: int) -> Any:
    """llguidance's view of the vocabulary, from each token's bytes.

    Not `llguidance.hf.from_tokenizer`: a tokenizer converted from a GGUF file does not
    declare its byte-level encoding, and llguidance then reads "ĊĠĠ" where the model
    means "\\n  ". The bytes come from the GPT-2 byte alphabet when the vocabulary uses
    it, else from the token's text."""
    import llguidance
    from llguidance._tokenizer import TokenizerWrapper

    alphabet = _byte_alphabet()
    special = set(tokenizer.all_special_ids)
    pieces: list[bytes] = []
    for token in tokenizer.convert_ids_to_tokens(list(range(len(tokenizer)))):
        text = token or ""
        if all(ch in alphabet for ch in text):
            pieces.append(bytes(alphabet[ch] for ch in text))
        else:
            pieces.append(text.encode())
    pieces = [b"\xff" + p if i in special else p for i, p in enumerate(pieces)]

    class Vocabulary:
        eos_token_id = eos_id
        bos_token_id = tokenizer.bos_token_id
        tokens = pieces
        special_token_ids = sorted(special)

        def __call__(self, text: str) -> list[int]:
            return tokenizer(text, add_special_tokens=False)["input_ids"]

    return llguidance.LLTokenizer(TokenizerWrapper(Vocabulary()))


def _byte_alphabet() -> dict[str, int]:
    """GPT-2's printable stand-ins for the 256 byte values (character -> byte)."""
    printable = [*range(33, 127), *range(161, 173), *range(174, 256)]
    codes, n = list(printable), 0
    for b in range(256):
        if b not in printable:
            printable.append(b)
            codes.append(256 + n)
            n += 1
    return {chr(c): b for b, c in zip(printable, codes, strict=True)}


class _GrammarMask:
    """A logits processor: each row's next token is one its grammar allows."""

    def __init__(self, constraints: list[grammar.Constraint], eos_id: int) -> None:
        self.constraints = constraints
        self.eos_id = eos_id
        self.start: int | None = None

    def __call__(self, input_ids: torch.Tensor, scores: torch.Tensor) -> torch.Tensor:
        if self.start is None:
            self.start = input_ids.shape[1]
        for row, c in enumerate(self.constraints):
            if input_ids.shape[1] > self.start and not c.done and not c.error:
                c.consume(int(input_ids[row, -1]))
            allowed = torch.zeros(scores.shape[1], dtype=torch.bool)
            if c.done or c.error:
                allowed[self.eos_id] = True  # finished (or broken): end the row
            else:
                mask = torch.from_numpy(c.allowed())
                allowed[: len(mask)] = mask[: scores.shape[1]]
            scores[row, ~allowed.to(scores.device)] = -float("inf")
        return scores


def _stop_when(cancelled: Callable[[], bool]) -> Any:
    from transformers import StoppingCriteria, StoppingCriteriaList

    class Cancelled(StoppingCriteria):
        def __call__(self, input_ids: torch.Tensor, scores: Any, **kwargs: Any) -> torch.Tensor:
            return torch.full((input_ids.shape[0],), cancelled(), dtype=torch.bool)

    return StoppingCriteriaList([Cancelled()])
