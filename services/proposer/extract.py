"""From a raw completion to a program: opening + completion, cut, unwrapped, parse-checked.

A completion may be a plain continuation of `class Model(nn.Module):` or, from a chat
model, a fenced code block with chat markers around it. Both end up as one program text
whose syntax error (if any) is reported, never hidden: the controller records it.

A completion cut off by the token limit usually breaks only after the model class is
complete (a helper function or docstring left unfinished). Such a program is salvaged:
the trailing top-level statements that do not parse are dropped, and the note says so.
"""

import ast
import re
from dataclasses import dataclass

# Where a program ends when the caller names no stop sequences: the next few-shot
# example's metrics docstring or a second model class.
DEFAULT_STOP = ('\n"""Metrics', "\nclass Model(")

# Chat templates' turn markers: the program ends where the model's turn ends.
CHAT_MARKERS = (
    "<|im_end|>",
    "<|im_start|>",
    "<|endoftext|>",
    "<|eot_id|>",
    "<|end|>",
    "<|end_of_text|>",
    "</s>",
    "<end_of_turn>",
)

_FENCE_OPEN = re.compile(r"^\s*```[ \t]*(?:python|py|python3)?[ \t]*\n", re.IGNORECASE)


@dataclass(frozen=True)
class Extracted:
    program: str
    # Empty when the program parses.
    parse_error: str
    # Set when unparsable trailing lines were dropped: how many.
    salvaged_lines: int = 0


def cut(text: str, stops: tuple[str, ...] | list[str]) -> str:
    """Text before the earliest stop sequence or chat marker."""
    end = len(text)
    for stop in (*stops, *CHAT_MARKERS):
        if stop and (i := text.find(stop)) != -1:
            end = min(end, i)
    return text[:end]


def unfence(text: str) -> str:
    """The inside of a leading ``` code fence, else the text unchanged."""
    match = _FENCE_OPEN.match(text)
    if not match:
        return text
    body = text[match.end() :]
    closing = body.find("```")
    return body if closing == -1 else body[:closing]


def parse_error(program: str) -> str:
    """'' when `program` is valid Python, else where and why it is not."""
    if not program.strip():
        return "empty program"
    try:
        ast.parse(program)
    except SyntaxError as e:
        where = f"line {e.lineno}" + (f", column {e.offset}" if e.offset else "")
        line = (e.text or "").rstrip("\n")
        return f"{e.msg} ({where})" + (f": {line.strip()}" if line.strip() else "")
    except ValueError as e:  # null bytes in the source
        return str(e)
    return ""


def extract(completion: str, opening: str, stops: tuple[str, ...] | list[str] = ()) -> Extracted:
    """The program a completion stands for, and its syntax error if it has one."""
    text = cut(completion, ())
    head = opening.strip()
    if _FENCE_OPEN.match(text):
        # A chat answer: the fence delimits the code, which may restate the whole program.
        body = unfence(text)
        joint = "" if opening.endswith("\n") or body.startswith("\n") else "\n"
        program = body if head and head in body else opening + joint + body
    else:
        body = cut(text, (*(stops or DEFAULT_STOP), "\n```"))
        restated = head and body.lstrip().startswith(head)
        program = body.lstrip() if restated else opening + body
    program = program.rstrip() + "\n"
    error = parse_error(program)
    if error and head:
        kept = salvage(program, head)
        if kept is not None:
            dropped = program.count("\n") - kept.count("\n")
            return Extracted(program=kept, parse_error="", salvaged_lines=dropped)
    return Extracted(program=program, parse_error=error)


def salvage(program: str, opening: str) -> str | None:
    """The longest prefix ending before a top-level line that parses and keeps the opening.

    Only whole top-level statements are dropped (cuts are tried before lines that start
    at column 0), so a half-written method is never silently shortened into another.
    """
    lines = program.splitlines(keepends=True)
    for end in range(len(lines) - 1, 0, -1):
        if lines[end][:1] in ("", " ", "\t", "\n"):
            continue  # not the start of a top-level statement
        candidate = "".join(lines[:end]).rstrip() + "\n"
        if opening in candidate and not parse_error(candidate):
            return candidate
    return None
