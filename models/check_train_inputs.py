"""Check and plan one LoRA training run before LLaMA-Factory starts: reads the registry, model, config and the
module's folders; writes save/<dataset>.partial (unless --dry-run).

Called by scripts/train_lora.sh, so that every problem is one clear line, not a traceback after minutes:
dataset and paths, process counts, settings that deadlock or lose the best checkpoint, the precision the
hardware has (bf16, fp16 or fp32), the LLaMA-Factory template (the model's own, models/families.py, whose
prompts must equal the chat template's), prompts that LLaMA-Factory would cut (models/check_lengths.py), and what
to do with the module (models/train_run.py: skip, resume or fresh). Prints what it found; writes three lines
for the script to --plan-file: the action, the checkpoint to resume from ("-" if none) and the key=value
overrides to add.

    python -m models.check_train_inputs --dataset sports_beauty --data-dir traindata --model models/tiny-qwen2 \
        --config scripts/train_configs/tiny_cpu_lora.yaml --out save/sports_beauty --plan-file F [--extra "k=v ..."] \
        [--nproc N --nnodes N --precision auto|bf16|fp16|fp32 --template T --max-cut 0.001 --skip-existing 1 --dry-run]
"""

import argparse
import importlib.util
import json
import os
import re
import sys

from common.cli import UserError, run_main
from common.dataset_info import FILE_NAME, load
from common.folders import check_model_folder
from models import families, train_run

PRECISIONS = ("auto", "bf16", "fp16", "fp32")
CPU = {"gpu": None, "bf16": False}


def check_dataset(name, data_dir):
    """Any name that `data_dir`/dataset_info.json registers, with an existing non-empty file."""
    if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9_.-]*", name):
        raise UserError(f"dataset name '{name}' is not a plain name (letters, digits, '_', '.', '-')")
    info = load(data_dir)
    if name not in info:
        registered = ", ".join(sorted(info)) or "none"
        raise UserError(f"dataset '{name}' is not registered in {os.path.join(data_dir, FILE_NAME)} "
                        f"(registered: {registered}); run data_process.process / construct first")
    path = os.path.join(data_dir, info[name].get("file_name", ""))
    if not os.path.isfile(path) or os.path.getsize(path) == 0:
        raise UserError(f"dataset '{name}' is registered but its file is missing or empty: {path}")
    return path


def check_model(model):
    """A local HF model folder, as LLaMA-Factory loads it with trust_remote_code off."""
    check_model_folder(model, "base model folder", hint=" (build it with scripts/build_model.sh)")


def check_file(path, what):
    if not os.path.isfile(path):
        raise UserError(f"{what} not found: {path}")


def check_count(value, what):
    if not value.isdigit() or int(value) < 1:
        raise UserError(f"{what} must be a whole number, at least 1 (got '{value}')")
    return int(value)


def effective_config(config, extra):
    """The arguments LLaMA-Factory will see: the YAML merged with key=value overrides, as its read_args does."""
    import yaml
    from omegaconf import OmegaConf

    with open(config, encoding="utf-8") as f:
        base = yaml.safe_load(f) or {}
    try:
        return OmegaConf.to_container(OmegaConf.merge(base, OmegaConf.from_cli(list(extra))))
    except Exception as err:  # omegaconf's own grammar errors
        raise UserError(f"bad key=value override in TRAIN_ARGS ({err})") from None


def check_training_config(cfg, world_size):
    """Settings that would hang several processes or lose the best checkpoint."""
    if cfg.get("deepspeed"):
        raise UserError("DeepSpeed is not supported: deepspeed 0.16.9 (the newest LLaMA-Factory 0.9.3 accepts) fails "
                        "with torch 2.13 at the first optimizer step; see docs/gpu.md")
    if cfg.get("load_best_model_at_end") and world_size > 1:
        raise UserError("load_best_model_at_end can deadlock several processes (transformers 4.52.4); set it to false "
                        "and metric_for_best_model: eval_loss: train_lora.sh keeps the best checkpoint's adapter itself")
    metric = cfg.get("metric_for_best_model")
    evaluating = cfg.get("eval_strategy", "no") != "no"
    if metric and not evaluating:
        raise UserError(f"metric_for_best_model is {metric} but eval_strategy is 'no': nothing is evaluated")
    if metric and (cfg.get("save_strategy", "steps") != cfg.get("eval_strategy")
                   or (cfg.get("eval_strategy") == "steps" and cfg.get("save_steps") != cfg.get("eval_steps"))):
        raise UserError("save_steps must equal eval_steps (and save_strategy eval_strategy) so that every "
                        "evaluation has a checkpoint to keep")
    limit = cfg.get("save_total_limit")
    if metric and limit is not None and limit < 2:
        raise UserError("save_total_limit must be at least 2 with metric_for_best_model: one for the best, one to resume")


def device():
    """{"gpu": name or None, "bf16": native bf16 support} of the first CUDA device."""
    import torch

    if not torch.cuda.is_available():
        return {"gpu": None, "bf16": False}
    major, _ = torch.cuda.get_device_capability(0)
    return {"gpu": torch.cuda.get_device_name(0), "bf16": major >= 8}  # Ampere and later; V100, T4 emulate it


def choose_precision(wanted, requested, dev):
    """(precision, message or None): the config's `wanted` precision unless `requested`, within what `dev` has."""
    lacks = f"GPU {dev['gpu']} has no bf16" if dev["gpu"] else "there is no CUDA GPU here"
    if requested != "auto":
        if requested == "bf16" and not dev["bf16"]:
            raise UserError(f"PRECISION=bf16 but {lacks}; use PRECISION={'fp16' if dev['gpu'] else 'fp32'}")
        if requested == "fp16" and not dev["gpu"]:
            raise UserError("PRECISION=fp16 but there is no CUDA GPU here; use PRECISION=fp32")
        return requested, None
    if wanted == "bf16" and not dev["bf16"]:
        fallback = "fp16" if dev["gpu"] else "fp32"
        tip = " (PRECISION=fp32 for full precision)" if dev["gpu"] else ""
        return fallback, f"precision {fallback}: the config asks for bf16 but {lacks}{tip}"
    if wanted == "fp16" and not dev["gpu"]:
        return "fp32", "precision fp32: the config asks for fp16 but there is no CUDA GPU here"
    return wanted, None


def precision_overrides(precision):
    return [f"bf16={'true' if precision == 'bf16' else 'false'}", f"fp16={'true' if precision == 'fp16' else 'false'}"]


def choose_template(args, cfg):
    """(LLaMA-Factory template, why): TEMPLATE, else a template the config or TRAIN_ARGS set, else the model's."""
    configured = cfg.get("template")
    if args.template and configured and args.template != configured:
        raise UserError(f"TEMPLATE={args.template} but the config or TRAIN_ARGS set template: {configured}; set one")
    source = "TEMPLATE" if args.template else "template"
    return families.choose_template(args.model, args.template or configured, source)


def check_prompts_and_lengths(args, cfg, data_file, template, why, say):
    """The prompt check (models/families.py) on the first sample, then every sample's length."""
    from llamafactory.data.template import TEMPLATES

    from models.check_lengths import check_loaded, load_template

    if template not in TEMPLATES:
        raise UserError(f"{why}: no such LLaMA-Factory template (their names: llamafactory/data/template.py)")
    tokenizer, tpl = load_template(args.model, template)
    with open(data_file, encoding="utf-8") as f:
        first = next((line for line in f if line.strip()), "{}")
    try:
        sample = json.loads(first)
    except json.JSONDecodeError:
        raise UserError(f"{data_file}:1: not a sharegpt sample (not JSON)") from None
    families.check_prompts(args.model, sample, tokenizer, tpl, template)
    cutoff, max_samples = int(cfg.get("cutoff_len", 2048)), cfg.get("max_samples")
    stats = check_loaded(data_file, tokenizer, tpl, cutoff, max_samples, args.max_cut, progress=sys.stderr.isatty())
    over = f"{stats['over']:,} over cutoff_len {cutoff:,} (cut at the end)" if stats["over"] else \
        f"none over cutoff_len {cutoff:,}"
    with open(os.path.join(args.model, "config.json"), encoding="utf-8") as f:
        context = json.load(f).get("max_position_embeddings")
    if context and min(cutoff, stats["longest"]) > context:
        say(f"warning: samples of up to {min(cutoff, stats['longest']):,} tokens exceed the model's "
            f"max_position_embeddings {context:,}")
    return f"{stats['samples']:,} samples, longest {stats['longest']:,} tokens, {over}"


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    for name in ("--dataset", "--data-dir", "--model", "--config", "--out", "--plan-file"):
        p.add_argument(name, required=True)
    p.add_argument("--extra", default="", help="key=value overrides for llamafactory-cli, space-separated")
    p.add_argument("--nproc", default="1")
    p.add_argument("--nnodes", default="1")
    p.add_argument("--precision", default="auto")
    p.add_argument("--template", default="", help="LLaMA-Factory template (TEMPLATE); default: the model's own")
    p.add_argument("--max-cut", type=float, default=0.001, help="share of samples that may be cut")
    p.add_argument("--skip-existing", default="1", choices=("0", "1"))
    p.add_argument("--dry-run", action="store_true", help="check and plan, change nothing")
    args = p.parse_args(argv)
    data_file, world, extra, cfg, template = check_inputs(args)

    def say(note):  # on stdout as it happens; an error is the one line on stderr
        print(f"[train_lora] {args.dataset}: {note}", flush=True)

    action, checkpoint, overrides = plan_run(args, cfg, data_file, world, extra, template, say)
    with open(args.plan_file, "w", encoding="utf-8") as f:
        f.write(f"{action}\n{checkpoint or '-'}\n{' '.join(overrides)}\n")
    return 0


def check_inputs(args):
    """(dataset file, processes in all, TRAIN_ARGS words, effective config, (template, why)), or a UserError."""
    if importlib.util.find_spec("llamafactory") is None:
        raise UserError("LLaMA-Factory is not installed in this Python (pip install -r requirements.txt)")
    data_file = check_dataset(args.dataset, args.data_dir)
    check_model(args.model)
    check_file(args.config, "training config")
    world = check_count(args.nproc, "NPROC") * check_count(args.nnodes, "NNODES")
    if args.precision not in PRECISIONS:
        raise UserError(f"PRECISION must be one of {', '.join(PRECISIONS)} (got '{args.precision}')")
    extra = args.extra.split()
    cfg = effective_config(args.config, extra)
    check_training_config(cfg, world)
    return data_file, world, extra, cfg, choose_template(args, cfg)


def plan_run(args, cfg, data_file, world, extra, template, say):
    """(action, checkpoint, overrides): skip, or precision, template and prompt lengths checked and the folder
    prepared. `template` is (LLaMA-Factory template, why)."""
    chosen = [f"TEMPLATE={args.template}"] if args.template else []  # else the model's and config's digests say it
    inputs = train_run.run_inputs(args.dataset, args.data_dir, args.model, args.config,
                                  extra + [f"PRECISION={args.precision}"] + chosen, world)
    action, reason, checkpoint = train_run.plan(args.out, inputs, args.skip_existing == "1")
    if action == "skip":
        say(reason)
        return action, None, []
    wanted = "bf16" if cfg.get("bf16") else "fp16" if cfg.get("fp16") else "fp32"
    needs_gpu = wanted != "fp32" or args.precision not in ("auto", "fp32")  # fp32 runs anywhere: no torch import
    precision, message = choose_precision(wanted, args.precision, device() if needs_gpu else CPU)
    if message:
        say(message)
    name, why = template
    if args.dry_run:  # loading a tokenizer takes seconds: a dry run only plans
        say(f"{reason}; template {name} ({why}); prompts and their lengths are checked when training starts")
    else:
        lengths = check_prompts_and_lengths(args, cfg, data_file, name, why, say)
        say(f"{reason}: {args.model} + {os.path.basename(args.config)}, template {name} ({why}), {lengths}")
        train_run.prepare(args.out, inputs, action, checkpoint)
    return action, checkpoint, precision_overrides(precision) + [f"template={name}"]


if __name__ == "__main__":
    run_main(main)
