"""Our ctypes binding to llama.cpp (services/proposer/backends/llama_c.py), against the real
library in the xllamacpp wheel: the struct layouts read back llama.cpp's defaults and a
shifted field is caught, a wrong version or a missing function is a clear error, and the
llguidance tokenizer built from it splits text as llama.cpp's own tokenizer does."""

import ctypes
import hashlib
import importlib.util
from collections.abc import Iterator

import pytest

if importlib.util.find_spec("xllamacpp") is None:
    pytest.skip("needs xllamacpp (the lm extra): the llama.cpp library", allow_module_level=True)

from services.proposer import model_files
from services.proposer.backends import llama_c


@pytest.fixture(scope="module")
def lib() -> llama_c.Llama:
    return llama_c.load()


@pytest.fixture(scope="module")
def vocab(lib: llama_c.Llama) -> Iterator[int]:
    params = lib.llama_model_default_params()
    params.vocab_only = True
    model = lib.llama_model_load_from_file(str(model_files.default_gguf()).encode(), params)
    assert model
    yield lib.llama_model_get_vocab(model)
    lib.llama_model_free(model)


def shifted_context_params() -> type[ctypes.Structure]:
    """llama_context_params as an older llama.h had it: one uint32 field too many after
    n_seq_max, so every later field is read 4 bytes late (and the struct is larger than
    the library's, so the call writes inside it)."""
    fields = list(llama_c.LlamaContextParams._fields_)
    at = [name for name, _ in fields].index("n_seq_max") + 1
    fields.insert(at, ("n_stale", ctypes.c_uint32))
    return type("Shifted", (ctypes.Structure,), {"_fields_": fields})


def test_the_structs_read_back_llama_cpp_defaults(lib: llama_c.Llama) -> None:
    context = lib.llama_context_default_params()
    model = lib.llama_model_default_params()
    llama_c.check_layout(context, llama_c._CONTEXT_DEFAULTS, "llama_context_default_params")
    llama_c.check_layout(model, llama_c._MODEL_DEFAULTS, "llama_model_default_params")
    # The last fields too: nothing after them is read at a wrong offset.
    assert (context.n_samplers, context.ctx_other, model.load_mtp) == (0, None, False)


def test_a_shifted_field_is_caught(lib: llama_c.Llama) -> None:
    shifted = shifted_context_params()
    function = ctypes.CFUNCTYPE(shifted)(("llama_context_default_params", lib.cdll))
    with pytest.raises(llama_c.LlamaCError, match=r"n_outputs_max=1 \(expected 0\)") as e:
        llama_c.check_layout(function(), llama_c._CONTEXT_DEFAULTS, "llama_context_default_params")
    assert f"xllamacpp=={llama_c.XLLAMACPP_VERSION}" in str(e.value)


def test_another_xllamacpp_version_is_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(llama_c, "XLLAMACPP_VERSION", "0.0.1")
    with pytest.raises(llama_c.LlamaCError, match=r"laid out as in xllamacpp==0\.0\.1"):
        llama_c.library_path()


def test_a_missing_function_is_a_clear_error(monkeypatch: pytest.MonkeyPatch) -> None:
    functions = {**llama_c._FUNCTIONS, "llama_no_such_function": ([], None)}
    monkeypatch.setattr(llama_c, "_FUNCTIONS", functions)
    with pytest.raises(llama_c.LlamaCError, match="has no function llama_no_such_function"):
        llama_c.Llama(llama_c.library_path())


def test_a_library_that_does_not_load_is_a_clear_error(tmp_path) -> None:  # type: ignore[no-untyped-def]
    junk = tmp_path / "xllamacpp.abi3.so"
    junk.write_bytes(b"not a shared library")
    with pytest.raises(llama_c.LlamaCError, match=r"cannot load .*pip install 'xllamacpp=="):
        llama_c.Llama(junk)


def test_the_tokenizer_marks_special_tokens(lib: llama_c.Llama, vocab: int) -> None:
    pieces = llama_c.token_pieces(lib, vocab)
    assert len(pieces) == lib.llama_vocab_n_tokens(vocab) == 49152
    special = [p for p in pieces if p.startswith(b"\xff")]
    # SmolLM2's 17 control tokens, ids 0-16, and nothing else.
    assert special == [b"\xff" + p.lstrip(b"\xff") for p in pieces[:17]]
    assert pieces[:3] == [b"\xff<|endoftext|>", b"\xff<|im_start|>", b"\xff<|im_end|>"]
    assert pieces[1604] == b"def"


def test_the_tokenizer_splits_as_llama_cpp_does(lib: llama_c.Llama, vocab: int) -> None:
    tokenizer = llama_c.lltokenizer(lib, vocab)
    text = "class Model(nn.Module):\n    def forward(self, x):\n        return self.fc(x)\n"
    data = text.encode()
    out = (llama_c.llama_token * (len(data) + 16))()
    n = lib.llama_tokenize(vocab, data, len(data), out, len(data) + 16, False, True)
    assert tokenizer.tokenize_str(text) == list(out[:n])
    assert tokenizer.decode_bytes(list(out[:n])) == data
    # As llguidance.llamacpp.lltokenizer_from_vocab (on llama-cpp-python 0.3.36) split it.
    assert tokenizer.tokenize_str("def forward(self, x):") == [1604, 3703, 24, 771, 28, 1792, 727]
    assert tokenizer.eos_token == lib.llama_vocab_eos(vocab) == 2


# Every token's bytes and special flag, as llguidance's own helper read them
# (llguidance.llamacpp.lltokenizer_from_vocab on llama-cpp-python 0.3.36, 2026-12-03): a
# digest, because llama-cpp-python is no longer installed to compare against.
LLGUIDANCE_VOCABULARY_DIGEST = "6b38708c65e7b3deef709d4d695e560b98717bcfc5ee2492066710424f1c9f27"


def test_the_tokenizer_equals_llguidances_own(lib: llama_c.Llama, vocab: int) -> None:
    ours = llama_c.lltokenizer(lib, vocab)
    digest = hashlib.sha256()
    for i in range(ours.vocab_size):
        piece = ours.decode_bytes([i])
        digest.update(len(piece).to_bytes(2, "little") + piece + bytes([ours.is_special_token(i)]))
    assert ours.vocab_size == 49152
    assert digest.hexdigest() == LLGUIDANCE_VOCABULARY_DIGEST
