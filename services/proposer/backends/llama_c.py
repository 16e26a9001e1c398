"""llama.cpp's C API through ctypes, from the library inside the xllamacpp wheel.

Why not llama-cpp-python: PyPI has it only as source, and compiling llama.cpp took about
13 of the 11-17 minutes of `make install` on 2 cores. xllamacpp (llama.cpp's own server
with llguidance, a prebuilt manylinux wheel) links llama.cpp statically into
`xllamacpp/xllamacpp.abi3.so` and exports its C API, so this module loads that file with
ctypes (never importing the xllamacpp package, a server wrapper) and declares exactly the
functions the llamacpp backend and its grammar mask call.

The structs are passed by value, so a wrong layout corrupts memory silently. They are
transcribed field by field from `include/llama.h` of the llama.cpp that
xllamacpp==2026.10.11549 builds (`thirdparty/llama.cpp` in its sdist), and the binding
refuses any other xllamacpp version; at load it also checks that the library's default
parameters read back as that llama.cpp documents them, so a transcription slip (a field
missing, moved or of the wrong width) is an error at start and not garbage mid-search.
Moving to another xllamacpp means reading its llama.h again: update the structs, the
defaults in `_CONTEXT_DEFAULTS` / `_MODEL_DEFAULTS` and `XLLAMACPP_VERSION` together.
"""

import ctypes
import importlib.metadata
import os
import threading
from ctypes import (
    POINTER,
    c_bool,
    c_char_p,
    c_float,
    c_int,
    c_int8,
    c_int32,
    c_size_t,
    c_uint32,
    c_void_p,
)
from pathlib import Path
from typing import Any

XLLAMACPP_VERSION = "2026.10.11549"
DISTRIBUTION = "xllamacpp"
LIBRARY = "xllamacpp/xllamacpp.abi3.so"
_FIX = f"pip install '{DISTRIBUTION}=={XLLAMACPP_VERSION}' (this binding follows its llama.h)"

# enum llama_token_attr (llama.h)
LLAMA_TOKEN_ATTR_CONTROL = 1 << 3
LLAMA_TOKEN_ATTR_USER_DEFINED = 1 << 4
# enum ggml_log_level (ggml.h): NONE, DEBUG, INFO, WARN, ERROR, CONT
GGML_LOG_LEVEL_ERROR = 4

llama_token = c_int32
llama_pos = c_int32
llama_seq_id = c_int32
# typedef void (*ggml_log_callback)(enum ggml_log_level level, const char * text, void * user_data)
LogCallback = ctypes.CFUNCTYPE(None, c_int, c_char_p, c_void_p)


class LlamaModelParams(ctypes.Structure):
    """struct llama_model_params."""

    _fields_ = [
        ("devices", c_void_p),  # ggml_backend_dev_t *
        ("tensor_buft_overrides", c_void_p),  # const struct llama_model_tensor_buft_override *
        ("n_gpu_layers", c_int32),
        ("split_mode", c_int),  # enum llama_split_mode
        ("load_mode", c_int),  # enum llama_load_mode
        ("lazy_mode", c_int),  # enum llama_lazy_mode
        ("main_gpu", c_int32),
        ("tensor_split", POINTER(c_float)),
        ("progress_callback", c_void_p),  # llama_progress_callback
        ("progress_callback_user_data", c_void_p),
        ("kv_overrides", c_void_p),  # const struct llama_model_kv_override *
        ("vocab_only", c_bool),
        ("check_tensors", c_bool),
        ("use_extra_bufts", c_bool),
        ("no_host", c_bool),
        ("no_alloc", c_bool),
        ("load_mtp", c_bool),
    ]


class LlamaContextParams(ctypes.Structure):
    """struct llama_context_params."""

    _fields_ = [
        ("n_ctx", c_uint32),
        ("n_batch", c_uint32),
        ("n_ubatch", c_uint32),
        ("n_seq_max", c_uint32),
        ("n_rs_seq", c_uint32),
        ("n_outputs_max", c_uint32),
        ("n_outputs_max_per_seq", c_uint32),
        ("n_threads", c_int32),
        ("n_threads_batch", c_int32),
        ("ctx_type", c_int),  # enum llama_context_type
        ("rope_scaling_type", c_int),  # enum llama_rope_scaling_type
        ("pooling_type", c_int),  # enum llama_pooling_type
        ("attention_type", c_int),  # enum llama_attention_type
        ("flash_attn_type", c_int),  # enum llama_flash_attn_type
        ("rope_freq_base", c_float),
        ("rope_freq_scale", c_float),
        ("yarn_ext_factor", c_float),
        ("yarn_attn_factor", c_float),
        ("yarn_beta_fast", c_float),
        ("yarn_beta_slow", c_float),
        ("yarn_orig_ctx", c_uint32),
        ("defrag_thold", c_float),
        ("cb_eval", c_void_p),  # ggml_backend_sched_eval_callback
        ("cb_eval_user_data", c_void_p),
        ("type_k", c_int),  # enum ggml_type
        ("type_v", c_int),  # enum ggml_type
        ("moe_cache_size", c_size_t),
        ("abort_callback", c_void_p),  # ggml_abort_callback
        ("abort_callback_data", c_void_p),
        ("embeddings", c_bool),
        ("offload_kqv", c_bool),
        ("no_perf", c_bool),
        ("op_offload", c_bool),
        ("swa_full", c_bool),
        ("kv_unified", c_bool),
        ("samplers", c_void_p),  # struct llama_sampler_seq_config *
        ("n_samplers", c_size_t),
        ("ctx_other", c_void_p),  # struct llama_context *
    ]


class LlamaBatch(ctypes.Structure):
    """struct llama_batch: arrays of n_tokens entries (llama_batch_init allocates them)."""

    _fields_ = [
        ("n_tokens", c_int32),
        ("token", POINTER(llama_token)),
        ("embd", POINTER(c_float)),
        ("pos", POINTER(llama_pos)),
        ("n_seq_id", POINTER(c_int32)),
        ("seq_id", POINTER(POINTER(llama_seq_id))),
        ("logits", POINTER(c_int8)),
    ]


# The defaults llama.cpp sets (llama_context_default_params in src/llama-context.cpp and
# llama_model_default_params in src/llama-model.cpp of the same sources): a field read at
# the wrong offset or width shows up as a wrong value here. Floats are exact (-1.0, 0.0).
_CONTEXT_DEFAULTS: dict[str, object] = {
    "n_ctx": 512,
    "n_batch": 2048,
    "n_ubatch": 512,
    "n_seq_max": 1,
    "n_rs_seq": 0,
    "n_outputs_max": 0,
    "n_outputs_max_per_seq": 1,
    "n_threads": 4,  # GGML_DEFAULT_N_THREADS
    "n_threads_batch": 4,
    "ctx_type": 0,
    "rope_scaling_type": -1,
    "pooling_type": -1,
    "attention_type": -1,
    "flash_attn_type": -1,
    "rope_freq_base": 0.0,
    "rope_freq_scale": 0.0,
    "yarn_ext_factor": -1.0,
    "yarn_attn_factor": -1.0,
    "yarn_beta_fast": -1.0,
    "yarn_beta_slow": -1.0,
    "yarn_orig_ctx": 0,
    "defrag_thold": -1.0,
    "cb_eval": None,
    "cb_eval_user_data": None,
    "type_k": 1,  # GGML_TYPE_F16
    "type_v": 1,
    "moe_cache_size": 0,
    "abort_callback": None,
    "abort_callback_data": None,
    "embeddings": False,
    "offload_kqv": True,
    "no_perf": True,
    "op_offload": True,
    "swa_full": True,
    "kv_unified": False,
    "samplers": None,
    "n_samplers": 0,
    "ctx_other": None,
}
_MODEL_DEFAULTS: dict[str, object] = {
    "devices": None,
    "tensor_buft_overrides": None,
    "n_gpu_layers": -1,
    "split_mode": 1,  # LLAMA_SPLIT_MODE_LAYER
    "load_mode": -1,  # LLAMA_LOAD_MODE_AUTO
    "lazy_mode": 1,  # LLAMA_LAZY_MODE_AUTO
    "main_gpu": 0,
    "progress_callback": None,
    "progress_callback_user_data": None,
    "kv_overrides": None,
    "vocab_only": False,
    "check_tensors": False,
    "use_extra_bufts": True,
    "no_host": False,
    "no_alloc": False,
    "load_mtp": False,
}

# name -> (argument types, result type), as llama.h declares them. Pointers to llama.cpp's
# opaque types (llama_model, llama_context, llama_vocab, llama_memory_t) are void pointers.
_FUNCTIONS: dict[str, tuple[list[Any], Any]] = {
    "llama_backend_init": ([], None),
    "llama_log_set": ([LogCallback, c_void_p], None),
    "llama_model_default_params": ([], LlamaModelParams),
    "llama_context_default_params": ([], LlamaContextParams),
    "llama_model_load_from_file": ([c_char_p, LlamaModelParams], c_void_p),
    "llama_model_free": ([c_void_p], None),
    "llama_model_get_vocab": ([c_void_p], c_void_p),
    "llama_model_n_embd": ([c_void_p], c_int32),
    "llama_model_n_ctx_train": ([c_void_p], c_int32),
    "llama_init_from_model": ([c_void_p, LlamaContextParams], c_void_p),
    "llama_free": ([c_void_p], None),
    "llama_get_memory": ([c_void_p], c_void_p),
    "llama_memory_clear": ([c_void_p, c_bool], None),
    "llama_memory_seq_cp": ([c_void_p, llama_seq_id, llama_seq_id, llama_pos, llama_pos], None),
    "llama_memory_seq_rm": ([c_void_p, llama_seq_id, llama_pos, llama_pos], c_bool),
    "llama_vocab_n_tokens": ([c_void_p], c_int32),
    "llama_vocab_get_add_bos": ([c_void_p], c_bool),
    "llama_vocab_eos": ([c_void_p], llama_token),
    "llama_vocab_is_eog": ([c_void_p, llama_token], c_bool),
    "llama_vocab_get_attr": ([c_void_p, llama_token], c_int),  # enum llama_token_attr
    # (vocab, token, buf, length, lstrip, special) -> bytes written, or -(room needed)
    "llama_token_to_piece": ([c_void_p, llama_token, c_char_p, c_int32, c_int32, c_bool], c_int32),
    # (vocab, text, text_len, tokens, n_tokens_max, add_special, parse_special) -> count
    "llama_tokenize": (
        [c_void_p, c_char_p, c_int32, POINTER(llama_token), c_int32, c_bool, c_bool],
        c_int32,
    ),
    "llama_batch_init": ([c_int32, c_int32, c_int32], LlamaBatch),
    "llama_batch_free": ([LlamaBatch], None),
    "llama_decode": ([c_void_p, LlamaBatch], c_int32),
    "llama_get_logits_ith": ([c_void_p, c_int32], POINTER(c_float)),
}


class LlamaCError(RuntimeError):
    """The llama.cpp library is missing, or not the one this binding was written for."""


def library_path() -> Path:
    """xllamacpp's shared library, found through the distribution's file list: importing
    the package would load the server module for nothing."""
    try:
        dist = importlib.metadata.distribution(DISTRIBUTION)
    except importlib.metadata.PackageNotFoundError as e:
        raise LlamaCError(
            f"the llamacpp backend needs the llama.cpp library in {DISTRIBUTION}: {_FIX}"
        ) from e
    if dist.version != XLLAMACPP_VERSION:
        raise LlamaCError(
            f"{DISTRIBUTION} {dist.version} is installed; the llamacpp backend passes llama.cpp "
            f"structs laid out as in {DISTRIBUTION}=={XLLAMACPP_VERSION}: {_FIX}"
        )
    for file in dist.files or []:
        if str(file) == LIBRARY:
            path = Path(str(dist.locate_file(file)))
            if path.is_file():
                return path
    raise LlamaCError(f"no {LIBRARY} in the installed {DISTRIBUTION} (a broken install?): {_FIX}")


def check_layout(got: ctypes.Structure, expected: dict[str, object], what: str) -> None:
    """Every field named in `expected` reads back with that value, or LlamaCError."""
    wrong = [
        f"{name}={getattr(got, name)!r} (expected {want!r})"
        for name, want in expected.items()
        if getattr(got, name) != want
    ]
    if wrong:
        raise LlamaCError(
            f"{what}() does not read back as llama.cpp documents it ({', '.join(wrong)}): "
            f"the struct layout in {__name__} does not match the loaded library; {_FIX}"
        )


class Llama:
    """The loaded library: its functions, declared (`lib.llama_decode(ctx, batch)`)."""

    def __init__(self, path: Path) -> None:
        try:
            self.cdll = ctypes.CDLL(str(path))
        except OSError as e:
            raise LlamaCError(f"cannot load {path} ({e}): {_FIX}") from e
        for name, (args, result) in _FUNCTIONS.items():
            try:
                function = getattr(self.cdll, name)
            except AttributeError:
                raise LlamaCError(f"{path} has no function {name}: {_FIX}") from None
            function.argtypes, function.restype = args, result
            setattr(self, name, function)
        self.path = path
        self._log_callback: Any = None
        check_layout(
            self.llama_context_default_params(), _CONTEXT_DEFAULTS, "llama_context_default_params"
        )
        check_layout(
            self.llama_model_default_params(), _MODEL_DEFAULTS, "llama_model_default_params"
        )

    def __getattr__(self, name: str) -> Any:
        """Only reached for names __init__ did not set: a function used but not declared.
        (Also what lets type checkers accept `lib.llama_decode` and the others.)"""
        raise AttributeError(f"{name} is not declared in {__name__} (add it to _FUNCTIONS)")

    def quiet(self) -> None:
        """llama.cpp logs every tensor it loads to stderr; keep its errors only."""
        if self._log_callback is None:

            def log(level: int, text: bytes | None, _user: object) -> None:
                if level == GGML_LOG_LEVEL_ERROR and text:
                    os.write(2, text)

            self._log_callback = LogCallback(log)  # kept alive as long as the library
            self.llama_log_set(self._log_callback, None)

    def tokenize_address(self) -> int:
        """The address of this library's llama_tokenize, for llguidance to call."""
        address = ctypes.cast(self.cdll.llama_tokenize, c_void_p).value
        assert address is not None
        return address


_loaded: Llama | None = None
_loading = threading.Lock()


def load() -> Llama:
    """The library, loaded and checked once per process, with its logging quieted."""
    global _loaded
    with _loading:
        if _loaded is None:
            lib = Llama(library_path())
            lib.quiet()
            lib.llama_backend_init()
            _loaded = lib
        return _loaded


def token_pieces(lib: Llama, vocab: int) -> list[bytes]:
    """Every token's bytes as llguidance reads them: special tokens rendered, and control
    tokens (and user-defined ones that look like `<...>`) prefixed with 0xff, llguidance's
    mark for a special token (as llguidance.llamacpp.lltokenizer_from_vocab does)."""
    room = 16 * 1024
    buffer = ctypes.create_string_buffer(room + 1)
    pieces: list[bytes] = []
    for token in range(lib.llama_vocab_n_tokens(vocab)):
        n = lib.llama_token_to_piece(vocab, token, buffer, room, 0, True)
        if n < 0:
            raise ValueError(f"token {token} does not fit in {room} bytes ({n})")
        piece = bytes(buffer[:n])
        attr = lib.llama_vocab_get_attr(vocab, token)
        if attr & LLAMA_TOKEN_ATTR_CONTROL or (
            attr & LLAMA_TOKEN_ATTR_USER_DEFINED and piece.startswith(b"<") and piece.endswith(b">")
        ):
            piece = b"\xff" + piece
        pieces.append(piece)
    return pieces


def lltokenizer(lib: Llama, vocab: int):  # type: ignore[no-untyped-def]
    """llguidance's tokenizer for a llama.cpp vocabulary (about a second: cache it).

    What `llguidance.llamacpp.lltokenizer_from_vocab` does, but against this library:
    llguidance's own helper imports llama-cpp-python. llguidance tokenizes by calling
    `llama_tokenize` at the address given, with `vocab` as its first argument.
    """
    from llguidance import LLTokenizer

    return LLTokenizer.from_llamacpp(  # type: ignore[attr-defined]
        tokens=token_pieces(lib, vocab),
        vocab_ptr=vocab,
        tokenize_fptr=lib.tokenize_address(),
        eos_token=lib.llama_vocab_eos(vocab),
        slices=None,
    )
