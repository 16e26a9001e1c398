"""The task grammars: every seed parses under its task's grammar, in Lark and in llguidance
(with the embedded model's own tokens), and the two phases make an attribute that
`__init__` never assigned impossible in `forward`."""

import importlib.util

import pytest
from evo.v1 import trainer_pb2

from controller import sampling
from services.proposer import grammar
from services.trainer import server as trainer_server
from services.trainer.tasks.base import Task
from services.trainer.tasks.clrs import SPACES, Clrs
from services.trainer.tasks.mnist1d import Mnist1d

MNIST = Mnist1d()
FORWARD = "    def forward(self, x):"


def completions(task: Task) -> list[tuple[str, str]]:
    """Each seed as the model would write it: the text after the program opening."""
    out = []
    for name, code in task.seeds():
        assert task.program_opening in code, name
        out.append((name, code[code.index(task.program_opening) + len(task.program_opening) :]))
    return out


def clrs_task(space: str = "paper") -> Task:
    """The CLRS task's grammar and seeds need no dm-clrs: only the search space's
    attributes (the paper's signature, or dm-clrs's with `triplet=dmclrs`)."""
    task = Clrs.__new__(Clrs)
    task.program_opening, task.seed_package, task.prompt_header = SPACES[space]
    task.grammar_version = "clrs-jax-v1" if space == "dmclrs" else ""
    return task


@pytest.mark.parametrize("task", [MNIST, clrs_task("dmclrs")], ids=["mnist1d", "clrs-dmclrs"])
def test_every_seed_parses_under_its_task_grammar(task: Task) -> None:
    text = task.grammar()
    assert text and task.grammar_version in text.splitlines()[0]
    seeds = [(n, c) for n, c in task.seeds()]
    assert seeds
    assert grammar.seed_errors(text, task.program_opening, seeds) == []


def test_the_grammar_rejects_what_a_child_may_not_write() -> None:
    text = MNIST.grammar()
    (_, cnn), *_ = [s for s in completions(MNIST) if s[0] == "cnn"]
    for wrong in [
        cnn.replace("nn.Conv1d(1, channels, 5,", "nn.Conv1d(1, channels, kernel=5,"),
        cnn.replace("nn.Linear(channels * 5, 10)", "nn.Lambda(lambda h: h)"),
        cnn.replace("F.relu(self.conv2(h))", "F.relu(self.conv2(h)"),  # unclosed
        cnn + "\nclass Other(nn.Module):\n    pass\n",
    ]:
        assert grammar.parse_error(text, wrong), wrong


def test_phase_two_allows_only_the_attributes_init_assigned() -> None:
    text = MNIST.grammar()
    (_, cnn), *_ = [s for s in completions(MNIST) if s[0] == "cnn"]
    head, forward = cnn.split(FORWARD)
    head += FORWARD
    assert grammar.assigned_attributes(head) == ["conv1", "conv2", "conv3", "linear"]
    assert grammar.parse_error(grammar.phase1(text), head) == ""
    second = grammar.phase2(text, head)
    assert grammar.parse_error(second, forward) == ""
    undefined = forward.replace("self.conv3(h)", "self.conv4(h)")
    assert grammar.parse_error(text, head + undefined) == "", "one phase cannot see it"
    assert grammar.parse_error(second, undefined), "two phases make it impossible"


def test_a_grammar_that_rejects_a_seed_is_a_clear_error() -> None:
    task = trainer_server.task_info("mnist1d")
    assert task.grammar_version == "mnist1d-pytorch-v2" and task.grammar == MNIST.grammar()
    narrowed = task.grammar.replace('"GRU" | "LSTM" | "RNN"', '"LSTM" | "RNN"')
    with pytest.raises(RuntimeError, match=r"rejects seeds of task mnist1d: seed gru"):
        sampling.check_seeds(narrowed, "mnist1d-pytorch-v0", task)
    with pytest.raises(RuntimeError, match="not valid Lark"):
        sampling.check_seeds("start: (", "broken", task)


def test_task_info_carries_the_grammar() -> None:
    info = trainer_server.task_info("mnist1d")
    assert isinstance(info, trainer_pb2.TaskInfo)
    assert info.grammar.startswith("// mnist1d-pytorch-v2")


@pytest.fixture(scope="module")
def lltokenizer():  # type: ignore[no-untyped-def]
    """llguidance's view of the embedded model's vocabulary, through llama.cpp."""
    if importlib.util.find_spec("xllamacpp") is None:
        pytest.skip("needs xllamacpp (the lm extra): its llama.cpp reads the vocabulary")
    from services.proposer import model_files
    from services.proposer.backends import llama_c

    lib = llama_c.load()
    params = lib.llama_model_default_params()
    params.vocab_only = True
    model = lib.llama_model_load_from_file(str(model_files.default_gguf()).encode(), params)
    assert model
    yield llama_c.lltokenizer(lib, lib.llama_model_get_vocab(model))
    lib.llama_model_free(model)


@pytest.mark.parametrize("task", [MNIST, clrs_task("dmclrs")], ids=["mnist1d", "clrs-dmclrs"])
def test_llguidance_accepts_every_seed_token_by_token(task: Task, lltokenizer) -> None:  # type: ignore[no-untyped-def]
    compiled = grammar.Compiled.of(task.grammar())
    for name, body in completions(task):
        c = grammar.Constraint(compiled, lltokenizer)
        # Sampled phase by phase: no token spans the end of phase 1 (forward's colon).
        cut = body.index(FORWARD) + len(FORWARD) if compiled.phases == 2 else len(body)
        tokens = lltokenizer.tokenize_str(body[:cut]) + lltokenizer.tokenize_str(body[cut:])
        for token in tokens:
            assert c.allowed()[token], f"{name}: {lltokenizer.decode_str([token])!r} masked"
            c.consume(token)
            assert not c.error, name
        assert c.done, name
        assert c.phase == compiled.phases


def test_the_mask_forbids_an_undefined_attribute(lltokenizer) -> None:  # type: ignore[no-untyped-def]
    c = grammar.Constraint(grammar.Compiled.of(MNIST.grammar()), lltokenizer)
    (_, cnn), *_ = [s for s in completions(MNIST) if s[0] == "cnn"]
    prefix = cnn[: cnn.index("self.conv1(x)")] + "self."
    for token in lltokenizer.tokenize_str(prefix):
        c.consume(token)
    assert c.phase == 2 and not c.error
    allowed = c.allowed()
    assert allowed[lltokenizer.tokenize_str("conv")[0]]
    assert not allowed[lltokenizer.tokenize_str("fc")[0]], "no attribute fc was assigned"


def refused_at(c: grammar.Constraint, text: str, lltokenizer) -> str | None:  # type: ignore[no-untyped-def]
    """The text consumed before the first token the mask refuses, or None if none is."""
    done: list[int] = []
    for token in lltokenizer.tokenize_str(text):
        if not c.allowed()[token]:
            return lltokenizer.decode_str(done)
        c.consume(token)
        assert not c.error
        done.append(token)
    return None


def test_statements_complete_outside_brackets_and_docstrings() -> None:
    text = (
        '\n    """A docstring (with an open bracket."""\n'
        "        channels = 25\n"
        "        self.layers = nn.Sequential(\n            nn.Linear(channels, 10),\n"
    )
    assert grammar.scope(1, text) == {"init_attr": [], "init_local": ["channels"]}
    text += "        )\n"
    assert grammar.scope(1, text) == {"init_attr": ["layers"], "init_local": ["channels"]}
    assert grammar.scope(2, "\n        h, c = self.rnn(x)\n        y") == {
        "defined_local": ["x", "h", "c"]
    }


@pytest.mark.parametrize(
    ("seed", "old", "new", "before"),
    [
        # __init__ reads a local before the statement that assigns it.
        ("cnn", "        channels = 25\n", "", "nn.Conv1d(1, "),
        # __init__ reads an attribute before it is set.
        ("gru", "        self.hidden_size = 6\n", "", "nn.GRU(1, "),
        # forward reads a local no statement assigned...
        ("cnn", "h = F.relu(self.conv2(h))", "h = F.relu(self.conv2(y))", "self.conv2("),
        # ...or one of __init__'s locals, which forward cannot see.
        ("cnn", "x.view(-1, 1, x.shape[-1])", "x.view(-1, 1, channels)", "x.view(-1, 1, "),
    ],
    ids=["init-local", "init-attribute", "forward-local", "init-local-in-forward"],
)
def test_the_mask_forbids_reading_a_name_before_it_is_assigned(
    lltokenizer,  # type: ignore[no-untyped-def]
    seed: str,
    old: str,
    new: str,
    before: str,
) -> None:
    body = dict(completions(MNIST))[seed]
    compiled = grammar.Compiled.of(MNIST.grammar())
    assert refused_at(grammar.Constraint(compiled, lltokenizer), body, lltokenizer) is None
    assert old in body
    wrong = body.replace(old, new)
    head = wrong[: wrong.index(FORWARD) + len(FORWARD)]
    c = grammar.Constraint(compiled, lltokenizer)
    if wrong.index(before) > len(head):  # phase by phase, as sampled
        assert refused_at(c, head, lltokenizer) is None
        prefix = head + refused_at(c, wrong[len(head) :], lltokenizer)
    else:
        prefix = refused_at(c, wrong, lltokenizer)
    # (A token may carry the space or the dot before the name.)
    assert prefix is not None and prefix.endswith(before.rstrip(" .")), prefix


def test_a_search_pinned_to_the_first_grammar_still_samples(lltokenizer) -> None:  # type: ignore[no-untyped-def]
    """Searches store their grammar's text: v1 (no scope rules) is sampled as it was."""
    from importlib import resources

    v1 = (
        resources.files("services.trainer.tasks") / "grammars" / "mnist1d-pytorch-v1.lark"
    ).read_text()
    compiled = grammar.Compiled.of(v1)
    body = dict(completions(MNIST))["cnn"]
    c = grammar.Constraint(compiled, lltokenizer)
    assert not c.scoped
    head = body[: body.index(FORWARD) + len(FORWARD)]
    assert refused_at(c, head, lltokenizer) is None
    assert refused_at(c, body[len(head) :], lltokenizer) is None
    assert c.done and c.phase == 2
