"""The embedded model on llama.cpp: fast CPU sampling of a GGUF file, masked by a grammar.

Why not transformers: on 2 CPU cores transformers samples the 135M model at about 7 tokens
per second in float32; llama.cpp reads the same Q4_1 file at about 40.

One call decodes the prompt once (soft prompt first, as input embeddings), copies its KV
cache to n sequences and then advances all of them together: one `llama_decode` per step
for the whole batch, which on a CPU costs little more than one sequence. Sampling happens
here, in numpy, so the task's grammar can mask each sequence's logits
(services.proposer.grammar); tokens the grammar forces are appended without sampling.

Soft prompts are trained with transformers on the same GGUF weights (an hf backend loaded
on the first TrainSoftPrompt, sharing the adapter store) and sampled here: llama.cpp takes
them as input embeddings (`llama_batch.embd`), so tuned sampling is as fast as untuned.

llama.cpp itself is the library inside the xllamacpp wheel, called through our own ctypes
binding (llama_c.py: why, and which llama.h it follows).
"""

import ctypes
import os
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from services.proposer import grammar, model_files, prompt_tuning
from services.proposer.backends import llama_c
from services.proposer.backends.base import (
    Backend,
    BackendError,
    Capabilities,
    Completion,
    Info,
    InvalidRequest,
    Sampling,
    TuneResult,
    TuneSettings,
)

# Sequences decoded together; more samples of one prompt are drawn in several rounds.
MAX_PARALLEL = 16
# The KV cache holds the prompt once plus every sequence's new tokens.
CONTEXT_TOKENS = 16384
# A sequence whose statements are taken back stops after sampling this many times
# max_new_tokens (forced tokens, decoded in batches, do not count).
REWIND_BUDGET = 2
# A statement sampled again after one that could not run, and the rest of a child taken
# back as a copy, are drawn at this temperature at least: at 0.2 the model writes the same
# failing statement, or the same copy, again.
RETRY_TEMPERATURE = 0.8


def default_threads() -> int:
    """All cores but one: the trainer trains children while the next prompt is sampled,
    and llama.cpp's threads spin while they wait, so sharing every core with a busy
    neighbour is several times slower than leaving it one (measured on 2 cores)."""
    try:
        cores = len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        cores = os.cpu_count() or 1
    return max(1, cores - 1)


@dataclass
class _Sequence:
    """One sample being drawn."""

    index: int
    rng: np.random.Generator
    constraint: grammar.Constraint | None
    tokens: list[int] = field(default_factory=list)
    text: bytearray = field(default_factory=bytearray)
    finish: str = ""
    row: int = -1  # its logits' row in the batch being decoded
    decoded: int = 0  # tokens sampled or forced, those taken back included
    sampled: int = 0  # tokens sampled (not forced), those taken back included


class LlamaCppBackend(Backend):
    name = "llamacpp"

    def __init__(
        self,
        model: str | None = None,
        adapter_dir: Path | None = None,
        threads: int | None = None,
    ) -> None:
        self.ll = ll = llama_c.load()
        self.model_arg, self.adapter_dir = model, adapter_dir
        path = Path(model).expanduser() if model else model_files.default_gguf()
        if path.suffix != ".gguf":
            raise FileNotFoundError(
                f"--model {path}: the llamacpp backend reads a .gguf file; for a Hugging Face "
                "model folder use --backend hf"
            )
        if not path.is_file():
            raise FileNotFoundError(
                f"--model {path}: no such .gguf file (models load offline; download one first)"
            )
        self.model_id = model_files.DEFAULT_MODEL_ID if not model else path.name
        params = ll.llama_model_default_params()
        self.model = ll.llama_model_load_from_file(str(path).encode(), params)
        if not self.model:
            raise ValueError(
                f"llama.cpp cannot load {path}: not a GGUF model file this llama.cpp reads "
                "(a truncated download, or an architecture newer than the llama.cpp in "
                f"xllamacpp {llama_c.XLLAMACPP_VERSION}); try --backend hf, which reads GGUF "
                "through transformers"
            )
        self.vocab = ll.llama_model_get_vocab(self.model)
        self.n_vocab = ll.llama_vocab_n_tokens(self.vocab)
        self.n_embd = ll.llama_model_n_embd(self.model)
        self.max_context = int(ll.llama_model_n_ctx_train(self.model)) or 2048
        ctx_params = ll.llama_context_default_params()
        ctx_params.n_ctx = CONTEXT_TOKENS
        ctx_params.n_batch = max(512, MAX_PARALLEL * 64)
        ctx_params.n_ubatch = 512
        ctx_params.n_seq_max = MAX_PARALLEL
        ctx_params.kv_unified = True  # the n sequences share the prompt's cache cells
        ctx_params.n_threads = ctx_params.n_threads_batch = threads or default_threads()
        self.ctx = ll.llama_init_from_model(self.model, ctx_params)
        if not self.ctx:
            raise BackendError(f"llama.cpp could not make a context for {path}")
        self.memory = ll.llama_get_memory(self.ctx)
        self.pieces = [self._piece(t) for t in range(self.n_vocab)]
        self.add_bos = bool(ll.llama_vocab_get_add_bos(self.vocab))
        self.store = prompt_tuning.AdapterStore(adapter_dir)
        self._lltokenizer = None
        self._tuner: Backend | None = None
        self._lock = threading.Lock()

    # ------------------------------------------------------------ text and tokens

    def _piece(self, token: int) -> bytes:
        buffer = ctypes.create_string_buffer(256)
        n = self.ll.llama_token_to_piece(self.vocab, token, buffer, 256, 0, False)
        return bytes(buffer[: max(n, 0)])

    def tokenize(self, text: str) -> list[int]:
        data = text.encode()
        room = len(data) + 16
        out = (llama_c.llama_token * room)()
        n = self.ll.llama_tokenize(self.vocab, data, len(data), out, room, self.add_bos, True)
        if n < 0:
            raise InvalidRequest(f"the prompt does not tokenize ({n})")
        return list(out[:n])

    def lltokenizer(self):  # type: ignore[no-untyped-def]
        """llguidance's view of this vocabulary, built once (about a second)."""
        if self._lltokenizer is None:
            self._lltokenizer = llama_c.lltokenizer(self.ll, self.vocab)
        return self._lltokenizer

    # ------------------------------------------------------------ the service's view

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
        soft = self._soft_prompt(adapter_id)
        ids = self.tokenize(prompt)
        virtual = 0 if soft is None else soft.shape[0]
        if len(ids) + virtual + sampling.max_new_tokens > self.max_context:
            raise InvalidRequest(
                f"prompt ({len(ids)} tokens) + max_new_tokens ({sampling.max_new_tokens}) "
                f"exceed the model's {self.max_context} tokens"
            )
        compiled = grammar.Compiled.of(sampling.grammar) if sampling.grammar else None
        if compiled is not None:
            self.lltokenizer()  # built outside the timed part once
        out: list[Completion] = []
        with self._lock:
            started = time.perf_counter()
            per_round = max(1, min(MAX_PARALLEL, CONTEXT_TOKENS // sampling.max_new_tokens - 1))
            for first in range(0, n, per_round):
                count = min(per_round, n - first)
                seqs = [self._sequence(first + k, sampling, compiled) for k in range(count)]
                self._draw(ids, soft, seqs, sampling, cancelled)
                latency = time.perf_counter() - started
                out += [self._completion(s, len(ids), latency, sampling) for s in seqs]
        return out

    def _soft_prompt(self, adapter_id: str) -> np.ndarray | None:
        if not adapter_id:
            return None
        soft = self.store.embeddings(adapter_id).detach().float().numpy()
        if soft.shape[1] != self.n_embd:
            raise InvalidRequest(
                f"soft prompt {adapter_id} has {soft.shape[1]} dimensions; this model's "
                f"embeddings have {self.n_embd} (it was trained on another model)"
            )
        return np.ascontiguousarray(soft, dtype=np.float32)

    def _sequence(
        self, index: int, sampling: Sampling, compiled: grammar.Compiled | None
    ) -> _Sequence:
        seed = None if sampling.seed is None else sampling.seed + index
        constraint = None
        if compiled is not None:
            try:
                tokenizer = self.lltokenizer()
                constraint = grammar.Constraint(
                    compiled,
                    tokenizer,
                    check_statements=True,
                    budget=sampling.max_new_tokens,
                    decode_budget=REWIND_BUDGET * sampling.max_new_tokens,
                    is_copy=sampling.novelty.copies if sampling.novelty else None,
                )
            except grammar.GrammarError as e:
                raise InvalidRequest(str(e)) from e
        return _Sequence(index, np.random.default_rng(seed), constraint)

    # ------------------------------------------------------------ decoding

    def _decode(self, batch: llama_c.LlamaBatch) -> None:
        code = self.ll.llama_decode(self.ctx, batch)
        if code != 0:
            raise BackendError(f"llama_decode failed ({code}): the KV cache is full or the "
                               "input is malformed")  # fmt: skip

    def _draw(
        self,
        ids: list[int],
        soft: np.ndarray | None,
        seqs: list[_Sequence],
        sampling: Sampling,
        cancelled: Callable[[], bool] | None,
    ) -> None:
        """Prompt once, then all sequences a token (or a forced run of tokens) per step."""
        ll = self.ll
        ll.llama_memory_clear(self.memory, True)
        pos = 0
        if soft is not None:
            batch = ll.llama_batch_init(soft.shape[0], self.n_embd, 1)
            try:
                ctypes.memmove(batch.embd, soft.ctypes.data, soft.nbytes)
                for i in range(soft.shape[0]):
                    self._set(batch, i, None, i, 0, False)
                batch.n_tokens = soft.shape[0]
                self._decode(batch)
            finally:
                ll.llama_batch_free(batch)
            pos = soft.shape[0]
        for start in range(0, len(ids), 512):
            chunk = ids[start : start + 512]
            batch = ll.llama_batch_init(len(chunk), 0, 1)
            try:
                for i, token in enumerate(chunk):
                    last = start + i == len(ids) - 1
                    self._set(batch, i, token, pos + start + i, 0, last)
                batch.n_tokens = len(chunk)
                self._decode(batch)
            finally:
                ll.llama_batch_free(batch)
        pos += len(ids)
        for k in range(1, len(seqs)):
            ll.llama_memory_seq_cp(self.memory, 0, k, -1, -1)
        prompt_logits = self._logits(-1)
        logits: dict[int, np.ndarray] = {k: prompt_logits for k in range(len(seqs))}
        batch = ll.llama_batch_init(len(seqs) * 64, 0, len(seqs))
        try:
            while True:
                if cancelled is not None and cancelled():
                    for s in seqs:
                        s.finish = s.finish or "cancelled"
                active = [k for k, s in enumerate(seqs) if not s.finish]
                if not active:
                    return
                n = 0
                for k in active:
                    s = seqs[k]
                    cached = len(s.tokens)  # the sequence's tokens in the KV cache
                    self._next_tokens(s, logits[k], sampling)
                    if s.finish:
                        continue
                    if len(s.tokens) <= cached:  # a statement was taken back
                        # Keep the cache up to the last kept token's position; that token
                        # is decoded again below for the logits after it.
                        first = max(len(s.tokens) - 1, 0)
                        ll.llama_memory_seq_rm(self.memory, k, pos + first, -1)
                        if not s.tokens:  # back to the prompt itself
                            logits[k] = prompt_logits
                            continue
                        cached = first
                    for i in range(cached, min(len(s.tokens), cached + 64)):
                        self._set(batch, n, s.tokens[i], pos + i, k, i == len(s.tokens) - 1)
                        s.row = n
                        n += 1
                if n == 0:
                    continue
                batch.n_tokens = n
                self._decode(batch)
                fresh = [k for k in active if not seqs[k].finish and seqs[k].row >= 0]
                logits.update({k: self._logits(seqs[k].row) for k in fresh})
                for k in fresh:
                    seqs[k].row = -1
        finally:
            ll.llama_batch_free(batch)

    def _set(
        self, batch: llama_c.LlamaBatch, i: int, token: int | None, pos: int, seq: int, logits: bool
    ) -> None:
        if token is not None:
            batch.token[i] = token
        batch.pos[i] = pos
        batch.n_seq_id[i] = 1
        batch.seq_id[i][0] = seq
        batch.logits[i] = logits

    def _logits(self, row: int) -> np.ndarray:
        pointer = self.ll.llama_get_logits_ith(self.ctx, row)
        return np.ctypeslib.as_array(pointer, shape=(self.n_vocab,)).copy()

    def _next_tokens(self, s: _Sequence, logits: np.ndarray, sampling: Sampling) -> None:
        """Append the sequence's next token(s) to `s.tokens`, or set `s.finish` when it has
        ended. A statement its constraint takes back shortens `s.tokens` instead."""
        c = s.constraint
        # At most 64 forced tokens a step (the batch's room); the rest come next step.
        new = c.forced()[:64] if c is not None else []
        drawn = not new
        if drawn:
            allowed = c.allowed() if c is not None else None
            if allowed is not None and not allowed.any():
                s.finish = "eos_token"  # the grammar is complete
                return
            temperature = sampling.temperature
            if c is not None and c.hotter:  # not the same failing statement, or copy, again
                temperature = max(temperature, RETRY_TEMPERATURE)
            new = [sample(logits, allowed, temperature, sampling.top_p, s.rng)]
        for token in new:
            if self.ll.llama_vocab_is_eog(self.vocab, token):
                s.finish = "eos_token"
                return
            s.decoded += 1
            s.sampled += drawn
            s.tokens.append(token)
            s.text += self.pieces[token]
            if c is not None:
                c.consume(token, sampled=drawn)
                if c.error:
                    s.finish = "grammar_error"
                    return
                if rewind := c.take_rewind():
                    del s.tokens[-rewind:]
                    s.text = bytearray(b"".join(self.pieces[t] for t in s.tokens))
                    if s.sampled >= REWIND_BUDGET * sampling.max_new_tokens and not c.rewriting:
                        s.finish = "length"
                    return
                if c.done:
                    s.finish = "eos_token"
                    return
            if _stopped(s.text, sampling.stop):
                s.finish = "stop_sequence"
                return
            if len(s.tokens) >= sampling.max_new_tokens:
                s.finish = "length"
                return

    def _completion(
        self, s: _Sequence, prompt_tokens: int, latency: float, sampling: Sampling
    ) -> Completion:
        text = s.text.decode("utf-8", errors="replace")
        for stop in sampling.stop:
            if stop and stop in text:
                text = text[: text.index(stop)]
        reason = s.finish if s.finish in ("length", "stop_sequence", "eos_token") else "length"
        retried = len(s.constraint.rejected) if s.constraint is not None else 0
        return Completion(text, prompt_tokens, s.decoded, latency, reason, retried)

    def train_soft_prompt(self, examples: list[str], settings: TuneSettings) -> TuneResult:
        """Trained by transformers on the same weights, loaded on first use (about 1 s from
        its cache; the first conversion of a GGUF file takes about 40 s)."""
        if self._tuner is None:
            from services.proposer.backends.hf import HFBackend

            self._tuner = HFBackend(self.model_arg, adapter_dir=self.adapter_dir)
        result = self._tuner.train_soft_prompt(examples, settings)
        self.store = prompt_tuning.AdapterStore(self.adapter_dir)  # sees the new adapter
        return result

    def close(self) -> None:
        if self._tuner is not None:
            self._tuner.close()
        if getattr(self, "ctx", None):
            self.ll.llama_free(self.ctx)
            self.ctx = None
        if getattr(self, "model", None):
            self.ll.llama_model_free(self.model)
            self.model = None


def _stopped(text: bytearray, stops: tuple[str, ...]) -> bool:
    tail = bytes(text[-256:])
    return any(stop and stop.encode() in tail for stop in stops)


def sample(
    logits: np.ndarray,
    allowed: np.ndarray | None,
    temperature: float,
    top_p: float,
    rng: np.random.Generator,
) -> int:
    """One token: the masked logits, tempered, cut to the top-p nucleus, drawn."""
    if allowed is not None:
        logits = np.where(allowed[: len(logits)], logits, -np.inf)
    if temperature <= 0:
        return int(np.argmax(logits))
    z = logits / temperature
    # Tokens a millionth as likely as the best cannot matter to a nucleus or a draw.
    candidates = np.flatnonzero(z > z.max() - 14.0)
    weights = np.exp(z[candidates] - z[candidates].max())
    weights /= weights.sum()
    if 0 < top_p < 1:
        order = np.argsort(-weights)
        cut = int(np.searchsorted(np.cumsum(weights[order]), top_p)) + 1
        candidates, weights = candidates[order[:cut]], weights[order[:cut]]
        weights /= weights.sum()
    return int(candidates[rng.choice(len(candidates), p=weights)])
