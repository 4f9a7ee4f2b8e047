"""The embedded tiny base model: built from real Beauty samples, deterministic, its template = LLaMA-Factory's."""

import json

import torch
from safetensors.torch import load_file
from transformers import AutoModelForCausalLM, AutoTokenizer

from tests.helpers import SMALL, build


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
