"""Algorithm 1's rules (arXiv 2302.14838, section 3.3), one test per rule, on plain data.

controller/population.py has no I/O, so every rule is checked here without a service:
the pool, the parent draws, retirement, the alpha filter, the tuning set, the budget,
the result, and each baseline's one difference from the full method.
"""

import random
from collections import Counter

import pytest

from controller import population as pop
from controller.population import Member, Rules

SEEDS = [Member(1, 0, -500.0), Member(2, 0, -900.0), Member(3, 0, -300.0), Member(4, 0, -700.0)]


def children(round_index: int, first_id: int, fitnesses: list[float]) -> list[Member]:
    return [Member(first_id + i, round_index, f) for i, f in enumerate(fitnesses)]


ROUND1 = children(1, 10, [-100.0, -800.0, -50.0, -2000.0])
ROUND2 = children(2, 20, [-40.0, -600.0, -90.0])
SCORED = SEEDS + ROUND1 + ROUND2


def ids(members: list[Member]) -> list[int]:
    return [m.id for m in members]


def test_fitness_is_minus_size_times_error() -> None:
    assert pop.fitness(6000, 0.09) == pytest.approx(-540.0)  # the paper's example
    assert pop.fitness(100, 0.1) > pop.fitness(1000, 0.1) > pop.fitness(1000, 0.2)


def test_alpha_filter_keeps_only_errors_below_alpha() -> None:
    assert pop.passes_alpha(0.49, 0.5)
    assert not pop.passes_alpha(0.5, 0.5)  # "if c.error < alpha": equal is dropped
    assert not pop.passes_alpha(0.9, 0.5)


def test_round_one_parents_are_the_seeds() -> None:
    rules = Rules(population_size=10)
    assert ids(pop.parent_pool(rules, SCORED, 1)) == [3, 1, 4, 2]  # all seeds, best first
    assert ids(pop.parent_pool(Rules(population_size=2), SCORED, 1)) == [3, 1]


def test_paper_population_holds_children_only_after_round_one() -> None:
    rules = Rules(population_size=3)
    # Round 2: GETTOP(G, p) with G = round 1's scored children; the seeds are gone even
    # though seed 3 (-300) beats child 11 (-800).
    assert ids(pop.parent_pool(rules, SCORED, 2)) == [12, 10, 11]
    # Round 3: the top p of every child scored so far.
    assert ids(pop.parent_pool(rules, SCORED, 3)) == [20, 12, 22]
    for r in (2, 3):
        assert not any(m.is_seed for m in pop.parent_pool(rules, SCORED, r))


def test_seeds_stay_population_keeps_seeds_competing() -> None:
    rules = Rules(population_size=3, population=pop.SEEDS_STAY)
    assert ids(pop.parent_pool(rules, SCORED, 2)) == [12, 10, 3]


def test_the_pool_only_sees_earlier_rounds() -> None:
    rules = Rules(population_size=10)
    assert set(ids(pop.parent_pool(rules, SCORED, 2))) == set(ids(ROUND1))


def test_the_search_returns_the_best_children() -> None:
    rules = Rules(population_size=3)
    assert ids(pop.result(rules, SCORED)) == [20, 12, 22]
    best_is_a_seed = SEEDS + children(1, 10, [-5000.0])
    assert ids(pop.result(rules, best_is_a_seed)) == [10]  # a seed is never the result
    assert pop.result(rules, SEEDS) == []  # no child scored: GETTOP of an empty G
    assert ids(pop.result(Rules(population_size=2, population=pop.SEEDS_STAY), best_is_a_seed)) == [
        3,
        1,
    ]


def test_parents_are_drawn_uniformly_with_replacement() -> None:
    pool = SEEDS
    rng = random.Random(0)
    draws = [pop.draw_parents(pool, 2, rng) for _ in range(4000)]
    counts = Counter(m.id for pair in draws for m in pair)
    assert set(counts) == {1, 2, 3, 4}
    assert all(abs(n / 8000 - 0.25) < 0.03 for n in counts.values())  # uniform
    assert any(a.id == b.id for a, b in draws)  # with replacement: a pair can repeat
    with pytest.raises(ValueError, match="nothing was scored"):
        pop.draw_parents([], 2, rng)


def test_draws_are_seeded_by_search_round_and_prompt() -> None:
    def draw(seed: int, r: int, i: int) -> list[int]:
        return ids(pop.draw_parents(SCORED, 2, pop.prompt_rng(seed, r, i)))

    assert draw(7, 2, 3) == draw(7, 2, 3)  # a resumed search draws the same
    assert len({tuple(draw(7, 2, i)) for i in range(20)}) > 5


def test_retirement_removes_selected_parents_for_good() -> None:
    rules = Rules(population_size=2, retire_parents=True)
    p = pop.populations(rules, SCORED, 3, shown={})
    assert ids(p[1]) == [3, 1]
    assert ids(p[2]) == [12, 10]  # seeds retired (and not in G anyway)
    assert ids(p[3]) == [20, 22]  # 12 and 10 were selected in round 2: retired
    without = pop.populations(Rules(population_size=2), SCORED, 3, shown={})
    assert ids(without[3]) == [20, 12]


def test_retirement_of_shown_parents_reads_the_prompts() -> None:
    rules = Rules(population_size=2, retire_parents=True, retired_means=pop.SHOWN)
    # Only 12 was shown in a round-2 prompt: 12 retires, 10 may come back.
    p = pop.populations(rules, SCORED, 3, shown={1: {1, 3}, 2: {12}})
    assert ids(p[3]) == [20, 22]
    p = pop.populations(rules, [*SCORED, Member(30, 2, -95.0)], 3, shown={2: {20, 12}})
    assert ids(p[3]) == [22, 30]


def test_an_empty_round_keeps_the_previous_parents() -> None:
    rules = Rules(population_size=3)
    assert ids(pop.parent_pool(rules, SEEDS, 2)) == [3, 1, 4]
    retired_all = Rules(population_size=10, retire_parents=True)
    only = SEEDS + ROUND1
    assert ids(pop.populations(retired_all, only, 3, {})[3]) == ids(
        pop.populations(retired_all, only, 3, {})[2]
    )


def test_tuning_set_is_the_round_children_not_chosen_as_parents() -> None:
    rules = Rules(population_size=2)
    next_parents = pop.parent_pool(rules, SCORED, 2)
    assert ids(pop.tuning_set(rules, ROUND1, next_parents)) == [11, 13]
    everything = Rules(population_size=2, tune_on=pop.ALL)
    assert ids(pop.tuning_set(everything, ROUND1, next_parents)) == ids(ROUND1)


def test_plan_of_the_full_method_and_its_ablations() -> None:
    full = pop.plan(Rules())
    assert (full.rounds, full.prompts_per_round, full.samples_per_prompt, full.tune) == (
        10,
        10,
        16,
        True,
    )
    assert full.samples == 1600
    assert not pop.plan(Rules(method="evoprompting-no-tuning")).tune  # step 11 ablated
    assert not pop.plan(Rules(tuning_enabled=False)).tune
    assert pop.plan(Rules(method="random-parents")).tune


def test_few_shot_spends_the_same_budget_in_one_round() -> None:
    paper = pop.plan(Rules(method="few-shot"))
    assert (paper.rounds, paper.prompts_per_round, paper.samples_per_prompt) == (1, 10, 160)
    assert not paper.tune and paper.samples == pop.plan(Rules()).samples
    spread = pop.plan(Rules(method="few-shot", few_shot_budget=pop.MORE_PROMPTS))
    assert (spread.rounds, spread.prompts_per_round, spread.samples_per_prompt) == (1, 100, 16)


def test_few_shot_draws_from_the_seeds_only() -> None:
    rules = Rules(method="few-shot")
    assert set(ids(pop.parent_pool(rules, SCORED, 1))) == {1, 2, 3, 4}


def test_random_parents_draws_from_the_whole_history() -> None:
    rules = Rules(method="random-parents", population_size=2)
    assert set(ids(pop.parent_pool(rules, SCORED, 1))) == {1, 2, 3, 4}
    # GETTOP ablated: every scored child is a possible parent, not only the top p.
    assert set(ids(pop.parent_pool(rules, SCORED, 3))) == set(ids(ROUND1 + ROUND2))


def test_the_mutation_baseline_keeps_its_seeds() -> None:
    rules = Rules(method="mutation", population_size=2)
    assert ids(pop.result(rules, SEEDS)) == [3, 1]


def test_rules_validate_themselves() -> None:
    with pytest.raises(ValueError, match="population"):
        Rules(population="elitist")
    with pytest.raises(ValueError, match="alpha"):
        Rules(alpha=0)
    with pytest.raises(ValueError, match="few_shot_budget"):
        Rules(few_shot_budget="lots")


def test_a_config_stored_before_these_keys_resumes_with_the_earlier_rules() -> None:
    import json

    from controller.config import SMALL_MODEL_STOP, SearchConfig

    old = json.loads(SearchConfig().to_json())
    del old["evolution"]["population"], old["evolution"]["retired_means"]
    del old["evolution"]["few_shot_budget"]
    del old["proposer"]["top_p"], old["proposer"]["stop"], old["proposer"]["prompt_header"]
    resumed = SearchConfig.from_json(json.dumps(old))
    assert resumed.evolution.population == pop.SEEDS_STAY
    assert resumed.evolution.retired_means == pop.SHOWN
    assert resumed.evolution.few_shot_budget == pop.MORE_PROMPTS
    assert (resumed.proposer.top_p, resumed.proposer.stop) == (0.95, SMALL_MODEL_STOP)
    assert resumed.proposer.prompt_header
    fresh = SearchConfig.from_json(SearchConfig().to_json())
    assert fresh.evolution.population == pop.PAPER and fresh.proposer.top_p == 1.0
