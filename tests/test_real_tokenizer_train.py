"""Training on the real Qwen2-7B-Instruct tokenizer (a tiny random Qwen2 that carries it, tests.helpers): the
template LLaMA-Factory trains with, a real LoRA run, merging its adapters, and the prompt-length check's figures
on real WeaveRec prompts with 20-item histories."""

import json

import pytest
import torch

from common.cli import UserError
from common.dataset_info import register
from common.io import write_jsonl_atomic
from models.check_lengths import check, load_template, sample_length
from tests.helpers import adapter_logits, assert_close_rel, base_plus, logits, merge, peft_deltas, real_prompts, \
    run_train_lora, weighted


@pytest.fixture(scope="module")
def long_prompts(shared_data):
    """40 real Beauty samples as make_data.sh makes them by default: 20-item histories, 30 candidates."""
    return real_prompts(shared_data, n=40, seed=1, history=20)


@pytest.fixture(scope="module")
def chat_lengths(real_tokenizer_model_dir, long_prompts):
    """Token counts of the tokenizer's own chat template (the reference, independent of LLaMA-Factory)."""
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(real_tokenizer_model_dir)
    return [len(tok.apply_chat_template(s["messages"], tokenize=True)) for s in long_prompts]


def test_llamafactory_qwen_template_gives_the_chat_template_token_ids(real_tokenizer_model_dir, long_prompts):
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(real_tokenizer_model_dir)
    lf_tok, template = load_template(str(real_tokenizer_model_dir), "qwen")
    for sample in long_prompts:
        system, user, answer = sample["messages"]
        prompt_ids, answer_ids = template.encode_oneturn(
            lf_tok, [{"role": "user", "content": user["content"]}, {"role": "assistant", "content": answer["content"]}],
            system["content"])
        assert prompt_ids == tok.apply_chat_template([system, user], add_generation_prompt=True, tokenize=True)
        assert prompt_ids + answer_ids == tok.apply_chat_template([system, user, answer], tokenize=True)
        assert sample_length(lf_tok, template, sample) == len(prompt_ids) + len(answer_ids)


def test_length_check_reports_the_real_figures(real_tokenizer_model_dir, long_prompts, chat_lengths, tmp_path):
    path = tmp_path / "beauty.jsonl"
    write_jsonl_atomic(path, long_prompts)
    cutoff = sorted(chat_lengths)[len(chat_lengths) // 2]  # about half the samples are longer
    over = sum(n > cutoff for n in chat_lengths)
    stats = check(str(path), str(real_tokenizer_model_dir), "qwen", cutoff, max_cut=1.0)
    assert (stats["samples"], stats["longest"], stats["over"]) == (40, max(chat_lengths), over)
    assert max(chat_lengths) > 1200  # real 20-item prompts: the paper's cutoff_len would cut some
    with pytest.raises(UserError) as err:
        check(str(path), str(real_tokenizer_model_dir), "qwen", cutoff, max_cut=0.001)
    assert f"{over} of 40 samples" in str(err.value) and f"(longest {max(chat_lengths):,})" in str(err.value)
    assert check(str(path), str(real_tokenizer_model_dir), "qwen", max(chat_lengths))["over"] == 0


@pytest.mark.slow
def test_llamafactory_trains_on_the_real_tokenizer_and_its_adapters_merge(real_tokenizer_model_dir, shared_data,
                                                                          tmp_path):
    data, save = tmp_path / "traindata", tmp_path / "save"
    samples = real_prompts(shared_data, n=8, seed=2, history=3, n_candidates=5)
    write_jsonl_atomic(data / "beauty.jsonl", samples)
    register(str(data), ["beauty"])
    proc = run_train_lora("beauty", MODEL=real_tokenizer_model_dir, DATA_DIR=data, SAVE_DIR=save,
                          TRAIN_ARGS="max_steps=2 save_steps=1 logging_steps=1 per_device_train_batch_size=1 "
                                "gradient_accumulation_steps=1 lora_rank=8 lora_alpha=16")
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(real_tokenizer_model_dir)
    longest = max(len(tok.apply_chat_template(s["messages"], tokenize=True)) for s in samples)
    assert f"8 samples, longest {longest:,} tokens, none over cutoff_len 2,048" in proc.stdout

    top, early = save / "beauty", save / "beauty" / "checkpoint-1"
    out = tmp_path / "merged"
    assert merge("--adapters", top, early, "--out", out, "--weights", "1.5", "0.5",
                 "--base-model", real_tokenizer_model_dir) == 0
    lam = torch.softmax(torch.tensor([1.5, 0.5], dtype=torch.float64), 0).tolist()
    deltas = [peft_deltas(real_tokenizer_model_dir, a) for a in (top, early)]
    assert all(d.abs().max() > 0 for d in deltas[0].values())
    assert_close_rel(adapter_logits(real_tokenizer_model_dir, out),
                     logits(base_plus(real_tokenizer_model_dir, weighted(deltas, lambda m: lam))))
    assert json.loads((out / "adapter_config.json").read_text())["r"] == 16  # stacked: 8 + 8
