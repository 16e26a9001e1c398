"""Replay a search's prompts through the running proposal service: do its children build now?

Why: a change to the sampler (grammar.Constraint, the statement checks, the budgets) is
judged on the prompts a real search wrote, without the noise of a new search whose prompts
depend on what the last round scored. Each language-model prompt of the stored search is
sent again as the search sent it (its text, temperature, sampling seed, the search's
grammar and settings; the programs to avoid are the seeds' and those of the candidates
recorded before that prompt), and each child is built in the sandbox: the trainer runs it
for `--steps` steps (a few: building and the shape check are what is judged).

    EVO_HOME=... .venv/bin/evo up     # the stack holding the search, with today's code
    .venv/bin/python -m bench.proposer_replay --search 1 [--steps 20] [--label "this tree"]

Prints one row per prompt and a summary row (markdown), so runs of two trees on the same
store can be set side by side in bench/RESULTS-proposer.md.
"""

import argparse
import time
from collections import Counter

from evo.v1 import common_pb2 as common
from evo.v1 import lineage_pb2 as pb
from evo.v1 import proposer_pb2, trainer_pb2

from controller import sampling
from controller.clients import Lineage, Proposer, Trainers, trainer_targets
from controller.config import SearchConfig
from controller.search import runnable
from services.common import addresses

LANGUAGE_MODEL = pb.CANDIDATE_ORIGIN_LANGUAGE_MODEL


def build_verdict(trainers: Trainers, task: str, language: str, code: str, steps: int) -> str:
    """'OK' when the child builds, gives the right output and trains `steps` steps; else
    the trainer's status and stage."""
    request = trainer_pb2.EvaluateRequest(
        program=trainer_pb2.Program(code=code, language=language),
        task=task,
        budget=trainer_pb2.Budget(steps=steps, seed=0, eval_every=steps),
        limits=trainer_pb2.Limits(wall_seconds=60, memory_bytes=2 << 30),
        request_id=f"replay-{time.monotonic_ns()}",
    )
    reply = trainers.evaluate(request, timeout=120)
    status = common.EvalStatus.Name(reply.status).removeprefix("EVAL_STATUS_")
    return status if reply.status == common.EVAL_STATUS_OK else f"{status}: {reply.message[:90]}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--search", type=int, required=True)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--label", default="this tree")
    parser.add_argument("--prompts", type=int, default=0, help="the first N prompts only")
    parser.add_argument("--show", action="store_true", help="print each failing child")
    args = parser.parse_args()

    lineage = Lineage(addresses.resolve("lineage", None))
    search = lineage("GetSearch", pb.GetSearchRequest(search_id=args.search))
    config = SearchConfig.from_json(search.config_json)
    grammar, grammar_version = sampling.grammar_of(config)
    found = sorted(
        lineage.candidates(pb.ListCandidatesRequest(search_id=args.search, include_code=True)),
        key=lambda c: c.id,
    )
    proposer = Proposer(addresses.resolve("proposer", None))
    trainers = Trainers(trainer_targets(config.services.trainers))
    trainers.discover()
    task = trainers.task(config.task)

    first_child: dict[int, pb.Candidate] = {}
    for c in found:
        if c.origin == LANGUAGE_MODEL and c.sample_index == 0:
            first_child.setdefault(c.prompt_id, c)
    totals: Counter[str] = Counter()
    print(f"| {args.label}: prompt | samples | build and train | tokens | seconds |")
    print("| --- | --- | --- | --- | --- |")
    chosen = list(first_child.items())[: args.prompts or None]
    for prompt_id, child in chosen:
        prompt = lineage("GetPrompt", pb.GetPromptRequest(prompt_id=prompt_id))
        avoid = list(dict.fromkeys(c.normalized_hash for c in found if c.id < child.id))
        request = proposer_pb2.GenerateRequest(
            prompt=prompt.text,
            num_samples=config.evolution.samples_per_prompt,
            sampling=common.SamplingParams(
                temperature=prompt.temperature,
                top_p=config.proposer.top_p,
                max_new_tokens=config.proposer.max_new_tokens,
                stop=config.proposer.stop,
                seed=child.proposer.sampling.seed,
                grammar_version=grammar_version,
            ),
            adapter_id=child.adapter_id,
            program_opening=task.program_opening,
            grammar=grammar,
            avoid_normalized_hashes=avoid,
        )
        started = time.monotonic()
        reply = proposer.generate(request, timeout=1800)
        seconds = time.monotonic() - started
        verdicts = []
        for sample in reply.samples:
            if sample.parse_error or not sample.program:
                verdicts.append("does not parse")
                if args.show:
                    print(f"\n# does not parse ({sample.finish_reason}): {sample.parse_error}")
                    print(sample.raw_completion[-600:])
                continue
            code = runnable(task.prompt_header, sample.program)
            verdict = build_verdict(trainers, config.task, task.language, code, args.steps)
            verdicts.append(verdict)
            if args.show and verdict != "OK":
                print(f"\n# {verdict}\n{code}\n")
        ok = sum(v == "OK" for v in verdicts)
        tokens = sum(s.completion_tokens for s in reply.samples)
        totals.update(samples=len(verdicts), ok=ok, tokens=tokens, seconds=round(seconds))
        print(f"| round {prompt.round_index}, prompt {prompt.prompt_index} | {len(verdicts)} "
              f"| {ok} | {tokens} | {seconds:.0f} |")  # fmt: skip
        for v in verdicts:
            if v != "OK":
                totals[v.split(":")[0] + " (all)"] += 1
    print(f"| **all** | {totals['samples']} | **{totals['ok']}** | {totals['tokens']} "
          f"| {totals['seconds']} |")  # fmt: skip
    failures = {k: n for k, n in totals.items() if k.endswith("(all)")}
    print(f"\nfailures: {failures}")


if __name__ == "__main__":
    main()
