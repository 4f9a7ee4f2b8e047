"""LLaMA-Factory's traindata/dataset_info.json: read it, register sharegpt datasets atomically."""

import json
import os

from common.cli import UserError
from common.io import write_json_atomic

FILE_NAME = "dataset_info.json"


def sharegpt_entry(file_name):
    """The registration the published code writes for a WeaveRec jsonl file."""
    return {
        "file_name": file_name,
        "formatting": "sharegpt",
        "columns": {"messages": "messages"},
        "tags": {
            "role_tag": "role",
            "content_tag": "content",
            "user_tag": "user",
            "assistant_tag": "assistant",
            "system_tag": "system",
        },
    }


def load(data_dir):
    """The registry as a dict; a missing or empty file is an empty registry."""
    path = os.path.join(data_dir, FILE_NAME)
    if not os.path.isfile(path):
        return {}
    with open(path, encoding="utf-8") as f:
        text = f.read()
    if not text.strip():
        return {}
    try:
        info = json.loads(text)
    except json.JSONDecodeError as err:
        raise UserError(f"{path}: not valid JSON ({err.msg})") from None
    if not isinstance(info, dict):
        raise UserError(f"{path}: expected a JSON object of datasets")
    return info


def register(data_dir, names):
    """Add or refresh `name -> <name>.jsonl` entries, keeping every other entry; atomic."""
    info = load(data_dir)
    for name in names:
        info[name] = sharegpt_entry(f"{name}.jsonl")
    write_json_atomic(os.path.join(data_dir, FILE_NAME), dict(sorted(info.items())))
    return info
