"""Constrained mode's logits masks, tensor against python: reads the Amazon 2014 Sports files and the real Qwen2
tokenizer, prints milliseconds per decoding step and samples/s, side by side in one run.

python: the reference automaton, one Tracker per row on the host (inference/constrained.py); every step the
generated ids are copied to the host, each row's parses advanced in Python and its allowed tokens sent back.
tensor: the batch's automata as tensors on the logits' device (inference/constraint_masks.py), a few dozen
tensor operations a step whatever the batch size, nothing copied to the host.

1. The masks alone: --prompts real prompts' candidates (Qwen2's tokens), random scores over its 152,064
   logits, a greedy walk of --steps steps; both processors see the same scores each step (checked equal).
   Printed beside them: the floor, writing -inf over the logits once (what any mask costs on a CPU).
2. Whole constrained generation (inference.hf_backend.HFRunner, as inference.generate runs it): a small random
   Qwen2 with the real tokenizer (152,064-row head, tests.helpers), the same prompts at --batch-size, each mask
   --repeats times in alternating order (median [range]); outputs checked equal.

Prompts whose candidates include a title of over --max-title-tokens tokens are left out (a few Amazon "titles"
are product descriptions of 1,000+ tokens, and the slowest row sets every step count). --device cuda runs both
parts on a GPU.

    .venv/bin/python -m benchmarks.bench_constraints --data-dir ../shared/data/amazon2014
"""

import argparse
import random
import statistics
import tempfile
import time

import torch

from common.cli import run_main
from common.prompt import parse_user_prompt, sample_parts
from tests.helpers import REAL_TOKENIZER, build_real_tokenizer_model, real_prompts

MASKS = ("python", "tensor")


def sync(device):
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def prompts(args, tok):
    """Real Sports test samples with their candidates (Qwen2 tokens under --max-title-tokens each)."""
    from inference.constrained import CandidateConstraint

    kept, cache = [], {}
    for sample in real_prompts(args.data_dir, n=4 * args.prompts, seed=args.seed, category="Sports_and_Outdoors"):
        candidates = parse_user_prompt(sample_parts(sample)[1])[1]
        constraint = CandidateConstraint(candidates, tok, tok.eos_token_id, cache=cache)
        if max(map(len, constraint.mid)) <= args.max_title_tokens:
            kept.append((sample, constraint))
        if len(kept) == args.prompts:
            return kept
    raise SystemExit(f"error: fewer than {args.prompts} prompts with titles under {args.max_title_tokens} tokens")


def masks_alone(args, tok, constraints):
    from inference.hf_backend import CandidateLogits

    rows, vocab, width = len(constraints), 152064, 8
    procs = {m: CandidateLogits(constraints, width, m, args.device) for m in MASKS}
    ids = torch.full((rows, width), tok.pad_token_id, device=args.device)
    seconds = dict.fromkeys([*MASKS, "floor"], 0.0)
    gen = torch.Generator(device=args.device).manual_seed(args.seed)
    done = torch.zeros(rows, dtype=torch.bool, device=args.device)
    for _ in range(args.steps):
        scores = torch.rand(rows, vocab, generator=gen, device=args.device)
        out = {}
        for name in (*MASKS, "floor"):
            copy = scores.clone()
            sync(args.device)
            start = time.perf_counter()
            out[name] = copy.fill_(float("-inf")) if name == "floor" else procs[name](ids, copy)
            sync(args.device)
            seconds[name] += time.perf_counter() - start
        assert torch.equal(out["python"], out["tensor"]), "the masks differ"
        token = torch.where(done, tok.pad_token_id, out["tensor"].argmax(1))
        done |= token == tok.eos_token_id
        ids = torch.cat([ids, token[:, None]], 1)
    return {name: 1000 * s / args.steps for name, s in seconds.items()}


def whole_generation(args, tok, chosen, model_dir):
    from inference.hf_backend import HFRunner
    from inference.loading import load_model
    from inference.records import prompt_ids

    model = load_model(str(model_dir), (), args.device, "float32", tok)
    examples = []
    for i, (sample, constraint) in enumerate(chosen):
        system, user, _ = sample_parts(sample)
        examples.append({"id": i, "candidates": constraint.titles, "prompt_ids": prompt_ids(tok, system, user)})
    examples.sort(key=lambda ex: len(ex["prompt_ids"]))
    runners = {m: HFRunner(model, tok, "constrained", batch_size=args.batch_size, constraint_masks=m) for m in MASKS}
    runners["tensor"](examples[:args.batch_size])  # warm-up, outside the timings
    rates, outputs = {m: [] for m in MASKS}, {}
    for repeat in range(args.repeats):
        for name in (MASKS if repeat % 2 == 0 else MASKS[::-1]):
            sync(args.device)
            start = time.perf_counter()
            outputs[name] = runners[name](examples)
            sync(args.device)
            rates[name].append(len(examples) / (time.perf_counter() - start))
    assert outputs["python"] == outputs["tensor"], "the outputs differ"
    return rates


def spread(values):
    values = sorted(values)
    return f"{statistics.median(values):.2f} [{values[0]:.2f}-{values[-1]:.2f}]"


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data-dir", required=True, help="folder with the Amazon 2014 Sports files")
    p.add_argument("--prompts", type=int, default=64)
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--steps", type=int, default=100, help="part 1: decoding steps")
    p.add_argument("--repeats", type=int, default=3, help="part 2: runs per mask")
    p.add_argument("--max-title-tokens", type=int, default=64)
    p.add_argument("--device", default="cpu")
    p.add_argument("--threads", type=int, default=1, help="torch's CPU threads")
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    random.seed(args.seed)

    from transformers import AutoTokenizer
    tok = AutoTokenizer.from_pretrained(str(REAL_TOKENIZER))
    chosen = prompts(args, tok)
    where = f"{args.device}, {args.threads} thread(s)"
    ms = masks_alone(args, tok, [c for _, c in chosen])
    print(f"1. masks alone, {args.prompts} real Sports prompts' candidates, 152,064 logits, {args.steps} steps "
          f"({where}): python {ms['python']:.2f} ms/step, tensor {ms['tensor']:.2f} ms/step "
          f"({ms['python'] / ms['tensor']:.2f}x); floor (-inf over the logits) {ms['floor']:.2f} ms/step", flush=True)
    with tempfile.TemporaryDirectory() as tmp:
        rates = whole_generation(args, tok, chosen, build_real_tokenizer_model(tmp))
    ratio = statistics.median(rates["tensor"]) / statistics.median(rates["python"])
    print(f"2. constrained generation, small random Qwen2 with the real tokenizer, {args.prompts} prompts at batch "
          f"{args.batch_size} ({where}), samples/s, median [range] of {args.repeats}: python "
          f"{spread(rates['python'])}, tensor {spread(rates['tensor'])} ({ratio:.2f}x); outputs equal")


if __name__ == "__main__":
    run_main(main)
