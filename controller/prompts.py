"""The paper's few-shot prompt: parents as metrics docstrings and code, then the target.

    \"\"\"Metrics:
    {'num_params': '4800', 'val_accuracy': '0.865'}
    \"\"\"
    class Model(nn.Module): ...

The prompt ends with a target metrics docstring (90% of the smallest parent's size,
rounded to the nearest 100 parameters; 102% of the best parent's accuracy, rounded to
the nearest 0.1%) and the opening line the model continues.
"""

import ast
import json
from dataclasses import dataclass

TARGET_SIZE_FRACTION = 0.9
TARGET_ACCURACY_FACTOR = 1.02


@dataclass(frozen=True)
class Example:
    """A scored program as the prompt shows it."""

    code: str
    num_params: int
    val_accuracy: float


@dataclass(frozen=True)
class Prompt:
    text: str
    target: dict[str, str]

    @property
    def target_json(self) -> str:
        return json.dumps(self.target, sort_keys=True)


def metrics_docstring(num_params: int, val_accuracy: float) -> str:
    metrics = {"num_params": str(int(num_params)), "val_accuracy": f"{val_accuracy:.3f}"}
    return f'"""Metrics:\n{metrics!r}\n"""\n'


def target_metrics(parents: list[Example]) -> tuple[int, float]:
    """The paper's target: smaller than the smallest parent, better than the best one.

    Accuracy is capped at 1.0: 102% of a 99% parent would ask for the impossible.
    """
    size = round(TARGET_SIZE_FRACTION * min(p.num_params for p in parents), -2)
    accuracy = round(TARGET_ACCURACY_FACTOR * max(p.val_accuracy for p in parents), 3)
    return max(int(size), 100), min(accuracy, 1.0)


def program_body(code: str) -> str:
    """The program without its leading imports and module docstring (the header has them)."""
    lines = code.strip("\n").splitlines()
    try:
        tree = ast.parse(code)
    except SyntaxError:
        return code.strip("\n") + "\n"
    start = 0
    for node in tree.body:
        is_doc = (
            isinstance(node, ast.Expr)
            and isinstance(node.value, ast.Constant)
            and isinstance(node.value.value, str)
        )
        if isinstance(node, ast.Import | ast.ImportFrom) or is_doc:
            start = node.end_lineno or start
        else:
            break
    return "\n".join(lines[start:]).strip("\n") + "\n"


def example_text(example: Example) -> str:
    """One parent as the prompt shows it; also a soft prompt-tuning training text."""
    return metrics_docstring(example.num_params, example.val_accuracy) + program_body(example.code)


def build(header: str, parents: list[Example], opening: str) -> Prompt:
    size, accuracy = target_metrics(parents)
    parts = [header.rstrip("\n") + "\n\n"] if header else []
    parts += [example_text(p) + "\n\n" for p in parents]
    parts.append(metrics_docstring(size, accuracy) + opening)
    return Prompt(
        text="".join(parts),
        target={"num_params": str(size), "val_accuracy": f"{accuracy:.3f}"},
    )
