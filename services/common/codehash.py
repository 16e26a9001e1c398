"""Content hashes of candidate programs.

`code_hash` identifies the exact text. `normalized_hash` identifies the program a
person would call "the same": comments, docstrings, layout and the module's imports do
not count (a sampled child carries the task's imports, a seed its own). The
paper drops children that duplicate an earlier program; this is how we tell.
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
    return ast.unparse(tree)


def normalized_hash(code: str) -> str:
    return code_hash(normalize(code))
