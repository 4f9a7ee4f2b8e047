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
   tokenized with the real Qwen2-7B tokenizer give the activation memory of a micro-batch (what autograd
   keeps at once), without and with gradient checkpointing (the layer inputs plus one layer's
   activations); FLOPs per token (4 x the non-embedding parameters: forward + the backward to the
   activations, no weight gradient; 6 x with checkpointing's second forward; plus the head on candidate
   tokens) at an assumed sustained GPU rate give the time.
4. Peak memory against --batch-size (1, 2, 4, 8): whole CLI fits over the same --curve-prompts prompts
   (one epoch: --curve-prompts / --batch-size steps), each in its own process (peak RSS by os.wait4), at
   the default micro-batch and, for contrast up to --contrast-up-to, with the whole batch in one pass
   (--micro-batch-size = --batch-size, the behaviour before micro-batches). Needs no quickstart output: a
   small random Qwen2 with the real Qwen2-7B tokenizer (its 152,064-row head), three rank-16 adapters and
   real Beauty prompts, built by tests.helpers in a temporary folder.

    python -m benchmarks.bench_learn_weights [--model models/tiny-qwen2] [--prompts testdata/sports_valid.jsonl]
    python -m benchmarks.bench_learn_weights --curve-only       # part 4 alone
"""

import argparse
import os
import statistics
import tempfile
import time
from collections import defaultdict
from pathlib import Path

import torch

from benchmarks.child import run_module
from common.io import read_jsonl, write_jsonl_atomic
from tests.helpers import REAL_TOKENIZER, SHARED_DATA, build_real_tokenizer_model, make_adapter, real_prompts

QWEN2_7B = {"layers": 28, "hidden": 3584, "kv": 512, "intermediate": 18944, "heads": 28, "vocab": 152064,
            "params": 6.53e9, "weights_gb": 15.2}  # non-embedding parameters; bf16 weights incl. embeddings
GPU_TFLOPS = 400.0  # assumed sustained bf16 rate on one H100/H200 (about 40% of the 989 TFLOP/s peak)


def run_cli(args):
    """Wall seconds, peak RSS (MB) and the summary lines of one learn_weights run."""
    return run_module("merge.learn_weights", args, ("wrote", "mean"))


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
           "heads": QWEN2_7B["heads"], "rank": classes["rank"]}
    in_layers, flat, per_cand = 0.0, 0.0, 0.0
    for (cls, size), value in per_token.items():
        if cls == "vocab":
            per_cand += value / vocab * QWEN2_7B["vocab"]
        elif cls in big:  # every such vector counted as if inside a decoder layer: a slight overestimate
            in_layers += value / classes[cls] / layers * big[cls] * QWEN2_7B["layers"]
        else:  # one, other: the same per token at any model size
            flat += value
    for label, samples in (("these prompts", read_jsonl(args.prompts)[:args.limit]),
                           (f"{args.real_users} real Beauty users, history 20, 30 candidates",
                            real_prompts(SHARED_DATA, n=args.real_users, history=20) if SHARED_DATA.is_dir() else None)):
        if samples:
            qwen_estimate(label, *qwen_lengths(samples), (in_layers, flat, per_cand), cpu_gflops, args)


def checkpointed_per_token(in_layers, flat):
    """Bytes kept per token with gradient checkpointing: every layer's input (bf16), one layer's
    activations while it is recomputed, the gradient in flight (2 float32 hidden vectors), the rest."""
    return (QWEN2_7B["layers"] * QWEN2_7B["hidden"] * 2 + in_layers / QWEN2_7B["layers"]
            + 2 * QWEN2_7B["hidden"] * 4 + flat)


def qwen_estimate(label, tokens, cands, kept, cpu_gflops, args):
    in_layers, flat, per_cand = kept
    weights, micro = QWEN2_7B["weights_gb"], args.micro_batch_size
    prompt_gb = ((in_layers + flat) * tokens + per_cand * cands) / 1e9
    ckpt_gb = (checkpointed_per_token(in_layers, flat) * tokens + per_cand * cands) / 1e9
    flops = 4 * QWEN2_7B["params"] * tokens + 4 * QWEN2_7B["hidden"] * QWEN2_7B["vocab"] * cands
    step = flops * args.batch_size / (GPU_TFLOPS * 1e12)
    held = args.steps / 10 * args.heldout * flops / 2 / (GPU_TFLOPS * 1e12)  # forward only: half the work
    minutes = (args.steps * step + held) / 60
    print(f"\n3. Qwen2-7B, one GPU, bf16 forward, {label}, real Qwen2-7B tokenizer: {tokens:.0f} packed tokens "
          f"per prompt, {cands:.0f} of them candidate tokens (estimates)")
    print(f"   memory: {(in_layers + flat) / 2**20:.2f} MiB kept per token, {per_cand / 2**20:.2f} MiB per candidate "
          f"token -> {prompt_gb:.1f} GB per prompt; micro-batch {micro} (any --batch-size): about "
          f"{weights + micro * prompt_gb:.0f} GB with the {weights} GB of weights; the whole batch of "
          f"{args.batch_size} in one pass (before micro-batches): {weights + args.batch_size * prompt_gb:.0f} GB")
    print(f"   with gradient checkpointing (the default on CUDA): {ckpt_gb:.2f} GB per prompt -> about "
          f"{weights + micro * ckpt_gb:.1f} GB at micro-batch {micro}")
    print(f"   time: {flops / 1e12:.1f} TFLOP per prompt (4 x parameters x tokens + the head; this CPU reached "
          f"{cpu_gflops:.1f} GFLOP/s on the tiny model); at an assumed {GPU_TFLOPS:.0f} TFLOP/s: {step:.1f} s per "
          f"step of {args.batch_size}; {args.steps} steps + a held-out evaluation of {args.heldout} prompts every "
          f"10 steps: about {minutes:.0f} min (checkpointing's second forward: about {minutes * 1.5:.0f} min)")


def curve_inputs(tmp, args):
    """A small random Qwen2 with the real tokenizer, three rank-16 adapters and real Beauty prompts."""
    model = build_real_tokenizer_model(Path(tmp) / "model", hidden_size=args.curve_hidden)
    adapters = [str(make_adapter(model, Path(tmp) / f"adapter{i}", seed=i, r=16, alpha=32)) for i in range(3)]
    prompts = os.path.join(tmp, "prompts.jsonl")
    write_jsonl_atomic(prompts, real_prompts(SHARED_DATA, n=args.curve_prompts, history=args.curve_history))
    return str(model), adapters, prompts


def curve(args):
    """Part 4: peak RSS of whole fits against --batch-size, at the default micro-batch and in one pass."""
    with tempfile.TemporaryDirectory(prefix="bench_learn.") as tmp:
        model, adapters, prompts = curve_inputs(tmp, args)
        common = ["--base-model", model, "--adapters", *adapters, "--objective", "likelihood", "--prompts", prompts,
                  "--out-dir", os.path.join(tmp, "out"), "--holdout", "0", "--threads", str(args.threads),
                  "--no-progress"]
        print(f"\n4. peak memory against --batch-size: whole CLI fits, each in its own process, of one epoch over "
              f"the same {args.curve_prompts} prompts; random Qwen2 (hidden {args.curve_hidden}, 2 layers, the real "
              f"152,064-token vocabulary), 3 rank-16 adapters, real Beauty prompts (history {args.curve_history}, "
              "30 candidates), float32, CPU")
        print("| --batch-size | peak RSS MB, default micro-batch 1 | s | peak RSS MB, whole batch in one pass | s |")
        print("| --- | --- | --- | --- | --- |")
        for b in args.curve_batches:
            size = ["--batch-size", str(b), "--steps", str(max(1, args.curve_prompts // b))]
            wall, rss, _ = run_cli([*common, *size])
            shown = "(the same run) | -" if b == 1 else "- | -"
            if 1 < b <= args.contrast_up_to:
                whole_wall, whole_rss, _ = run_cli([*common, *size, "--micro-batch-size", str(b)])
                shown = f"{whole_rss:.0f} | {whole_wall:.1f}"
            print(f"| {b} | {rss:.0f} | {wall:.1f} | {shown} |", flush=True)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default="models/tiny-qwen2")
    p.add_argument("--adapters", nargs="+", default=["save/sports", "save/sports_beauty", "save/sports_toys"])
    p.add_argument("--prompts", default="testdata/sports_valid.jsonl")
    p.add_argument("--limit", type=int, default=300, help="validation prompts used")
    p.add_argument("--steps", type=int, default=200)
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--micro-batch-size", type=int, default=1, help="of part 1's fit and the 7B estimate")
    p.add_argument("--heldout", type=int, default=60, help="held-out prompts of the 7B estimate")
    p.add_argument("--real-users", type=int, default=100, help="real Beauty prompts for the 7B token counts")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--skip-cli", action="store_true", help="only parts 2, 3 and 4")
    p.add_argument("--curve-only", action="store_true", help="only part 4 (needs no quickstart output)")
    p.add_argument("--skip-curve", action="store_true", help="no part 4")
    p.add_argument("--curve-batches", type=int, nargs="+", default=[1, 2, 4, 8])
    p.add_argument("--curve-prompts", type=int, default=8, help="prompts of part 4 (each fit: one epoch over them)")
    p.add_argument("--curve-hidden", type=int, default=64, help="hidden size of part 4's random model")
    p.add_argument("--curve-history", type=int, default=10, help="history titles of part 4's prompts")
    p.add_argument("--contrast-up-to", type=int, default=4,
                   help="largest batch of part 4's whole-batch column (about 2 GB per prompt; 0: none)")
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    print(f"torch {torch.__version__}, {os.cpu_count()} CPUs, {args.threads} thread(s); on a shared machine figures "
          "are rough (os.getloadavg: " + " ".join(f"{x:.1f}" for x in os.getloadavg()) + ")")
    if not args.curve_only:
        quickstart_parts(args)
    if not args.skip_curve:
        curve(args)


def quickstart_parts(args):
    """Parts 1-3, on the quickstart's model, adapters and validation prompts."""
    for path in [args.model, args.prompts, *args.adapters]:
        if not os.path.exists(path):
            raise SystemExit(f"{path} not found: run bash scripts/quickstart.sh first, pass "
                             "--model/--adapters/--prompts, or --curve-only")
    if not args.skip_cli:
        with tempfile.TemporaryDirectory(prefix="bench_learn.") as tmp:
            wall, rss, lines = run_cli(["--base-model", args.model, "--adapters", *args.adapters, "--objective",
                                        "likelihood", "--prompts", args.prompts, "--limit", str(args.limit),
                                        "--out-dir", tmp, "--steps", str(args.steps), "--batch-size",
                                        str(args.batch_size), "--micro-batch-size", str(args.micro_batch_size),
                                        "--threads", str(args.threads), "--no-progress"])
        print(f"1. per-module weights, {len(args.adapters)} adapters, {args.limit} prompts, up to {args.steps} steps "
              f"of {args.batch_size} (micro-batch {args.micro_batch_size}): {wall:.1f} s wall (whole CLI), peak RSS "
              f"{rss:.0f} MB")
        for line in lines:
            print(f"    {line}")
    estimate_7b(*scaling(args), args)


if __name__ == "__main__":
    main()
