"""The paper's prompt format and target metrics."""

from controller import prompts
from services.trainer.tasks.mnist1d import Mnist1d

CNN = dict(Mnist1d().seeds())["cnn"]


def test_metrics_docstring_is_the_papers() -> None:
    text = prompts.metrics_docstring(4800, 0.8654)
    assert text == "\"\"\"Metrics:\n{'num_params': '4800', 'val_accuracy': '0.865'}\n\"\"\"\n"


def test_target_is_smaller_and_better_rounded_as_the_paper_says() -> None:
    parents = [prompts.Example(CNN, 4820, 0.865), prompts.Example(CNN, 15210, 0.9)]
    # 90% of 4,820 = 4,338 -> nearest 100 = 4,300; 102% of 0.9 = 0.918 -> nearest 0.1%.
    assert prompts.target_metrics(parents) == (4300, 0.918)
    assert prompts.target_metrics([prompts.Example(CNN, 5000, 0.99)]) == (4500, 1.0)  # capped


def test_prompt_shows_each_parent_then_the_target_and_the_opening() -> None:
    parents = [prompts.Example(CNN, 5210, 0.93), prompts.Example(CNN, 5210, 0.91)]
    built = prompts.build("import torch.nn as nn\n", parents, "class Model(nn.Module):")
    assert built.text.startswith("import torch.nn as nn\n\n")
    assert built.text.count('"""Metrics:') == 3
    assert built.text.count("class Model(nn.Module):") == 3  # two parents and the opening
    assert built.text.endswith(
        "\"\"\"Metrics:\n{'num_params': '4700', 'val_accuracy': '0.949'}\n\"\"\"\n"
        "class Model(nn.Module):"
    )
    assert built.target == {"num_params": "4700", "val_accuracy": "0.949"}
    # A parent's own imports are left out: the header has them once.
    assert "import torch.nn.functional" not in built.text


def test_program_body_keeps_broken_code_whole() -> None:
    assert prompts.program_body("import x\ndef (:\n") == "import x\ndef (:\n"
    assert prompts.program_body('"""doc"""\nimport x\n\nclass A: pass\n') == "class A: pass\n"
