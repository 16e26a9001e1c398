"""An OpenAI-compatible completions server (vLLM, TGI's /v1, llama.cpp, OpenAI) over HTTP.

POST /v1/completions, one request per sample (n=1), all in flight at once: per-sample token
counts come from each response's `usage`, and seeds are seed, seed+1, ... as for TGI. A
LoRA adapter is chosen by naming it as the `model` (vLLM's `--lora-modules`); the adapters
the server lists under /v1/models (entries with a `parent`) or that --adapter names are
accepted. Errors may be `{"error": {...}}` (OpenAI, recent vLLM) or flat (older vLLM).

A grammar goes to the server whole (no two phases: the server samples the whole program
under `start`): vLLM takes Lark as `structured_outputs={"grammar": ...}` (the older
`guided_grammar` is gone); llama.cpp's server, built with llguidance (as xllamacpp's
wheels are), takes it as `grammar` behind a `%llguidance {}` line. OpenAI itself takes none.
"""

import os
import time
from collections.abc import Callable
from typing import Any

import aiohttp

from services.proposer.backends.base import (
    Backend,
    BackendError,
    Capabilities,
    Completion,
    Info,
    InvalidRequest,
    Overloaded,
    Sampling,
    Unavailable,
    UnknownAdapter,
)
from services.proposer.backends.remote import (
    LoopThread,
    Retryable,
    RetryPolicy,
    sample_each,
    with_retries,
)

GRAMMAR_VIA = ("vllm", "llama.cpp", "none")


def grammar_fields(grammar: str, via: str) -> dict[str, Any]:
    """The request fields that carry `grammar` to a server of kind `via`."""
    if not grammar or via == "none":
        return {}
    if via == "vllm":
        return {"structured_outputs": {"grammar": grammar}}
    return {"grammar": "%llguidance {}\n" + grammar}


def _message(payload: Any, fallback: str) -> str:
    if isinstance(payload, dict):
        error = payload.get("error", payload)
        if isinstance(error, dict) and error.get("message"):
            return str(error["message"])
        if isinstance(error, str):
            return error
    return fallback


class OpenAIBackend(Backend):
    name = "openai"

    def __init__(
        self,
        url: str,
        model: str | None = None,
        adapters: list[str] | None = None,
        api_key: str | None = None,
        timeout: float = 120.0,
        retry: RetryPolicy | None = None,
        grammar_via: str = "vllm",
    ) -> None:
        if grammar_via not in GRAMMAR_VIA:
            raise ValueError(f"grammar_via must be one of {', '.join(GRAMMAR_VIA)}")
        self.grammar_via = grammar_via
        self.url = url.rstrip("/").removesuffix("/v1")
        self.model = model
        self.adapters = list(adapters or [])
        key = api_key if api_key is not None else os.environ.get("OPENAI_API_KEY", "")
        self.headers = {"Authorization": f"Bearer {key}"} if key else {}
        self.timeout = timeout
        self.retry = retry or RetryPolicy()
        self._loop = LoopThread("openai-client")
        self._session: aiohttp.ClientSession | None = None
        self._info: Info | None = None

    async def _http(self) -> aiohttp.ClientSession:
        if self._session is None:  # created on the loop thread, reused for keep-alive
            self._session = aiohttp.ClientSession(
                headers=self.headers, timeout=aiohttp.ClientTimeout(self.timeout)
            )
        return self._session

    async def _call(self, method: str, path: str, body: Any = None) -> Any:
        """One HTTP exchange; overload and unreachable servers become `Retryable`."""
        session = await self._http()
        try:
            async with session.request(method, f"{self.url}{path}", json=body) as resp:
                try:
                    payload = await resp.json(content_type=None)
                except ValueError:
                    payload = None
                status = resp.status
        except aiohttp.ClientConnectionError as e:
            if isinstance(e, TimeoutError):
                raise
            raise Retryable(Unavailable, f"cannot reach it: {e}") from e
        if status == 200 and payload is not None:
            return payload
        message = _message(payload, f"HTTP {status}")
        if status == 429:
            raise Retryable(Overloaded, f"overloaded: {message}")
        if status in (502, 503, 504):
            raise Retryable(Unavailable, f"HTTP {status}: {message}")
        if status in (400, 404, 422):
            raise InvalidRequest(f"the server rejected the request (HTTP {status}): {message}")
        raise BackendError(f"{self.url}{path} answered HTTP {status}: {message}")

    def info(self) -> Info:
        if self._info is None:
            self._info = self._loop.run(self._fetch_info())
        return self._info

    async def _fetch_info(self) -> Info:
        what = f"the OpenAI-compatible server at {self.url}"
        listed = await with_retries(
            lambda: self._call("GET", "/v1/models"), self.retry, self.timeout, what
        )
        models = listed.get("data") or []
        bases = [m for m in models if not m.get("parent")]
        if self.model is None:
            if not bases:
                raise BackendError(f"{what} lists no models; name one with --model")
            self.model = str(bases[0]["id"])
        served = [str(m["id"]) for m in models if m.get("parent")]
        self.adapters = sorted(set(self.adapters) | set(served))
        context = next((m.get("max_model_len") for m in bases if m["id"] == self.model), 0)
        return Info(
            backend=self.name,
            model_id=self.model,
            capabilities=Capabilities(
                prompt_tuning=False,
                adapters=True,
                batched_sampling=True,
                max_context_tokens=int(context or 0),
                grammar="" if self.grammar_via == "none" else "server",
            ),
            adapter_ids=list(self.adapters),
        )

    def generate(
        self,
        prompt: str,
        n: int,
        sampling: Sampling,
        adapter_id: str = "",
        cancelled: Callable[[], bool] | None = None,
    ) -> list[Completion]:
        self.info()  # the model name and the adapters it serves
        if adapter_id and adapter_id not in self.adapters:
            raise UnknownAdapter(
                f"adapter {adapter_id!r} is not served at {self.url} "
                f"(known: {', '.join(self.adapters) or 'none'})"
            )
        return self._loop.run(sample_each(self._one, prompt, n, sampling, adapter_id))

    async def _one(
        self, prompt: str, sampling: Sampling, seed: int | None, adapter_id: str
    ) -> Completion:
        body: dict[str, Any] = {
            "model": adapter_id or self.model,
            "prompt": prompt,
            "n": 1,
            "max_tokens": sampling.max_new_tokens,
            "temperature": max(0.0, sampling.temperature),
            "top_p": sampling.top_p if 0 < sampling.top_p <= 1 else 1.0,
        }
        if sampling.stop:
            body["stop"] = list(sampling.stop)
        if seed is not None:
            body["seed"] = seed
        body.update(grammar_fields(sampling.grammar, self.grammar_via))
        started = time.perf_counter()
        payload = await with_retries(
            lambda: self._call("POST", "/v1/completions", body),
            self.retry,
            self.timeout,
            f"the OpenAI-compatible server at {self.url}",
        )
        try:
            choice = payload["choices"][0]
            usage = payload["usage"]
            return Completion(
                text=str(choice["text"]),
                prompt_tokens=int(usage["prompt_tokens"]),
                completion_tokens=int(usage["completion_tokens"]),
                latency_seconds=time.perf_counter() - started,
                finish_reason=_finish_reason(choice),
            )
        except (KeyError, IndexError, TypeError, ValueError) as e:
            raise BackendError(f"{self.url} sent a malformed completion: {e!r}") from e

    def close(self) -> None:
        if self._session is not None:
            self._loop.run(self._session.close())
        self._loop.close()


def _finish_reason(choice: dict[str, Any]) -> str:
    """OpenAI says 'stop' for both; vLLM's `stop_reason` names the stop string, if any."""
    if choice.get("finish_reason") == "length":
        return "length"
    return "stop_sequence" if isinstance(choice.get("stop_reason"), str) else "eos_token"
