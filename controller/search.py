"""The evolutionary loop (the paper's Algorithms 1-3) and its baselines.

Everything is written to the lineage store as it happens and every choice is drawn from
a random generator seeded by (search seed, round, prompt), so a search killed at any
moment and resumed makes the same choices and redoes no finished evaluation: prompts,
candidates and evaluations are idempotent writes, and a round only starts from what
earlier, finished rounds scored.

A round, for the language-model methods: draw parents, write the prompt, sample n
children, record each one (the store marks duplicates), send every new one to a
trainer at once while the next prompt is sampled, and wait for the scores. Between
rounds (not after the last) the language model's soft prompt is tuned on the round's
scored children.

The rules (who may be a parent, the draws, the alpha filter, the tuning set, the
budget, the result) are controller/population.py's; retries and failover are the
clients'. This module is the order of the steps and what is recorded.
"""

import functools
import logging
import threading
import time
from collections import Counter
from collections.abc import Iterable
from concurrent.futures import Future, ThreadPoolExecutor

import grpc
from evo.v1 import common_pb2 as common
from evo.v1 import lineage_pb2 as pb
from evo.v1 import proposer_pb2, trainer_pb2

from controller import lineage_views, mutations, population, prompts, sampling
from controller.clients import CallFailed, Lineage, Proposer, Trainers
from controller.config import SearchConfig
from controller.population import Member
from controller.progress import Progress

log = logging.getLogger(__name__)

PYTORCH = trainer_pb2.PROGRAM_LANGUAGE_PYTORCH
SCORED = pb.CANDIDATE_STATE_SCORED
PENDING = pb.CANDIDATE_STATE_PENDING
FAILED = pb.CANDIDATE_STATE_FAILED
# A running search looks at its stored state this often, to see `evo search stop`.
STOP_POLL_SECONDS = 2.0
# An evaluation's deadline: the training wall time plus start-up and queueing.
EVALUATE_MARGIN_SECONDS = 180.0
# The proposal service's limit on samples in one Generate call.
MAX_SAMPLES_PER_CALL = 64
# Hashes of programs a child must not copy, sent per Generate call (the proposer's limit).
MAX_AVOIDED = 20_000
# Evaluation threads when services.max_in_flight is 0: the trainers' live slots (read
# every round) decide how many of them train at once.
MAX_EVALUATION_THREADS = 64
RESUMABLE = (
    pb.SEARCH_STATE_CREATED,
    pb.SEARCH_STATE_RUNNING,
    pb.SEARCH_STATE_STOPPING,
    pb.SEARCH_STATE_STOPPED,
    pb.SEARCH_STATE_FAILED,
)


def fitness_key(c: pb.Candidate) -> tuple[float, int]:
    """Best first; ties go to the earlier candidate, so the order is reproducible."""
    return (-c.fitness, c.id)


def runnable(header: str, program: str) -> str:
    """A sampled class with the task's imports above it, as a seed has them: the code the
    trainer runs (the model writes the class only; the prompt shows the imports once)."""
    header = header.strip("\n")
    return f"{header}\n\n\n{program.strip(chr(10))}\n" if header else program


def member(c: pb.Candidate) -> Member:
    return Member(c.id, c.round_index, c.fitness)


def example(c: pb.Candidate) -> prompts.Example:
    m = c.evaluation.metrics
    return prompts.Example(c.code, m.num_params, m.best_val_accuracy)


_OUTCOME = {
    PENDING: "to train",
    FAILED: "unparsable",
    pb.CANDIDATE_STATE_DUPLICATE: "duplicate",
}


class Stopped(Exception):
    """The search was asked to stop; in-flight work is finished first."""


class Search:
    def __init__(
        self,
        config: SearchConfig,
        search_id: int,
        lineage: Lineage,
        trainers: Trainers,
        proposer: Proposer | None,
        progress: Progress,
        stop: threading.Event | None = None,
    ) -> None:
        self.config = config
        self.id = search_id
        self.lineage = lineage
        self.trainers = trainers
        self.proposer = proposer
        self.progress = progress
        self.rules = config.rules
        self.plan = population.plan(self.rules)
        self.stop_event = stop or threading.Event()
        # The config decides how hard the clients try; a stop ends a proposer's waiting.
        trainers.attempts = config.services.attempts
        if proposer is not None:
            proposer.attempts = max(proposer.attempts, config.services.attempts)
            proposer.should_stop = self.stop_event.is_set
        self._last_poll = 0.0
        self._lock = threading.Lock()
        self._futures: list[Future[None]] = []
        self.task: trainer_pb2.TaskInfo | None = None
        self.info: proposer_pb2.ProposerInfo | None = None
        self.pool: ThreadPoolExecutor | None = None

    # ------------------------------------------------------------ the whole search

    def run(self) -> list[pb.Candidate]:
        """Run (or resume) to the end or to a stop; returns the search's result (`top`)."""
        self.lineage(
            "UpdateSearchState",
            pb.UpdateSearchStateRequest(search_id=self.id, state=pb.SEARCH_STATE_RUNNING),
        )
        self.trainers.discover()
        threads = self.config.services.max_in_flight or MAX_EVALUATION_THREADS
        self.task = self.trainers.task(self.config.task)
        if self.config.method == "mutation" and self.task.language != PYTORCH:
            raise RuntimeError(
                f"the mutation baseline's hand-written mutations edit PyTorch models; task "
                f"{self.config.task} takes JAX programs: choose a language-model method"
            )
        self._choose_seeds()
        if self.config.uses_language_model:
            self.info = self._proposer_info()
            sampling.check(self.config, self.task, self.info, self.progress)
        self.progress.update(rounds=self.plan.rounds)
        try:
            with ThreadPoolExecutor(threads, thread_name_prefix="evaluate") as pool:
                self.pool = pool
                self._seed_round()
                done = {r.round_index: r for r in self._rounds()}
                for r in range(1, self.plan.rounds + 1):
                    if done.get(r) and done[r].state == pb.ROUND_STATE_FINISHED:
                        continue
                    self._round(r)
        except Stopped:
            self._wait_all()
            self._set_state(pb.SEARCH_STATE_STOPPED, "stopped on request; resume to continue")
            self.progress.note("stopped; `evo search resume` continues where it left off")
            return self.top()
        top = self.top()
        best = f"best fitness {top[0].fitness:.1f} (candidate {top[0].id})" if top else "none"
        self._set_state(pb.SEARCH_STATE_FINISHED, f"finished: {best}")
        self.progress.update(phase="finished")
        return top

    def top(self) -> list[pb.Candidate]:
        """What the search returns: GETTOP(G, p), the best children under the paper's
        population (the seeds too under `seeds-stay`)."""
        scored = {c.id: c for c in self._candidates(states=[SCORED], code=True)}
        best = population.result(self.rules, [member(c) for c in scored.values()])
        return [scored[m.id] for m in best]

    # ------------------------------------------------------------ rounds

    def _seed_round(self) -> None:
        """Round 0: the task's hand-written seeds, scored like every child."""
        assert self.task is not None
        self.progress.update(round_index=0, phase="scoring the seeds")
        self._record_round(0, pb.ROUND_STATE_TRAINING)
        for i, seed in enumerate(self.task.seeds):
            c = self._record_candidate(
                pb.RecordCandidateRequest(
                    search_id=self.id,
                    origin=pb.CANDIDATE_ORIGIN_SEED,
                    sample_index=i,
                    name=seed.name,
                    code=seed.code,
                )
            )
            self._submit_if_pending(c)
        self._wait_all()
        if not self._candidates(states=[SCORED], before_round=1):
            raise RuntimeError(
                "no seed of the task could be scored; see `evo search show` for the reasons "
                "(a trainer fault, or limits too tight for the seeds)"
            )
        self._record_round(0, pb.ROUND_STATE_FINISHED)

    def _round(self, r: int) -> None:
        self.progress.update(round_index=r, phase="generating")
        self.progress.note(f"round {r} of {self.plan.rounds}")
        self.trainers.discover()  # trainers scaled up or started late join from here
        self._record_round(r, pb.ROUND_STATE_GENERATING)
        existing = self._candidates(round_index=r, code=True)  # pending ones are trained
        for c in existing:
            self._submit_if_pending(c)
        if self.config.method == "mutation":
            self._mutate(r, existing)
        else:
            self._prompt_and_sample(r, existing)
        self._record_round(r, pb.ROUND_STATE_TRAINING)
        self.progress.update(phase="training")
        self._wait_all()
        self._check_stop()
        adapter, loss = "", None
        if self.plan.tune and r < self.plan.rounds:
            adapter, loss = self._tune(r)
        self._record_round(r, pb.ROUND_STATE_FINISHED, adapter, loss)
        states = Counter(
            lineage_views.short_state(c.state) for c in self._candidates(round_index=r)
        )
        top = self.top()
        best = f"; best fitness {top[0].fitness:.1f} (candidate {top[0].id})" if top else ""
        self.progress.note(
            f"round {r} done: {sum(states.values())} children: "
            + ", ".join(f"{n} {state}" for state, n in sorted(states.items()))
            + best
        )

    def _prompt_and_sample(self, r: int, existing: list[pb.Candidate]) -> None:
        assert self.task is not None and self.proposer is not None
        evo = self.config.evolution
        pool = self._parent_pool(r)
        adapter = self._adapter_for(r)
        header = self.task.prompt_header if self.config.proposer.prompt_header else ""
        for i in range(self.plan.prompts_per_round):
            self._check_stop()
            rng = population.prompt_rng(self.config.seed, r, i)
            drawn = population.draw_parents([member(c) for c in pool], evo.parents_per_prompt, rng)
            by_id = {c.id: c for c in pool}
            parents = [by_id[m.id] for m in drawn]
            temperature = rng.choice(evo.temperatures)
            sampling_seed = rng.randrange(1, 2**62)
            built = prompts.build(header, [example(p) for p in parents], self.task.program_opening)
            prompt = self.lineage(
                "RecordPrompt",
                pb.RecordPromptRequest(
                    search_id=self.id,
                    round_index=r,
                    prompt_index=i,
                    text=built.text,
                    parent_ids=[p.id for p in parents],
                    temperature=temperature,
                    target_json=built.target_json,
                ),
            ).prompt
            done = {c.sample_index for c in existing if c.prompt_id == prompt.id}
            # A proposer takes at most MAX_SAMPLES_PER_CALL samples a call: the few-shot
            # baseline's 160 go in several calls, each seeded by where it starts. Children
            # that copy an earlier program are sampled again (controller/sampling.py).
            n = self.plan.samples_per_prompt
            for first in range(0, n, MAX_SAMPLES_PER_CALL):
                indices = range(first, min(n, first + MAX_SAMPLES_PER_CALL))
                missing = [j for j in indices if j not in done]
                if missing:
                    sampling.until_novel(
                        functools.partial(
                            self._sample,
                            prompt,
                            indices,
                            sampling_seed=sampling_seed + first,
                            adapter=adapter,
                        ),
                        missing,
                        self.config.proposer.novelty_resamples,
                    )

    def _known_programs(self) -> list[str]:
        """The normalised hashes of the search's candidates so far: a child with one of
        them is a duplicate, which a proposer that checks statements writes again instead
        (the most recent MAX_AVOIDED when there are more)."""
        hashes = dict.fromkeys(c.normalized_hash for c in self._candidates())
        return list(hashes)[-MAX_AVOIDED:]

    def _sample(
        self,
        prompt: pb.Prompt,
        indices: range,
        missing: list[int],
        sampling_seed: int,
        adapter: str,
        attempt: int = 0,
    ) -> list[int]:
        """Sample the prompt's children `indices` in one call and record those `missing`;
        returns the slots whose child was a duplicate. Attempt a > 0 resamples just
        `missing`, recorded as sample a * n + slot (controller/sampling.py)."""
        assert self.proposer is not None and self.task is not None and self.info is not None
        cfg = self.config
        n = self.plan.samples_per_prompt
        grammar, grammar_version = sampling.grammar_of(cfg)
        params = common.SamplingParams(
            temperature=prompt.temperature,
            top_p=cfg.proposer.top_p,
            max_new_tokens=cfg.proposer.max_new_tokens,
            stop=cfg.proposer.stop,
            seed=sampling.attempt_seed(sampling_seed, attempt),
            grammar_version=grammar_version,
        )
        request = proposer_pb2.GenerateRequest(
            prompt=prompt.text,
            num_samples=len(indices) if attempt == 0 else len(missing),
            sampling=params,
            adapter_id=adapter,
            program_opening=self.task.program_opening,
            grammar=grammar,
            avoid_normalized_hashes=self._known_programs(),
        )
        settings = pb.ProposerSettings(
            backend=self.info.backend, model_id=self.info.model_id, sampling=params
        )
        parents = list(dict.fromkeys(prompt.parent_ids))
        base = pb.RecordCandidateRequest(
            search_id=self.id,
            round_index=prompt.round_index,
            origin=pb.CANDIDATE_ORIGIN_LANGUAGE_MODEL,
            prompt_id=prompt.id,
            parent_ids=parents,
            proposer=settings,
            adapter_id=adapter,
        )
        started = time.monotonic()
        try:
            reply = self.proposer.generate(request, cfg.services.generate_timeout_seconds)
        except CallFailed as e:
            self.progress.notice(f"prompt {prompt.prompt_index} of round {prompt.round_index}: {e}")
            for j in missing:
                failed = pb.RecordCandidateRequest()
                failed.CopyFrom(base)
                failed.sample_index = attempt * n + j
                failed.code = f"# no program: the language model call failed\n# {e}\n"
                failed.state, failed.reason = FAILED, f"generation failed: {e}"[:2000]
                self._record_candidate(failed)
            return []
        outcomes: Counter[str] = Counter()
        duplicates: list[int] = []
        header = self.task.prompt_header
        for k, j in enumerate(missing):
            at = j - indices.start if attempt == 0 else k
            if at >= len(reply.samples):
                break
            s = reply.samples[at]
            child = pb.RecordCandidateRequest()
            child.CopyFrom(base)
            child.sample_index = attempt * n + j
            child.code = runnable(header, s.program) if s.program.strip() else "# (empty)\n"
            child.raw_completion = s.raw_completion
            child.prompt_tokens = s.prompt_tokens
            child.completion_tokens = s.completion_tokens
            child.generation_seconds = s.latency_seconds
            if s.parse_error or not s.program.strip():
                child.state = FAILED
                child.reason = f"the program does not parse: {s.parse_error or 'empty'}"[:2000]
            self.progress.add(generated=1)
            recorded = self._record_candidate(child)
            outcomes[_OUTCOME.get(recorded.state, "new")] += 1
            if recorded.state == pb.CANDIDATE_STATE_DUPLICATE:
                duplicates.append(j)
            self._submit_if_pending(recorded)
        tokens = sum(s.completion_tokens for s in reply.samples)
        again = f" (resampling {attempt})" if attempt else ""
        self.progress.note(
            f"round {prompt.round_index}, prompt {prompt.prompt_index + 1} of "
            f"{self.plan.prompts_per_round}{again}: {len(reply.samples)} samples, {tokens} "
            f"tokens in {time.monotonic() - started:.0f} s: "
            + ", ".join(f"{count} {what}" for what, count in sorted(outcomes.items()))
        )
        return duplicates

    def _mutate(self, r: int, existing: list[pb.Candidate]) -> None:
        """Regularised evolution, one batch a round: tournaments over the p youngest."""
        evo = self.config.evolution
        scored = self._candidates(states=[SCORED], before_round=r, code=True)
        youngest = sorted(scored, key=lambda c: c.id)[-evo.population_size :]
        done = {c.sample_index for c in existing}
        for j in range(self.plan.prompts_per_round * evo.samples_per_prompt):
            self._check_stop()
            if j in done:
                continue
            rng = population.prompt_rng(self.config.seed, r, j)
            tournament = rng.sample(youngest, min(evo.tournament_size, len(youngest)))
            parent = min(tournament, key=fitness_key)
            mutation = mutations.mutate(parent.code, rng)
            request = pb.RecordCandidateRequest(
                search_id=self.id,
                round_index=r,
                origin=pb.CANDIDATE_ORIGIN_MUTATION,
                sample_index=j,
                parent_ids=[parent.id],
            )
            if mutation is None:
                request.code, request.name = parent.code, "no mutation applies"
                request.state, request.reason = FAILED, "no hand-written mutation applies"
            else:
                request.code, request.name = mutation.code, mutation.description[:200]
            self.progress.add(generated=1)
            self._submit_if_pending(self._record_candidate(request))

    # ------------------------------------------------------------ parents

    def _parent_pool(self, r: int) -> list[pb.Candidate]:
        """Who may be a parent in round r (population.parent_pool decides)."""
        scored = {c.id: c for c in self._candidates(states=[SCORED], before_round=r, code=True)}
        pool = population.parent_pool(
            self.rules, [member(c) for c in scored.values()], r, self._shown(r)
        )
        return [scored[m.id] for m in pool]

    def _shown(self, before_round: int) -> dict[int, set[int]]:
        """The ids shown as parents in each earlier round's prompts."""
        shown: dict[int, set[int]] = {}
        for c in self._candidates(before_round=before_round):
            if c.origin == pb.CANDIDATE_ORIGIN_LANGUAGE_MODEL:
                shown.setdefault(c.round_index, set()).update(c.parent_ids)
        return shown

    # ------------------------------------------------------------ prompt-tuning

    def _adapter_for(self, r: int) -> str:
        """The soft prompt trained after the latest earlier round, if any."""
        if not self.plan.tune:
            return ""
        adapters = [x for x in self._rounds() if x.round_index < r and x.adapter_id]
        return max(adapters, key=lambda x: x.round_index).adapter_id if adapters else ""

    def _tune(self, r: int) -> tuple[str, float | None]:
        assert self.proposer is not None and self.info is not None
        if not self.info.capabilities.prompt_tuning:
            self.progress.notice(
                f"the proposer's {self.info.backend} backend cannot be prompt-tuned: "
                "skipping soft prompt-tuning"
            )
            return self._adapter_for(r + 1), None
        scored = self._candidates(states=[SCORED], before_round=r + 1, code=True)
        next_parents = population.populations(
            self.rules, [member(c) for c in scored], r + 1, self._shown(r + 1)
        )[r + 1]
        round_children = {c.id: c for c in scored if c.round_index == r}
        chosen = population.tuning_set(
            self.rules, [member(c) for c in round_children.values()], next_parents
        )
        children = [round_children[m.id] for m in chosen]
        if not children:
            self.progress.notice(f"round {r}: no scored children to tune on; prompt kept")
            return self._adapter_for(r + 1), None
        self._record_round(r, pb.ROUND_STATE_TUNING)
        self.progress.update(phase=f"prompt-tuning on {len(children)} children")
        t = self.config.tuning
        request = proposer_pb2.TrainSoftPromptRequest(
            examples=[prompts.example_text(example(c)) for c in children],
            num_virtual_tokens=t.num_virtual_tokens,
            epochs=t.epochs,
            batch_size=t.batch_size,
            learning_rate=t.learning_rate,
            seed=self.config.seed * 1000 + r + 1,
            init_adapter_id=self._adapter_for(r),
        )
        try:
            reply = self.proposer.train_soft_prompt(
                request, self.config.services.tuning_timeout_seconds
            )
        except CallFailed as e:
            self.progress.notice(f"round {r}: prompt-tuning failed, prompt kept: {e}")
            return self._adapter_for(r), None
        self.progress.note(
            f"round {r}: soft prompt {reply.adapter_id} tuned on {reply.num_examples} "
            f"{'child' if reply.num_examples == 1 else 'children'}, loss {reply.final_loss:.3f}"
        )
        return reply.adapter_id, reply.final_loss

    # ------------------------------------------------------------ evaluation

    def _submit_if_pending(self, c: pb.Candidate) -> None:
        if c.state == pb.CANDIDATE_STATE_DUPLICATE:
            self.progress.add(duplicate=1)
        elif c.state == FAILED:
            self.progress.add(failed=1)
        elif c.state == PENDING:
            assert self.pool is not None
            self.progress.add(training=1)
            future = self.pool.submit(self._evaluate, c)
            with self._lock:
                self._futures.append(future)

    def _wait_all(self) -> None:
        while True:
            with self._lock:
                futures, self._futures = self._futures, []
            if not futures:
                return
            for f in futures:
                f.result()  # _evaluate records its own failures; this re-raises bugs

    def _evaluate(self, c: pb.Candidate) -> None:
        """Train and score one candidate on any trainer, then record the result."""
        assert self.task is not None
        cfg, t = self.config, self.config.training
        request = trainer_pb2.EvaluateRequest(
            program=trainer_pb2.Program(code=c.code, language=self.task.language),
            task=cfg.task,
            budget=trainer_pb2.Budget(steps=t.steps, seed=t.seed, eval_every=t.eval_every),
            limits=trainer_pb2.Limits(
                wall_seconds=t.wall_seconds,
                memory_bytes=t.memory_mb * 1024 * 1024,
                max_params=t.max_params,
            ),
            request_id=f"search-{self.id}-candidate-{c.id}",
        )
        try:
            reply = self.trainers.evaluate(
                request, timeout=t.wall_seconds + EVALUATE_MARGIN_SECONDS
            )
            evaluation = pb.Evaluation(
                status=reply.status,
                message=reply.message,
                metrics=reply.metrics,
                log_tail=reply.log_tail,
                sandbox_backend=reply.sandbox.backend,
                trainer_id=reply.trainer_id,
                task=cfg.task,
                budget_steps=t.steps,
                budget_seed=t.seed,
                wall_seconds=reply.wall_seconds,
            )
        except CallFailed as e:
            evaluation = pb.Evaluation(
                status=common.EVAL_STATUS_INTERNAL, message=str(e)[:2000], task=cfg.task
            )
        record = pb.RecordEvaluationRequest(candidate_id=c.id, evaluation=evaluation)
        m = evaluation.metrics
        error = m.best_val_error
        if evaluation.status == common.EVAL_STATUS_OK:
            record.fitness = population.fitness(m.num_params, error)
            if c.round_index > 0 and not population.passes_alpha(error, cfg.evolution.alpha):
                record.state = pb.CANDIDATE_STATE_FILTERED
                record.reason = (
                    f"validation error {error:.3f} is not below alpha {cfg.evolution.alpha}"
                )
        try:
            stored = self.lineage("RecordEvaluation", record).candidate
        except CallFailed as e:
            if e.code != grpc.StatusCode.INVALID_ARGUMENT:
                raise
            # The store refused this one record (a value it cannot hold): the candidate is
            # recorded failed with the reason, and the search goes on without it.
            refused = pb.Evaluation(
                status=common.EVAL_STATUS_CRASHED,
                message=f"the lineage store refused this evaluation: {e}"[:2000],
                task=cfg.task,
                trainer_id=evaluation.trainer_id,
            )
            record = pb.RecordEvaluationRequest(candidate_id=c.id, evaluation=refused)
            stored = self.lineage("RecordEvaluation", record).candidate
        self.progress.add(training=-1)
        if stored.state == SCORED:
            if self.progress.scored(stored.id, stored.fitness):
                label = stored.name or f"round {c.round_index}"
                self.progress.note(
                    f"new best: candidate {stored.id} ({label}), "
                    f"{stored.evaluation.metrics.num_params} params, val error "
                    f"{error:.3f}, fitness {stored.fitness:.1f}"
                )
        elif stored.state == pb.CANDIDATE_STATE_FILTERED:
            self.progress.add(filtered=1)
        else:
            self.progress.add(failed=1)

    # ------------------------------------------------------------ store and services

    def _choose_seeds(self) -> None:
        """Keep only the seeds the config names (`evolution.seeds`), in the task's order."""
        assert self.task is not None
        wanted = self.config.evolution.seeds
        if not wanted:
            return
        known = [s.name for s in self.task.seeds]
        unknown = sorted(set(wanted) - set(known))
        if unknown:
            raise RuntimeError(
                f"evolution.seeds: task {self.config.task} has no seed named "
                f"{', '.join(unknown)}; its seeds are {', '.join(known)}"
            )
        kept = [s for s in self.task.seeds if s.name in set(wanted)]
        del self.task.seeds[:]
        self.task.seeds.extend(kept)

    def _proposer_info(self) -> proposer_pb2.ProposerInfo:
        assert self.proposer is not None
        info = self.proposer.info()
        if self.plan.tune and not info.capabilities.prompt_tuning:
            self.progress.notice(
                f"the proposer's {info.backend} backend cannot be prompt-tuned: this search "
                "runs without soft prompt-tuning"
            )
        return info

    def _record_candidate(self, request: pb.RecordCandidateRequest) -> pb.Candidate:
        return self.lineage("RecordCandidate", request).candidate

    def _record_round(
        self, r: int, state: int, adapter: str = "", loss: float | None = None
    ) -> None:
        request = pb.RecordRoundRequest(
            search_id=self.id,
            round_index=r,
            state=state,
            adapter_id=adapter,  # type: ignore[arg-type]
        )
        if loss is not None:
            request.tuning_loss = loss
        self.lineage("RecordRound", request)

    def _rounds(self) -> list[pb.Round]:
        return list(self.lineage("ListRounds", pb.ListRoundsRequest(search_id=self.id)).rounds)

    def _set_state(self, state: int, message: str = "") -> None:
        self.lineage(
            "UpdateSearchState",
            pb.UpdateSearchStateRequest(search_id=self.id, state=state, message=message),  # type: ignore[arg-type]
        )

    def _check_stop(self) -> None:
        if self.stop_event.is_set():
            raise Stopped
        now = time.monotonic()
        if now - self._last_poll < STOP_POLL_SECONDS:
            return
        self._last_poll = now
        found = self.lineage("GetSearch", pb.GetSearchRequest(search_id=self.id))
        if found.state == pb.SEARCH_STATE_STOPPING:
            self.stop_event.set()
            raise Stopped

    def _candidates(
        self,
        *,
        states: Iterable[int] = (),
        round_index: int | None = None,
        before_round: int | None = None,
        code: bool = False,
    ) -> list[pb.Candidate]:
        request = pb.ListCandidatesRequest(
            search_id=self.id,
            states=list(states),  # type: ignore[arg-type]
            include_code=code,
        )
        if round_index is not None:
            request.round_index = round_index
        found = self.lineage.candidates(request)
        if before_round is not None:
            found = [c for c in found if c.round_index < before_round]
        return found
