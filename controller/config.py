"""A search's configuration: one YAML file, validated with messages that name the line.

Every number of the paper's method is a field here with the paper's value as default
(../shared/PAPER.md). The validated config is stored with the search as JSON, so that
`evo search resume` runs with exactly what `evo search start` was given.
"""

import dataclasses
import difflib
import json
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from controller import population
from controller.population import FEW_SHOT_BUDGETS, METHODS, POPULATIONS, RETIRED_MEANINGS, TUNE_ON

# What the paper's prompts imply ends a sampled program: the next example's metrics.
PAPER_STOP = ['\n"""Metrics']
# Today's earlier choice, kept for small models (examples/demo.yaml): a new top-level
# definition also ends the program, since a small model rambles on with helpers.
SMALL_MODEL_STOP = ['\n"""Metrics', "\nclass ", "\ndef ", "\n```"]
SAMPLING = ("constrained", "free")


class ConfigError(ValueError):
    """A configuration the search cannot run with; the message names the place and the fix."""


@dataclass
class EvolutionConfig:
    """The paper's loop parameters (T, m, n, k, p, alpha) and its ambiguous rules.

    The rules themselves live in controller/population.py, unit-tested one by one."""

    rounds: int = 10
    prompts_per_round: int = 10
    samples_per_prompt: int = 16
    parents_per_prompt: int = 2
    population_size: int = 10
    alpha: float = 0.5
    temperatures: list[float] = field(default_factory=lambda: [0.2, 0.6, 0.8, 1.0])
    # Who the history G holds: "paper" (Algorithm 1: children only, so the seeds are
    # parents in round 1 only and never the result) or "seeds-stay" (the seeds compete
    # with the children for the top p for the whole search).
    population: str = "paper"
    # The paper's text: a model once chosen as a parent leaves the pool for later rounds.
    retire_parents: bool = False
    # Which models retire: "selected" (the paper's words: chosen by GETTOP) or "shown"
    # (shown as a parent in an earlier prompt).
    retired_means: str = "selected"
    # The naive few-shot baseline's budget (T x m x n samples in one round):
    # "more-samples" (the paper: m prompts of T x n samples) or "more-prompts" (T x m of n).
    few_shot_budget: str = "more-samples"
    # Soft prompt-tuning data: "not-selected" (Algorithm 1) or "all" (the figure caption).
    tune_on: str = "not-selected"
    # The `mutation` baseline: regularised evolution's tournament size.
    tournament_size: int = 3
    # The task's seed programs to start from, by name; empty: all of them (the paper).
    seeds: list[str] = field(default_factory=list)


@dataclass
class TrainingConfig:
    """The budget and limits every candidate (seeds included) is trained with."""

    steps: int = 8000
    seed: int = 0
    # 0: the task's default (about 20 validation checkpoints per run).
    eval_every: int = 0
    wall_seconds: float = 600.0
    # 0: the trainer's own limit.
    memory_mb: int = 0
    max_params: int = 0


@dataclass
class ProposerConfig:
    """Decoding. Defaults are the paper's: mixed temperature only (no top_p cut), the
    prompt is the parents and the target (no header), a program ends at the next metrics
    docstring. examples/demo.yaml keeps the choices that serve a small model."""

    max_new_tokens: int = 512
    # 1.0: no nucleus cut (the paper names none); 0.95 helps a small model.
    top_p: float = 1.0
    stop: list[str] = field(default_factory=lambda: list(PAPER_STOP))
    # Show the task's natural-language header (what the inputs are, imports) before the
    # parents. The paper's prompt has none.
    prompt_header: bool = False
    # "constrained": children are sampled under the task's grammar (what the embedded
    # model needs to write code that runs); "free": the paper's unconstrained sampling.
    sampling: str = "constrained"
    # A child that copies a parent or an earlier candidate is sampled again this many
    # times before it is recorded as a duplicate (controller/sampling.py); 0: never.
    novelty_resamples: int = 2
    # The grammar, pinned from the task at `evo search start` and stored with the search
    # so that it reproduces; left empty in a config file (or set to pin another one).
    grammar_version: str = ""
    grammar: str = ""


@dataclass
class TuningConfig:
    """Soft prompt-tuning between rounds (Lester et al. 2021), the paper's settings."""

    enabled: bool = True
    num_virtual_tokens: int = 16
    epochs: int = 5
    batch_size: int = 16
    learning_rate: float = 0.1


@dataclass
class ServicesConfig:
    """Where the services are; empty means $EVO_<SERVICE>_ADDRESS, else the local default."""

    lineage: str = ""
    proposer: str = ""
    # Several addresses spread evaluations over several trainers.
    trainers: list[str] = field(default_factory=list)
    # Evaluations in flight at once; 0: the trainers' total slots.
    max_in_flight: int = 0
    # Attempts per call before the candidate is recorded as failed.
    attempts: int = 4
    # Deadline of one Generate call (a CPU model is slow); evaluations get the
    # training wall time plus a margin.
    generate_timeout_seconds: float = 1800.0
    tuning_timeout_seconds: float = 3600.0


@dataclass
class SearchConfig:
    name: str = "search"
    task: str = "mnist1d"
    method: str = "evoprompting"
    seed: int = 0
    evolution: EvolutionConfig = field(default_factory=EvolutionConfig)
    training: TrainingConfig = field(default_factory=TrainingConfig)
    proposer: ProposerConfig = field(default_factory=ProposerConfig)
    tuning: TuningConfig = field(default_factory=TuningConfig)
    services: ServicesConfig = field(default_factory=ServicesConfig)

    def to_json(self) -> str:
        return json.dumps(dataclasses.asdict(self), sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> "SearchConfig":
        """The stored config. One stored before the paper's population and decoding were
        keys (no `evolution.population`) ran with the earlier choices, so it resumes with
        them rather than switching rules halfway."""
        stored = json.loads(text)
        evolution = stored.get("evolution") if isinstance(stored, dict) else None
        if isinstance(evolution, dict) and "population" not in evolution:
            evolution.update(population="seeds-stay", retired_means="shown")
            evolution.setdefault("few_shot_budget", "more-prompts")
            proposer = stored.setdefault("proposer", {})
            if isinstance(proposer, dict):
                proposer.setdefault("top_p", 0.95)
                proposer.setdefault("stop", list(SMALL_MODEL_STOP))
                proposer.setdefault("prompt_header", True)
        return _build(cls, stored, "config")

    @property
    def uses_language_model(self) -> bool:
        return self.method != "mutation"

    @property
    def tunes(self) -> bool:
        return population.plan(self.rules).tune

    @property
    def rules(self) -> population.Rules:
        """The slice of this config that Algorithm 1's rules read."""
        e = self.evolution
        return population.Rules(
            method=self.method,
            rounds=e.rounds,
            prompts_per_round=e.prompts_per_round,
            samples_per_prompt=e.samples_per_prompt,
            parents_per_prompt=e.parents_per_prompt,
            population_size=e.population_size,
            alpha=e.alpha,
            population=e.population,
            retire_parents=e.retire_parents,
            retired_means=e.retired_means,
            tune_on=e.tune_on,
            few_shot_budget=e.few_shot_budget,
            tuning_enabled=self.tuning.enabled,
        )


def load(path: Path) -> SearchConfig:
    """Read and validate a YAML search config."""
    try:
        text = path.read_text()
    except OSError as e:
        raise ConfigError(f"cannot read {path}: {e.strerror}") from None
    return parse(text, str(path))


def parse(text: str, source: str = "<config>") -> SearchConfig:
    try:
        node = yaml.compose(text, Loader=yaml.SafeLoader)
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f"{source}:{mark.line + 1}" if mark else source
        raise ConfigError(f"{where}: not valid YAML: {getattr(e, 'problem', e)}") from None
    if node is None:
        return SearchConfig()
    return _build(SearchConfig, _Located(node, source), "")


class _Located:
    """A YAML node with its file, so that errors can name the line."""

    def __init__(self, node: yaml.Node, source: str) -> None:
        self.node = node
        self.source = source

    def where(self) -> str:
        return f"{self.source}:{self.node.start_mark.line + 1}"


def _fail(value: Any, path: str, message: str) -> typing.NoReturn:
    where = value.where() + ": " if isinstance(value, _Located) else ""
    raise ConfigError(f"{where}{path or 'the config'}: {message}")


def _build(cls: type, value: Any, path: str) -> Any:
    """A dataclass from a YAML mapping node (or a plain dict from stored JSON)."""
    if isinstance(value, _Located):
        if not isinstance(value.node, yaml.MappingNode):
            _fail(value, path, "expected a mapping of keys to values")
        items = [
            (key.value, _Located(val, value.source), _Located(key, value.source))
            for key, val in value.node.value
        ]
    elif isinstance(value, dict):
        items = [(k, v, None) for k, v in value.items()]
    else:
        _fail(value, path, "expected a mapping of keys to values")
    hints = typing.get_type_hints(cls)
    known = [f.name for f in dataclasses.fields(cls)]
    given: dict[str, Any] = {}
    for key, val, key_node in items:
        where = f"{path}.{key}" if path else str(key)
        if key not in known:
            close = difflib.get_close_matches(str(key), known, n=1)
            hint = f"; did you mean {close[0]!r}?" if close else f"; known keys: {', '.join(known)}"
            _fail(key_node or value, where, f"unknown key{hint}")
        if key in given:
            _fail(key_node or value, where, "given twice")
        given[key] = _convert(hints[key], val, where)
    built = cls(**given)
    _check(built, value, path)
    return built


def _convert(hint: Any, value: Any, path: str) -> Any:
    if dataclasses.is_dataclass(hint):
        return _build(hint, value, path)  # type: ignore[arg-type]
    origin = typing.get_origin(hint)
    if origin is list:
        (item,) = typing.get_args(hint)
        if isinstance(value, _Located):
            if not isinstance(value.node, yaml.SequenceNode):
                _fail(value, path, f"expected a list of {item.__name__}")
            elements: list[Any] = [_Located(n, value.source) for n in value.node.value]
        elif isinstance(value, list):
            elements = value
        else:
            _fail(value, path, f"expected a list of {item.__name__}")
        return [_convert(item, e, f"{path}[{i}]") for i, e in enumerate(elements)]
    if isinstance(value, _Located) and not isinstance(value.node, yaml.ScalarNode):
        _fail(value, path, f"expected {_name(hint)}, got a {_kind(value.node)}")
    raw = _typed_scalar(value)
    if hint is bool:
        if isinstance(raw, bool):
            return raw
    elif hint is int:
        if isinstance(raw, int) and not isinstance(raw, bool):
            return raw
    elif hint is float:
        if isinstance(raw, int | float) and not isinstance(raw, bool):
            return float(raw)
    elif hint is str:
        if isinstance(raw, str):
            return raw
    elif isinstance(hint, types.UnionType):
        return raw
    _fail(value, path, f"expected {_name(hint)}, got {raw!r}")


def _typed_scalar(value: Any) -> Any:
    if not isinstance(value, _Located):
        return value
    return yaml.safe_load(yaml.serialize(value.node))


def _name(hint: Any) -> str:
    return {bool: "true or false", int: "an integer", float: "a number", str: "a string"}.get(
        hint, str(hint)
    )


def _kind(node: yaml.Node) -> str:
    return "list" if isinstance(node, yaml.SequenceNode) else "mapping"


def _check(built: Any, value: Any, path: str) -> None:
    """Range checks, each naming the key and what it must be."""

    def need(ok: bool, key: str, message: str) -> None:
        if not ok:
            located = value
            if isinstance(value, _Located):
                for k, v in value.node.value:
                    if k.value == key:
                        located = _Located(v, value.source)
            _fail(located, f"{path}.{key}" if path else key, message)

    if isinstance(built, SearchConfig):
        need(built.method in METHODS, "method", f"must be one of {', '.join(METHODS)}")
        need(bool(built.task), "task", "must name a task, for example mnist1d")
    elif isinstance(built, EvolutionConfig):
        for key in ("rounds", "prompts_per_round", "samples_per_prompt", "parents_per_prompt"):
            need(getattr(built, key) >= 1, key, "must be at least 1")
        need(built.population_size >= 1, "population_size", "must be at least 1")
        need(0 < built.alpha <= 1, "alpha", "must be in (0, 1]: an error threshold")
        need(
            bool(built.temperatures) and all(t >= 0 for t in built.temperatures),
            "temperatures",
            "must be a non-empty list of temperatures >= 0",
        )
        need(built.tune_on in TUNE_ON, "tune_on", f"must be one of {', '.join(TUNE_ON)}")
        need(
            built.population in POPULATIONS,
            "population",
            f"must be one of {', '.join(POPULATIONS)}",
        )
        need(
            built.retired_means in RETIRED_MEANINGS,
            "retired_means",
            f"must be one of {', '.join(RETIRED_MEANINGS)}",
        )
        need(
            built.few_shot_budget in FEW_SHOT_BUDGETS,
            "few_shot_budget",
            f"must be one of {', '.join(FEW_SHOT_BUDGETS)}",
        )
        need(built.tournament_size >= 1, "tournament_size", "must be at least 1")
    elif isinstance(built, TrainingConfig):
        need(built.steps >= 1, "steps", "must be at least 1")
        need(built.wall_seconds > 0, "wall_seconds", "must be positive")
        for key in ("eval_every", "memory_mb", "max_params", "seed"):
            need(getattr(built, key) >= 0, key, "must be 0 or more")
    elif isinstance(built, ProposerConfig):
        need(built.max_new_tokens >= 1, "max_new_tokens", "must be at least 1")
        need(0 < built.top_p <= 1, "top_p", "must be in (0, 1]")
        need(built.sampling in SAMPLING, "sampling", f"must be one of {', '.join(SAMPLING)}")
        need(built.novelty_resamples >= 0, "novelty_resamples", "must be 0 or more")
    elif isinstance(built, TuningConfig):
        for key in ("num_virtual_tokens", "epochs", "batch_size"):
            need(getattr(built, key) >= 1, key, "must be at least 1")
        need(built.learning_rate > 0, "learning_rate", "must be positive")
    elif isinstance(built, ServicesConfig):
        need(built.attempts >= 1, "attempts", "must be at least 1")
        need(built.max_in_flight >= 0, "max_in_flight", "must be 0 (automatic) or more")
