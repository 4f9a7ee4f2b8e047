"""Disk and memory a LoRA run and an inference batch need, estimated from a model's config.json and a training
config (used by models/preflight.py). Sizes in bytes; every formula is an upper bound a GPU user can check.

Qwen2, Llama and Mistral shapes (models/families.py): per layer q/o are hidden x (heads * head_dim), k/v hidden x
(kv_heads * head_dim) (biases on q, k, v in Qwen2 only, or where a Llama config says attention_bias), gate/up
hidden x intermediate, down intermediate x hidden, two RMSNorms; embeddings and lm_head vocab x hidden (shared when
tie_word_embeddings). LoRA of rank r on a d_in -> d_out projection adds r * (d_in + d_out).
"""

import os

BYTES = {"bf16": 2, "fp16": 2, "fp32": 4}
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "vocab.json", "merges.txt", "special_tokens_map.json",
                   "added_tokens.json", "chat_template.jinja")


def projections(cfg):
    """{name: (d_in, d_out)} of the seven linear projections of one decoder layer (the LoRA targets' names)."""
    h, inter = cfg["hidden_size"], cfg["intermediate_size"]
    head_dim = cfg.get("head_dim") or h // cfg["num_attention_heads"]
    kv = cfg.get("num_key_value_heads", cfg["num_attention_heads"]) * head_dim
    q = cfg["num_attention_heads"] * head_dim
    return {"q_proj": (h, q), "k_proj": (h, kv), "v_proj": (h, kv), "o_proj": (q, h),
            "gate_proj": (h, inter), "up_proj": (h, inter), "down_proj": (inter, h)}


def param_count(cfg):
    """Parameters of a Qwen2, Llama or Mistral ForCausalLM with this config."""
    proj = projections(cfg)
    layer = sum(i * o for i, o in proj.values()) + sum(proj[n][1] for n in biased(cfg))
    layer += 2 * cfg["hidden_size"]  # input and post-attention RMSNorm
    embed = cfg["vocab_size"] * cfg["hidden_size"]
    heads = embed if cfg.get("tie_word_embeddings", False) else 2 * embed
    return cfg["num_hidden_layers"] * layer + heads + cfg["hidden_size"]


def biased(cfg):
    """The projections with a bias: Qwen2's q, k, v; a Llama config's attention_bias (q, k, v, o) and mlp_bias."""
    names = {"q_proj", "k_proj", "v_proj"} if cfg.get("model_type", "qwen2") == "qwen2" else set()
    if cfg.get("attention_bias"):
        names |= {"q_proj", "k_proj", "v_proj", "o_proj"}
    if cfg.get("mlp_bias"):
        names |= {"gate_proj", "up_proj", "down_proj"}
    return sorted(names)


def lora_params(cfg, rank, target="all"):
    """Parameters of a LoRA adapter; target 'all' is LLaMA-Factory's every linear layer but lm_head."""
    names = projections(cfg) if target == "all" else [t.strip() for t in str(target).split(",")]
    proj = projections(cfg)
    return cfg["num_hidden_layers"] * sum(rank * sum(proj[n]) for n in names if n in proj)


def tokenizer_bytes(model):
    return sum(os.path.getsize(os.path.join(model, n)) for n in TOKENIZER_FILES if os.path.isfile(os.path.join(model, n)))


def checkpoint_bytes(cfg, train, model):
    """One checkpoint-N/: the adapter in fp32 (LLaMA-Factory upcasts trainable parameters), AdamW's two fp32
    states, the tokenizer files transformers saves beside it, and a few KB of state."""
    n = lora_params(cfg, train.get("lora_rank", 8), train.get("lora_target", "all"))
    return n * 4 + n * 8 + tokenizer_bytes(model) + 64 * 1024


def module_disk_bytes(cfg, train, model, steps=None):
    """(kept, peak): a finished module's folder, and its largest size while one more checkpoint is written.
    Without save_total_limit the count is every save of the run (`steps` // save_steps), or unknown (None)."""
    limit = train.get("save_total_limit")
    count = limit if limit else (steps // train.get("save_steps", 500) + 1 if steps else None)
    if count is None:
        return None, None
    adapter = lora_params(cfg, train.get("lora_rank", 8), train.get("lora_target", "all")) * 4
    top = adapter + tokenizer_bytes(model) + 1024 * 1024  # the chosen adapter, logs, plots
    ckpt = checkpoint_bytes(cfg, train, model)
    return count * ckpt + top, (count + 1) * ckpt + top


def train_memory_bytes(cfg, train, precision):
    """Peak memory of one training process at its worst batch (per_device_train_batch_size samples of
    cutoff_len tokens), with gradient checkpointing (LLaMA-Factory's default):
    weights + LoRA weights, gradients and AdamW states in fp32 + the layer inputs kept for recomputation
    + one layer's activations + logits (in the compute dtype, their fp32 copy for the loss and its gradient)."""
    size = BYTES[precision]
    tokens = train.get("per_device_train_batch_size", 1) * train.get("cutoff_len", 2048)
    h, inter, layers = cfg["hidden_size"], cfg["intermediate_size"], cfg["num_hidden_layers"]
    weights = param_count(cfg) * size
    lora = lora_params(cfg, train.get("lora_rank", 8), train.get("lora_target", "all")) * 16
    kept_inputs = layers * tokens * h * size
    one_layer = tokens * (4 * h + 3 * inter) * size
    logits = tokens * cfg["vocab_size"] * (size + 4 + 4)
    return weights + lora + kept_inputs + one_layer + logits


def kv_bytes_per_token(cfg, precision):
    """Keys and values of every layer for one token: 2 x layers x kv_heads x head_dim x bytes."""
    head_dim = cfg.get("head_dim") or cfg["hidden_size"] // cfg["num_attention_heads"]
    kv_heads = cfg.get("num_key_value_heads", cfg["num_attention_heads"])
    return 2 * cfg["num_hidden_layers"] * kv_heads * head_dim * BYTES[precision]


def infer_memory_bytes(cfg, batch, prompt_tokens, new_tokens, precision):
    """Weights + the KV cache of a batch of prompts with their answers + the last position's logits."""
    weights = param_count(cfg) * BYTES[precision]
    cache = batch * (prompt_tokens + new_tokens) * kv_bytes_per_token(cfg, precision)
    return weights + cache + batch * cfg["vocab_size"] * 4


def gib(n):
    """A size in words: '1.6 GiB', '706 KiB'."""
    for unit, scale in (("GiB", 2**30), ("MiB", 2**20), ("KiB", 2**10)):
        if n >= scale or unit == "KiB":
            return f"{n / scale:.1f} {unit}" if n >= 10 * scale or unit == "GiB" and n >= scale else f"{n / scale:.2f} {unit}"
    return f"{n} bytes"


def count(n):
    """A parameter count in words: '7.62B', '1.45M'."""
    return f"{n / 1e9:.2f}B" if n >= 1e9 else f"{n / 1e6:.2f}M" if n >= 1e6 else f"{n:,}"
