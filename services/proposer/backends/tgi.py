"""A Text Generation Inference server through the `text-generation` AsyncClient.

One HTTP request per sample, all in flight at once: TGI batches them continuously on its
GPUs. The samples of a seeded call use seeds seed, seed+1, ...: the same seed on identical
requests would give identical samples. TGI serves LoRA adapters loaded at its start
(`--lora-adapters`), chosen per request by `parameters.adapter_id`; the Python client does
not expose that field, so `AdapterClient` adds it. TGI has no soft prompts.

Grammars: TGI takes JSON schemas and regular expressions only. The task grammars are
recursive (nested brackets), which no regular expression can express, so a constrained
request samples free and says so (a warning here; the controller warns at search start).
"""

import logging
import time
from collections.abc import Callable

import aiohttp
import pydantic
from text_generation import AsyncClient
from text_generation import errors as tgi_errors
from text_generation.types import Parameters, Request, Response

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

log = logging.getLogger(__name__)


class AdapterClient(AsyncClient):
    """`AsyncClient.generate`, plus `adapter_id` passed through to TGI's parameters."""

    async def generate(  # type: ignore[override]
        self, prompt: str, *, adapter_id: str | None = None, **kwargs
    ) -> Response:
        if not adapter_id:
            return await super().generate(prompt, **kwargs)
        # The same request the client builds (and validates), with one more field.
        stop = kwargs.pop("stop_sequences", None) or []
        parameters = Parameters(details=True, stop=stop, **kwargs)
        body = Request(inputs=prompt, stream=False, parameters=parameters).model_dump()
        body["parameters"]["adapter_id"] = adapter_id
        async with (
            aiohttp.ClientSession(
                headers=self.headers, cookies=self.cookies, timeout=self.timeout
            ) as session,
            session.post(self.base_url, json=body) as resp,
        ):
            payload = await resp.json()
            if resp.status != 200:
                raise tgi_errors.parse_error(resp.status, payload)
            return Response(**payload[0])


class TGIBackend(Backend):
    name = "tgi"

    def __init__(
        self,
        url: str,
        adapters: list[str] | None = None,
        timeout: float = 120.0,
        retry: RetryPolicy | None = None,
    ) -> None:
        self.url = url.rstrip("/")
        self.adapters = list(adapters or [])
        self.timeout = timeout
        self.retry = retry or RetryPolicy()
        self.client = AdapterClient(self.url, timeout=int(max(1, timeout)) + 1)
        self._loop = LoopThread("tgi-client")
        self._info: Info | None = None
        self._warned = False

    def info(self) -> Info:
        if self._info is None:
            self._info = self._loop.run(self._fetch_info())
        return self._info

    async def _fetch_info(self) -> Info:
        async def get() -> dict:
            try:
                async with (
                    aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(self.timeout)) as s,
                    s.get(f"{self.url}/info") as resp,
                ):
                    if resp.status != 200:
                        raise Retryable(Unavailable, f"/info answered HTTP {resp.status}")
                    return await resp.json()
            except aiohttp.ClientConnectionError as e:
                raise Retryable(Unavailable, f"cannot connect: {e}") from e

        found = await with_retries(get, self.retry, self.timeout, f"TGI at {self.url}")
        return Info(
            backend=self.name,
            model_id=str(found.get("model_id", "")),
            capabilities=Capabilities(
                prompt_tuning=False,
                adapters=True,
                batched_sampling=True,
                max_context_tokens=int(found.get("max_total_tokens") or 0),
                grammar="regex-or-free",
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
        if adapter_id and adapter_id not in self.adapters:
            raise UnknownAdapter(
                f"adapter {adapter_id!r} is not among those the TGI server was started with "
                f"({', '.join(self.adapters) or 'none'}); pass it with --adapter"
            )
        if sampling.grammar and not self._warned:
            self._warned = True
            log.warning(
                "TGI takes regular expressions only and the task's grammar is recursive: "
                "sampling free (use vLLM through --backend openai for constrained sampling)"
            )
        return self._loop.run(sample_each(self._one, prompt, n, sampling, adapter_id))

    async def _one(
        self, prompt: str, sampling: Sampling, seed: int | None, adapter_id: str
    ) -> Completion:
        greedy = sampling.temperature <= 0
        kwargs = {
            "do_sample": not greedy,
            "max_new_tokens": sampling.max_new_tokens,
            "seed": seed,
            "stop_sequences": list(sampling.stop),
            "temperature": None if greedy else sampling.temperature,
            "top_p": sampling.top_p if 0 < sampling.top_p < 1 else None,
            # Prefill details give the prompt's token count.
            "decoder_input_details": True,
        }

        async def request() -> Response:
            try:
                return await self.client.generate(prompt, adapter_id=adapter_id, **kwargs)
            except (tgi_errors.OverloadedError, tgi_errors.RateLimitExceededError) as e:
                raise Retryable(Overloaded, f"overloaded: {e}") from e
            except (tgi_errors.ShardNotReadyError, aiohttp.ClientConnectionError) as e:
                if isinstance(e, TimeoutError):
                    raise
                raise Retryable(Unavailable, f"cannot reach it: {e}") from e
            except tgi_errors.ValidationError as e:
                raise InvalidRequest(f"TGI rejected the request: {e}") from e
            except (pydantic.ValidationError, aiohttp.ContentTypeError) as e:
                raise BackendError(f"TGI at {self.url} sent a malformed answer: {e}") from e
            except Exception as e:
                if isinstance(e, TimeoutError | Retryable | BackendError):
                    raise
                raise BackendError(f"TGI at {self.url}: {type(e).__name__}: {e}") from e

        started = time.perf_counter()
        response = await with_retries(request, self.retry, self.timeout, f"TGI at {self.url}")
        details = response.details
        return Completion(
            text=response.generated_text,
            prompt_tokens=len(details.prefill),
            completion_tokens=details.generated_tokens,
            latency_seconds=time.perf_counter() - started,
            finish_reason=details.finish_reason.value,
        )

    def close(self) -> None:
        self._loop.close()
