"""Statement checks on meta tensors (services/proposer/meta_check.py) and how a constraint
takes back a statement that cannot run (grammar.Constraint with check_statements)."""

import re
from pathlib import Path

import pytest

from services.proposer import grammar, meta_check
from services.trainer.tasks.mnist1d import Mnist1d
from tests.test_grammars import FORWARD, completions

MNIST = Mnist1d()
SPEC = meta_check.Spec((2, 40), (2, 10))


def run(init: str, forward: str = "") -> meta_check.Verdict:
    """Check a child's `__init__` body and `forward` body (statements, 8-space indented)."""
    return meta_check.check(
        SPEC, grammar.complete_statements(init), grammar.complete_statements(forward)
    )


def halves(body: str) -> tuple[str, str]:
    init, forward = body.split(FORWARD)
    return init, forward


def test_the_grammar_asks_for_the_check_with_its_directive() -> None:
    assert MNIST.grammar_version == "mnist1d-pytorch-v3"
    assert meta_check.Spec.of_grammar(MNIST.grammar()) == SPEC
    v2 = Path(grammar.__file__).parents[1] / "trainer/tasks/grammars/mnist1d-pytorch-v2.lark"
    assert meta_check.Spec.of_grammar(v2.read_text()) is None
    assert grammar.Compiled.of(MNIST.grammar()).check == SPEC


@pytest.mark.parametrize("seed", ["cnn", "gru", "large_cnn", "mlp"])
def test_every_seed_runs_to_its_return_and_a_wrong_read_out_is_caught(seed: str) -> None:
    body = dict(completions(MNIST))[seed]
    assert run(*halves(body)).ok
    # Ten classes become eleven in the last layer: only the return statement fails, which
    # shows every statement before it was interpreted (none was waved through unjudged).
    wrong = re.sub(r", 10\)\n", ", 11)\n", body)
    assert wrong != body
    init, forward = halves(wrong)
    verdict = run(init, forward)
    statements = grammar.complete_statements(init) + grammar.complete_statements(forward)
    assert verdict.statement == len(statements) - 1
    assert statements[verdict.statement].strip().startswith("return ")
    assert "(2, 11)" in verdict.reason and "expected (2, 10)" in verdict.reason


@pytest.mark.parametrize(
    ("init", "forward", "failing", "reason"),
    [
        # A recurrent layer's input size against the view before it.
        (
            "        self.rnn = nn.GRU(4, 6, batch_first=True)\n",
            "        x = x.view(-1, 40, 1)\n        h, _ = self.rnn(x)\n",
            "h, _ = self.rnn(x)",
            "Expected 4, got 1",
        ),
        # Its initial state of the wrong shape.
        (
            "        self.rnn = nn.GRU(1, 6, batch_first=True)\n",
            "        x = x.view(-1, 40, 1)\n        h, _ = self.rnn(x, torch.zeros(2, 6))\n",
            "h, _ = self.rnn(x, torch.zeros(2, 6))",
            "hidden size (1, 2, 6)",
        ),
        # An int attribute called as a layer.
        ("        self.k = 5\n", "        x = self.k(x)\n", "x = self.k(x)", "not callable"),
        # One lazy layer applied to two shapes.
        (
            "        self.fc = nn.LazyLinear(10)\n",
            "        h = self.fc(x)\n        y = self.fc(x.view(2, 4, 10))\n",
            "y = self.fc(x.view(2, 4, 10))",
            "RuntimeError",
        ),
        # A view to a size the batch does not have.
        ("", "        x = x.view(-1, 10, 10)\n", "x = x.view(-1, 10, 10)", "invalid for input"),
        # A recurrent layer's output (a tuple) used as a tensor.
        (
            "        self.rnn = nn.GRU(40, 10)\n",
            "        h = self.rnn(x)\n        return h.view(2, 10)\n",
            "return h.view(2, 10)",
            "tuple has no attribute 'view'",
        ),
        # An attribute a layer does not have.
        (
            "        self.rnn = nn.GRU(40, 10)\n        n = self.rnn.shape\n",
            "",
            "n = self.rnn.shape",
            "has no attribute 'shape'",
        ),
        # A first Linear whose input is not MNIST-1D's 40.
        ("        self.fc = nn.Linear(100, 10)\n", "        return self.fc(x)\n", "", "100"),
    ],
    ids=["rnn-input", "rnn-state", "int-called", "lazy-twice", "view", "tuple", "attr", "linear"],
)
def test_what_the_embedded_model_gets_wrong_is_caught_at_its_statement(
    init: str, forward: str, failing: str, reason: str
) -> None:
    verdict = run(init, forward)
    assert not verdict.ok
    statements = grammar.complete_statements(init) + grammar.complete_statements(forward)
    if failing:
        assert statements[verdict.statement].strip() == failing
    assert reason in verdict.reason, verdict.reason


def test_numbers_are_bounded_and_nothing_is_executed(tmp_path: Path) -> None:
    started = __import__("time").perf_counter()
    assert "out of range" in run("        n = 10 ** 10 ** 10\n").reason
    assert "out of range" in run("        n = (1,) * 100000000\n").reason
    assert __import__("time").perf_counter() - started < 5
    marker = tmp_path / "ran"
    attempt = f"        self.a = __import__('os').system('touch {marker}')\n"
    assert "not defined" in run(attempt).reason
    assert "not defined" in run(f"        self.a = open('{marker}', 'w')\n").reason
    assert not marker.exists()
    # torch's own functions outside the short list are not judged, so never called.
    assert run(f"        t = torch.save(1, '{marker}')\n").ok
    assert not marker.exists()


def test_a_statement_that_is_not_python_is_caught() -> None:
    """The grammar's names may be keywords; Python's parser has the last word."""
    assert "not Python" in run("        for = 0\n").reason
    assert "not Python" in run("", "        x, in = self.rnn(x)\n").reason


def test_what_it_cannot_judge_is_accepted_and_so_is_all_after_it() -> None:
    assert run("", "        x = x.cuda()\n        x = x.view(-1, 10, 10)\n").ok
    # Statements checked before (index below first_new) are not judged again: one that was
    # kept although it failed leaves the rest unjudged rather than blamed.
    statements = ["        self.k = 5", "        y = self.k(1)"]
    assert meta_check.check(SPEC, statements, first_new=0).statement == 1
    assert meta_check.check(SPEC, [*statements, "        z = 3"], first_new=2).ok


def test_a_spec_validates_itself() -> None:
    with pytest.raises(ValueError, match="positive"):
        meta_check.Spec((2, 0), (2, 10))
    with pytest.raises(ValueError, match="input and an output"):
        meta_check.Spec((), (2, 10))


# ---------------------------------------------------------------- the constraint


@pytest.mark.parametrize(
    ("old", "new", "before"),
    [
        # A layer used as a value...
        ("h, _ = self.rnn(x, h0)", "h = F.relu(self.rnn)", "F.relu(self.rnn"),
        # ...or a size called as a layer.
        ("h, _ = self.rnn(x, h0)", "h = self.hidden_size(x)", "self.hidden_size"),
    ],
    ids=["layer-as-value", "size-as-layer"],
)
def test_forward_calls_layers_and_only_layers(lltokenizer, old: str, new: str, before: str) -> None:  # type: ignore[no-untyped-def]
    body = dict(completions(MNIST))["gru"]
    wrong = body.replace(old, new)
    cut = wrong.index(FORWARD) + len(FORWARD)
    c = grammar.Constraint(grammar.Compiled.of(MNIST.grammar()), lltokenizer)
    assert write(c, wrong[:cut], lltokenizer) == 0
    done: list[int] = []
    for token in lltokenizer.tokenize_str(wrong[cut:]):
        if not c.allowed()[token]:
            break
        c.consume(token)
        done.append(token)
    else:
        raise AssertionError("the mask took it all")
    assert lltokenizer.decode_str(done).endswith(before), lltokenizer.decode_str(done)


def feed(c: grammar.Constraint, text: str, tok) -> int:  # type: ignore[no-untyped-def]
    """Consume `text` token by token up to the first statement taken back; how many
    tokens were taken back then (0: none, all of `text` consumed)."""
    for token in tok.tokenize_str(text):
        assert c.allowed()[token], f"{tok.decode_str([token])!r} masked"
        c.consume(token)
        assert not c.error
        if rewound := c.take_rewind():
            return rewound
    return 0


def write(c: grammar.Constraint, body: str, tok) -> int:  # type: ignore[no-untyped-def]
    """Write the rest of `body` from where the constraint stands, phase by phase as sampled
    (no token spans forward's colon), up to the first statement taken back."""
    cut = body.index(FORWARD) + len(FORWARD)
    if c.phase == 1:
        done = len(c.phase_text)
        return feed(c, body[done:cut], tok) or feed(c, body[cut:], tok)
    return feed(c, body[cut + len(c.phase_text) :], tok)


def test_a_seed_is_sampled_without_any_statement_taken_back(lltokenizer) -> None:  # type: ignore[no-untyped-def]
    compiled = grammar.Compiled.of(MNIST.grammar())
    for name, body in completions(MNIST):
        c = grammar.Constraint(compiled, lltokenizer, check_statements=True)
        assert write(c, body, lltokenizer) == 0, name
        assert c.done and not c.rejected, name


def test_a_layer_given_the_wrong_input_size_is_written_again_with_the_right_one(
    lltokenizer,  # type: ignore[no-untyped-def]
) -> None:
    seed = dict(completions(MNIST))["gru"]
    body = seed.replace("nn.GRU(1, self.hidden_size", "nn.GRU(4, self.hidden_size")
    c = grammar.Constraint(grammar.Compiled.of(MNIST.grammar()), lltokenizer, check_statements=True)
    # The GRU is built for inputs of 4 and forward gives it steps of 1: at `h, _ = ...`
    # the sequence goes back into __init__ to the GRU...
    assert write(c, body, lltokenizer) > 0
    assert c.phase == 1 and "nn.GRU" not in bytes(c.phase_text).decode()
    assert "Expected 4, got 1" in c.rejected[-1]
    # ...and the text from there is forced: the GRU with input size 1, then the rest of
    # __init__ and forward as written, which now runs.
    for _ in range(100):
        tokens = c.forced()
        if not tokens or c.done:
            break
        for token in tokens[:64]:
            c.consume(token)
            assert c.take_rewind() == 0 and not c.error
    assert c.phase == 2 and [f[:3] for f in c.fixes] == [("rnn", None, 1)]
    text = lltokenizer.decode_str(c.phase1_tokens) + bytes(c.phase_text).decode()
    written = body[: body.index("        return ")]
    assert text.rstrip(" ") == written.replace("nn.GRU(4,", "nn.GRU(1,")
    # The read-out is sampled as usual.
    assert write(c, seed, lltokenizer) == 0 and c.done


def test_a_statement_that_cannot_run_is_taken_back_then_kept_when_retries_are_spent(
    lltokenizer,  # type: ignore[no-untyped-def]
) -> None:
    seed = dict(completions(MNIST))["cnn"]
    # Three channels of 40 from a batch of 40 numbers: no layer size can fix that view.
    body = seed.replace("x.view(-1, 1, x.shape[-1])", "x.view(-1, 3, x.shape[-1])")
    at = body.index("        x = x.view(")
    c = grammar.Constraint(grammar.Compiled.of(MNIST.grammar()), lltokenizer, check_statements=True)
    assert write(c, body[:at], lltokenizer) == 0
    kept = bytes(c.phase_text)
    # Taken back to the end of the statement before it, as if it never was.
    assert write(c, body, lltokenizer) > 0 and not c.done
    assert c.phase == 2 and bytes(c.phase_text) == kept
    assert "invalid for input of size 80" in c.rejected[-1]
    assert c.retrying and not c.fixes
    # Written the same way again and again, it is taken back a bounded number of times,
    # then kept (the trainer will report it).
    for _ in range(grammar.RETRIES_PER_STATEMENT + 2):
        if c.done:
            break
        write(c, body, lltokenizer)
    assert c.done and c.kept_failing == 1 and not c.retrying
    assert len(c.rejected) == grammar.RETRIES_PER_STATEMENT


def test_near_the_end_of_its_budget_a_child_is_closed_not_cut(lltokenizer) -> None:  # type: ignore[no-untyped-def]
    body = dict(completions(MNIST))["large_cnn"]
    compiled = grammar.Compiled.of(MNIST.grammar())
    first = lltokenizer.tokenize_str
    # __init__: two statements written and too few tokens left for a third.
    third = body.index("        self.conv2 = ")
    c = grammar.Constraint(compiled, lltokenizer, True, len(first(body[:third])) + 100)
    rewound = feed(c, body[:third], lltokenizer)
    assert c.closing is not None and c.closing[0] == "init_stmts"
    if rewound:  # the newline's token began the next indent: written again, then forward
        assert rewound == 1 and c.queue
        while c.phase == 1 and c.forced():
            for token in c.forced()[:64]:
                c.consume(token)
    else:
        assert not c.allowed()[first("        self")[0]]
        assert feed(c, "\n" + FORWARD, lltokenizer) == 0
    assert c.phase == 2
    init = lltokenizer.decode_str(c.phase1_tokens)
    # What was written stands; the statements stop where the budget ran low.
    assert init.endswith("\n" + FORWARD) and body.startswith(init[: -len(FORWARD)])
    # forward: one statement written and too few tokens left for more than the return.
    cut = body.index(FORWARD) + len(FORWARD)
    second = body.index("        x = self.pool(F.relu(")
    used = len(first(body[:cut])) + len(first(body[cut:second]))
    for attempt in ("return", "another statement"):
        # (A budget that closes forward alone: __init__ written under a large one.)
        c = grammar.Constraint(compiled, lltokenizer, True, 10_000)
        assert write(c, body[:cut], lltokenizer) == 0
        c.budget = used + grammar.CLOSE_FORWARD_AT - 5
        assert feed(c, body[cut:second], lltokenizer) == 0
        assert c.closing is not None and c.closing[0] == "forward_stmts"
        if attempt == "return":
            assert feed(c, "        return ", lltokenizer) == 0  # the return may come...
    with pytest.raises(AssertionError, match="masked"):  # ...and nothing else
        feed(c, "        x = x\n", lltokenizer)


def test_without_check_statements_nothing_is_taken_back(lltokenizer) -> None:  # type: ignore[no-untyped-def]
    """Backends that cannot rewind (the hf backend's logits processor) only mask."""
    body = dict(completions(MNIST))["cnn"].replace(
        "nn.Linear(channels * 5, 10)", "nn.Linear(channels * 4, 10)"
    )
    c = grammar.Constraint(grammar.Compiled.of(MNIST.grammar()), lltokenizer)
    assert write(c, body, lltokenizer) == 0
    assert c.done and not c.rejected
