"""The embedded default base model: a small Qwen2-architecture causal LM built from a config."""

import torch
from transformers import Qwen2Config, Qwen2ForCausalLM


def tiny_config(tokenizer, hidden_size=128, num_layers=2, num_heads=4, num_kv_heads=2,
                intermediate_size=None, max_position_embeddings=2048):
    """Qwen2Config sized for CPU, with the tokenizer's special token ids."""
    return Qwen2Config(
        vocab_size=len(tokenizer),
        hidden_size=hidden_size,
        intermediate_size=intermediate_size or 4 * hidden_size,
        num_hidden_layers=num_layers,
        num_attention_heads=num_heads,
        num_key_value_heads=num_kv_heads,
        max_position_embeddings=max_position_embeddings,
        rope_theta=10000.0,
        tie_word_embeddings=True,
        bos_token_id=None,
        eos_token_id=tokenizer.convert_tokens_to_ids("<|im_end|>"),
        pad_token_id=tokenizer.convert_tokens_to_ids("<|endoftext|>"),
        torch_dtype="float32",
    )


def init_model(config, seed=0):
    """A freshly initialised Qwen2ForCausalLM, the same weights for the same seed."""
    torch.manual_seed(seed)
    return Qwen2ForCausalLM(config)


def save_model(model, tokenizer, out_dir):
    """Save as a normal HF model folder (safetensors) that transformers, PEFT and LLaMA-Factory load."""
    model.generation_config.eos_token_id = tokenizer.convert_tokens_to_ids("<|im_end|>")
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    model.generation_config.bos_token_id = None
    model.save_pretrained(out_dir, safe_serialization=True)
    tokenizer.save_pretrained(out_dir)
