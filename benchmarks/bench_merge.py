"""Benchmark merge/: time and peak memory of each output kind; prints figures, asserts nothing.

1. The exact stacked merge of three rank-16 bf16 adapters shaped like Qwen2-7B's (28 layers; q, k, v,
   o, gate, up, down), run as the CLI a user runs, beside what the original's full-model merge moves.
2. The svd and full outputs on a small Qwen2 model, so users know what each costs.

    python -m benchmarks.bench_merge [--layers 28] [--rank 16] [--small-hidden 512]
"""

import argparse
import os
import tempfile
import time

import torch
from safetensors.torch import save_file

from benchmarks.child import run_module
from common.io import write_json_atomic
from common.prompt import CANDIDATES_CLOSE, CANDIDATES_OPEN, HISTORY_OPEN, SYSTEM
from merge.adapters import PREFIX, file_size

QWEN2_7B = {"hidden": 3584, "intermediate": 18944, "kv_out": 512}
ORIGINAL_GB = 15.2  # Qwen2-7B-Instruct in bf16: read once and written once by the original per merge


def module_shapes(layers, hidden, intermediate, kv_out):
    """{module: (out, in)} of every LoRA target in a Qwen2 decoder."""
    shapes = {}
    for i in range(layers):
        for name, shape in (("self_attn.q_proj", (hidden, hidden)), ("self_attn.k_proj", (kv_out, hidden)),
                            ("self_attn.v_proj", (kv_out, hidden)), ("self_attn.o_proj", (hidden, hidden)),
                            ("mlp.gate_proj", (intermediate, hidden)), ("mlp.up_proj", (intermediate, hidden)),
                            ("mlp.down_proj", (hidden, intermediate))):
            shapes[f"model.layers.{i}.{name}"] = shape
    return shapes


def write_adapter(folder, shapes, rank, seed, base_model, dtype=torch.bfloat16):
    """A random LoRA adapter folder as PEFT/LLaMA-Factory write it (lora_alpha = 2 r)."""
    gen = torch.Generator().manual_seed(seed)
    tensors = {}
    for module, (out, inp) in shapes.items():
        tensors[f"{PREFIX}{module}.lora_A.weight"] = (torch.randn(rank, inp, generator=gen) * 0.01).to(dtype)
        tensors[f"{PREFIX}{module}.lora_B.weight"] = (torch.randn(out, rank, generator=gen) * 0.01).to(dtype)
    os.makedirs(folder, exist_ok=True)
    save_file(tensors, os.path.join(folder, "adapter_model.safetensors"), metadata={"format": "pt"})
    targets = sorted({m.rsplit(".", 1)[1] for m in shapes})
    write_json_atomic(os.path.join(folder, "adapter_config.json"), {
        "peft_type": "LORA", "task_type": "CAUSAL_LM", "r": rank, "lora_alpha": 2 * rank,
        "target_modules": targets, "lora_dropout": 0.05, "bias": "none", "use_rslora": False,
        "base_model_name_or_path": base_model, "rank_pattern": {}, "alpha_pattern": {}})
    return folder


def timed(args):
    """Wall seconds, peak RSS (MB) of the child and its summary line."""
    return run_module("merge.merge_lora", args, ("merged", "svd"))


def small_base(folder, hidden, layers):
    """A small random Qwen2 model folder with a tokenizer, for the svd and full outputs."""
    from models.tiny import init_model, save_model, tiny_config
    from models.tokenizer import train_tokenizer

    tok = train_tokenizer([SYSTEM, HISTORY_OPEN, CANDIDATES_OPEN, CANDIDATES_CLOSE] * 10, vocab_size=600)
    model = init_model(tiny_config(tok, hidden_size=hidden, num_layers=layers, num_heads=8, num_kv_heads=2), seed=0)
    save_model(model, tok, folder)
    return model.config


def report(label, wall, rss, summary, out_dir=None):
    size = f", output {file_size(out_dir) / 1e6:.1f} MB" if out_dir and os.path.isdir(out_dir) else ""
    print(f"{label}: {wall:.2f} s wall (whole CLI, imports included), peak RSS {rss:.0f} MB{size}")
    for line in summary:
        print(f"    {line}")


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--layers", type=int, default=28)
    p.add_argument("--rank", type=int, default=16)
    p.add_argument("--small-hidden", type=int, default=512)
    p.add_argument("--small-layers", type=int, default=2)
    p.add_argument("--threads", type=int, default=1,
                   help="svd/full runs (stacked uses 1 anyway); more threads on a shared CPU are slower")
    args = p.parse_args(argv)
    threads = ["--threads", str(args.threads)]
    print(f"torch {torch.__version__}, {os.cpu_count()} CPUs, --threads {args.threads} "
          f"(on a shared machine figures are rough)")
    with tempfile.TemporaryDirectory(prefix="bench_merge.") as tmp:
        shapes = module_shapes(args.layers, **QWEN2_7B)
        start = time.perf_counter()
        big = [write_adapter(os.path.join(tmp, f"a{i}"), shapes, args.rank, i, "models/Qwen2-7B-Instruct")
               for i in range(3)]
        print(f"made 3 Qwen2-7B-shaped rank-{args.rank} bf16 adapters ({len(shapes)} modules, "
              f"{file_size(big[0]) / 1e6:.0f} MB each) in {time.perf_counter() - start:.1f} s")
        out = os.path.join(tmp, "stacked")
        wall, rss, summary = timed(["--adapters", *big, "--out", out, "--weights", "1", "0.5", "0.2"])
        report("1. stacked (exact) WeaveRec merge, Qwen2-7B shapes", wall, rss, summary, out)
        print(f"    the original merges into the full model: ~{ORIGINAL_GB:.1f} GB read + "
              f"~{ORIGINAL_GB:.1f} GB written per merge; ours writes {file_size(out) / 1e9:.3f} GB")

        base = os.path.join(tmp, "small-base")
        config = small_base(base, args.small_hidden, args.small_layers)
        small = module_shapes(config.num_hidden_layers, config.hidden_size, config.intermediate_size,
                              config.num_key_value_heads * config.hidden_size // config.num_attention_heads)
        ins = [write_adapter(os.path.join(tmp, f"s{i}"), small, args.rank, 10 + i, base, torch.float32)
               for i in range(3)]
        print(f"small model: hidden {config.hidden_size}, {config.num_hidden_layers} layers, "
              f"{len(small)} adapted modules, float32")
        for label, extra in (("2. stacked weaverec", []),
                             ("3. svd weaverec (rank 16)", ["--output", "svd", "--rank", "16"]),
                             ("4. svd ties (rank 16)", ["--method", "ties", "--output", "svd", "--rank", "16"]),
                             ("5. svd dare_ties (rank 16)", ["--method", "dare_ties", "--output", "svd"]),
                             ("6. full weaverec model", ["--output", "full", "--base-model", base]),
                             ("7. full ties model", ["--method", "ties", "--output", "full", "--base-model", base])):
            out = os.path.join(tmp, label.split(".")[0])
            report(label, *timed(["--adapters", *ins, "--out", out, *extra, *threads]), out)


if __name__ == "__main__":
    main()
