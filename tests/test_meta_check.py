"""Statement checks on meta tensors (services/proposer/meta_check.py) and how a constraint
takes back a statement that cannot run (grammar.Constraint with check_statements)."""

import re
from pathlib import Path

import pytest

from services.common import codehash
from services.proposer import grammar, meta_check
from services.proposer.backends import base
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


def test_the_parameter_cap_is_the_trainers() -> None:
    """The proposer cannot import the trainer's limits (another service, another image), so
    the cap is written twice; this keeps the two the same."""
    from services.trainer.sandbox.base import Limits

    assert Limits().max_params == meta_check.MAX_PARAMS


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
        # A layer that takes the model over the trainer's cap (two demo children of
        # 200 million and 12 billion parameters): the layer's own statement fails.
        (
            "        self.fc = nn.Linear(40, 4000)\n        self.big = nn.Linear(4000, 5000)\n",
            "",
            "self.big = nn.Linear(4000, 5000)",
            "20,169,000 parameters, over the trainer's cap",
        ),
    ],
    ids=[
        *("rnn-input", "rnn-state", "int-called", "lazy-twice", "view", "tuple", "attr"),
        *("linear", "over-the-cap"),
    ],
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


@pytest.mark.parametrize(
    ("init", "forward", "fix", "patched"),
    [
        # A read-out after convolutions, built for the wrong input size.
        (
            "        self.conv = nn.Conv1d(1, 5, 3)\n        self.fc = nn.Linear(100, 10)\n",
            "        x = self.conv(x.view(-1, 1, 40))\n        return self.fc(x.flatten(1))\n",
            meta_check.SizeFix("fc", None, 190),
            "        self.fc = nn.Linear(190, 10)\n",
        ),
        # A read-out of the wrong width: its out_features.
        (
            "        self.fc = nn.Linear(40, 100)\n",
            "        return self.fc(x)\n",
            meta_check.SizeFix("fc", None, 10, argument=1),
            "        self.fc = nn.Linear(40, 10)\n",
        ),
        # The same as the last layer of an nn.Sequential.
        (
            "        self.net = nn.Sequential(nn.Linear(40, 32), nn.ReLU(), nn.Linear(32, 1))\n",
            "        return self.net(x)\n",
            meta_check.SizeFix("net", 2, 10, argument=1),
            "        self.net = nn.Sequential(nn.Linear(40, 32), nn.ReLU(), nn.Linear(32, 10))\n",
        ),
    ],
    ids=["input-size", "read-out-width", "sequential-read-out"],
)
def test_a_size_that_does_not_fit_comes_with_its_fix(
    init: str, forward: str, fix: meta_check.SizeFix, patched: str
) -> None:
    verdict = run(init, forward)
    assert not verdict.ok and verdict.fix == fix, verdict
    (statement,) = [
        s + "\n" for s in grammar.complete_statements(init) if f"self.{fix.attribute}" in s
    ]
    assert meta_check.patch_statement(statement, fix) == patched
    fixed = init.replace(statement, patched)
    assert run(fixed, forward).ok


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


def force(c: grammar.Constraint) -> list[str]:
    """Consume the tokens the constraint forces, as the sampler does (they are not sampled),
    until it forces none; the reasons of what was taken back meanwhile."""
    taken_back = []
    for _ in range(200):
        tokens = c.forced()
        if not tokens or c.done:
            break
        for token in tokens[:64]:
            c.consume(token, sampled=False)
            assert not c.error
            if c.take_rewind():
                taken_back.append(c.rejected[-1])
    return taken_back


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
    assert force(c) == []
    assert c.phase == 2 and [f[:3] for f in c.fixes] == [("rnn", None, 1)]
    text = lltokenizer.decode_str(c.phase1_tokens) + bytes(c.phase_text).decode()
    written = body[: body.index("        return ")]
    assert text.rstrip(" ") == written.replace("nn.GRU(4,", "nn.GRU(1,")
    # The read-out is sampled as usual.
    assert write(c, seed, lltokenizer) == 0 and c.done


def test_a_statement_that_cannot_run_is_taken_back_then_left_out_when_retries_are_spent(
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
    # then left out: forward is closed before it, and only its return may come.
    for _ in range(grammar.RETRIES_PER_STATEMENT):
        assert write(c, body, lltokenizer) > 0
    assert len(c.rejected) == grammar.RETRIES_PER_STATEMENT + 1
    assert c.rejected[-1].startswith("left out: ") and bytes(c.phase_text) == kept
    assert c.closing == ("forward_stmts", grammar.NOTHING)  # no statement but the return
    written = bytes(c.phase_text).decode()
    # A return on the batch as it comes: the read-out is rebuilt for 40 inputs.
    assert feed(c, "\n        return self.linear(x)\n"[len(written) :], lltokenizer) > 0
    assert [f[:3] for f in c.fixes] == [("linear", None, 40)]


def test_a_statement_that_cannot_be_left_out_is_kept_when_retries_are_spent(
    lltokenizer,  # type: ignore[no-untyped-def]
) -> None:
    """`__init__` needs a statement: its only one is kept, failing (the trainer reports it)."""
    body = dict(completions(MNIST))["mlp"]
    first = "        self.embed = nn.Sequential(nn.Linear(40, 100), nn.ReLU())\n"
    assert first in body
    init = body[: body.index(first) + len(first)].replace("(40, ", "(-1, ")
    c = grammar.Constraint(grammar.Compiled.of(MNIST.grammar()), lltokenizer, check_statements=True)
    for _ in range(grammar.RETRIES_PER_STATEMENT + 1):
        if not feed(c, init[len(c.phase_text) :], lltokenizer):
            break
    assert c.kept_failing == 1 and len(c.rejected) == grammar.RETRIES_PER_STATEMENT
    assert "negative dimension" in c.rejected[-1] and not c.retrying


def test_an_init_that_assigns_no_layer_is_taken_back_as_it_ends(lltokenizer) -> None:  # type: ignore[no-untyped-def]
    """Sizes and flags only (the model copies the GRU seed's `self.hidden_size = 6` and
    stops): nothing to train, and a forward that can call nothing."""
    body = dict(completions(MNIST))["gru"]
    head = body[: body.index("        super().__init__()\n") + len("        super().__init__()\n")]
    layerless = head + "        self.hidden_size = 6\n\n" + FORWARD
    c = grammar.Constraint(grammar.Compiled.of(MNIST.grammar()), lltokenizer, check_statements=True)
    assert feed(c, layerless, lltokenizer) > 0
    assert c.phase == 1 and c.rejected[-1].startswith("__init__ assigns no layer")
    kept = bytes(c.phase_text).decode()
    assert head.startswith(kept) or kept.rstrip(" ") == head
    # With a layer it goes on to forward.
    rest = (head + "        self.fc = nn.Linear(40, 10)\n\n" + FORWARD)[len(kept) :]
    assert feed(c, rest, lltokenizer) == 0 and c.phase == 2


def test_a_statement_that_runs_on_is_taken_back(lltokenizer) -> None:  # type: ignore[no-untyped-def]
    """The 135M model nests a call in itself until its budget ends (`self.f(self.f(...`);
    a statement longer than any the grammar needs is taken back before it is complete."""
    body = dict(completions(MNIST))["cnn"]
    cut = body.index("        return ")
    forward = body[body.index(FORWARD) + len(FORWARD) : cut] + "        return "
    runaway = forward + "self.linear(" * 40  # forward's text, as phase 2 sees it
    c = grammar.Constraint(grammar.Compiled.of(MNIST.grammar()), lltokenizer, check_statements=True)
    assert write(c, body[:cut], lltokenizer) == 0
    kept = bytes(c.phase_text)
    assert feed(c, runaway[len(kept) :], lltokenizer) > 0
    assert bytes(c.phase_text) == kept and c.retrying
    assert c.rejected == [f"a statement longer than {grammar.MAX_STATEMENT_TOKENS[2]} tokens"]
    # Again and again: then forward ends before the statement before the return (a return
    # cannot be left out), and the return comes next.
    for _ in range(grammar.RETRIES_PER_STATEMENT):
        assert feed(c, runaway[len(c.phase_text) :], lltokenizer) > 0
    assert c.rejected[-1].startswith("left out: a statement longer than")
    assert c.closing is not None and c.closing[0] == "forward_stmts"
    assert len(grammar.complete_statements(bytes(c.phase_text).decode())) < len(
        grammar.complete_statements(kept.decode())
    )


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


def test_a_statement_over_several_lines_is_not_closed_in_the_middle(lltokenizer) -> None:  # type: ignore[no-untyped-def]
    """A newline inside brackets ends no statement: closing there would make the half
    statement the last one (`nn.Linear(100, 1),\n    def forward`), which cannot parse."""
    body = dict(completions(MNIST))["mlp"]
    one = "nn.Sequential(nn.Linear(40, 100), nn.ReLU())"
    many = "nn.Sequential(\n            nn.Linear(40, 100),\n            nn.ReLU(),\n        )"
    assert one in body
    body = body.replace(one, many, 1)
    inside = body.index("            nn.ReLU(),")
    ended = body.index("\n", body.index(many) + len(many)) + 1
    c = grammar.Constraint(grammar.Compiled.of(MNIST.grammar()), lltokenizer, True, budget=1)
    assert feed(c, body[:inside], lltokenizer) == 0
    assert c.closing is None  # every token is past the budget's closing point, yet open
    feed(c, body[inside:ended], lltokenizer)
    assert c.closing is not None and c.closing[0] == "init_stmts"
    assert grammar.parse_error(MNIST.grammar(), body) == ""


def test_a_finished_child_is_not_reopened_when_its_budget_runs_low(lltokenizer) -> None:  # type: ignore[no-untyped-def]
    """Closing near the budget's end makes the statements written so far forward's only
    ones; after the return's newline that would ask for a second return."""
    body = dict(completions(MNIST))["cnn"]
    cut = body.index(FORWARD) + len(FORWARD)
    c = grammar.Constraint(grammar.Compiled.of(MNIST.grammar()), lltokenizer, True, 10_000)
    assert write(c, body[:cut], lltokenizer) == 0
    # Low enough at the return's newline only (the return is more than 5 tokens).
    c.budget = len(c.phase1_tokens) + len(lltokenizer.tokenize_str(body[cut:]))
    c.budget += grammar.CLOSE_FORWARD_AT - 5
    assert write(c, body, lltokenizer) == 0
    assert c.done and c.closing is None


def copy_of(task: Mnist1d, name: str) -> base.Novelty:
    """Novelty that calls the seed `name` a copy (by its normalised hash)."""
    code = dict(task.seeds())[name]
    return base.Novelty(task.program_opening, frozenset({codehash.normalized_hash(code)}))


def test_a_finished_copy_is_taken_back_into_init_and_written_hotter(lltokenizer) -> None:  # type: ignore[no-untyped-def]
    body = dict(completions(MNIST))["cnn"]
    novelty = copy_of(MNIST, "cnn")
    assert novelty.copies(body) and not novelty.copies(body.replace("25", "26"))
    compiled = grammar.Compiled.of(MNIST.grammar())
    c = grammar.Constraint(compiled, lltokenizer, True, is_copy=novelty.copies)
    # The copy's last newline: back to before __init__'s last statement, forward and all.
    assert write(c, body, lltokenizer) > 0 and not c.done
    last = "        self.linear = nn.Linear(channels * 5, 10)\n"
    assert last in body
    kept = bytes(c.phase_text).decode()  # (its last token may hold the next indent)
    assert c.phase == 1 and body.startswith(kept) and kept.rstrip(" ") == body[: body.index(last)]
    assert c.rejected == ["a copy of an earlier program"] and c.copies == 1
    assert c.hotter
    # A different last statement makes a new child, which stands.
    assert write(c, body.replace("channels * 5, 10", "125, 10"), lltokenizer) == 0
    assert c.done and c.copies == 1
    assert c.hotter and not c.retrying  # the rest of a copy taken back is drawn hotter
    # The same copy again and again: taken back a bounded number of times, each time one
    # statement further back, then kept (the lineage store records a duplicate).
    c = grammar.Constraint(compiled, lltokenizer, True, is_copy=novelty.copies)
    kept = []
    while not c.done:
        assert c.copies <= grammar.COPIES_PER_SEQUENCE
        write(c, body, lltokenizer)
        kept.append(len(c.phase_text))
    assert c.copies == grammar.COPIES_PER_SEQUENCE
    assert kept[:-1] == sorted(kept[:-1], reverse=True) and len(set(kept[:-1])) == len(kept) - 1


def test_near_the_end_of_the_decode_budget_a_failing_statement_is_left_out(lltokenizer) -> None:  # type: ignore[no-untyped-def]
    """Statements taken back spend the decode budget (taken-back tokens count); with too
    little of it left, a failing statement is not sampled again but left out where it can
    be (a return: with the statement before it, and the return drawn again), since kept it
    fails the child in the trainer for sure."""
    seed = dict(completions(MNIST))["cnn"]
    # A return of the wrong shape, which no layer size fixes.
    body = seed.replace("return self.linear(h.view(h.shape[0], -1))", "return self.conv3(h)")
    compiled = grammar.Compiled.of(MNIST.grammar())
    for room, left_out in ((grammar.KEEP_AT + 20, False), (grammar.KEEP_AT - 10, True)):
        c = grammar.Constraint(compiled, lltokenizer, True, 10_000, decode_budget=10_000)
        assert write(c, body[:-1], lltokenizer) == 0
        c.decode_budget = c.sampled + 1 + room  # at the return's newline: `room` left
        assert feed(c, "\n", lltokenizer) > 0 and not c.done
        assert c.rejected[-1].startswith("left out: ") == left_out
        assert "(2, 10)" in c.rejected[-1]
        # Left out, forward is closed without the statement before the return, and a
        # return is drawn again; taken back, the return alone is written again.
        last = "conv2" if left_out else "conv3"
        assert c.text.rstrip().endswith(f"h = F.relu(self.{last}(h))") and c.kept_failing == 0
        assert c.closing is not None or not left_out


def test_a_failing_statement_that_cannot_be_left_out_is_kept(lltokenizer) -> None:  # type: ignore[no-untyped-def]
    """forward's only statement, a return that cannot run: with the budget spent, the child
    finishes with it (the trainer says why it fails) rather than being cut."""
    seed = dict(completions(MNIST))["cnn"]
    head = seed[: seed.index(FORWARD) + len(FORWARD)]
    body = head + "\n        return self.conv3(x)\n"
    compiled = grammar.Compiled.of(MNIST.grammar())
    c = grammar.Constraint(compiled, lltokenizer, True, 10_000, decode_budget=10_000)
    assert write(c, body[: body.index("return")], lltokenizer) == 0
    c.decode_budget = c.sampled + grammar.KEEP_AT - 10
    assert feed(c, body[body.index("return") :], lltokenizer) == 0
    assert c.done and c.kept_failing == 1 and not c.rejected


def test_past_the_decode_budget_a_failing_statement_is_kept_not_cut(lltokenizer) -> None:  # type: ignore[no-untyped-def]
    """The sampler stops at the first take-back past the decode budget, so a statement left
    out then would end the child where it was cut back to (two demo children ended at
    `def forward(self, x):`). Past it, the failing statement is kept and the child ends."""
    seed = dict(completions(MNIST))["cnn"]
    body = seed.replace("return self.linear(h.view(h.shape[0], -1))", "return self.conv3(h)")
    compiled = grammar.Compiled.of(MNIST.grammar())
    c = grammar.Constraint(compiled, lltokenizer, True, 10_000, decode_budget=10_000)
    assert write(c, body[:-1], lltokenizer) == 0
    c.decode_budget = c.sampled  # used up before the return's newline
    assert feed(c, "\n", lltokenizer) == 0
    assert c.done and c.kept_failing == 1 and not c.rejected
    assert c.text.rstrip().endswith("return self.conv3(h)")


def test_a_size_fix_is_made_once_retries_are_spent_and_past_the_budget(lltokenizer) -> None:  # type: ignore[no-untyped-def]
    """A size fix samples nothing (its text is forced), so it is made near the end of the
    decode budget and past it too (4 of 13 failed demo children returned a `Linear` of
    the wrong sizes, mostly past it): the constraint says it is `rewriting`, and the
    sampler goes on while it is."""
    seed = dict(completions(MNIST))["cnn"]
    head = seed[: seed.index(grammar.INIT_HEAD) + len(grammar.INIT_HEAD)]
    layer = "        self.fc1 = nn.Linear(256, 1024)\n"
    body = head + layer + FORWARD + "\n        return self.fc1(x)\n"
    at = body.index("        return")
    compiled = grammar.Compiled.of(MNIST.grammar())
    for room in (grammar.KEEP_AT - 10, 0):
        c = grammar.Constraint(compiled, lltokenizer, True, 10_000, decode_budget=10_000)
        assert write(c, body[:at], lltokenizer) == 0
        c.decode_budget = c.sampled + room
        assert feed(c, body[at:], lltokenizer) > 0 and c.rewriting
        # The input size first; then, forward replayed, the read-out's width.
        assert "[2, 40] X [256, 1024]" in c.rejected[0]
        shape = "forward returns shape (2, 1024) for an input of (2, 40); expected (2, 10)"
        assert force(c) == [shape] and not c.rewriting
        assert [f[:3] for f in c.fixes] == [("fc1", None, 40), ("fc1", None, 10)]
        assert c.done and c.kept_failing == 0
        assert "self.fc1 = nn.Linear(40, 10)\n" in lltokenizer.decode_str(c.phase1_tokens)


def test_without_check_statements_nothing_is_taken_back(lltokenizer) -> None:  # type: ignore[no-untyped-def]
    """Backends that cannot rewind (the hf backend's logits processor) only mask."""
    body = dict(completions(MNIST))["cnn"].replace(
        "nn.Linear(channels * 5, 10)", "nn.Linear(channels * 4, 10)"
    )
    c = grammar.Constraint(grammar.Compiled.of(MNIST.grammar()), lltokenizer)
    assert write(c, body, lltokenizer) == 0
    assert c.done and not c.rejected
