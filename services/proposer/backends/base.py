"""What every backend does: sample completions, describe itself, maybe train a soft prompt.

Backends speak plain Python types; the gRPC layer in `services.proposer.server` translates.
Errors are the exception classes below, so the server maps each to one gRPC status.
"""

from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import dataclass, field

from services.common import codehash


class BackendError(Exception):
    """A failure of the model server or model, not of the request."""


class InvalidRequest(BackendError):
    """The request cannot be served as asked (the model server rejected it, or too long)."""


class UnknownAdapter(BackendError):
    """The adapter id names no adapter this backend has."""


class Unsupported(BackendError):
    """The backend cannot do this at all (for example train a soft prompt)."""


class Overloaded(BackendError):
    """The model server stayed overloaded through every retry."""


class Unavailable(BackendError):
    """The model server could not be reached through every retry."""


class NoGrammar(BackendError):
    """Constrained sampling was asked of a backend that cannot apply a grammar."""


class TimedOut(BackendError):
    """A request ran past its per-request timeout."""


@dataclass(frozen=True)
class Novelty:
    """Programs a child must not copy: their normalised hashes (services/common/codehash),
    and the opening a completion continues, which makes a completion a program."""

    opening: str
    hashes: frozenset[str]

    def copies(self, completion: str) -> bool:
        """True when the program `completion` makes is one of the programs to avoid."""
        return codehash.normalized_hash(self.opening + completion) in self.hashes


@dataclass(frozen=True)
class Sampling:
    """Sampling settings; temperature 0 means greedy, top_p 1.0 means no nucleus cut."""

    temperature: float = 1.0
    top_p: float = 1.0
    max_new_tokens: int = 512
    stop: tuple[str, ...] = ()
    seed: int | None = None
    # A Lark grammar the completion must follow (services.proposer.grammar); empty: free.
    grammar: str = ""
    # Programs not to copy (used where statements are checked while sampling); None: any.
    novelty: Novelty | None = None


@dataclass(frozen=True)
class Completion:
    """One sample exactly as the model produced it."""

    text: str
    prompt_tokens: int
    completion_tokens: int
    latency_seconds: float
    # "length", "stop_sequence" or "eos_token" (TGI's names).
    finish_reason: str
    # Statements taken back and sampled again because they could not run (grammar.Constraint
    # with statement checks); their tokens are counted in completion_tokens.
    statements_retried: int = 0


@dataclass(frozen=True)
class Capabilities:
    prompt_tuning: bool
    adapters: bool
    batched_sampling: bool
    max_context_tokens: int
    # How a grammar is applied: "mask", "server", "regex-or-free"; empty: it cannot be.
    grammar: str = ""


@dataclass(frozen=True)
class Info:
    backend: str
    model_id: str
    capabilities: Capabilities
    adapter_ids: list[str] = field(default_factory=list)


@dataclass(frozen=True)
class TuneSettings:
    """Soft prompt-tuning settings; the defaults are the paper's."""

    num_virtual_tokens: int = 16
    epochs: int = 5
    batch_size: int = 16
    learning_rate: float = 0.1
    seed: int = 0
    init_adapter_id: str = ""


@dataclass(frozen=True)
class TuneResult:
    adapter_id: str
    epoch_losses: list[float]
    num_examples: int
    train_seconds: float

    @property
    def final_loss(self) -> float:
        return self.epoch_losses[-1] if self.epoch_losses else float("nan")


class Backend(ABC):
    """A language model that turns one prompt into several completions."""

    name: str

    @abstractmethod
    def generate(
        self,
        prompt: str,
        n: int,
        sampling: Sampling,
        adapter_id: str = "",
        cancelled: Callable[[], bool] | None = None,
    ) -> list[Completion]:
        """Sample `n` completions of `prompt`; `adapter_id` empty means the base model.

        `cancelled` says the caller has gone: a backend that generates itself stops early
        (the HTTP backends' calls end at their own deadlines)."""

    @abstractmethod
    def info(self) -> Info: ...

    def train_soft_prompt(self, examples: list[str], settings: TuneSettings) -> TuneResult:
        """Train a soft prompt; only backends that hold the model's weights can."""
        raise Unsupported(
            f"the {self.name} backend cannot train soft prompts (it serves a remote model "
            "without access to its embeddings); use the hf backend for prompt-tuning"
        )

    def close(self) -> None:  # noqa: B027 - optional hook, most backends hold nothing
        """Release connections or memory; the default holds none."""
