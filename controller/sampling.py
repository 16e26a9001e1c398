"""How a search asks the language model for children: under the task's grammar or free,
and again when a child is a copy.

Constrained sampling (`proposer.sampling: constrained`, the default) sends the task's
grammar with every Generate call, so a child can only be code the grammar allows: with
the embedded 135M model, free sampling gives mostly unparsable children. The grammar is
pinned into the config at `evo search start` (text and version, stored with the search),
so a resumed or repeated search samples under the same grammar even if the task's
grammar moves on. `free` is the paper's own setting.

Novelty: a child whose normalised code equals a parent's or an earlier candidate's is
recorded as a duplicate by the lineage store; its slot is sampled again, up to
`proposer.novelty_resamples` times. Every attempt is recorded (the duplicates too, with
their tokens), so the token accounting and the lineage keep all of them. Attempt a of slot
j is recorded as sample a * n + j. A search killed between attempts does not redo the
missing resamples when resumed (the slot's first attempt is recorded, so it counts as done).
"""

import random
from collections.abc import Callable

from evo.v1 import proposer_pb2, trainer_pb2

from controller.clients import Trainer, call_with_retries, trainer_targets
from controller.config import SearchConfig
from controller.progress import Progress


def pin_grammar(config: SearchConfig) -> None:
    """Copy the task's grammar into a constrained config that has none yet (at search start).

    Raises RuntimeError naming the fix when the task has no grammar or rejects a seed."""
    proposer = config.proposer
    if not config.uses_language_model or proposer.sampling != "constrained" or proposer.grammar:
        return
    trainer = Trainer(trainer_targets(config.services.trainers)[0])
    try:
        task = call_with_retries(
            lambda: trainer.stub.GetTask(trainer_pb2.GetTaskRequest(name=config.task), timeout=30),
            f"trainer {trainer.target} GetTask",
            config.services.attempts,
        )
    finally:
        trainer.close()
    if not task.grammar:
        raise RuntimeError(
            f"task {config.task} has no grammar for constrained sampling: set "
            "`proposer.sampling: free` in the config"
        )
    check_seeds(task.grammar, task.grammar_version, task)
    proposer.grammar, proposer.grammar_version = task.grammar, task.grammar_version


def check_seeds(text: str, version: str, task: trainer_pb2.TaskInfo) -> None:
    """RuntimeError when the grammar rejects one of the task's seeds: a child could never
    be written like its parents, which is a broken grammar, not a search setting."""
    # Imported here: the grammar engines (lark, llguidance) are the proposer's and the
    # language-model extra's, and the `evo` command must import without them.
    from services.proposer import grammar as grammars

    seeds = [(s.name, s.code) for s in task.seeds]
    try:
        errors = grammars.seed_errors(text, task.program_opening, seeds)
    except grammars.GrammarError as e:
        raise RuntimeError(f"grammar {version or '(from the config)'}: {e}") from e
    if errors:
        raise RuntimeError(
            f"grammar {version or '(from the config)'} rejects seeds of task {task.name}: "
            + "; ".join(errors)
            + ". Fix the grammar (a new version), or sample free (`proposer.sampling: free`)"
        )


def check(
    config: SearchConfig,
    task: trainer_pb2.TaskInfo,
    info: proposer_pb2.ProposerInfo,
    progress: Progress,
) -> None:
    """At every (re)start: the pinned grammar takes the seeds and the proposer can apply it."""
    proposer = config.proposer
    if proposer.sampling != "constrained":
        return
    if not proposer.grammar:
        # Not pinned at start (a search made without `evo search start`): the task's.
        if not task.grammar:
            raise RuntimeError(
                f"task {task.name} has no grammar for constrained sampling: set "
                "`proposer.sampling: free` in the config"
            )
        proposer.grammar, proposer.grammar_version = task.grammar, task.grammar_version
    check_seeds(proposer.grammar, proposer.grammar_version, task)
    how = info.capabilities.grammar
    if not how:
        raise RuntimeError(
            f"the proposer's {info.backend} backend cannot apply a grammar: set "
            "`proposer.sampling: free`, or serve the model with a backend that can "
            "(llamacpp, hf, or openai on vLLM)"
        )
    if how == "regex-or-free":
        progress.notice(
            f"the proposer's {info.backend} backend cannot apply the task's grammar (TGI takes "
            "regular expressions only): it samples free"
        )


def grammar_of(config: SearchConfig) -> tuple[str, str]:
    """(text, version) to send with Generate; empty for free sampling."""
    p = config.proposer
    return (p.grammar, p.grammar_version) if p.sampling == "constrained" else ("", "")


def attempt_seed(sampling_seed: int, attempt: int) -> int:
    """The seed of a resampling attempt: derived, so a rerun draws the same children."""
    if attempt == 0:
        return sampling_seed
    return random.Random(f"{sampling_seed}:resample:{attempt}").randrange(1, 2**62)


def until_novel(sample: Callable[..., list[int]], slots: list[int], resamples: int) -> list[int]:
    """Sample `slots` (attempt 0), then resample the slots whose child was a duplicate, up
    to `resamples` more attempts. `sample(slots, attempt=a)` returns the duplicate slots.
    Returns the slots still duplicate at the end."""
    duplicates = sample(slots, attempt=0)
    for attempt in range(1, resamples + 1):
        if not duplicates:
            break
        duplicates = sample(duplicates, attempt=attempt)
    return duplicates
