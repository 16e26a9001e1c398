"""A task's grammar as a logits mask: which tokens may come next, in one or two phases.

The grammar is a Lark file (services/trainer/tasks/grammars/) in the subset both Lark and
llguidance read. llguidance turns it into a mask over the vocabulary at each step; the
sampler draws only allowed tokens, so a constrained completion always parses.

Two phases. A grammar that defines the rules `phase1`, `phase2` and `defined_attr` is
sampled as `phase1` first (for PyTorch: the docstring, `__init__` and forward's signature),
then as `phase2` with `defined_attr` narrowed to the attribute names phase 1 assigned
(`self.conv1 = ...`), so `forward` cannot use an attribute `__init__` never set: a
context-free grammar alone cannot say that. Other grammars are one phase (`start`).

Scopes. A grammar may also name the reads of a phase's statements (`init_attr` and
`init_local` in phase 1, `defined_local` in phase 2): whenever a statement is complete
(a newline outside brackets), those rules are narrowed to the names the complete
statements assigned (plus forward's argument `x`), and the matcher is rebuilt and given
the phase's tokens again. So no statement can read a name a statement before it did not
assign: `channels * 5` before `channels = 25` cannot be sampled, nor `self.hidden` read
in `__init__` before it is set.

Statement checks. A grammar with a `//! check:` directive (services.proposer.meta_check)
is also checked statement by statement where the backend can rewind a sequence
(`Constraint(check_statements=True)`, the llamacpp backend): each complete statement is
interpreted on meta tensors after those before it, and one that cannot run (a size that
does not fit, an int called as a layer, the wrong output shape) is taken back, tokens and
all, and sampled again, a few times at most; then it is left out (the phase closes before
it), or, where it cannot be, kept for the trainer to judge. A finished child that copies a
program the caller names (`is_copy`: the search's candidates) is taken back the same way.

`parse_error` checks a finished text with Lark (pure Python): the controller uses it to
refuse, at search start, a grammar that rejects one of the task's seeds.
"""

import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from services.proposer import meta_check

PHASE_RULES = ("phase1", "phase2", "defined_attr")
# The rules narrowed statement by statement, by phase: attributes and locals read in
# __init__; forward's locals (its attributes are `defined_attr`, fixed by phase 1).
SCOPE_RULES = {1: ("init_attr", "init_local"), 2: ("defined_local",)}
# What a scope rule's names are written after (`self.conv1` is one lexeme, so that with
# no attribute assigned not even `self.` can be begun).
SCOPE_PREFIX = {"init_attr": "self."}
# forward's argument, defined before any statement.
FORWARD_ARGUMENTS = ("x",)
# A scope with no names: a terminal that matches nothing (a rule cannot be empty).
NOTHING = r"/[^\s\S]/"
# An attribute assignment in phase 1's text: `self.name = ...`.
_ASSIGNED_ATTR = re.compile(r"^\s*self\.([A-Za-z_][A-Za-z0-9_]*)\s*=[^=]", re.MULTILINE)
# An attribute assigned a layer: `self.name = nn....` (the last assignment wins; an
# attribute assigned both a layer and a size is treated as a layer).
_ASSIGNED_LAYER = re.compile(r"^\s*self\.([A-Za-z_][A-Za-z0-9_]*)\s*=\s*nn\.", re.MULTILINE)
# A statement's targets: `self.name = `, `name = ` or `a, b = `.
_TARGETS = re.compile(r"^\s*(self\.)?([A-Za-z_]\w*(?:\s*,\s*[A-Za-z_]\w*)*)\s*=(?!=)")
_DOCSTRING = re.compile(r'"""[^"]*(?:"""|$)')
# How often one statement, and one sequence in all, may be taken back and sampled again.
# A statement that fails twice may be the victim of the one before it (`x.view(-1, 40, 1)`
# before a GRU of input size 4): its next two failures take that one back too.
RETRIES_PER_STATEMENT = 6
RETRIES_ALONE = 3
RETRIES_PER_SEQUENCE = 16
# The most tokens a statement may take, by phase (the seeds' longest take 29): beyond,
# it is taken back (a model that nests a call in itself runs on to the end of its budget).
MAX_STATEMENT_TOKENS = {1: 96, 2: 64}
# How often a finished child that copies a program to avoid (Sampling.novelty) is taken
# back into `__init__` and written again, per sequence; then the copy is kept (and the
# lineage store records it as a duplicate).
COPIES_PER_SEQUENCE = 4
# Layers whose input size may be set to what forward gives them, per sequence.
FIXES_PER_SEQUENCE = 8
# Tokens left in the budget at which __init__ may add no statement (forward's signature,
# a few statements and the return still fit) and forward none but its return; and those
# left to sample (taken-back tokens count) at which no statement is taken back any more.
CLOSE_INIT_AT = 140
CLOSE_FORWARD_AT = 70
KEEP_AT = 40
INIT_HEAD = "        super().__init__()\n"
_FORWARD_DEF = re.compile(r'^FORWARD_DEF:\s*"([^"]*)"\s*$', re.MULTILINE)


class GrammarError(ValueError):
    """The grammar is not valid Lark/llguidance, or rejects text it must accept."""


def defines(text: str, rule: str) -> bool:
    return re.search(rf"^{re.escape(rule)}\s*:", text, re.MULTILINE) is not None


def two_phase(text: str) -> bool:
    return all(defines(text, rule) for rule in PHASE_RULES)


def _replace_rule(text: str, rule: str, body: str) -> str:
    """`text` with the one-line rule `rule: ...` replaced by `rule: body`."""
    pattern = re.compile(rf"^{re.escape(rule)}\s*:.*$", re.MULTILINE)
    if not pattern.search(text):
        raise GrammarError(f"the grammar has no one-line rule {rule!r}")
    return pattern.sub(lambda _: f"{rule}: {body}", text, count=1)


def phase1(text: str) -> str:
    """The grammar of phase 1: `start` is `phase1`."""
    return _replace_rule(text, "start", "phase1")


def assigned_attributes(phase1_text: str) -> list[str]:
    """The attribute names phase 1 assigned (`self.conv1 = ...`), in order, once each."""
    return list(dict.fromkeys(_ASSIGNED_ATTR.findall(phase1_text)))


def phase2(text: str, phase1_text: str) -> str:
    """The grammar of phase 2: `start` is `phase2`, `defined_attr` only the names assigned.

    A grammar that also defines `defined_module` (v3) splits them: `defined_module` the
    attributes assigned a layer (`self.conv1 = nn....`), which forward may only call, and
    `defined_attr` the others (sizes), which it may not. With no attribute assigned,
    `forward` may read none: `defined_attr` becomes a name no program assigns, which the
    sampler can never complete into anything that runs."""
    names = assigned_attributes(phase1_text) or ["_no_attribute_was_assigned"]
    if defines(text, "defined_module"):
        layers = set(_ASSIGNED_LAYER.findall(phase1_text))
        modules = [n for n in names if n in layers]
        names = [n for n in names if n not in layers]
        body = " | ".join(f'"{n}"' for n in modules) or NOTHING
        text = _replace_rule(text, "defined_module", body)
    narrowed = _replace_rule(text, "defined_attr", " | ".join(f'"{n}"' for n in names) or NOTHING)
    return _replace_rule(narrowed, "start", "phase2")


def complete_statements(text: str) -> list[str]:
    """The statements of `text` that are finished: lines joined while a bracket is open,
    each ended by a newline outside brackets (the last one, unfinished, left out).
    Docstrings are dropped first: their brackets need not balance."""
    statements, start, depth = [], 0, 0
    text = _DOCSTRING.sub('""', text)
    for i, char in enumerate(text):
        if char in "([{":
            depth += 1
        elif char in ")]}":
            depth = max(depth - 1, 0)
        elif char == "\n" and depth == 0:
            statements.append(text[start:i])
            start = i + 1
    return statements


def scope(phase: int, phase_text: str) -> dict[str, list[str]]:
    """The names each of the phase's scope rules allows after `phase_text`: those its
    complete statements assigned (and forward's argument in phase 2)."""
    attrs: list[str] = []
    local: list[str] = list(FORWARD_ARGUMENTS) if phase == 2 else []
    for statement in complete_statements(phase_text):
        if match := _TARGETS.match(statement):
            names = [n.strip() for n in match.group(2).split(",")]
            (attrs if match.group(1) else local).extend(names)
    attrs, local = list(dict.fromkeys(attrs)), list(dict.fromkeys(local))
    return {"init_attr": attrs, "init_local": local} if phase == 1 else {"defined_local": local}


def scoped(text: str, phase: int, names: dict[str, list[str]]) -> str:
    """`text` (a phase's grammar) with each of the phase's scope rules it defines narrowed."""
    for rule, allowed in names.items():
        if defines(text, rule):
            prefix = SCOPE_PREFIX.get(rule, "")
            body = " | ".join(f'"{prefix}{n}"' for n in allowed) or NOTHING
            text = _replace_rule(text, rule, body)
    return text


def _last_end(ends: list[int], limit: int) -> int:
    """The last statement end (a token count) below `limit`: where a sequence may be taken
    back to, since a token may end one statement and begin the next."""
    return max((end for end in ends if end < limit), default=0)


def _init_body(statements: list[str]) -> list[int]:
    """The indices of `__init__`'s statements a child wrote: those after its fixed
    `super().__init__()` line, blank lines left out."""
    head = [i for i, s in enumerate(statements) if s.strip() == "super().__init__()"]
    return [i for i, s in enumerate(statements) if head and i > head[0] and s.strip()]


def _literal(text: str) -> str:
    """`text` as a Lark string literal."""
    escaped = text.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")
    return f'"{escaped}"'


def parse_error(grammar_text: str, completion: str) -> str:
    """'' when the grammar accepts `completion` (the text after the program opening)."""
    import lark

    try:
        parser = lark.Lark(grammar_text, parser="earley", lexer="dynamic", start="start")
    except lark.exceptions.LarkError as e:
        raise GrammarError(f"the grammar is not valid Lark: {e}") from e
    try:
        parser.parse(completion)
    except lark.exceptions.LarkError as e:
        return str(e).strip().splitlines()[0]
    return ""


def seed_errors(grammar_text: str, opening: str, seeds: Sequence[tuple[str, str]]) -> list[str]:
    """One message per seed (name, code) the grammar rejects; empty when it takes them all."""
    errors = []
    for name, code in seeds:
        at = code.find(opening)
        if at == -1:
            errors.append(f"seed {name}: does not contain the opening {opening!r}")
            continue
        error = parse_error(grammar_text, code[at + len(opening) :])
        if error:
            errors.append(f"seed {name}: {error}")
    return errors


@dataclass(frozen=True)
class Compiled:
    """A grammar ready for llguidance: one or two phases."""

    text: str
    phases: int
    check: meta_check.Spec | None = None  # the grammar's `//! check:` directive

    @classmethod
    def of(cls, text: str) -> "Compiled":
        return cls(text, 2 if two_phase(text) else 1, meta_check.Spec.of_grammar(text))


class Constraint:
    """One sequence's grammar state: the mask for its next token, phase by phase.

    Feed it every token the sequence gets (`consume`); ask `allowed` for the next token's
    mask and `forced` for tokens the grammar leaves no choice about (no need to sample
    them). `done` once the grammar is complete; `error` says why it broke, if it did.

    With `check_statements` (and a grammar that asks for checks), a statement that cannot
    run is taken back as soon as it is complete: after `consume`, `take_rewind()` says how
    many of the sequence's last tokens to drop (0: none), and the constraint's state is
    already that of the shorter sequence. So is a finished child that `is_copy` calls a
    copy (of a parent, or an earlier child): its last statements of `__init__` are written
    again.

    Two budgets: `budget` tokens in the sequence (max_new_tokens) and `decode_budget`
    tokens sampled in all (not forced ones), taken-back ones included. Near the end of
    either the phase is closed (`_close`), and near the end of the second nothing more is
    taken back, so a child ends inside its budgets instead of being cut mid-statement.
    """

    def __init__(
        self,
        compiled: Compiled,
        tokenizer: Any,
        check_statements: bool = False,
        budget: int = 0,
        decode_budget: int = 0,
        is_copy: Callable[[str], bool] | None = None,
    ) -> None:
        self.compiled = compiled
        self.tokenizer = tokenizer
        self.phase = 1
        self.phase_tokens: list[int] = []
        self.phase_text = bytearray()
        # The phase's grammar before its scope rules are narrowed, and their names now.
        self.phase_grammar = phase1(compiled.text) if compiled.phases == 2 else compiled.text
        self.scoped = compiled.phases == 2 and any(
            defines(compiled.text, r) for rules in SCOPE_RULES.values() for r in rules
        )
        self.names = scope(1, "") if self.scoped else {}
        self.matcher = self._matcher(scoped(self.phase_grammar, 1, self.names))
        self.words = (tokenizer.vocab_size + 31) // 32
        self._mask = np.zeros(self.words, dtype=np.int32)
        # Statement checks: the phase's statement ends (its token count when each was
        # complete), how many passed, phase 1's statements, and what was taken back.
        self.checks = compiled.check if check_statements and compiled.phases == 2 else None
        self.ends: list[int] = []
        self.checked = 0
        self.init_statements: list[str] = []
        self.phase1_tokens: list[int] = []  # kept to go back into __init__ from forward
        self.phase1_ends: list[int] = []
        self.retries: dict[tuple[int, int], int] = {}
        self.rejected: list[str] = []  # why each statement taken back could not run
        self.kept_failing = 0  # statements kept although they failed (retries spent)
        self.retrying = False  # between a statement taken back and the next that runs
        self._rewind = 0
        # Size fixes made (attribute, position, size), and the text they force: the rest of
        # __init__, then forward as it was.
        self.fixes: list[tuple[str, int | None, int, str, int]] = []
        self.queue: list[int] = []
        self.queue_forward: list[int] = []
        # With checks and a token budget (max_new_tokens): near its end, the statements
        # written so far become a literal and the next must end the phase (`_close`).
        self.budget = budget if self.checks is not None else 0
        self.decode_budget = decode_budget if self.checks is not None else 0
        self.sampled = 0  # tokens the sampler drew (not forced), taken-back ones included
        self.closing: tuple[str, str] | None = None
        self.is_copy = is_copy if self.checks is not None else None
        self.copies = 0  # finished children taken back as copies

    def _matcher(self, text: str) -> Any:
        import llguidance

        matcher = llguidance.LLMatcher(
            self.tokenizer, llguidance.LLMatcher.grammar_from_lark(text), log_level=0
        )
        if matcher.is_error():
            raise GrammarError(f"llguidance cannot use the grammar: {matcher.get_error()}")
        return matcher

    def _advance_phase(self) -> None:
        stopped = self.matcher.is_stopped() and not self.matcher.is_error()
        if self.phase == 1 and self.compiled.phases == 2 and stopped:
            done = self.tokenizer.decode_str(self.phase_tokens)
            if self._take_back_layerless(done):
                return
            self.phase_grammar = phase2(self.compiled.text, done)
            self.phase1_tokens, self.phase1_ends = self.phase_tokens, self.ends
            self.phase, self.phase_tokens, self.phase_text = 2, [], bytearray()
            self.init_statements = complete_statements(done)
            self.ends, self.checked = [], 0
            self.queue, self.queue_forward = self.queue_forward, []
            self.names = scope(2, "") if self.scoped else {}
            self.closing = None
            self.matcher = self._matcher(self._grammar())

    def _take_back_layerless(self, init_text: str) -> bool:
        """An `__init__` that assigns no layer (only sizes and flags) makes a model with
        nothing to train, and under a grammar with `defined_module` a `forward` that can call
        nothing: its last statement is taken back like one that cannot run. False when it
        assigns a layer, or nothing more may be taken back."""
        layered = defines(self.compiled.text, "defined_module")
        if self.checks is None or not layered or _ASSIGNED_LAYER.search(init_text):
            return False
        written = _init_body(complete_statements(self.text))
        tries = self.retries.get((1, written[-1]), 0) + 1 if written else 0
        if not written or self._spent or tries > RETRIES_PER_STATEMENT:
            return False
        self.retries[(1, written[-1])] = tries
        self.rejected.append("__init__ assigns no layer: the model would have nothing to train")
        keep = _last_end(self.ends[: written[-1]], self.ends[written[-1]])
        self._rewind += len(self.phase_tokens) - keep
        self._restart(self.phase_tokens[:keep])
        self.retrying = True
        return True

    def _narrow_scope(self) -> None:
        """After a newline: if a statement completed and assigned new names, a matcher whose
        scope rules allow them, given the phase's tokens again (the names only grow, so
        what was accepted stays accepted)."""
        names = scope(self.phase, self.text)
        if names == self.names:
            return
        matcher = self._matcher(self._grammar(names))
        if not matcher.consume_tokens(self.phase_tokens) or matcher.is_error():
            raise GrammarError(f"the narrowed grammar refused its prefix: {matcher.get_error()}")
        self.names, self.matcher = names, matcher

    def _grammar(self, names: dict[str, list[str]] | None = None) -> str:
        """The phase's grammar now: closed near the budget's end, its scopes narrowed."""
        text = self.phase_grammar
        if self.closing is not None:
            text = _replace_rule(text, *self.closing)
        return scoped(text, self.phase, self.names if names is None else names)

    def _close(self, force: bool = False) -> None:
        """Near the end of the token budget, make the statements written so far the only
        ones the phase may have: `__init__` goes on to `forward`, and `forward` to its
        `return`. A child then ends inside its budget instead of being cut mid-statement
        (cut, it fails however well its statements run). With `force`, whatever is left:
        a statement that failed every retry was just left out (`_drop`)."""
        left = self._left()
        text = self.text
        written = text[: text.rfind("\n") + 1]
        signature = _FORWARD_DEF.search(self.compiled.text)
        low = force or left < (CLOSE_INIT_AT if self.phase == 1 else CLOSE_FORWARD_AT)
        if self.phase == 1 and low and INIT_HEAD in written and signature:
            rule, body = "init_stmts", written[written.index(INIT_HEAD) + len(INIT_HEAD) :]
        elif self.phase == 2 and low:
            rule, body = "forward_stmts", written[1:]  # (phase 2 begins with a newline)
        else:
            return
        if rule == "init_stmts" and not body:
            return  # __init__ needs a statement
        self.closing = (rule, _literal(body) if body else NOTHING)
        tokens, forced = self.phase_tokens, []
        if self.phase == 1 and not signature.group(1).startswith(text[len(written) :]):
            # The newline's token began the next statement's indent, which forward's
            # signature cannot follow: that token is taken back and written again.
            tokens = self.phase_tokens[:-1]
            kept = self.tokenizer.decode_str(tokens)
            if not written.startswith(kept):
                self.closing = None
                return
            forced = list(self.tokenizer.tokenize_str(written[len(kept) :] + signature.group(1)))
        matcher = self._matcher(self._grammar())
        if not matcher.consume_tokens(tokens) or matcher.is_error():
            self.closing = None  # (a blank line already taken: the phase ends anyway)
            return
        self._rewind += len(self.phase_tokens) - len(tokens)
        self._keep(tokens)
        self.matcher, self.queue = matcher, forced

    def _left(self) -> int:
        """Tokens left before the nearer of the two budgets' ends."""
        used = len(self.phase_tokens) + (len(self.phase1_tokens) if self.phase == 2 else 0)
        left = self.budget - used
        if self.decode_budget:
            left = min(left, self.decode_budget - self.sampled)
        return left

    @property
    def _spent(self) -> bool:
        """Nothing more is taken back: the child's retries are spent, or nearly its decode
        budget (so that it ends inside it)."""
        low = self.decode_budget and self.decode_budget - self.sampled < KEEP_AT
        return len(self.rejected) >= RETRIES_PER_SEQUENCE or bool(low)

    @property
    def _budget_used(self) -> bool:
        """Whether the decode budget is used up: the sampler stops at the next take-back."""
        return bool(self.decode_budget) and self.sampled >= self.decode_budget

    def _size_fix(self, verdict: meta_check.Verdict) -> meta_check.SizeFix | None:
        """The size fix a failing statement comes with (made in `forward` only, where the
        layer's input is known)."""
        return verdict.fix if self.phase == 2 else None

    @property
    def rewriting(self) -> bool:
        """Whether a size fix's text is being forced again: the sampler goes on then, past
        its decode budget too (forced tokens are not sampled, and fixes are bounded)."""
        return bool(self.queue)

    def _check_statements(self) -> None:
        """Check the statements completed since the last check; take back one that fails."""
        assert self.checks is not None
        statements = complete_statements(self.text)
        self.ends += [len(self.phase_tokens)] * (len(statements) - len(self.ends))
        if len(statements) <= self.checked:
            return
        init, forward = (statements, []) if self.phase == 1 else (self.init_statements, statements)
        offset = 0 if self.phase == 1 else len(self.init_statements)
        verdict = meta_check.check(self.checks, init, forward, first_new=offset + self.checked)
        index = verdict.statement - offset
        tries = self.retries.get((self.phase, index), 0) + 1
        spent = self._spent
        finished = verdict.ok and self.phase == 2 and self.matcher.is_stopped()
        if finished and not spent and self._take_back_copy():
            return
        # A size fix samples nothing (the text after the layer is forced as it was), so it
        # is made even once the child's retries are spent, and past the decode budget (the
        # sampler goes on while it is `rewriting`): a `Linear(256, 1024)` returned on the 40
        # inputs, in 4 of 13 failed demo children, has its sizes computed.
        if not verdict.ok and spent and (fix := self._size_fix(verdict)) and self._fix_size(fix):
            self.rejected.append(verdict.reason)
            return
        # A statement that failed every retry, or any once the child's retries are spent,
        # is left out where it can be: kept, it fails the child in the trainer for sure.
        if not verdict.ok and (spent or tries > RETRIES_PER_STATEMENT):
            is_return = statements[index].lstrip().startswith("return ")
            spent = not self._drop(index, is_return, verdict.reason)
            if not spent:
                return
        if verdict.ok or spent:
            self.kept_failing += not verdict.ok
            self.checked = len(statements)
            self.retrying = False
            return
        self.retries[(self.phase, index)] = tries
        self.rejected.append(verdict.reason)
        if (fix := self._size_fix(verdict)) and self._fix_size(fix):
            return
        if tries > RETRIES_ALONE and self.phase == 2 and self._rebuild_layer(statements[index]):
            return
        # Back to the last token that ended a statement before it (or before the one before
        # it), never into the phase's fixed lines (`def ...`, `super().__init__()`).
        back = index - (tries > RETRIES_ALONE and index - 1 > self.first_free)
        keep = _last_end(self.ends[:back], self.ends[index])
        self._rewind += len(self.phase_tokens) - keep
        self._restart(self.phase_tokens[:keep])
        self.retrying = True

    def _drop(self, index: int, is_return: bool, reason: str) -> bool:
        """A statement that failed every retry: the phase ends without it (forward's
        return, which cannot be left out, without the statement before it), so the child
        is closed with what ran rather than kept with what cannot. False where the phase
        would be left with no statement it needs (`__init__` needs one), or once the decode
        budget is used up: the sampler stops at a take-back past it, and the child would
        end where it was cut back to (a `forward` with no body, in two demo children)."""
        cut = index - 1 if is_return and self.phase == 2 else index
        if cut <= self.first_free + (self.phase == 1):
            return False
        if self._budget_used:
            return False
        self.rejected.append(f"left out: {reason}")
        # (What comes in its place is a new statement, with retries of its own.)
        self.retries = {k: n for k, n in self.retries.items() if k[0] != self.phase or k[1] < cut}
        # (A statement still open, one that runs on, has no end yet: the last end is before it.)
        opened = cut == len(self.ends)
        keep = self.ends[-1] if opened else _last_end(self.ends[:cut], self.ends[cut])
        self._rewind += len(self.phase_tokens) - keep
        self._restart(self.phase_tokens[:keep])
        self.retrying = True
        self._close(force=True)
        return True

    def _take_back_overlong(self) -> None:
        """A statement still open after MAX_STATEMENT_TOKENS (the model nests a call in
        itself, `self.f(self.f(self.f(...`, until the budget ends): taken back like one that
        cannot run; once it has been too often, the phase ends before it."""
        index = len(self.ends)
        tries = self.retries.get((self.phase, index), 0) + 1
        self.retries[(self.phase, index)] = tries
        reason = f"a statement longer than {MAX_STATEMENT_TOKENS[self.phase]} tokens"
        written = self.tokenizer.decode_str(self.phase_tokens[self.ends[-1] :])
        is_return = written.lstrip().startswith("return ")
        if tries > RETRIES_PER_STATEMENT and self._drop(index, is_return, reason):
            return
        self.rejected.append(reason)
        self._rewind += len(self.phase_tokens) - self.ends[-1]
        self._restart(self.phase_tokens[: self.ends[-1]])
        self.retrying = True

    def _overlong(self) -> bool:
        """Whether the statement being written is longer than any the grammar needs."""
        if not self.ends or (self.phase == 1 and INIT_HEAD not in self.text):
            return False  # (the docstring is not a statement)
        return len(self.phase_tokens) - self.ends[-1] > MAX_STATEMENT_TOKENS[self.phase]

    def _take_back_copy(self) -> bool:
        """A finished child that copies a program to avoid: back into `__init__`, to before
        its last statement (the second last at the second copy, and so on), written again.
        False when it is no copy, or copies were taken back enough."""
        if self.is_copy is None or self.copies >= COPIES_PER_SEQUENCE:
            return False
        completion = self.tokenizer.decode_str(self.phase1_tokens) + self.text
        if not self.is_copy(completion):
            return False
        written = _init_body(self.init_statements)
        if not written:
            return False
        self.copies += 1
        self.rejected.append("a copy of an earlier program")
        index = written[-min(self.copies, len(written))]
        self._back_into_init(self._kept_before(index))
        self.retrying = True
        return True

    def _rebuild_layer(self, statement: str) -> bool:
        """Back into `__init__`, to the statement that assigned a layer `statement` uses
        (the last such one): a GRU built for inputs of 4 fails in every `forward` that views
        the batch as steps of 1. False when there is none, or it was rebuilt enough."""
        index = self._assigned_at(set(re.findall(r"self\.([A-Za-z_]\w*)", statement)))
        if index is None or self.retries.get((1, index), 0) >= RETRIES_ALONE:
            return False
        self.retries[(1, index)] = self.retries.get((1, index), 0) + 1
        self._back_into_init(self._kept_before(index))
        self.retrying = True
        return True

    def _fix_size(self, fix: meta_check.SizeFix) -> bool:
        """Write the layer `fix` names again with the input size it is given, and the text
        after it as it was: back into `__init__` to that statement, then the patched text
        as forced tokens (`forced`). False where the statement cannot be patched, or this
        fix was made once already."""
        index = self._assigned_at({fix.attribute})
        if index is None or len(self.fixes) >= FIXES_PER_SEQUENCE:
            return False
        statement = self.init_statements[index]
        # Once per statement as written: a fix that did not help is not made again.
        key = (fix.attribute, fix.position, fix.size, statement.strip(), fix.argument)
        patched = meta_check.patch_statement(statement, fix)
        init_text = self.tokenizer.decode_str(self.phase1_tokens)
        at = init_text.rfind(statement)
        if key in self.fixes or patched is None or at < 0:
            return False
        keep = self._kept_before(index)
        kept = self.tokenizer.decode_str(self.phase1_tokens[:keep])
        rewritten = init_text[:at] + patched + init_text[at + len(statement) :]
        if not rewritten.startswith(kept):  # (a token may hold the statement's indent)
            return False
        forward_text = self.text
        self.fixes.append(key)
        self._back_into_init(keep)
        self.queue = list(self.tokenizer.tokenize_str(rewritten[len(kept) :]))
        self.queue_forward = list(self.tokenizer.tokenize_str(forward_text))
        return True

    def _assigned_at(self, attributes: set[str]) -> int | None:
        """The last `__init__` statement that assigned one of `attributes` (an index)."""
        found = [
            i
            for i, s in enumerate(self.init_statements)
            if (m := _TARGETS.match(s)) and m.group(1) and m.group(2).strip() in attributes
        ]
        return found[-1] if found else None

    def _kept_before(self, index: int) -> int:
        """How many of `__init__`'s tokens precede its statement `index` (the last token
        that ended a statement before it)."""
        return _last_end(self.phase1_ends[:index], self.phase1_ends[index])

    def _back_into_init(self, keep: int) -> None:
        """Take back all of forward and `__init__` after its first `keep` tokens."""
        self._rewind += len(self.phase_tokens) + len(self.phase1_tokens) - keep
        self.phase, self.phase_grammar = 1, phase1(self.compiled.text)
        self.ends, self.checked = list(self.phase1_ends), len(self.phase1_ends)
        self._restart(self.phase1_tokens[:keep])

    @property
    def hotter(self) -> bool:
        """Whether the next token should be drawn hotter than asked: after a statement
        taken back (not the one that just failed again), and for the rest of a child
        taken back as a copy (at 0.2 the model writes the same copy again)."""
        return self.retrying or self.copies > 0

    @property
    def first_free(self) -> int:
        """The index of the phase's last fixed line: the statements a child writes follow."""
        if self.phase == 2:
            return 0  # the blank line before forward's body
        statements = complete_statements(self.text)
        fixed = [i for i, s in enumerate(statements) if s.strip() == "super().__init__()"]
        return fixed[0] if fixed else len(statements)

    def _restart(self, tokens: list[int]) -> None:
        """The phase's state after `tokens` only: a new matcher given them again."""
        self.queue, self.queue_forward = [], []
        self._keep(tokens)
        self.names = scope(self.phase, self.text) if self.scoped else {}
        self.closing = None
        matcher = self._matcher(self._grammar())
        if not matcher.consume_tokens(self.phase_tokens) or matcher.is_error():
            raise GrammarError(f"the grammar refused a statement's prefix: {matcher.get_error()}")
        self.matcher = matcher

    def _keep(self, tokens: list[int]) -> None:
        """The phase's tokens, text and statement bookkeeping cut back to `tokens`."""
        self.phase_tokens = list(tokens)
        self.phase_text = bytearray(self.tokenizer.decode_bytes(self.phase_tokens))
        count = len(complete_statements(self.text))
        self.ends, self.checked = self.ends[:count], min(self.checked, count)

    @property
    def text(self) -> str:
        """The phase's text so far."""
        return self.phase_text.decode("utf-8", "replace")

    def take_rewind(self) -> int:
        """How many of the sequence's last tokens were taken back since the last call."""
        rewind, self._rewind = self._rewind, 0
        return rewind

    @property
    def done(self) -> bool:
        if self.matcher.is_error():
            return False
        return self.matcher.is_stopped() and (self.phase == 2 or self.compiled.phases == 1)

    @property
    def error(self) -> str:
        return self.matcher.get_error() if self.matcher.is_error() else ""

    def allowed(self) -> np.ndarray:
        """A boolean mask over the vocabulary: True where a token may come next."""
        self.matcher.unsafe_compute_mask_ptr(self._mask.ctypes.data, self._mask.nbytes)
        bits = np.unpackbits(self._mask.view(np.uint8), bitorder="little")
        return bits[: self.tokenizer.vocab_size].astype(bool)

    def forced(self) -> list[int]:
        """Tokens the grammar allows one way only from here (fast-forward), or the text a
        size fix writes again."""
        return self.queue[:] if self.queue else list(self.matcher.compute_ff_tokens())

    def consume(self, token: int, sampled: bool = True) -> None:
        """Take the sequence's next token; `sampled`: drawn by the sampler, not forced
        (forced tokens are decoded in batches, and do not spend the decode budget)."""
        if self.queue:  # the forced text, unless the caller chose another token
            if token == self.queue[0]:
                self.queue.pop(0)
            else:
                self.queue, self.queue_forward = [], []
        self.matcher.consume_token(token)
        self.sampled += sampled
        self.phase_tokens.append(token)
        phase, rewind = self.phase, self._rewind
        self._advance_phase()
        if self._rewind != rewind:
            return  # (taken back as it ended: `_take_back_layerless`)
        if (self.scoped or self.checks) and phase == self.phase:  # the phase's text
            piece = self.tokenizer.decode_bytes([token])
            self.phase_text += piece
            if b"\n" in piece and not self.matcher.is_error():
                if self.scoped:
                    self._narrow_scope()
                if self.checks is not None:
                    self._check_statements()
                    # (Also right after a statement was taken back; not once the phase is
                    # complete: closing would reopen it.)
                    # (Nor inside a statement a newline does not end: `nn.Sequential(`.)
                    close = self.budget and self.closing is None and not self.queue
                    ended = self.matcher.is_error() or self.matcher.is_stopped()
                    between = bool(self.ends) and self.ends[-1] == len(self.phase_tokens)
                    if close and between and not ended:
                        self._close()
            elif self.checks is not None and not self.queue and self._overlong():
                self._take_back_overlong()
