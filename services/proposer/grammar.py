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

`parse_error` checks a finished text with Lark (pure Python): the controller uses it to
refuse, at search start, a grammar that rejects one of the task's seeds.
"""

import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

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
# A statement's targets: `self.name = `, `name = ` or `a, b = `.
_TARGETS = re.compile(r"^\s*(self\.)?([A-Za-z_]\w*(?:\s*,\s*[A-Za-z_]\w*)*)\s*=(?!=)")
_DOCSTRING = re.compile(r'"""[^"]*(?:"""|$)')


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

    With no attribute assigned, `forward` may read none: `defined_attr` becomes a name no
    program assigns, which the sampler can never complete into anything that runs."""
    names = assigned_attributes(phase1_text) or ["_no_attribute_was_assigned"]
    narrowed = _replace_rule(text, "defined_attr", " | ".join(f'"{n}"' for n in names))
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

    @classmethod
    def of(cls, text: str) -> "Compiled":
        return cls(text, 2 if two_phase(text) else 1)


class Constraint:
    """One sequence's grammar state: the mask for its next token, phase by phase.

    Feed it every token the sequence gets (`consume`); ask `allowed` for the next token's
    mask and `forced` for tokens the grammar leaves no choice about (no need to sample
    them). `done` once the grammar is complete; `error` says why it broke, if it did.
    """

    def __init__(self, compiled: Compiled, tokenizer: Any) -> None:
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
            self.phase_grammar = phase2(self.compiled.text, done)
            self.phase, self.phase_tokens, self.phase_text = 2, [], bytearray()
            self.names = scope(2, "") if self.scoped else {}
            self.matcher = self._matcher(scoped(self.phase_grammar, 2, self.names))

    def _narrow_scope(self) -> None:
        """After a newline: if a statement completed and assigned new names, a matcher whose
        scope rules allow them, given the phase's tokens again (the names only grow, so
        what was accepted stays accepted)."""
        names = scope(self.phase, self.phase_text.decode("utf-8", "replace"))
        if names == self.names:
            return
        matcher = self._matcher(scoped(self.phase_grammar, self.phase, names))
        if not matcher.consume_tokens(self.phase_tokens) or matcher.is_error():
            raise GrammarError(f"the narrowed grammar refused its prefix: {matcher.get_error()}")
        self.names, self.matcher = names, matcher

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
        """Tokens the grammar allows one way only from here (fast-forward)."""
        return list(self.matcher.compute_ff_tokens())

    def consume(self, token: int) -> None:
        self.matcher.consume_token(token)
        self.phase_tokens.append(token)
        phase = self.phase
        self._advance_phase()
        if self.scoped and phase == self.phase:  # the phase's text, for its scope only
            piece = self.tokenizer.decode_bytes([token])
            self.phase_text += piece
            if b"\n" in piece and not self.matcher.is_error():
                self._narrow_scope()
