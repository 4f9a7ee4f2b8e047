"""The runs of one inference.generate call: one per output file (one, or several with --jobs FILE).

A job holds its test examples with their prompt ids, the fingerprint that decides its output's bytes,
and its resumable output (None once complete). A data-parallel worker (--shard i/N) owns the chunks
i, i+N, ... of the test file and writes them to `<out>.shard-i-of-N`; inference/parallel.py joins them.
"""

import os

from common.cli import UserError
from common.io import read_jsonl
from inference.examples import chunk_batch, chunks_of, read_tests
from inference.records import prompt_ids
from inference.resume import (
    ResumableOutput,
    adapter_identity,
    file_sha256,
    model_identity,
)


# --backend auto on CPU: vLLM's engine start (about 30 s) pays back only for long runs. Measured
# (benchmarks/bench_inference.py, docs/inference.md): free 31 -> 53 and constrained 26 -> 50 samples/s,
# so the break-even is about 1,600-2,200 prompts in one call; below this many, hf.
AUTO_VLLM_MIN_PROMPTS = 2000

def shard_path(out, index, count):
    return f"{out}.shard-{index}-of-{count}"


def parse_shard(text):
    try:
        index, count = (int(x) for x in text.split("/"))
    except ValueError:
        raise UserError(f"--shard must be i/N, not {text}") from None
    if not 0 <= index < count:
        raise UserError(f"--shard {text}: i must be in 0..N-1")
    return index, count


class Job:
    def __init__(self, args, test_file, base, adapters, out, tokenizer=None):
        self.args, self.test_file, self.base, self.adapters = args, test_file, base, list(adapters)
        self.tokenizer_path = tokenizer or base
        self.out, self.name = out, os.path.basename(os.path.dirname(os.path.abspath(out))) or args.mode
        self.examples = self.output = None

    def prepare(self, tokenizers):
        """Read the test file, check the folders, tokenize the prompts (a tokenizer per folder)."""
        from common.folders import check_adapter_folder, check_model_folder
        from inference.loading import load_tokenizer

        self.examples = read_tests(self.test_file, self.args.mode, self.args.limit)
        check_model_folder(self.base, "base model folder")
        for path in self.adapters:
            check_adapter_folder(path)
        if self.tokenizer_path not in tokenizers:
            tokenizers[self.tokenizer_path] = load_tokenizer(self.tokenizer_path)
        self.tok = tokenizers[self.tokenizer_path]
        for ex in self.examples:
            ex["prompt_ids"] = prompt_ids(self.tok, ex["system"], ex["user"])

    def fingerprint(self):
        """Everything that decides the output's bytes; a resumed run must match it exactly."""
        a = self.args
        fp = {
            "test_file_sha256": file_sha256(self.test_file), "lines": len(self.examples), "limit": a.limit,
            "base_model": model_identity(self.base), "adapters": [adapter_identity(p) for p in self.adapters],
            "tokenizer": os.path.realpath(self.tokenizer_path), "backend": a.backend, "mode": a.mode,
            "batch_size": chunk_batch(a), "max_new_tokens": a.max_new_tokens, "score_norm": a.score_norm,
            "dtype": a.dtype_resolved, "temperature": a.temperature, "seed": a.seed,
        }
        if a.backend == "hf" and (a.compile or a.sdpa_backends != "auto"):  # absent: earlier outputs still match
            fp.update(compile=a.compile, sdpa_backends=a.sdpa_backends)
        if a.backend == "vllm":
            fp.update(tensor_parallel_size=a.tensor_parallel_size, vllm_adapters=a.vllm_adapters_resolved,
                      compile=a.compile)
        return fp

    def open(self):
        """Prepare the resumable output; False when it is already complete."""
        fingerprint, out, ids = self.fingerprint(), self.out, None
        self.chunks = chunks_of(self.examples, self.args)
        if self.args.shard:
            index, count = parse_shard(self.args.shard)
            self.chunks = self.chunks[index::count]
            ids = [ex["id"] for chunk in self.chunks for ex in chunk]
            fingerprint["shard"] = f"{index}/{count}"
            out = shard_path(self.out, index, count)
        output = ResumableOutput(out, fingerprint, len(self.examples), ids)
        if not output.open(self.args.overwrite, self.args.replace_stale):
            return False
        self.output = output
        if ids is not None:
            mine = set(ids)
            self.examples = [ex for ex in self.examples if ex["id"] in mine]
        return True


def read_jobs(path):
    rows = read_jsonl(path, "jobs file")
    if not rows:
        raise UserError(f"jobs file is empty: {path}")
    for i, row in enumerate(rows, 1):
        if not isinstance(row, dict) or not all(isinstance(row.get(k), str) for k in ("test_file", "base_model", "out")):
            raise UserError(f"{path}:{i}: a job needs test_file, base_model and out (strings)")
        row.setdefault("adapter", [])
    return rows


def make_jobs(args):
    """The jobs of this call, prepared (tokenizers loaded once per folder) and with dtype resolved."""
    from inference.loading import resolve_device, resolve_dtype

    device = resolve_device(args.device)
    args.device_resolved = device
    args.dtype_resolved = resolve_dtype(args.dtype, device)
    args.vllm_adapters_resolved = args.vllm_adapters if args.vllm_adapters != "auto" else \
        ("lora" if device.startswith("cuda") else "merge")
    if args.jobs:
        rows = read_jobs(args.jobs)
        jobs = [Job(args, r["test_file"], r["base_model"], r["adapter"], r["out"], r.get("tokenizer"))
                for r in rows]
    else:
        jobs = [Job(args, args.test_file, args.base_model, args.adapter, args.out, args.tokenizer)]
    if len({os.path.realpath(j.out) for j in jobs}) < len(jobs):
        raise UserError("two jobs write the same --out")
    tokenizers = {}
    for job in jobs:
        job.prepare(tokenizers)
    if args.backend == "vllm" and not device.startswith("cuda"):
        check_cpu_heads(args, jobs)
    if args.backend == "vllm" and getattr(args, "auto", False) and not device.startswith("cuda"):
        total = sum(len(job.examples) for job in jobs)
        if total < AUTO_VLLM_MIN_PROMPTS:
            args.backend = "hf"
            print(f"--backend auto: hf for {total} prompts (on CPU vLLM's start-up pays back from about "
                  f"{AUTO_VLLM_MIN_PROMPTS:,}; docs/inference.md)", flush=True)
    if args.backend == "vllm":  # of the whole test files: every data-parallel worker serves the same engine
        from inference.vllm_engine import longest_request
        args.longest_request = longest_request(jobs, args.mode, args.max_new_tokens)
    return jobs


def check_cpu_heads(args, jobs):
    """vLLM's CPU attention has kernels for some head dimensions only: --backend auto falls back to hf
    for other models, --backend vllm stops with one line."""
    from inference.vllm_engine import cpu_head_dim

    for job in jobs:
        dim = cpu_head_dim(job.base)
        if dim is None:
            continue
        if getattr(args, "auto", False):
            args.backend = "hf"
            return
        raise UserError(f"{job.base} has attention heads of {dim} dimensions; vLLM's CPU attention needs "
                        "32, 64, 80, 96, 112, 128, ...: use --backend hf")
