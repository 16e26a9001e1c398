"""A stand-in for an OpenAI-compatible completions server, in vLLM's flavour.

Routes: POST /v1/completions, GET /v1/models (LoRA adapters listed with a `parent`),
GET /health, GET /version. Errors are `{"error": {"message", "type", "param", "code"}}`:
400 bad request, 404 unknown model, 429 rate limit (OpenAI; proxies in front of vLLM),
500 internal. Stop strings are cut from the text and named in `stop_reason`, as vLLM does.
"""

import time
import uuid
from typing import Any

from tests.standins import fake_model
from tests.standins.http import Handler, StandIn

MAX_MODEL_LEN = 2048
MODEL_ID = "standin/tiny-coder"


def _error(handler: Handler, status: int, kind: str, message: str) -> None:
    handler.send_json(
        status, {"error": {"message": message, "type": kind, "param": None, "code": status}}
    )


class OpenAIStandIn(StandIn):
    def __init__(self, adapters: tuple[str, ...] = ()) -> None:
        self.adapters = tuple(adapters)
        super().__init__(
            {
                ("POST", "/v1/completions"): self.completions,
                ("GET", "/v1/models"): self.models,
                ("GET", "/health"): self.health,
                ("GET", "/version"): lambda h, _b: h.send_json(200, {"version": "0.11.0"}),
            }
        )

    def health(self, handler: Handler, _body: Any) -> None:
        handler.send_response(200)
        handler.send_header("Content-Length", "0")
        handler.end_headers()

    def models(self, handler: Handler, _body: Any) -> None:
        card = {"object": "model", "created": 0, "owned_by": "vllm", "max_model_len": None}
        data = [{**card, "id": MODEL_ID, "root": MODEL_ID, "parent": None}]
        data[0]["max_model_len"] = MAX_MODEL_LEN
        for adapter in self.adapters:
            data.append({**card, "id": adapter, "root": f"/adapters/{adapter}", "parent": MODEL_ID})
        handler.send_json(200, {"object": "list", "data": data})

    def completions(self, handler: Handler, body: Any) -> None:
        if (problem := self._validate(body)) is not None:
            return _error(handler, *problem)
        if self.faults.delay_seconds:
            time.sleep(self.faults.delay_seconds)
        if self.faults.take("overloaded"):
            return _error(handler, 429, "rate_limit_exceeded", "Rate limit reached; retry later")
        if self.faults.take("generation_errors"):
            return _error(handler, 500, "InternalServerError", "CUDA error: out of memory")
        stop = body.get("stop") or []
        stop = [stop] if isinstance(stop, str) else stop
        temperature = body.get("temperature", 1.0)
        prompt_tokens = len(fake_model.tokenize(body["prompt"]))
        choices, completion_tokens = [], 0
        for index in range(body.get("n", 1)):
            seed = body.get("seed")
            gen = fake_model.generate(
                body["prompt"],
                max_new_tokens=body.get("max_tokens") or 16,
                stop=stop,
                seed=None if seed is None else seed * 1000 + index,
                sample=temperature > 0,
                adapter=body["model"] if body["model"] != MODEL_ID else "",
                temperature=temperature,
            )
            text, stop_reason = gen.text, None
            if gen.finish_reason == "stop_sequence":
                stop_reason = next(s for s in stop if s in text)
                text = text[: text.find(stop_reason)]
            tokens = len(gen.pieces) + (gen.finish_reason == "eos_token")
            completion_tokens += tokens
            choices.append(
                {
                    "index": index,
                    "text": text,
                    "logprobs": None,
                    "finish_reason": "length" if gen.finish_reason == "length" else "stop",
                    "stop_reason": stop_reason,
                    "prompt_logprobs": None,
                }
            )
        handler.send_json(
            200,
            {
                "id": f"cmpl-{uuid.uuid4().hex}",
                "object": "text_completion",
                "created": int(time.time()),
                "model": body["model"],
                "choices": choices,
                "usage": {
                    "prompt_tokens": prompt_tokens,
                    "total_tokens": prompt_tokens + completion_tokens,
                    "completion_tokens": completion_tokens,
                    "prompt_tokens_details": None,
                },
            },
        )

    def _validate(self, body: Any) -> tuple[int, str, str] | None:
        if not isinstance(body, dict) or "model" not in body or "prompt" not in body:
            return 400, "BadRequestError", "Field required: 'model' and 'prompt'"
        if body["model"] not in (MODEL_ID, *self.adapters):
            return 404, "NotFoundError", f"The model `{body['model']}` does not exist."
        if not isinstance(body["prompt"], str) or not body["prompt"]:
            return 400, "BadRequestError", "Prompt cannot be empty"
        if body.get("temperature", 1.0) < 0:
            got = body["temperature"]
            return 400, "BadRequestError", f"temperature must be non-negative, got {got}."
        if not 0 < body.get("top_p", 1.0) <= 1:
            return 400, "BadRequestError", f"top_p must be in (0, 1], got {body['top_p']}."
        max_tokens = body.get("max_tokens") or 16
        if max_tokens < 1:
            return 400, "BadRequestError", f"max_tokens must be at least 1, got {max_tokens}."
        prompt = len(fake_model.tokenize(body["prompt"]))
        if prompt + max_tokens > MAX_MODEL_LEN:
            return (
                400,
                "BadRequestError",
                (
                    f"This model's maximum context length is {MAX_MODEL_LEN} tokens. However, you "
                    f"requested {prompt + max_tokens} tokens ({prompt} in the messages, "
                    f"{max_tokens} in the completion). Please reduce the length of the messages "
                    "or completion."
                ),
            )
        return None
