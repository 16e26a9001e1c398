"""The rules of the paper's Algorithm 1, as plain data in and plain data out.

No I/O and no service here (the shape of FunSearch's programs database): the search loop
hands in what the store holds (`Member`s: id, round, fitness) and gets back who may be a
parent, which parents a prompt draws, what passes the alpha filter, what the soft prompt
is tuned on and what the search returns. Every draw comes from a generator seeded by
(search seed, round, prompt), so a resumed search draws the same parents.

Algorithm 1 (arXiv 2302.14838, section 3.3), the `paper` population:

    G <- []                       the history: scored children only
    P <- seeds                    INITIALIZEPOPULATION
    for t in rounds:
        C <- CROSSMUT(P)          m prompts, k parents each drawn uniformly with replacement
        G <- G + FILTERANDEVAL(C) children whose error is below alpha, fitness -(size x error)
        if not the last round:
            P <- GETTOP(G, p)     so the seeds are parents in round 1 only
            tune on C_evaled minus P
    return GETTOP(G, p)           the best children

Today's earlier reading stays available as the `seeds-stay` population: the seeds join the
history, so they stay parents (and can be the result) for as long as they are in the top p.
"""

import random
from dataclasses import dataclass

# evolution.population: who the history G holds.
PAPER = "paper"  # children only: the seeds are parents in round 1 and never again
SEEDS_STAY = "seeds-stay"  # the seeds are scored members of G like any child
POPULATIONS = (PAPER, SEEDS_STAY)
# evolution.retired_means: which models the paper's retirement rule removes.
SELECTED = "selected"  # "once selected [by GETTOP] ... cannot be used again as parents"
SHOWN = "shown"  # a model shown as a parent in any earlier prompt
RETIRED_MEANINGS = (SELECTED, SHOWN)
# evolution.few_shot_budget: how the naive few-shot baseline spends T x m x n samples.
MORE_SAMPLES = "more-samples"  # the paper: m prompts, T x n samples each (one round)
MORE_PROMPTS = "more-prompts"  # T x m prompts of n samples each
FEW_SHOT_BUDGETS = (MORE_SAMPLES, MORE_PROMPTS)
# evolution.tune_on: the soft prompt's training set.
NOT_SELECTED = "not-selected"  # Algorithm 1: C_evaled minus P
ALL = "all"  # the figure caption: every scored child of the round
TUNE_ON = (NOT_SELECTED, ALL)

METHODS = ("evoprompting", "evoprompting-no-tuning", "random-parents", "few-shot", "mutation")


def fitness(num_params: int, best_val_error: float) -> float:
    """The paper's fitness, s = -(model size x lowest validation error); higher is better.

    Defined here once: the store stores what the controller computed, and every
    benchmark imports this. Example from the paper: -(6000 x 0.09) = -540.
    """
    return -(num_params * best_val_error)


def passes_alpha(best_val_error: float, alpha: float) -> bool:
    """FILTERANDEVAL: a child is kept only if its error is below alpha (seeds are not
    filtered: INITIALIZEPOPULATION scores them but keeps them all)."""
    return best_val_error < alpha


@dataclass(frozen=True)
class Member:
    """A scored candidate as the rules see it. Round 0 holds the seeds."""

    id: int
    round_index: int
    fitness: float

    @property
    def is_seed(self) -> bool:
        return self.round_index == 0


@dataclass(frozen=True)
class Rules:
    """The parameters the rules depend on (a slice of the search's config)."""

    method: str = "evoprompting"
    rounds: int = 10  # T
    prompts_per_round: int = 10  # m
    samples_per_prompt: int = 16  # n
    parents_per_prompt: int = 2  # k
    population_size: int = 10  # p
    alpha: float = 0.5
    population: str = PAPER
    retire_parents: bool = False
    retired_means: str = SELECTED
    tune_on: str = NOT_SELECTED
    few_shot_budget: str = MORE_SAMPLES
    tuning_enabled: bool = True

    def __post_init__(self) -> None:
        checks = [
            (self.method in METHODS, f"method must be one of {', '.join(METHODS)}"),
            (self.population in POPULATIONS, f"population: one of {', '.join(POPULATIONS)}"),
            (
                self.retired_means in RETIRED_MEANINGS,
                f"retired_means: one of {', '.join(RETIRED_MEANINGS)}",
            ),
            (self.tune_on in TUNE_ON, f"tune_on: one of {', '.join(TUNE_ON)}"),
            (
                self.few_shot_budget in FEW_SHOT_BUDGETS,
                f"few_shot_budget: one of {', '.join(FEW_SHOT_BUDGETS)}",
            ),
            (
                min(self.rounds, self.prompts_per_round, self.samples_per_prompt) >= 1,
                "rounds, prompts and samples must be at least 1",
            ),
            (min(self.parents_per_prompt, self.population_size) >= 1, "k and p must be >= 1"),
            (0 < self.alpha <= 1, "alpha must be in (0, 1]"),
        ]
        for ok, message in checks:
            if not ok:
                raise ValueError(message)


@dataclass(frozen=True)
class Plan:
    """The rounds a method runs, and its budget: the naive few-shot baseline is one round
    (steps 7-12 of Algorithm 1 ablated, T = 1) with the same total number of samples."""

    rounds: int
    prompts_per_round: int
    samples_per_prompt: int
    tune: bool

    @property
    def samples(self) -> int:
        return self.rounds * self.prompts_per_round * self.samples_per_prompt


def plan(rules: Rules) -> Plan:
    if rules.method == "few-shot":
        if rules.few_shot_budget == MORE_SAMPLES:
            return Plan(1, rules.prompts_per_round, rules.rounds * rules.samples_per_prompt, False)
        return Plan(1, rules.rounds * rules.prompts_per_round, rules.samples_per_prompt, False)
    tune = rules.tuning_enabled and rules.method in ("evoprompting", "random-parents")
    return Plan(rules.rounds, rules.prompts_per_round, rules.samples_per_prompt, tune)


def ranked(members: list[Member]) -> list[Member]:
    """Best first; ties go to the earlier candidate, so the order is reproducible."""
    return sorted(members, key=lambda m: (-m.fitness, m.id))


def history(rules: Rules, scored: list[Member], before_round: int) -> list[Member]:
    """G as it stands when round `before_round` starts: every scored member of earlier
    rounds, the seeds only under `seeds-stay` (and for the mutation baseline, which is
    regularised evolution, not Algorithm 1)."""
    keep_seeds = rules.population == SEEDS_STAY or rules.method == "mutation"
    return [m for m in scored if m.round_index < before_round and (keep_seeds or not m.is_seed)]


def get_top(members: list[Member], p: int) -> list[Member]:
    """GETTOP(G, p): the p fittest."""
    return ranked(members)[:p]


def populations(
    rules: Rules, scored: list[Member], through_round: int, shown: dict[int, set[int]]
) -> dict[int, list[Member]]:
    """P for each round 1..through_round (each round's parents), computed from scratch so
    that a resumed search gets the same answer. `shown[r]`: ids shown as parents in round
    r's prompts (only the `shown` retirement rule reads it).

    Round 1: the seeds. Round r > 1: GETTOP(G, p), less the retired when retirement is on.
    A round whose rule leaves nobody keeps the previous round's P (the paper does not say;
    a search with no scored child would otherwise have no parents at all).
    """
    seeds = ranked([m for m in scored if m.is_seed])
    out: dict[int, list[Member]] = {}
    retired: set[int] = set()
    for r in range(1, through_round + 1):
        if r == 1:
            pool = get_top(seeds, rules.population_size)  # INITIALIZEPOPULATION(p)
        else:
            prev = out[r - 1]
            if rules.retire_parents:
                if rules.retired_means == SELECTED:
                    retired |= {m.id for m in prev}
                else:
                    retired |= shown.get(r - 1, set())
            candidates = [m for m in history(rules, scored, r) if m.id not in retired]
            pool = get_top(candidates, rules.population_size) or prev
        out[r] = pool
    return out


def parent_pool(
    rules: Rules, scored: list[Member], r: int, shown: dict[int, set[int]] | None = None
) -> list[Member]:
    """Who may be a parent in round r (r >= 1), by method.

    - evoprompting, evoprompting-no-tuning: P of Algorithm 1 (see `populations`).
    - random-parents: GETTOP ablated (step 10): parents uniformly from the whole of G
      (round 1: the seeds).
    - few-shot: the seeds (2-shot prompts from random seeds).
    """
    seeds = ranked([m for m in scored if m.is_seed])
    if rules.method == "few-shot" or (r == 1 and rules.method == "random-parents"):
        return seeds
    if rules.method == "random-parents":
        return ranked(history(rules, scored, r)) or seeds
    return populations(rules, scored, r, shown or {})[r]


def prompt_rng(search_seed: int, r: int, i: int) -> random.Random:
    """The generator of prompt i of round r: the same draws on every resume."""
    return random.Random(f"{search_seed}:{r}:{i}")


def draw_parents(pool: list[Member], k: int, rng: random.Random) -> list[Member]:
    """Algorithm 2, line 5: k parents i.i.d. uniformly from P (with replacement)."""
    if not pool:
        raise ValueError("no parent to draw from: nothing was scored")
    return [rng.choice(pool) for _ in range(k)]


def tuning_set(
    rules: Rules, round_children: list[Member], next_parents: list[Member]
) -> list[Member]:
    """Algorithm 1, line 11: TRAIN on C_evaled minus P (the round's scored children that
    the next round does not take as parents); `all`: every scored child of the round."""
    if rules.tune_on == ALL:
        return list(round_children)
    chosen = {m.id for m in next_parents}
    return [m for m in round_children if m.id not in chosen]


def result(rules: Rules, scored: list[Member]) -> list[Member]:
    """Line 15: GETTOP(G, p), the best children (seeds too under `seeds-stay`)."""
    return get_top(history(rules, scored, before_round=10**9), rules.population_size)
