"""Predict the top-5 titles for every test line: reads a test jsonl and a model (+ adapters), writes output.jsonl.

Line i of the output answers test line i: {"id": i, "output": "t1||t2||t3||t4||t5"} (score mode adds
"ranking" and "scores", all candidates best first). Modes: free (plain greedy generation),
constrained (only 5 distinct candidate titles can be produced), score (candidates ranked by
likelihood). Interrupted runs resume with the same arguments (see inference/resume.py).

    python -m inference.generate --test-file testdata/beauty.jsonl --base-model models/tiny-qwen2 \
        --adapter save/merged/beauty --out result/beauty/output.jsonl --mode constrained
"""

import argparse
import gc
import os
import time

from tqdm import tqdm

from common.cli import UserError, run_main
from common.io import read_jsonl
from common.prompt import TOP_K, parse_user_prompt, sample_parts, split_titles
from inference.resume import (
    ResumableOutput,
    adapter_identity,
    file_sha256,
    model_identity,
)

SCORE_NORMS = ["sum", "mean", "calibrated"]  # inference.scoring.SCORE_RULES (not imported: torch is slow)
DEFAULT_BATCH_SIZE = 32
CHUNK_BATCHES = 8  # examples handed to the runner at once, in batches: the unit of saved progress


def parse_args(argv):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--test-file", required=True)
    p.add_argument("--base-model", required=True, help="HF model folder (base or full merged model)")
    p.add_argument("--adapter", nargs="+", action="extend", default=[],
                   help="PEFT adapter folder(s); several are summed into the weights")
    p.add_argument("--tokenizer", help="tokenizer folder (default: the base model)")
    p.add_argument("--out", required=True, help="result/<run>/output.jsonl")
    p.add_argument("--mode", choices=["free", "constrained", "score"], default="free")
    p.add_argument("--backend", choices=["hf", "vllm"], default="hf")
    p.add_argument("--batch-size", type=int, default=DEFAULT_BATCH_SIZE,
                   help="rows decoded at once (a finished row takes the next test line)")
    p.add_argument("--max-new-tokens", type=int, default=800, help="free mode (constrained sizes its own)")
    p.add_argument("--score-norm", choices=SCORE_NORMS, default="sum",
                   help="score mode: total (sum) or per-token (mean) log-likelihood, or calibrated: "
                        "minus the log-likelihood after the same prompt with an empty history")
    p.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:1 ...")
    p.add_argument("--dtype", choices=["auto", "float32", "bfloat16", "float16"], default="auto",
                   help="auto: bfloat16 on a GPU, float32 on CPU")
    p.add_argument("--threads", type=int, help="CPU threads for torch (default: torch's choice)")
    p.add_argument("--tensor-parallel-size", type=int, default=1, help="vllm backend")
    p.add_argument("--temperature", type=float, default=0.0, help="0 = greedy (default)")
    p.add_argument("--seed", type=int, default=0, help="used only when sampling (temperature > 0)")
    p.add_argument("--limit", type=int, help="only the first N test lines")
    p.add_argument("--overwrite", action="store_true", help="replace an output from other arguments")
    args = p.parse_args(argv)
    for name in ("batch_size", "max_new_tokens", "tensor_parallel_size", "limit", "threads"):
        value = getattr(args, name)
        if value is not None and value < 1:
            raise UserError(f"--{name.replace('_', '-')} must be at least 1")
    if args.temperature < 0:
        raise UserError("--temperature must be 0 (greedy) or positive")
    if args.temperature > 0 and args.mode != "free":
        raise UserError("--temperature applies to --mode free only")
    return args


def read_tests(path, mode, limit=None):
    """Test examples: id, system, user and the prompt's candidates (None if unparsable in free mode)."""
    rows = read_jsonl(path, "test file")
    if not rows:
        raise UserError(f"test file is empty: {path}")
    rows = rows[:limit] if limit else rows
    examples = []
    for i, row in enumerate(rows):
        try:
            system, user, _ = sample_parts(row, i + 1)
        except UserError as err:
            raise UserError(f"{path}: {err}") from None
        try:
            candidates = parse_user_prompt(user)[1]
        except UserError as err:
            if mode != "free":
                raise UserError(f"{path}: line {i + 1}: {err} (needed by --mode {mode})") from None
            candidates = None
        if mode != "free" and not any(c.strip() for c in candidates):
            raise UserError(f"{path}: line {i + 1}: the candidate list is empty")
        examples.append({"id": i, "system": system, "user": user, "candidates": candidates})
    return examples


def fingerprint(args, n, device, dtype):
    """Everything that decides the output's bytes; a resumed run must match it exactly."""
    return {
        "test_file_sha256": file_sha256(args.test_file), "lines": n, "limit": args.limit,
        "base_model": model_identity(args.base_model),
        "adapters": [adapter_identity(a) for a in args.adapter],
        "tokenizer": os.path.realpath(args.tokenizer or args.base_model),
        "backend": args.backend, "mode": args.mode, "batch_size": args.batch_size,
        "max_new_tokens": args.max_new_tokens, "score_norm": args.score_norm, "dtype": dtype,
        "temperature": args.temperature, "seed": args.seed,
        "tensor_parallel_size": args.tensor_parallel_size if args.backend == "vllm" else None,
    }


def check_folders(args):
    """Missing or wrong model/adapter folders: one-line errors before any work."""
    from inference.loading import check_adapter_folder, check_model_folder

    check_model_folder(args.base_model, "base model folder")
    if args.tokenizer and not os.path.isdir(args.tokenizer):
        raise UserError(f"tokenizer folder not found: {args.tokenizer}")
    for path in args.adapter:
        check_adapter_folder(path)


def make_runner(args, device, dtype):
    from inference.loading import load_model, load_tokenizer

    tokenizer_path = args.tokenizer or args.base_model
    tok = load_tokenizer(tokenizer_path)
    if args.backend == "vllm":
        from inference.vllm_backend import VLLMRunner
        return VLLMRunner(args.base_model, args.adapter, tok, tokenizer_path, args.mode,
                          args.max_new_tokens, dtype, args.tensor_parallel_size, args.score_norm,
                          args.temperature, args.seed)
    from inference.hf_backend import HFRunner
    model = load_model(args.base_model, args.adapter, device, dtype, tok)
    return HFRunner(model, tok, args.mode, args.max_new_tokens, args.score_norm, args.temperature,
                    args.seed, args.batch_size)


def batches_by_length(examples, batch_size):
    """Batches of similar length, longest first (memory errors show at once); fixed for given inputs."""
    order = sorted(examples, key=lambda ex: (-len(ex["prompt_ids"]), ex["id"]))
    return [order[i:i + batch_size] for i in range(0, len(order), batch_size)]


def validity(examples, records):
    """(share of output titles that are candidates, share of outputs that are 5 distinct candidates)."""
    items = valid = full = answers = 0
    for ex, rec in zip(examples, records):
        if ex["candidates"] is None:
            continue
        answers += 1
        cands = {c.strip() for c in ex["candidates"]}
        titles = split_titles(rec["output"])
        items += len(titles)
        valid += sum(t in cands for t in titles)
        full += len(titles) == TOP_K and len(set(titles)) == TOP_K and all(t in cands for t in titles)
    return valid / max(items, 1), full / max(answers, 1)


def run(args, runner, examples, output):
    for ex in examples:
        ex["prompt_ids"] = runner.prompt_ids(ex["system"], ex["user"])
    bar = tqdm(total=len(examples), initial=len(output.done), unit="sample", desc=args.mode)
    for batch in batches_by_length(examples, args.batch_size * CHUNK_BATCHES):
        todo = [ex for ex in batch if ex["id"] not in output.done]
        if todo:
            output.add(runner(batch))
            bar.update(len(todo))
    bar.close()
    return output.finish()


def main(argv=None):
    args = parse_args(argv)
    examples = read_tests(args.test_file, args.mode, args.limit)
    check_folders(args)
    from inference.loading import resolve_device, resolve_dtype

    device = resolve_device(args.device) if args.backend == "hf" else "cuda"
    dtype = resolve_dtype(args.dtype, device)
    output = ResumableOutput(args.out, fingerprint(args, len(examples), device, dtype), len(examples))
    if not output.open(args.overwrite):
        print(f"{args.out} is already complete ({len(examples)} lines); nothing to do")
        return 0
    resumed = len(output.done)
    if args.threads:
        import torch
        torch.set_num_threads(args.threads)
    start = time.time()
    runner = make_runner(args, device, dtype)
    gc.freeze()  # what is loaded stays; collections no longer rescan it (constraint tries made them slow)
    loaded = time.time()
    records = run(args, runner, examples, output)
    seconds = time.time() - loaded
    item_rate, full_rate = validity(examples, records)
    print(f"wrote {args.out}: {len(records)} lines ({resumed} resumed), mode {args.mode}, model loaded "
          f"in {loaded - start:.1f}s, {seconds:.1f}s, {(len(records) - resumed) / max(seconds, 1e-9):.2f} "
          "samples/s; "
          f"valid titles {item_rate:.1%}, answers of 5 distinct candidates {full_rate:.1%}")
    return 0


if __name__ == "__main__":
    run_main(main)
