"""Check a machine before a long job: reads the environments, the model folder and the training config; writes
one line per check ("ok", "warn" or "FAIL") and exits 1 when something will fail.

Runs with any Python 3 (it asks each environment's own Python about its packages and GPUs), so it also says
what is wrong when .venv itself is missing. scripts/preflight.sh passes the pipeline's variables.

    python -m models.preflight --model models/Qwen2-7B-Instruct --config scripts/train_configs/qwen2_7b_lora.yaml \
        [--save-dir save --modules 3 --nproc 8 --backend auto|hf|vllm --batch-size 32 --max-new-tokens 800 \
         --template T --venv .venv --vllm-venv .venv-vllm]
"""

import argparse
import json
import os
import shutil
import subprocess
import sys

from common.cli import UserError
from models import estimate, families

PROBE = r"""
import importlib, json, sys
out = {"python": sys.version.split()[0], "packages": {}, "missing": []}
for name in sys.argv[1:]:
    try:
        out["packages"][name] = getattr(importlib.import_module(name), "__version__", "?")
    except Exception as err:
        out["missing"].append(f"{name} ({type(err).__name__}: {str(err)[:80]})")
try:
    import torch
    out["torch_cuda"] = torch.version.cuda
    out["gpus"] = [{"name": torch.cuda.get_device_name(i), "memory": torch.cuda.get_device_properties(i).total_memory,
                    "bf16": torch.cuda.get_device_capability(i)[0] >= 8} for i in range(torch.cuda.device_count())]
except Exception:
    out["gpus"] = []
print(json.dumps(out))
"""
SHAPE_KEYS = ("hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads", "vocab_size")
TRAIN_PACKAGES = ["torch", "transformers", "peft", "llamafactory", "datasets", "safetensors"]
VLLM_PACKAGES = ["torch", "transformers", "vllm"]


class Report:
    def __init__(self):
        self.failed = 0

    def line(self, status, check, detail):
        self.failed += status == "FAIL"
        print(f"{status:<4}  {check}: {detail}", flush=True)


def probe(venv, packages):
    """What an environment's Python imports and sees, or None when the environment does not start."""
    python = os.path.join(venv, "bin", "python")
    if not os.access(python, os.X_OK):
        return None
    proc = subprocess.run([python, "-c", PROBE, *packages], capture_output=True, text=True, timeout=600, check=False)
    if proc.returncode != 0 or not proc.stdout.strip():
        return {"error": (proc.stderr.strip().splitlines() or ["no output"])[-1], "packages": {}, "gpus": []}
    return json.loads(proc.stdout.strip().splitlines()[-1])


def check_env(report, name, venv, packages, required, how):
    info = probe(venv, packages)
    if info is None or info.get("error") or info.get("missing"):
        why = "not found" if info is None else info.get("error") or "cannot import " + ", ".join(info["missing"])
        report.line("FAIL" if required else "warn", name, f"{venv} {why} ({how})")
        return None
    versions = " ".join(f"{k} {v}" for k, v in info["packages"].items())
    report.line("ok", name, f"{venv}: Python {info['python']}, {versions}")
    return info


def check_gpus(report, info, nproc, wants):
    cuda = info.get("torch_cuda")
    gpus = info["gpus"]
    report.line("ok" if cuda else "warn", "torch", f"{info['packages']['torch']}, "
                + (f"CUDA {cuda}" if cuda else "a CPU build (no CUDA): training and inference run on the CPU"))
    if not gpus:
        report.line("FAIL" if nproc > 1 else "warn", "GPUs", f"none visible{f' but NPROC={nproc}' if nproc > 1 else ''}"
                    + ("; the config's bf16 becomes fp32" if wants == "bf16" else ""))
        return []
    names = ", ".join(f"{g['name']} ({estimate.gib(g['memory'])}, {'bf16' if g['bf16'] else 'no bf16'})" for g in gpus)
    report.line("FAIL" if nproc > len(gpus) else "ok", "GPUs",
                f"{len(gpus)}: {names}" + (f"; NPROC={nproc} needs {nproc}" if nproc > len(gpus) else ""))
    if wants == "bf16" and not all(g["bf16"] for g in gpus[:nproc]):
        report.line("warn", "precision", "the config asks for bf16, which these GPUs lack: training runs in fp16")
    return gpus[:nproc]


def check_model(report, model, template=""):
    """The model's config.json if the folder holds a causal LM of a supported family (models/families.py; any with
    TEMPLATE set) with safetensors weights and a tokenizer whose chat template gives the training template, else None."""
    path = os.path.join(model, "config.json")
    if not os.path.isfile(path):
        report.line("FAIL", "model", f"{model}: no config.json (download the base model or scripts/build_model.sh)")
        return None
    with open(path, encoding="utf-8") as f:
        cfg = json.load(f)
    archs = cfg.get("architectures") or []
    known = any(cfg.get("model_type") in family.model_types for family in families.FAMILIES)
    if not known and not template:
        report.line("FAIL", "model", f"{model} is a '{cfg.get('model_type')}' model {archs}, which WeaveRec does not "
                    f"know; supported model types: {families.SUPPORTED}; TEMPLATE=<LLaMA-Factory template> trains "
                    "another model with that template")
        return None
    lacks = [k for k in SHAPE_KEYS if k not in cfg]
    if not any(a.endswith("ForCausalLM") for a in archs) or lacks:
        report.line("FAIL", "model", f"{model} is a {cfg.get('model_type')} {archs}, not a causal LM"
                    + (f" (config.json lacks {', '.join(lacks)})" if lacks else ""))
        return None
    weights = [n for n in os.listdir(model) if n.endswith(".safetensors")]
    if not weights:
        report.line("FAIL", "model", f"{model} has no .safetensors weights")
        return None
    n = estimate.param_count(cfg)
    report.line("ok" if known else "warn", "model", f"{model}: {archs[0]}, {estimate.count(n)} parameters, "
                f"{len(weights)} weight files" + ("" if known else "; a model type WeaveRec does not know: the "
                                                  "estimates assume Llama's layout"))
    tok_cfg = os.path.join(model, "tokenizer_config.json")
    has_template = os.path.isfile(os.path.join(model, "chat_template.jinja"))
    if os.path.isfile(tok_cfg):
        with open(tok_cfg, encoding="utf-8") as f:
            has_template = has_template or bool(json.load(f).get("chat_template"))
    has_tokenizer = os.path.isfile(os.path.join(model, "tokenizer.json")) or os.path.isfile(os.path.join(model, "vocab.json"))
    if not (has_tokenizer and has_template):
        report.line("FAIL", "tokenizer", f"{model}: " + ("no tokenizer files" if not has_tokenizer else "no chat template"))
        return None
    report.line("ok", "tokenizer", f"{model}: tokenizer with a chat template")
    try:
        name, why = families.choose_template(model, template)
    except UserError as err:
        report.line("FAIL", "template", str(err))
        return None
    report.line("ok", "template", f"{name} ({why}); train_lora.sh checks its prompts against the chat template's")
    return cfg


def free_bytes(path):
    path = os.path.abspath(path)
    while not os.path.exists(path):
        path = os.path.dirname(path)
    return shutil.disk_usage(path).free


def available_ram():
    with open("/proc/meminfo", encoding="utf-8") as f:
        info = dict(line.split(":", 1) for line in f)
    return int(info["MemAvailable"].split()[0]) * 1024


def check_disk(report, cfg, train, model, save_dir, modules):
    kept, peak = estimate.module_disk_bytes(cfg, train, model)
    free = free_bytes(save_dir)
    if kept is None:
        report.line("warn", "disk", f"no save_total_limit: every checkpoint of "
                    f"{estimate.gib(estimate.checkpoint_bytes(cfg, train, model))} is kept; {estimate.gib(free)} free")
        return
    need = (modules - 1) * kept + peak
    report.line("FAIL" if need > free else "ok", "disk",
                f"{modules} modules x {estimate.gib(kept)} (up to {estimate.gib(peak)} while saving; "
                f"{train['save_total_limit']} checkpoints of {estimate.gib(estimate.checkpoint_bytes(cfg, train, model))}) "
                f"= {estimate.gib(need)} needed, {estimate.gib(free)} free in {save_dir}")


def check_memory(report, what, need, gpus, detail):
    if gpus:
        have, where = min(g["memory"] for g in gpus), "per GPU"
    else:
        have, where = available_ram(), "of RAM (no GPU)"
    report.line("FAIL" if need > 0.95 * have else "ok", what,
                f"about {estimate.gib(need)} {detail}; {estimate.gib(have)} {where}")


def read_config(path):
    """A flat LLaMA-Factory YAML; PyYAML when this Python has it, else `key: value` lines (what our configs hold)."""
    try:
        import yaml
    except ImportError:
        yaml = None
    with open(path, encoding="utf-8") as f:
        if yaml is not None:
            return yaml.safe_load(f) or {}
        config = {}
        for line in f:
            key, sep, value = line.split("#", 1)[0].partition(":")
            if sep and key.strip() and value.strip():
                config[key.strip()] = scalar(value.strip())
        return config


def scalar(text):
    if text in ("true", "false"):
        return text == "true"
    for kind in (int, float):
        try:
            return kind(text)
        except ValueError:
            pass
    return text


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", required=True)
    p.add_argument("--config", required=True, help="the LLaMA-Factory training YAML the job will use")
    p.add_argument("--save-dir", default="save")
    p.add_argument("--modules", type=int, default=3, help="LoRA modules the job will train (disk)")
    p.add_argument("--nproc", type=int, default=1)
    p.add_argument("--backend", default="auto", choices=("auto", "hf", "vllm"),
                   help="the inference backend the job will use (auto: vllm where its environment exists, else hf)")
    p.add_argument("--batch-size", default="auto", type=lambda t: t if t == "auto" else int(t),
                   help="inference batch (auto: what fits the GPU's free memory, checked here for one prompt)")
    p.add_argument("--max-new-tokens", type=int, default=800)
    p.add_argument("--template", default="", help="LLaMA-Factory template (TEMPLATE); default: the model's own")
    p.add_argument("--venv", default=".venv")
    p.add_argument("--vllm-venv", default=".venv-vllm")
    args = p.parse_args(argv)
    report = Report()
    info = check_env(report, "training env", args.venv, TRAIN_PACKAGES, True, "bash scripts/setup.sh")
    check_env(report, "vLLM env", args.vllm_venv, VLLM_PACKAGES, args.backend == "vllm",
              "VLLM=1 bash scripts/setup.sh; needed for --backend vllm, "
              "used by auto where present")
    train = {}
    if not os.path.isfile(args.config):
        report.line("FAIL", "config", f"{args.config} not found")
    else:
        train = read_config(args.config)
    wants = "bf16" if train.get("bf16") else "fp16" if train.get("fp16") else "fp32"
    gpus = check_gpus(report, info, args.nproc, wants) if info else []
    cfg = check_model(report, args.model, args.template)
    if cfg and train:
        precision = wants if gpus and (wants != "bf16" or all(g["bf16"] for g in gpus)) else "fp16" if gpus else "fp32"
        check_disk(report, cfg, train, args.model, args.save_dir, args.modules)
        check_memory(report, "training memory", estimate.train_memory_bytes(cfg, train, precision), gpus,
                     f"{precision}, batch {train.get('per_device_train_batch_size', 1)} x "
                     f"cutoff_len {train.get('cutoff_len', 2048)} tokens at worst")
        infer = "bf16" if gpus and all(g["bf16"] for g in gpus) else "fp16" if gpus else "fp32"
        prompt = train.get("cutoff_len", 2048)
        batch = 1 if args.batch_size == "auto" else args.batch_size
        check_memory(report, "inference memory",
                     estimate.infer_memory_bytes(cfg, batch, prompt, args.max_new_tokens, infer), gpus,
                     f"{infer}, batch {args.batch_size}{' (one prompt at least)' if batch != args.batch_size else ''}"
                     f" x ({prompt} prompt + {args.max_new_tokens} new tokens)")
    print(f"preflight: {'1 check fails' if report.failed == 1 else f'{report.failed} checks fail' if report.failed else 'all checks pass'}")
    return 1 if report.failed else 0


if __name__ == "__main__":
    sys.exit(main())
