"""Content hashes of candidate programs.

`code_hash` identifies the exact text. `normalized_hash` identifies the program a
person would call "the same": comments, docstrings, layout and the module's imports do
not count (a sampled child carries the task's imports, a seed its own), nor do top-level
functions and classes that the program's entry point never reaches (a small model often
copies its parent and rambles on with unused helpers after it). The paper drops children
that duplicate an earlier program; this is how we tell.
"""

import ast
import hashlib
import re


def code_hash(code: str) -> str:
    return hashlib.sha256(code.encode()).hexdigest()


def normalize(code: str) -> str:
    """Code without comments, docstrings, imports or formatting; text if it does not parse."""
    try:
        tree = ast.parse(code)
    except (SyntaxError, ValueError):
        lines = (re.sub(r"\s+", " ", line.split("#", 1)[0]).strip() for line in code.splitlines())
        return "\n".join(line for line in lines if line)
    for node in ast.walk(tree):
        body = getattr(node, "body", None)
        if (
            isinstance(node, ast.Module | ast.ClassDef | ast.FunctionDef | ast.AsyncFunctionDef)
            and body
            and isinstance(body[0], ast.Expr)
            and isinstance(body[0].value, ast.Constant)
            and isinstance(body[0].value.value, str)
        ):
            node.body = body[1:] or [ast.Pass()]
    tree.body = [n for n in tree.body if not isinstance(n, ast.Import | ast.ImportFrom)]
    tree.body = _reachable(tree.body)
    return ast.unparse(tree)


# What the trainer calls: the tasks' program openings and the factory alternative.
ENTRY_POINTS = ("Model", "build_model", "get_triplet_msgs")
_Definition = ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef


def _reachable(body: list[ast.stmt]) -> list[ast.stmt]:
    """The module's statements without the definitions its entry points never use.

    Other statements stay (they run at import and may matter); with no entry point
    defined, everything stays."""
    defined = {n.name: n for n in body if isinstance(n, _Definition)}
    todo = [name for name in ENTRY_POINTS if name in defined]
    if not todo:
        return body
    used: set[str] = set()
    roots = [n for n in body if not isinstance(n, _Definition)]
    todo += [x.id for root in roots for x in ast.walk(root) if isinstance(x, ast.Name)]
    while todo:
        name = todo.pop()
        if name in used or name not in defined:
            continue
        used.add(name)
        todo += [x.id for x in ast.walk(defined[name]) if isinstance(x, ast.Name)]
    return [n for n in body if not isinstance(n, _Definition) or n.name in used]


def normalized_hash(code: str) -> str:
    return code_hash(normalize(code))
