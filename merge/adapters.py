"""PEFT LoRA adapter folders: load and validate them, check they fit together, write merged ones.

An adapter folder is what PEFT's save_pretrained and LLaMA-Factory write (an output_dir or one of
its checkpoint-N folders): adapter_config.json + adapter_model.safetensors holding, for every adapted
linear layer `<module>`, `base_model.model.<module>.lora_A.weight` (r x in) and `.lora_B.weight`
(out x r). PEFT applies `W x + scaling * B A x` with scaling = lora_alpha / r (lora_alpha / sqrt(r)
for rsLoRA); `r` and `lora_alpha` may be overridden per module by rank_pattern / alpha_pattern.
"""

import math
import os
import re
import shutil
from dataclasses import dataclass, field

import torch
from safetensors import SafetensorError
from safetensors.torch import load, save_file

from common.cli import UserError
from common.folders import adapter_files
from common.io import read_json, write_json_atomic

CONFIG_NAME = "adapter_config.json"
WEIGHTS_NAME = "adapter_model.safetensors"
INFO_NAME = "merge_info.json"
PREFIX = "base_model.model."
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "vocab.json",
                   "merges.txt", "added_tokens.json", "chat_template.jinja", "tokenizer.model")
KEY_RE = re.compile(r"^(?:base_model\.model\.)?(?P<module>.+)\.lora_(?P<ab>[AB])\.weight$")
# config settings whose adapters this tool cannot merge exactly (value when harmless)
UNSUPPORTED = {"use_dora": False, "fan_in_fan_out": False, "layer_replication": None, "lora_bias": False,
               "modules_to_save": None, "bias": "none"}


@dataclass
class Adapter:
    """One LoRA adapter: per module (A, B) factors and PEFT's scaling for that module."""
    path: str
    config: dict
    factors: dict = field(default_factory=dict)  # module -> (lora_A [r, in], lora_B [out, r])
    scaling: dict = field(default_factory=dict)  # module -> float

    @property
    def dtype(self):
        return next(iter(self.factors.values()))[0].dtype


def _check_config(path, config):
    if not isinstance(config, dict) or config.get("peft_type", "LORA") != "LORA":
        raise UserError(f"{path}: not a LoRA adapter (peft_type {config.get('peft_type')!r})")
    for name, harmless in UNSUPPORTED.items():
        if config.get(name, harmless) not in (harmless, None, False, [], {}):
            raise UserError(f"{path}: adapters with {name}={config[name]!r} are not supported")


def module_scaling(config, module, rank):
    """PEFT's scaling for one module: lora_alpha / r, or lora_alpha / sqrt(r) with use_rslora."""
    r, alpha = config["r"], config["lora_alpha"]
    rank_pattern, alpha_pattern = config.get("rank_pattern") or {}, config.get("alpha_pattern") or {}
    if rank_pattern or alpha_pattern:
        from peft.utils.other import (
            get_pattern_key,  # importing peft takes seconds: only when needed
        )

        r = rank_pattern.get(get_pattern_key(rank_pattern, module), r)
        alpha = alpha_pattern.get(get_pattern_key(alpha_pattern, module), alpha)
    if r != rank:
        raise UserError(f"module {module}: lora_A has rank {rank} but the config says r={r}")
    return alpha / math.sqrt(r) if config.get("use_rslora") else alpha / r


def read_safetensors(path):
    """All tensors of a safetensors file, read with plain reads: touching a memory-mapped file
    (safetensors' load_file) page by page was 100x slower on the VMs this was measured on."""
    try:
        with open(path, "rb") as f:
            return load(f.read())
    except (SafetensorError, OSError) as err:
        raise UserError(f"{path}: not a readable safetensors file ({err})") from None


def load_adapter(path):
    """Read and validate one adapter folder: LoRA A/B weights only, finite, ranks matching config."""
    config_path, weights = adapter_files(path)
    config = read_json(config_path, "adapter config")
    _check_config(path, config)
    parts = {}
    for key, tensor in read_safetensors(weights).items():
        match = KEY_RE.match(key)
        if not match:
            raise UserError(f"{weights}: unsupported tensor {key} (only LoRA A/B weights can be merged)")
        if not torch.isfinite(tensor).all():
            raise UserError(f"{weights}: tensor {key} holds NaN or Inf values")
        parts.setdefault(match["module"], {})[match["ab"]] = tensor
    if not parts:
        raise UserError(f"{weights}: no LoRA weights inside")
    adapter = Adapter(path, config)
    for module, ab in sorted(parts.items()):
        if set(ab) != {"A", "B"} or ab["A"].shape[0] != ab["B"].shape[1]:
            raise UserError(f"{weights}: module {module} lacks a matching lora_A/lora_B pair")
        adapter.factors[module] = (ab["A"], ab["B"])
        adapter.scaling[module] = module_scaling(config, module, ab["A"].shape[0])
    return adapter


def check_compatible(adapters):
    """All adapters must adapt the same modules with the same (out, in) shapes; ranks may differ."""
    first = adapters[0]
    for other in adapters[1:]:
        missing = sorted(set(first.factors) ^ set(other.factors))
        if missing:
            raise UserError(f"{other.path} and {first.path} adapt different modules "
                            f"({len(missing)} differ, e.g. {missing[0]})")
        for module, (a, b) in first.factors.items():
            a2, b2 = other.factors[module]
            if (b.shape[0], a.shape[1]) != (b2.shape[0], a2.shape[1]):
                raise UserError(f"{other.path} and {first.path} were trained on different base models: "
                                f"{module} is {tuple(b2.shape[:1]) + tuple(a2.shape[1:])} vs "
                                f"{tuple(b.shape[:1]) + tuple(a.shape[1:])}")


def output_dtype(adapters, requested="auto"):
    """The inputs' dtype (the widest when they differ), unless a dtype is asked for."""
    if requested != "auto":
        return getattr(torch, requested)
    dtypes = {a.dtype for a in adapters}
    return dtypes.pop() if len(dtypes) == 1 else torch.float32


def is_merge_output(path):
    """An empty folder or an earlier merge output (holds merge_info.json): safe to replace."""
    return os.path.isdir(path) and (not os.listdir(path) or os.path.isfile(os.path.join(path, INFO_NAME)))


def adapter_config(template, rank, base_model):
    """A PEFT LoRA config for a merged adapter whose stored scaling is 1 (lora_alpha = r)."""
    config = dict(template)
    config.update(r=rank, lora_alpha=rank, use_rslora=False, rank_pattern={},
                  alpha_pattern={}, base_model_name_or_path=base_model,
                  inference_mode=True, init_lora_weights=True, lora_dropout=0.0)
    return config


def save_adapter(out_dir, factors, config, info, tokenizer_from=None):
    """Write a PEFT adapter folder (config, safetensors, merge_info.json, tokenizer files) into out_dir."""
    tensors = {}
    for module, (a, b) in factors.items():
        tensors[f"{PREFIX}{module}.lora_A.weight"] = a.contiguous()
        tensors[f"{PREFIX}{module}.lora_B.weight"] = b.contiguous()
    save_file(tensors, os.path.join(out_dir, WEIGHTS_NAME), metadata={"format": "pt"})
    write_json_atomic(os.path.join(out_dir, CONFIG_NAME), config)
    write_json_atomic(os.path.join(out_dir, INFO_NAME), info)
    copy_tokenizer_files(tokenizer_from, out_dir)


def copy_tokenizer_files(src, out_dir):
    """Copy the tokenizer files LLaMA-Factory saves beside an adapter, when there are any."""
    copied = []
    for name in TOKENIZER_FILES if src else ():
        if os.path.isfile(os.path.join(src, name)):
            shutil.copy2(os.path.join(src, name), os.path.join(out_dir, name))
            copied.append(name)
    return copied


def file_size(folder):
    """Total bytes of the files in a folder."""
    return sum(os.path.getsize(os.path.join(folder, n)) for n in os.listdir(folder))
