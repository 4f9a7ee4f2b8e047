"""Write bench_7b's models: reads the real tokenizer folder (and, for `tiny`, an items file); writes a
Qwen2-7B-Instruct-shaped checkpoint with random bf16 weights plus three random rank-16 adapters (`base`),
or a tiny quickstart-like model (`tiny`).

The checkpoint is never built as a model: a meta-device Qwen2ForCausalLM gives the tensor names and shapes,
then each shard is materialised tensor by tensor (on the GPU when there is one, with a seeded generator),
written with safetensors and freed, so at most one shard is in memory. config.json is the published
transformers 4.x one (rope_theta at its top level: a 5.x-style `rope_parameters` makes transformers 4.52.4,
which LLaMA-Factory 0.9.3 pins, fall back to rope_theta 10000).

    python -m benchmarks.bench_7b_make base --tokenizer ../shared/models/qwen2-7b-instruct-tokenizer \\
        --out-dir /tmp/bench_7b/models [--small] [--device auto]
    python -m benchmarks.bench_7b_make tiny --items traindata/sports.items.jsonl --out /tmp/bench_7b/models/tiny
"""

import argparse
import os
import shutil
import time

import torch

from benchmarks.bench_merge import module_shapes, write_adapter
from common.cli import run_main
from common.io import read_jsonl, write_json_atomic

# Qwen2-7B-Instruct's published config.json (transformers 4.x style)
QWEN2_7B_INSTRUCT = {
    "architectures": ["Qwen2ForCausalLM"], "attention_dropout": 0.0, "bos_token_id": 151643,
    "eos_token_id": 151645, "hidden_act": "silu", "hidden_size": 3584, "initializer_range": 0.02,
    "intermediate_size": 18944, "max_position_embeddings": 32768, "max_window_layers": 28,
    "model_type": "qwen2", "num_attention_heads": 28, "num_hidden_layers": 28, "num_key_value_heads": 4,
    "rms_norm_eps": 1e-06, "rope_theta": 1000000.0, "sliding_window": 131072, "tie_word_embeddings": False,
    "torch_dtype": "bfloat16", "transformers_version": "4.41.2", "use_cache": True,
    "use_sliding_window": False, "vocab_size": 152064,
}
# --small: 2 layers and the real vocabulary, heads of 64 dimensions (vLLM's attention kernels accept them) in
# groups of 2 per KV head; hidden 128, since on a CPU the 152,064-row lm_head is most of the time of every stage
SMALL = {"hidden_size": 128, "intermediate_size": 256, "num_attention_heads": 2, "num_key_value_heads": 1,
         "num_hidden_layers": 2, "max_window_layers": 2}
GENERATION_CONFIG = {"bos_token_id": 151643, "pad_token_id": 151643, "do_sample": True,
                     "eos_token_id": [151645, 151643], "repetition_penalty": 1.05, "temperature": 0.7,
                     "top_p": 0.8, "top_k": 20, "transformers_version": "4.37.0"}
ADAPTERS = ["target", "source1", "source2"]


def model_config(small):
    return {**QWEN2_7B_INSTRUCT, **(SMALL if small else {})}


def tensor_shapes(config):
    """[(name, shape)] of a Qwen2ForCausalLM's state dict, in its order, from a meta-device model."""
    from transformers import Qwen2Config, Qwen2ForCausalLM

    keys = {k: v for k, v in config.items() if k not in ("architectures", "transformers_version")}
    with torch.device("meta"):
        model = Qwen2ForCausalLM(Qwen2Config(**keys))
    return [(name, tuple(t.shape)) for name, t in model.state_dict().items()]


def shard_plan(shapes, max_bytes, itemsize=2):
    """Consecutive groups of (name, shape) of at most max_bytes each (a larger tensor alone)."""
    shards, size = [[]], 0
    for name, shape in shapes:
        nbytes = itemsize * torch.Size(shape).numel()
        if shards[-1] and size + nbytes > max_bytes:
            shards.append([])
            size = 0
        shards[-1].append((name, shape))
        size += nbytes
    return shards


def random_tensor(name, shape, gen, device, std):
    """Norm weights 1, biases 0, every other weight N(0, std), in bfloat16 on the CPU."""
    if name.endswith("norm.weight"):
        return torch.ones(shape, dtype=torch.bfloat16)
    if name.endswith(".bias"):
        return torch.zeros(shape, dtype=torch.bfloat16)
    t = torch.empty(shape, dtype=torch.bfloat16, device=device).normal_(0.0, std, generator=gen)
    return t.cpu()


def write_weights(out_dir, config, device, seed, max_shard_gb=4.0):
    """Sharded safetensors + model.safetensors.index.json, one shard in memory at a time; returns bytes."""
    from safetensors.torch import save_file

    plan = shard_plan(tensor_shapes(config), int(max_shard_gb * 1e9))
    gen = torch.Generator(device=device).manual_seed(seed)
    weight_map, total = {}, 0
    for i, shard in enumerate(plan):
        name = f"model-{i + 1:05d}-of-{len(plan):05d}.safetensors"
        tensors = {k: random_tensor(k, s, gen, device, config["initializer_range"]) for k, s in shard}
        save_file(tensors, os.path.join(out_dir, name), metadata={"format": "pt"})
        total += sum(t.numel() * t.element_size() for t in tensors.values())
        weight_map.update({k: name for k in tensors})
        del tensors
        print(f"  wrote {name} ({len(shard)} tensors)", flush=True)
    write_json_atomic(os.path.join(out_dir, "model.safetensors.index.json"),
                      {"metadata": {"total_size": total}, "weight_map": weight_map})
    return total


def copy_tokenizer(src, dst):
    for name in os.listdir(src):
        shutil.copyfile(os.path.join(src, name), os.path.join(dst, name))  # not the source's read-only mode


def write_base(args):
    """The checkpoint folder and, beside it, adapters/<name> for the three adapters."""
    device = ("cuda" if torch.cuda.is_available() else "cpu") if args.device == "auto" else args.device
    config = model_config(args.small)
    base = os.path.join(args.out_dir, "base")
    os.makedirs(base, exist_ok=True)
    start = time.time()
    total = write_weights(base, config, device, args.seed)
    write_json_atomic(os.path.join(base, "config.json"), config)
    write_json_atomic(os.path.join(base, "generation_config.json"), GENERATION_CONFIG)
    copy_tokenizer(args.tokenizer, base)
    seconds = time.time() - start
    print(f"wrote {base}: {total / 2**30:.2f} GiB of random bf16 weights ({config['num_hidden_layers']} layers, "
          f"hidden {config['hidden_size']}) on {device} in {seconds:.1f}s")
    head_dim = config["hidden_size"] // config["num_attention_heads"]
    shapes = module_shapes(config["num_hidden_layers"], config["hidden_size"], config["intermediate_size"],
                           config["num_key_value_heads"] * head_dim)
    for i, name in enumerate(ADAPTERS):
        write_adapter(os.path.join(args.out_dir, "adapters", name), shapes, args.rank, args.seed + 1 + i, base)
    print(f"wrote {len(ADAPTERS)} rank-{args.rank} adapters ({len(shapes)} modules each) in "
          f"{os.path.join(args.out_dir, 'adapters')} in {time.time() - start - seconds:.1f}s")


def write_tiny(args):
    """A random quickstart-sized Qwen2 (models/build_base.py's defaults) with a BPE tokenizer trained on
    the items' titles."""
    from common.prompt import (
        CANDIDATES_CLOSE,
        CANDIDATES_OPEN,
        HISTORY_OPEN,
        SEP,
        SYSTEM,
    )
    from models.tiny import init_model, save_model, tiny_config
    from models.tokenizer import train_tokenizer

    start = time.time()
    titles = [row["title"] for row in read_jsonl(args.items, "items file")]
    tok = train_tokenizer(titles + [SYSTEM, HISTORY_OPEN, CANDIDATES_OPEN, CANDIDATES_CLOSE, SEP],
                          vocab_size=args.vocab_size)
    model = init_model(tiny_config(tok), seed=args.seed)
    save_model(model, tok, args.out)
    print(f"wrote {args.out}: tiny Qwen2 (hidden {model.config.hidden_size}, {len(tok)} tokens, from "
          f"{len(titles)} titles) in {time.time() - start:.1f}s")


def parse_args(argv):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = p.add_subparsers(dest="what", required=True)
    base = sub.add_parser("base", help="the Qwen2-7B-shaped checkpoint and three adapters")
    base.add_argument("--tokenizer", required=True, help="Qwen2-7B-Instruct tokenizer folder")
    base.add_argument("--out-dir", required=True, help="writes base/ and adapters/{target,source1,source2}")
    base.add_argument("--small", action="store_true", help="2 layers, hidden 128, the real vocabulary")
    base.add_argument("--device", default="auto", help="where weights are drawn (auto: cuda when available)")
    base.add_argument("--rank", type=int, default=16)
    base.add_argument("--seed", type=int, default=0)
    tiny = sub.add_parser("tiny", help="a tiny quickstart-like model")
    tiny.add_argument("--items", required=True, help="<domain>.items.jsonl whose titles train the tokenizer")
    tiny.add_argument("--out", required=True)
    tiny.add_argument("--vocab-size", type=int, default=8192)
    tiny.add_argument("--seed", type=int, default=0)
    return p.parse_args(argv)


def main(argv=None):
    args = parse_args(argv)
    write_base(args) if args.what == "base" else write_tiny(args)
    return 0


if __name__ == "__main__":
    run_main(main)
