"""Checks of the folders the stages read: a Hugging Face model folder and a PEFT adapter folder.

One clear line (UserError) for each way a path is not what a stage needs, before anything is loaded.
"""

import glob
import json
import os

from common.cli import UserError

MODEL_CONFIG = "config.json"
ADAPTER_CONFIG = "adapter_config.json"
ADAPTER_WEIGHTS = "adapter_model.safetensors"


def check_model_folder(path, what="model folder", hint=""):
    """`path` is a local HF model folder (config.json); `hint` is added to the "not found" line."""
    if not os.path.isdir(path):
        raise UserError(f"{what} not found: {path}{hint}")
    has_config = os.path.isfile(os.path.join(path, MODEL_CONFIG))
    if os.path.isfile(os.path.join(path, ADAPTER_CONFIG)) and not has_config:
        raise UserError(f"{path} is a PEFT adapter, not a model: pass it as an adapter and give its base "
                        "model as the model")
    if not has_config:
        raise UserError(f"{path} has no {MODEL_CONFIG}: not a Hugging Face model folder")


def adapter_files(path):
    """(config path, weights path) of a PEFT adapter folder (an output_dir or one of its checkpoint-N)."""
    if not os.path.isdir(path):
        raise UserError(f"adapter folder not found: {path}")
    config, weights = os.path.join(path, ADAPTER_CONFIG), os.path.join(path, ADAPTER_WEIGHTS)
    if not os.path.isfile(config):
        ckpts = sorted(os.path.basename(p) for p in glob.glob(os.path.join(path, "checkpoint-*")))
        hint = f" (it holds {', '.join(ckpts)}: pass one of them)" if ckpts else ": not a PEFT adapter folder"
        raise UserError(f"{path} has no {ADAPTER_CONFIG}{hint}")
    if not os.path.isfile(weights):
        found = " (adapter_model.bin is a pickle and is never loaded)" if os.path.isfile(
            os.path.join(path, "adapter_model.bin")) else ""
        raise UserError(f"{path} has no {ADAPTER_WEIGHTS}{found}")
    return config, weights


def check_adapter_folder(path):
    """The adapter's config as a dict; UserError if the folder is not a PEFT adapter."""
    config, _ = adapter_files(path)
    with open(config, encoding="utf-8") as f:
        try:
            return json.load(f)
        except json.JSONDecodeError as err:
            raise UserError(f"{config}: not valid JSON ({err.msg})") from None
