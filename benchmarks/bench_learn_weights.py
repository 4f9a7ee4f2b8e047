"""Benchmark merge/learn_weights.py: time and peak memory of a fit, and what it would cost for Qwen2-7B.

1. The whole CLI (imports included) fitting per-module weights of three rank-16 adapters on the
   validation prompts (300 in the quickstart), with the tiny model on this CPU: wall time, steps,
   peak RSS. Defaults are the quickstart's outputs (bash scripts/quickstart.sh makes them).
2. What one step costs as a function of its tokens: for batches of 1..8 prompts, the seconds of a
   forward + backward and the bytes autograd saves for the backward pass (counted with
   torch.autograd.graph.saved_tensors_hooks, parameters and LoRA factors excluded), each saved
   tensor classified by its size per token (hidden, KV, intermediate, stacked rank, heads,
   vocabulary per candidate token).
3. The Qwen2-7B estimate: the same per-token counts at Qwen2-7B's sizes and the same prompts
   tokenized with the real Qwen2-7B tokenizer give the activation memory of a batch; FLOPs per
   token (4 x the non-embedding parameters: forward + the backward to the activations, no weight
   gradient; plus the head on candidate tokens) at an assumed sustained GPU rate give the time.

    python -m benchmarks.bench_learn_weights [--model models/tiny-qwen2] [--prompts testdata/sports_valid.jsonl]
"""

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections import defaultdict

import torch

from common.io import read_jsonl, write_jsonl_atomic
from tests.helpers import REAL_TOKENIZER, SHARED_DATA, real_prompts

QWEN2_7B = {"layers": 28, "hidden": 3584, "kv": 512, "intermediate": 18944, "heads": 28, "vocab": 152064,
            "params": 6.53e9, "weights_gb": 15.2}  # non-embedding parameters; bf16 weights incl. embeddings
GPU_TFLOPS = 400.0  # assumed sustained bf16 rate on one H100/H200 (about 40% of the 989 TFLOP/s peak)


def run_cli(args):
    """Wall seconds, peak RSS (MB) and the summary lines of one learn_weights run (os.wait4)."""
    repo = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    start = time.perf_counter()
    proc = subprocess.Popen([sys.executable, "-m", "merge.learn_weights", *args], cwd=repo,
                            stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    _, status, usage = os.wait4(proc.pid, 0)
    wall = time.perf_counter() - start
    out = proc.stdout.read()
    if status != 0:
        raise SystemExit(f"learn_weights failed ({args}); rerun it by hand to see why")
    return wall, usage.ru_maxrss / 1024, [line for line in out.splitlines() if line.startswith(("wrote", "mean"))]


def size_classes(config, rank):
    """Per-token sizes that name a saved tensor's class (the tiny model's)."""
    head_dim = config.hidden_size // config.num_attention_heads
    return {"hidden": config.hidden_size, "kv": config.num_key_value_heads * head_dim,
            "intermediate": config.intermediate_size, "rank": rank, "heads": config.num_attention_heads, "one": 1}


def saved_bytes(model, merge, prompts, classes, vocab):
    """{class: bytes} autograd keeps for backward over one step on `prompts` (each tensor once)."""
    from merge.objectives import objective

    frozen = {t.data_ptr() for t in list(model.parameters()) + merge.frozen()}
    seen, out = set(), defaultdict(int)
    tokens = sum(len(p.ids) + sum(map(len, p.candidates)) for p in prompts)
    cand_tokens = sum(len(c) for p in prompts for c in p.candidates)
    by_size = {v: k for k, v in reversed(list(classes.items()))}

    def pack(t):
        key = (t.data_ptr(), tuple(t.shape), t.dtype)
        if t.data_ptr() not in frozen and key not in seen:
            seen.add(key)
            nbytes = t.numel() * t.element_size()
            if t.dim() and t.shape[-1] == vocab and t.numel() % cand_tokens == 0:
                out[("vocab", t.element_size())] += nbytes
            elif t.numel() % tokens == 0 and t.numel() // tokens in by_size:
                out[(by_size[t.numel() // tokens], t.element_size())] += nbytes
            else:
                out[("other", t.element_size())] += nbytes
        return t

    merge.refresh()
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        loss = objective(model, prompts, "likelihood")
    loss.backward()
    return out, tokens, cand_tokens


def step_seconds(model, merge, prompts, repeats=3):
    """Median seconds of one forward + backward on `prompts`, and of a forward alone."""
    from merge.objectives import objective

    both, fwd = [], []
    for _ in range(repeats):
        start = time.perf_counter()
        merge.refresh()
        loss = objective(model, prompts, "likelihood")
        mid = time.perf_counter()
        loss.backward()
        both.append(time.perf_counter() - start)
        fwd.append(mid - start)
    return statistics.median(both), statistics.median(fwd)


def qwen_lengths(samples):
    """(packed tokens per prompt, candidate tokens per prompt) with the real Qwen2-7B tokenizer."""
    from transformers import AutoTokenizer

    from merge.objectives import read_prompts

    tok = AutoTokenizer.from_pretrained(REAL_TOKENIZER)
    with tempfile.TemporaryDirectory(prefix="bench_learn.") as tmp:
        path = os.path.join(tmp, "prompts.jsonl")
        write_jsonl_atomic(path, samples)
        prompts = read_prompts(path, tok, labelled=True)
    cands = [sum(map(len, p.candidates)) for p in prompts]
    return statistics.mean(len(p.ids) + c for p, c in zip(prompts, cands)), statistics.mean(cands)


def tiny_merge(args, dtype):
    from transformers import AutoModelForCausalLM

    from merge.adapters import load_adapter
    from merge.weighted_model import WeightedMerge

    model = AutoModelForCausalLM.from_pretrained(args.model, torch_dtype=dtype).eval()
    return model, WeightedMerge(model, [load_adapter(a) for a in args.adapters])


def scaling(args):
    """Part 2: seconds (float32) and saved bytes (bfloat16, as on a GPU) of one step vs batch size."""
    from transformers import AutoTokenizer

    from merge.objectives import read_prompts

    prompts = read_prompts(args.prompts, AutoTokenizer.from_pretrained(args.model), labelled=True, limit=8)
    model, merge = tiny_merge(args, torch.float32)
    model16, merge16 = tiny_merge(args, torch.bfloat16)
    rank = merge.stacks[0].a.shape[0]
    classes = size_classes(model.config, rank)
    layers, vocab = model.config.num_hidden_layers, model.config.vocab_size
    n_params = sum(p.numel() for n, p in model.named_parameters() if "embed" not in n and "lm_head" not in n)
    print(f"\n2. one step vs batch size (tiny model: hidden {model.config.hidden_size}, {layers} layers, vocab {vocab}, "
          f"{n_params / 1e6:.2f}M non-embedding parameters; stacked rank {rank}); time in float32, saved bytes "
          "in bfloat16")
    print("| prompts | tokens | fwd+bwd s | fwd s | saved for backward MiB | per token KiB |")
    print("| --- | --- | --- | --- | --- | --- |")
    for b in (1, 2, 4, 8):
        counts, tokens, cand = saved_bytes(model16, merge16, prompts[:b], classes, vocab)
        both, fwd = step_seconds(model, merge, prompts[:b])
        total = sum(counts.values())
        print(f"| {b} | {tokens} | {both:.3f} | {fwd:.3f} | {total / 2**20:.2f} | {total / tokens / 1024:.2f} |")
        if b == 1:
            per_token = {k: v / (cand if k[0] == "vocab" else tokens) for k, v in counts.items()}
            tokens1, cand1 = tokens, cand
            flops = 4 * n_params * tokens + 4 * model.config.hidden_size * vocab * cand
            cpu_gflops = flops / both / 1e9
    model16.requires_grad_(True)  # what training the base weights would keep, for comparison
    trained = sum(saved_bytes(model16, merge16, prompts[:1], classes, vocab)[0].values())
    model16.requires_grad_(False)
    print(f"with gradients on the base weights (as in training) one prompt would keep {trained / 2**20:.2f} MiB "
          f"({trained / sum(per_token[k] * (cand1 if k[0] == 'vocab' else tokens1) for k in per_token):.1f}x)")
    return per_token, classes, layers, vocab, cpu_gflops


def estimate_7b(per_token, classes, layers, vocab, cpu_gflops, args):
    """Part 3: the tiny model's saved vectors per token and layer at Qwen2-7B's sizes; FLOPs at GPU_TFLOPS."""
    print("\nsaved per token and layer (tiny, bf16, batch 1), in vectors of each size: " + ", ".join(
        f"{cls} {v / size / (classes[cls] * layers if cls in classes else 1):.2f} x {size} B"
        for (cls, size), v in sorted(per_token.items())) + " (vocab: per candidate token; other: bytes per token)")
    big = {"hidden": QWEN2_7B["hidden"], "kv": QWEN2_7B["kv"], "intermediate": QWEN2_7B["intermediate"],
           "heads": QWEN2_7B["heads"]}
    per_tok, per_cand = 0.0, 0.0
    for (cls, size), value in per_token.items():
        if cls == "vocab":
            per_cand += value / vocab * QWEN2_7B["vocab"]
        elif cls in big:  # every such vector counted as if inside a decoder layer: a slight overestimate
            per_tok += value / classes[cls] / layers * big[cls] * QWEN2_7B["layers"]
        else:  # rank, one, other: the same per token at any model size
            per_tok += value
    for label, samples in (("these prompts", read_jsonl(args.prompts)[:args.limit]),
                           (f"{args.real_users} real Beauty users, history 20, 30 candidates",
                            real_prompts(SHARED_DATA, n=args.real_users, history=20) if SHARED_DATA.is_dir() else None)):
        if samples:
            qwen_estimate(label, *qwen_lengths(samples), per_tok, per_cand, cpu_gflops, args)


def qwen_estimate(label, tokens, cands, per_tok, per_cand, cpu_gflops, args):
    prompt_gb = (per_tok * tokens + per_cand * cands) / 1e9
    flops = 4 * QWEN2_7B["params"] * tokens + 4 * QWEN2_7B["hidden"] * QWEN2_7B["vocab"] * cands
    step = flops * args.batch_size / (GPU_TFLOPS * 1e12)
    held = args.steps / 10 * args.heldout * flops / 2 / (GPU_TFLOPS * 1e12)  # forward only: half the work
    print(f"\n3. Qwen2-7B, one GPU, bf16 forward, {label}, real Qwen2-7B tokenizer: {tokens:.0f} packed tokens "
          f"per prompt, {cands:.0f} of them candidate tokens")
    print(f"   memory: {per_tok / 2**20:.2f} MiB kept per token, {per_cand / 2**20:.2f} MiB per candidate token -> "
          f"{prompt_gb:.1f} GB per prompt; batch {args.batch_size}: about "
          f"{QWEN2_7B['weights_gb'] + args.batch_size * prompt_gb:.0f} GB with the {QWEN2_7B['weights_gb']} GB of "
          f"weights (batch 1: {QWEN2_7B['weights_gb'] + prompt_gb:.0f} GB)")
    print(f"   time: {flops / 1e12:.1f} TFLOP per prompt (4 x parameters x tokens + the head; this CPU reached "
          f"{cpu_gflops:.1f} GFLOP/s on the tiny model); at an assumed {GPU_TFLOPS:.0f} TFLOP/s: {step:.1f} s per "
          f"step of {args.batch_size}; {args.steps} steps + a held-out evaluation of {args.heldout} prompts every "
          f"10 steps: about {(args.steps * step + held) / 60:.0f} min")


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default="models/tiny-qwen2")
    p.add_argument("--adapters", nargs="+", default=["save/sports", "save/sports_beauty", "save/sports_toys"])
    p.add_argument("--prompts", default="testdata/sports_valid.jsonl")
    p.add_argument("--limit", type=int, default=300, help="validation prompts used")
    p.add_argument("--steps", type=int, default=200)
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--heldout", type=int, default=60, help="held-out prompts of the 7B estimate")
    p.add_argument("--real-users", type=int, default=100, help="real Beauty prompts for the 7B token counts")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--skip-cli", action="store_true", help="only parts 2 and 3")
    args = p.parse_args(argv)
    for path in [args.model, args.prompts, *args.adapters]:
        if not os.path.exists(path):
            raise SystemExit(f"{path} not found: run bash scripts/quickstart.sh first, or pass --model/--adapters/--prompts")
    torch.set_num_threads(args.threads)
    print(f"torch {torch.__version__}, {os.cpu_count()} CPUs, {args.threads} thread(s); on a shared machine figures "
          "are rough (os.getloadavg: " + " ".join(f"{x:.1f}" for x in os.getloadavg()) + ")")
    if not args.skip_cli:
        with tempfile.TemporaryDirectory(prefix="bench_learn.") as tmp:
            wall, rss, lines = run_cli(["--base-model", args.model, "--adapters", *args.adapters, "--objective",
                                        "likelihood", "--prompts", args.prompts, "--limit", str(args.limit),
                                        "--out-dir", tmp, "--steps", str(args.steps), "--batch-size",
                                        str(args.batch_size), "--threads", str(args.threads), "--no-progress"])
        print(f"1. per-module weights, {len(args.adapters)} adapters, {args.limit} prompts, up to {args.steps} steps "
              f"of {args.batch_size}: {wall:.1f} s wall (whole CLI), peak RSS {rss:.0f} MB")
        for line in lines:
            print(f"    {line}")
    estimate_7b(*scaling(args), args)


if __name__ == "__main__":
    main()
