"""Memory of an inference or fitting process: its peak (for the stages' summary lines) and the batch size that
fits a GPU's free memory (inference.generate --batch-size auto), from the preflight's formulas (models/estimate.py)."""

import resource

from models.estimate import kv_bytes_per_token

CPU_BATCH_SIZE = 32  # --batch-size auto on CPU: what was measured best there (docs/inference.md)
MAX_AUTO_BATCH = 256
FREE_SHARE = 0.8  # of the free memory after loading: room for the allocator's fragmentation
PRECISION = {"float32": "fp32", "bfloat16": "bf16", "float16": "fp16"}


def peak_memory_mb(device):
    """The peak memory of this process: allocated on the GPU for a CUDA device, else the peak RSS."""
    if str(device).startswith("cuda"):
        import torch

        return torch.cuda.max_memory_allocated(device) / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def peak_text(device):
    """'peak 15.3 GB GPU' or 'peak 812 MB RSS', for a summary line."""
    mb = peak_memory_mb(device)
    where = "GPU" if str(device).startswith("cuda") else "RSS"
    return f"peak {mb / 1024:.1f} GB {where}" if mb >= 10240 else f"peak {mb:.0f} MB {where}"


def prompt_bytes(cfg, dtype, mode, prompt_tokens, new_tokens, candidate_tokens):
    """Memory one more prompt in a batch takes, an upper bound.

    free, constrained: its KV cache over prompt and answer, one layer's activations over the prompt
    (prefill), and its logits at the last position in float32 (with the processors' copy).
    score (rows of pack_rows, no cache): its row's additive mask (width^2) and one layer's activations
    over the row, plus the layer inputs kept between layers.
    """
    size = 4 if dtype == "float32" else 2
    h, inter = cfg["hidden_size"], cfg["intermediate_size"]
    one_layer = 4 * h + 3 * inter
    if mode == "score":
        width = prompt_tokens + candidate_tokens
        return width * width * size + width * (one_layer + 2 * h) * size
    kv = kv_bytes_per_token(cfg, PRECISION[dtype]) * (prompt_tokens + new_tokens)
    return kv + prompt_tokens * one_layer * size + 2 * cfg["vocab_size"] * 4


def auto_batch_size(cfg, dtype, mode, examples, new_tokens, free_bytes):
    """The largest batch of the longest prompts that fits FREE_SHARE of `free_bytes` (at least 1)."""
    prompt = max(len(ex["prompt_ids"]) for ex in examples)
    cands = 0
    if mode == "score":
        cands = max(sum(len(c) + 4 for c in ex["candidates"] if c.strip()) for ex in examples)  # ~tokens of "title||"
    need = prompt_bytes(cfg, dtype, mode, prompt, new_tokens, cands)
    return max(1, min(MAX_AUTO_BATCH, int(FREE_SHARE * free_bytes // need)))
