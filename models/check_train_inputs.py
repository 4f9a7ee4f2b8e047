"""Check a LoRA training run's inputs before LLaMA-Factory starts: reads the registry, model and config; writes nothing.

Called by scripts/train_lora.sh so that a wrong name or path is one clear line, not a long traceback.

    python -m models.check_train_inputs --dataset sports_beauty --data-dir traindata --model models/tiny-qwen2 \
        --config scripts/train_configs/tiny_cpu_lora.yaml [--deepspeed F] [--nproc N]
"""

import argparse
import importlib.util
import os
import re

from common.cli import UserError, run_main
from common.dataset_info import FILE_NAME, load
from common.domains import CATEGORIES


def check_dataset(name, data_dir):
    """`name` is <d>, <T>_<S> or <T>_<S1>_<S2>..., of known domains, registered with an existing file."""
    parts = name.split("_")
    if not re.fullmatch(r"[A-Za-z0-9_]+", name) or not all(p in CATEGORIES for p in parts) \
            or len(set(parts)) != len(parts):
        raise UserError(f"unknown dataset name '{name}': expected <domain>, <target>_<source> or "
                        f"<target>_<source1>_<source2>... of distinct domains ({', '.join(sorted(CATEGORIES))})")
    info = load(data_dir)
    if name not in info:
        registered = ", ".join(sorted(info)) or "none"
        raise UserError(f"dataset '{name}' is not registered in {os.path.join(data_dir, FILE_NAME)} "
                        f"(registered: {registered}); run data_process.process / construct first")
    path = os.path.join(data_dir, info[name].get("file_name", ""))
    if not os.path.isfile(path) or os.path.getsize(path) == 0:
        raise UserError(f"dataset '{name}' is registered but its file is missing or empty: {path}")


def check_model(model):
    """A local HF model folder (config.json + weights), as LLaMA-Factory loads with trust_remote_code off."""
    if not os.path.isdir(model):
        raise UserError(f"base model folder not found: {model} (build it with scripts/build_model.sh)")
    if not os.path.isfile(os.path.join(model, "config.json")):
        raise UserError(f"base model folder has no config.json: {model}")


def check_file(path, what):
    if not os.path.isfile(path):
        raise UserError(f"{what} not found: {path}")


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--dataset", required=True)
    p.add_argument("--data-dir", required=True)
    p.add_argument("--model", required=True)
    p.add_argument("--config", required=True)
    p.add_argument("--deepspeed", default="")
    p.add_argument("--nproc", default="1")
    args = p.parse_args(argv)
    if importlib.util.find_spec("llamafactory") is None:
        raise UserError("LLaMA-Factory is not installed in this Python (pip install -r requirements.txt)")
    check_dataset(args.dataset, args.data_dir)
    check_model(args.model)
    check_file(args.config, "training config")
    if args.deepspeed:
        check_file(args.deepspeed, "DeepSpeed config")
    if not args.nproc.isdigit() or int(args.nproc) < 1:
        raise UserError(f"NPROC must be a whole number of GPUs, at least 1 (got '{args.nproc}')")
    return 0


if __name__ == "__main__":
    run_main(main)
