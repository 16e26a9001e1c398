"""The `mutation` baseline's operator: children parse, differ, and mostly still build."""

import ast
import random

import pytest
import torch

from controller.mutations import KINDS, Mutation, mutate
from services.trainer.tasks.mnist1d import Mnist1d

torch.set_num_threads(1)

SEEDS = dict(Mnist1d().seeds())
RUNS = 30


def builds(code: str) -> bool:
    """Whether the program builds a Model that maps (3, 40) to (3, 10) logits."""
    namespace: dict[str, object] = {}
    try:
        exec(compile(code, "<child>", "exec"), namespace)
        model = namespace["Model"]()  # type: ignore[operator]
        with torch.no_grad():
            return tuple(model(torch.zeros(3, 40)).shape) == (3, 10)
    except Exception:
        return False


def normalised(code: str) -> str:
    return ast.unparse(ast.parse(code))


@pytest.fixture(scope="module")
def children() -> dict[str, list[Mutation]]:
    """RUNS children of every seed, one per rng seed."""
    result: dict[str, list[Mutation]] = {}
    for name, code in SEEDS.items():
        mutations = [mutate(code, random.Random(i)) for i in range(RUNS)]
        assert all(m is not None for m in mutations), name
        result[name] = [m for m in mutations if m is not None]
    return result


def test_the_four_seeds_are_there() -> None:
    assert set(SEEDS) == {"mlp", "cnn", "gru", "large_cnn"}
    assert all(builds(code) for code in SEEDS.values())


@pytest.mark.parametrize("name", sorted(SEEDS))
def test_children_parse_differ_and_mostly_build(
    name: str, children: dict[str, list[Mutation]]
) -> None:
    seed = normalised(SEEDS[name])
    for child in children[name]:
        assert normalised(child.code) != seed, child.description
        assert child.description.split()[0] in KINDS
    built = sum(builds(child.code) for child in children[name])
    assert built >= 0.8 * RUNS, f"{name}: only {built} of {RUNS} children build"


def test_every_kind_of_mutation_appears(children: dict[str, list[Mutation]]) -> None:
    seen = {m.description.split()[0] for ms in children.values() for m in ms}
    assert seen == set(KINDS)


def test_width_changes_every_use_of_the_hidden_size() -> None:
    rng = random.Random(0)
    widths: list[Mutation] = []
    while len(widths) < 5:
        child = mutate(SEEDS["mlp"], rng)
        if child and child.description.startswith("width"):
            widths.append(child)
    for child in widths:
        old, new = child.description.removeprefix("width ").split(" -> ")
        assert old == "100"
        assert child.code.count(f"({new}, {new})") == 1, child.code
        assert f"(40, {new})" in child.code and f"({new}, 10)" in child.code
        assert "100" not in child.code
        assert builds(child.code)


def test_width_leaves_derived_and_fixed_numbers_alone() -> None:
    for i in range(10):
        child = mutate(SEEDS["cnn"], random.Random(i))
        assert child is not None
        if child.description.startswith("width"):
            assert "channels * 5, 10)" in child.code
            assert "channels = 25" not in child.code
    child = mutate(SEEDS["gru"], random.Random(0))
    assert child is not None and child.description.startswith("width 6 ->")
    assert "2 * self.hidden_size * 40" in child.code


def test_kernel_change_keeps_same_padding() -> None:
    code = (
        SEEDS["cnn"]
        .replace("3, stride=2, padding=1", "3, padding=1")
        .replace("channels * 5", "channels * 10")
    )
    code = code.replace("5, stride=2, padding=1", "5, stride=4, padding=2")
    assert builds(code)
    for i in range(40):
        child = mutate(code, random.Random(i))
        if child and child.description.startswith("kernel"):
            assert builds(child.code), child.description


def test_same_rng_seed_same_child() -> None:
    for code in SEEDS.values():
        assert mutate(code, random.Random(7)) == mutate(code, random.Random(7))


@pytest.mark.parametrize(
    "code",
    [
        "import torch.nn as nn\n\n\nclass Model(nn.Module):\n"
        "    def forward(self, x): return x[:, :10]\n",
        "class Model(nn.Module:\n    pass\n",
        "",
        "\x00",
    ],
)
def test_nothing_to_mutate_gives_none(code: str) -> None:
    assert mutate(code, random.Random(0)) is None


def test_chained_mutations_keep_parsing() -> None:
    code, rng = SEEDS["cnn"], random.Random(1)
    for _ in range(10):
        child = mutate(code, rng)
        assert child is not None
        ast.parse(child.code)
        assert normalised(child.code) != normalised(code)
        code = child.code


def test_activation_swaps_keep_their_form() -> None:
    rng = random.Random(3)
    for _ in range(40):
        child = mutate(SEEDS["mlp"], rng)
        assert child is not None
        if child.description.startswith("activation"):
            assert "F." not in child.code  # module form stays module form
    code = SEEDS["gru"].replace(
        "h, _ = self.rnn(x, h0)", "h, _ = self.rnn(x, h0)\n        h = torch.relu(h)"
    )
    for i in range(20):
        child = mutate(code, random.Random(i))
        assert child is not None
        assert builds(child.code), child.description
