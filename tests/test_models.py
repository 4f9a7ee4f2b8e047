"""The embedded tiny base model: built from real Beauty samples, deterministic, its template = LLaMA-Factory's."""

import json
import subprocess
import sys

import pytest
import torch
from safetensors.torch import load_file
from transformers import AutoModelForCausalLM, AutoTokenizer

from tests.conftest import REPO


def process_domain(shared_data, train_dir, test_dir, domain="beauty", train=600, valid=300, users=100):
    """Real traindata/testdata files for `domain`, made by the data stage as a user makes them.

    Short prompts (5 history titles, 10 candidates: about 400 tokens) keep LLaMA-Factory runs quick.
    """
    cmd = [sys.executable, "-m", "data_process.process", "--raw-dir", str(shared_data), "--domain", domain,
           "--train-dir", str(train_dir), "--test-dir", str(test_dir), "--train-samples", str(train),
           "--valid-samples", str(valid), "--test-users", str(users), "--history", "5", "--candidates", "10"]
    proc = subprocess.run(cmd, check=False, cwd=REPO, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr


# the session fixtures below are imported by tests/test_train_lora.py too: they keep their output under the
# session's base folder so that the data and the model are made once per run, not once per module
@pytest.fixture(scope="session")
def beauty_dir(shared_data, tmp_path_factory):
    train_dir = tmp_path_factory.getbasetemp() / "beauty-traindata"
    if not (train_dir / "dataset_info.json").is_file():
        process_domain(shared_data, train_dir, tmp_path_factory.getbasetemp() / "beauty-testdata")
    return train_dir


def build(train_dir, out, *extra):
    """Run the build stage as a user does; return the finished process."""
    cmd = [sys.executable, "-m", "models.build_base", "--train-dir", str(train_dir), "--domains", "beauty",
           "--out", str(out), "--no-progress", *extra]
    return subprocess.run(cmd, check=False, cwd=REPO, capture_output=True, text=True, timeout=600)


# a base small enough to build in seconds, pre-trained enough (loss about 7.6 -> 4.2) for a LoRA to learn on
SMALL = ["--vocab-size", "2048", "--hidden-size", "64", "--steps", "200", "--batch-size", "16", "--block-size", "128",
         "--lr", "1e-2", "--threads", "1"]


@pytest.fixture(scope="session")
def built_model(beauty_dir, tmp_path_factory):
    out = tmp_path_factory.getbasetemp() / "built" / "tiny-qwen2"
    if not (out / "build_info.json").is_file():
        proc = build(beauty_dir, out, *SMALL)
        assert proc.returncode == 0, proc.stderr
    return out


def test_build_writes_a_model_that_transformers_loads_and_that_learned(built_model):
    info = json.loads((built_model / "build_info.json").read_text())
    assert info["steps_done"] == 200 and info["domains"] == ["beauty"]
    assert info["final_loss"] < info["first_loss"] - 2.0  # pre-training really lowered the loss
    tok = AutoTokenizer.from_pretrained(built_model)
    model = AutoModelForCausalLM.from_pretrained(built_model)
    assert model.config.model_type == "qwen2" and model.config.vocab_size == len(tok)
    assert tok.eos_token == "<|im_end|>" and tok.pad_token == "<|endoftext|>"
    ids = tok("Maybelline New York Great Lash Mascara||", return_tensors="pt").input_ids
    with torch.no_grad():
        assert torch.isfinite(model(ids).logits).all()


def test_same_seed_same_bytes_other_seed_other_weights(beauty_dir, built_model, tmp_path):
    again = tmp_path / "again"
    assert build(beauty_dir, again, *SMALL).returncode == 0
    for name in ("model.safetensors", "tokenizer.json"):
        assert (again / name).read_bytes() == (built_model / name).read_bytes(), name
    other = tmp_path / "other"
    assert build(beauty_dir, other, *SMALL, "--seed", "1").returncode == 0
    a, b = load_file(built_model / "model.safetensors"), load_file(other / "model.safetensors")
    assert any(not torch.equal(a[k], b[k]) for k in a)


def test_chat_template_gives_llamafactory_qwen_ids(built_model, beauty_dir):
    """Training (LLaMA-Factory's `qwen` template) and inference (apply_chat_template) see the same ids."""
    from llamafactory.data.template import TEMPLATES

    tok = AutoTokenizer.from_pretrained(built_model)
    template = TEMPLATES["qwen"]
    sample = json.loads((beauty_dir / "beauty.jsonl").read_text().splitlines()[0])
    messages = sample["messages"]
    for system, turns in ((messages[0]["content"], messages[1:]), (None, messages[1:])):
        prompt_ids, answer_ids = template.encode_oneturn(tok, turns, system=system)
        chat = ([{"role": "system", "content": system}] if system else []) + turns
        assert tok.apply_chat_template(chat, tokenize=True) == prompt_ids + answer_ids
        assert tok.apply_chat_template(chat[:-1], tokenize=True, add_generation_prompt=True) == prompt_ids
    assert tok.convert_ids_to_tokens(answer_ids[-2:]) == ["<|im_end|>", "\u010a"]


def test_build_refuses_missing_data_in_one_line(tmp_path):
    proc = build(tmp_path, tmp_path / "out")
    assert proc.returncode != 0
    assert proc.stderr.strip().splitlines() == [f"error: items file of 'beauty' not found: {tmp_path}/beauty.items.jsonl"]
    assert not (tmp_path / "out").exists()
