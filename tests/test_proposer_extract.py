"""Program extraction: opening + completion, cut, unwrapped, and parse-checked."""

from services.proposer.extract import DEFAULT_STOP, extract, parse_error

OPENING = "class Model(nn.Module):"
BODY = "\n    def forward(self, x):\n        return x\n"


def test_a_continuation_is_completed_with_the_opening_and_cut_at_the_next_example() -> None:
    found = extract(BODY + '\n"""Metrics:\n{\'num_params\': 1}\n"""\nclass Model(', OPENING)
    assert found.program == OPENING + BODY
    assert found.parse_error == ""
    assert '\n"""Metrics' in DEFAULT_STOP


def test_caller_stop_sequences_replace_the_defaults() -> None:
    found = extract(BODY + "\n# END\nmore junk(", OPENING, ["\n# END"])
    assert found.program == OPENING + BODY and found.parse_error == ""


def test_chat_markers_end_the_program() -> None:
    found = extract(BODY + "<|im_end|>\n<|im_start|>user\nthanks", OPENING)
    assert found.program == OPENING + BODY


def test_a_fenced_chat_answer_that_restates_the_program_is_taken_whole() -> None:
    text = "```python\nimport torch.nn as nn\n\nclass Model(nn.Module):" + BODY + "```\nDone!"
    found = extract(text, OPENING)
    assert found.program == "import torch.nn as nn\n\nclass Model(nn.Module):" + BODY
    assert found.parse_error == ""


def test_a_fenced_body_is_joined_to_the_opening_on_a_new_line() -> None:
    found = extract("```py\n    pass\n```", OPENING)
    assert found.program == OPENING + "\n    pass\n"


def test_a_restated_opening_is_not_doubled() -> None:
    found = extract(" " + OPENING + BODY, OPENING)
    assert found.program == OPENING + BODY


def test_syntax_errors_are_returned_with_line_and_text() -> None:
    found = extract("\n    def forward(self, x)\n        return x\n", OPENING)
    assert found.parse_error.startswith("expected ':' (line 2")
    assert found.parse_error.endswith("def forward(self, x)")
    assert found.program.startswith(OPENING + "\n    def forward(self, x)\n")


def test_an_empty_completion_is_an_error_not_a_program() -> None:
    assert "expected an indented block" in extract("", OPENING).parse_error
    assert parse_error("  \n") == "empty program"
    assert parse_error("x = 1\n") == ""
    assert "null" in parse_error("x = 1\0\n")


def test_without_an_opening_the_completion_alone_is_the_program() -> None:
    found = extract("x = 1\n", "")
    assert found.program == "x = 1\n" and found.parse_error == ""


def test_a_program_cut_off_after_its_class_is_salvaged() -> None:
    # The token limit cut the completion inside a helper's docstring.
    tail = '\ndef helper(x):\n    """Given a tensor\n    of shape (batch, 10)'
    found = extract(BODY + tail, OPENING)
    assert found.parse_error == ""
    assert found.program == OPENING + BODY
    assert found.salvaged_lines == 4  # the blank line and the three of the helper


def test_a_class_cut_off_in_a_method_is_not_salvaged() -> None:
    found = extract("\n    def forward(self, x):\n        return (x", OPENING)
    assert found.parse_error and found.salvaged_lines == 0
    assert found.program == OPENING + "\n    def forward(self, x):\n        return (x\n"
