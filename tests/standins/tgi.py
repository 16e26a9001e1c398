"""A stand-in for a Text Generation Inference server, faithful to TGI's router (v2/v3).

Routes: POST `/` (compat: a one-element JSON list, or SSE when `stream` is true),
POST `/generate` (one JSON object), POST `/generate_stream` (SSE: `data:` events, the
last one alone carrying `generated_text` and `details`), GET `/info`, GET `/health`.
Errors are `{"error", "error_type"}`: 422 validation, 424 generation, 429 overloaded,
500 incomplete_generation. Details are returned when asked for (`details` or
`decoder_input_details`); prefill tokens only with `decoder_input_details`. An unknown
`adapter_id` silently falls back to the base model, as TGI's shards do
(`ADAPTER_TO_INDEX.get(adapter_id, 0)`).
"""

import time
from typing import Any

from tests.standins import fake_model
from tests.standins.http import Handler, StandIn

MAX_TOTAL_TOKENS = 2048
MAX_STOP_SEQUENCES = 4
MODEL_ID = "standin/tiny-coder"


def _error(handler: Handler, status: int, error_type: str, message: str) -> None:
    handler.send_json(status, {"error": message, "error_type": error_type})


def _validate(body: Any) -> str | None:
    """The router's validation messages (InferError::ValidationError's text)."""
    if not isinstance(body, dict) or not isinstance(body.get("inputs"), str):
        return "missing field `inputs`"
    p = body.get("parameters") or {}
    if not body["inputs"]:
        return "`inputs` cannot be empty"
    if p.get("temperature") is not None and p["temperature"] <= 0:
        return "`temperature` must be strictly positive"
    if p.get("top_p") is not None and not 0 < p["top_p"] < 1:
        return "`top_p` must be > 0.0 and < 1.0"
    max_new = p.get("max_new_tokens")
    if max_new is not None and max_new <= 0:
        return "`max_new_tokens` must be strictly positive"
    if len(p.get("stop") or []) > MAX_STOP_SEQUENCES:
        return f"`stop` supports up to {MAX_STOP_SEQUENCES} stop sequences. Given: {len(p['stop'])}"
    inputs = len(fake_model.tokenize(body["inputs"]))
    if inputs + (max_new or 100) > MAX_TOTAL_TOKENS:
        return (
            f"`inputs` tokens + `max_new_tokens` must be <= {MAX_TOTAL_TOKENS}. "
            f"Given: {inputs} `inputs` tokens and {max_new} `max_new_tokens`"
        )
    if body.get("stream") and (p.get("best_of") or 1) > 1:
        return "`best_of` != 1 is not supported when streaming tokens"
    return None


def _token(piece: str) -> dict[str, Any]:
    return {"id": fake_model.token_id(piece), "text": piece, "logprob": -0.5, "special": False}


class TGIStandIn(StandIn):
    def __init__(self, adapters: tuple[str, ...] = ()) -> None:
        self.adapters = set(adapters)
        super().__init__(
            {
                ("POST", "/"): self.compat_generate,
                ("POST", "/generate"): self.generate,
                ("POST", "/generate_stream"): self.generate_stream,
                ("GET", "/info"): self.info,
                ("GET", "/health"): self.health,
            }
        )

    # ------------------------------------------------------------------ routes

    def info(self, handler: Handler, _body: Any) -> None:
        handler.send_json(
            200,
            {
                "model_id": MODEL_ID,
                "model_sha": None,
                "model_pipeline_tag": "text-generation",
                "max_concurrent_requests": 128,
                "max_best_of": 2,
                "max_stop_sequences": MAX_STOP_SEQUENCES,
                "max_input_tokens": MAX_TOTAL_TOKENS - 1,
                "max_total_tokens": MAX_TOTAL_TOKENS,
                "validation_workers": 2,
                "max_client_batch_size": 4,
                "router": "text-generation-router",
                "version": "3.3.6",
                "sha": None,
                "docker_label": None,
            },
        )

    def health(self, handler: Handler, _body: Any) -> None:
        handler.send_response(200)
        handler.send_header("Content-Length", "0")
        handler.end_headers()

    def compat_generate(self, handler: Handler, body: Any) -> None:
        if isinstance(body, dict) and body.get("stream"):
            self.generate_stream(handler, body)
        else:
            self._generate(handler, body, compat=True)

    def generate(self, handler: Handler, body: Any) -> None:
        self._generate(handler, body, compat=False)

    def _generate(self, handler: Handler, body: Any, compat: bool) -> None:
        if (problem := _validate(body)) is not None:
            return _error(handler, 422, "validation", f"Input validation error: {problem}")
        if (failure := self._fault()) is not None:
            return _error(handler, *failure)
        p = body.get("parameters") or {}
        gen = self._run(body)
        tokens = [_token(piece) for piece in gen.pieces]
        if gen.finish_reason == "eos_token":
            tokens.append({**fake_model.EOS, "logprob": -0.1})
        response: dict[str, Any] = {"generated_text": self._text(body, gen.text)}
        if p.get("details") or p.get("decoder_input_details"):
            response["details"] = {
                "finish_reason": gen.finish_reason,
                "generated_tokens": len(tokens),
                "seed": gen.seed,
                "prefill": self._prefill(body) if p.get("decoder_input_details") else [],
                "tokens": tokens,
            }
        handler.send_json(
            200,
            [response] if compat else response,
            {"x-prompt-tokens": str(len(fake_model.tokenize(body["inputs"]))),
             "x-generated-tokens": str(len(tokens))},
        )  # fmt: skip

    def generate_stream(self, handler: Handler, body: Any) -> None:
        # Axum sends the SSE 200 first; every failure is then an error event.
        handler.start_sse()
        problem = _validate(body)
        if problem is None and (body.get("parameters") or {}).get("decoder_input_details"):
            problem = "`decoder_input_details` == true is not supported when streaming tokens"
        if problem is not None:
            error = {"error": f"Input validation error: {problem}", "error_type": "validation"}
            return handler.sse_event(error)
        if (failure := self._fault()) is not None:
            return handler.sse_event({"error": failure[2], "error_type": failure[1]})
        p = body.get("parameters") or {}
        gen = self._run(body)
        tokens = [_token(piece) for piece in gen.pieces]
        if gen.finish_reason == "eos_token":
            tokens.append({**fake_model.EOS, "logprob": -0.1})
        for index, token in enumerate(tokens, start=1):
            last = index == len(tokens)
            event: dict[str, Any] = {"index": index, "token": token}
            event["generated_text"] = self._text(body, gen.text) if last else None
            event["details"] = (
                {
                    "finish_reason": gen.finish_reason,
                    "generated_tokens": len(tokens),
                    "seed": gen.seed,
                    "input_length": len(fake_model.tokenize(body["inputs"])),
                }
                if last and p.get("details")
                else None
            )
            handler.sse_event(event)

    # ------------------------------------------------------------------ helpers

    def _fault(self) -> tuple[int, str, str] | None:
        if self.faults.delay_seconds:
            time.sleep(self.faults.delay_seconds)
        if self.faults.take("overloaded"):
            return 429, "overloaded", "Model is overloaded"
        if self.faults.take("generation_errors"):
            return 424, "generation", "Request failed during generation: CUDA out of memory"
        if self.faults.take("incomplete"):
            return 500, "incomplete_generation", "Incomplete generation"
        return None

    def _run(self, body: dict[str, Any]) -> fake_model.Generation:
        p = body.get("parameters") or {}
        sample = bool(p.get("do_sample")) or any(
            p.get(k) is not None for k in ("temperature", "top_p", "top_k", "typical_p")
        )
        adapter = p.get("adapter_id") or ""
        return fake_model.generate(
            body["inputs"],
            max_new_tokens=p.get("max_new_tokens") or 100,
            stop=p.get("stop") or [],
            seed=p.get("seed"),
            sample=sample,
            adapter=adapter if adapter in self.adapters else "",
            temperature=p.get("temperature") or 1.0,
        )

    @staticmethod
    def _text(body: dict[str, Any], text: str) -> str:
        full = (body.get("parameters") or {}).get("return_full_text")
        return body["inputs"] + text if full else text

    @staticmethod
    def _prefill(body: dict[str, Any]) -> list[dict[str, Any]]:
        pieces = fake_model.tokenize(body["inputs"])
        return [
            {"id": fake_model.token_id(p), "text": p, "logprob": None if i == 0 else -1.0}
            for i, p in enumerate(pieces)
        ]
