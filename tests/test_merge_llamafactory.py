"""Merging adapters that LLaMA-Factory really trained (scripts/train_lora.sh, a few steps on CPU),
taken from an output folder and from a checkpoint-N folder, as the provided checkpoints are laid out."""

import json
import os
import random
import subprocess

import pytest
import torch

from common.dataset_info import register
from common.io import write_jsonl_atomic
from common.prompt import make_sample
from tests.helpers import (
    REPO,
    adapter_logits,
    assert_close_rel,
    base_plus,
    logits,
    merge,
    peft_deltas,
    real_titles,
    weighted,
)


def write_dataset(folder, name, seed, n=16):
    titles = sorted({t for t in real_titles(400) if "||" not in t})
    rng = random.Random(seed)
    rows = []
    for _ in range(n):
        picked = rng.sample(titles, 13)
        rows.append(make_sample(picked[:3], rng.sample(picked[3:], 10), picked[3:8]))
    write_jsonl_atomic(folder / f"{name}.jsonl", rows)
    register(folder, [name])


def train(model, data_dir, save_dir, dataset, extra):
    env = dict(os.environ, MODEL=str(model), DATA_DIR=str(data_dir), SAVE_DIR=str(save_dir),
               TRAIN_ARGS=f"max_steps=4 save_steps=2 logging_steps=1 cutoff_len=768 {extra}")  # longest 649
    proc = subprocess.run(["bash", "scripts/train_lora.sh", dataset], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=900, check=False)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    return save_dir / dataset


@pytest.mark.slow
def test_merging_llamafactory_adapters_is_exact(random_model_dir, tmp_path):
    data, save = tmp_path / "traindata", tmp_path / "save"
    data.mkdir()
    write_dataset(data, "sports", 0)
    write_dataset(data, "sports_beauty", 1)
    target = train(random_model_dir, data, save, "sports", "lora_rank=8 lora_alpha=16")
    hybrid = train(random_model_dir, data, save, "sports_beauty", "lora_rank=4 lora_alpha=4")
    checkpoint = target / "checkpoint-2"
    assert (checkpoint / "adapter_model.safetensors").is_file()
    out = tmp_path / "merged"
    assert merge("--adapters", checkpoint, hybrid, "--out", out, "--weights", "1.5", "0.5",
                 "--base-model", random_model_dir) == 0
    lam = torch.softmax(torch.tensor([1.5, 0.5], dtype=torch.float64), 0).tolist()
    deltas = [peft_deltas(random_model_dir, a) for a in (checkpoint, hybrid)]
    assert all(d.abs().max() > 0 for d in deltas[1].values())  # training moved B away from zero
    assert_close_rel(adapter_logits(random_model_dir, out),
                     logits(base_plus(random_model_dir, weighted(deltas, lambda m: lam))))
    config = json.loads((out / "adapter_config.json").read_text())
    assert config["r"] == 12 and config["base_model_name_or_path"] == str(random_model_dir)
    assert (out / "tokenizer_config.json").is_file()  # LLaMA-Factory saved the tokenizer beside the adapter
