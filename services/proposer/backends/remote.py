"""What the HTTP backends share: an event loop on a thread, retries with backoff.

The gRPC server calls backends from its worker threads; HTTP backends are asyncio code
(aiohttp, the `text-generation` AsyncClient). One loop on one daemon thread runs every
request, so the n samples of a call, and the calls of concurrent clients, are all in flight
at once and the model server batches them.
"""

import asyncio
import random
import threading
from collections.abc import Awaitable, Callable, Coroutine
from dataclasses import dataclass
from typing import Any, TypeVar

from services.proposer.backends.base import Completion, Sampling, TimedOut

T = TypeVar("T")


class LoopThread:
    """An asyncio loop running forever on a daemon thread."""

    def __init__(self, name: str) -> None:
        self.loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self.loop.run_forever, name=name, daemon=True)
        self._thread.start()

    def run(self, coro: Coroutine[Any, Any, T]) -> T:
        """Run `coro` on the loop and wait for its result in the calling thread."""
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result()

    def close(self) -> None:
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join(timeout=5)


@dataclass(frozen=True)
class RetryPolicy:
    """Exponential backoff with full jitter: the n requests of a call do not retry in step."""

    attempts: int = 5
    base_seconds: float = 0.5
    max_seconds: float = 8.0

    def delay(self, attempt: int) -> float:
        return random.uniform(0, min(self.max_seconds, self.base_seconds * 2**attempt))


class Retryable(Exception):
    """Raised by a request function for a failure worth retrying (overload, connection)."""

    def __init__(self, kind: type[Exception], message: str) -> None:
        super().__init__(message)
        self.kind = kind


async def with_retries(
    request: Callable[[], Awaitable[T]], policy: RetryPolicy, timeout: float, what: str
) -> T:
    """Run `request` with a per-attempt timeout; retry `Retryable` failures with backoff.

    Overload and unreachable servers are retried; after the last attempt they raise
    `Overloaded` / `Unavailable`. A timeout is not retried (a slow generation would only
    time out again) and raises `TimedOut`.
    """
    last: Retryable | None = None
    for attempt in range(policy.attempts):
        if attempt:
            await asyncio.sleep(policy.delay(attempt - 1))
        try:
            return await asyncio.wait_for(request(), timeout)
        except TimeoutError as e:
            raise TimedOut(f"{what}: no answer within {timeout:g} s") from e
        except Retryable as e:
            last = e
    assert last is not None
    raise last.kind(f"{what}: {last} (after {policy.attempts} attempts)")


async def sample_each(
    one: Callable[[str, Sampling, int | None, str], Awaitable[Completion]],
    prompt: str,
    n: int,
    sampling: Sampling,
    adapter_id: str,
) -> list[Completion]:
    """n single-sample requests in flight at once; sample i is seeded with seed + i."""
    seeds = [None if sampling.seed is None else sampling.seed + i for i in range(n)]
    return list(await asyncio.gather(*(one(prompt, sampling, s, adapter_id) for s in seeds)))
