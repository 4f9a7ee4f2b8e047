"""Small causal LMs built from a config: the embedded default base model (Qwen2 architecture) and, for tests,
the same size in the other supported families' architectures (Llama-3, Mistral; models/families.py)."""

import torch
from transformers import (
    LlamaConfig,
    LlamaForCausalLM,
    MistralConfig,
    MistralForCausalLM,
    Qwen2Config,
    Qwen2ForCausalLM,
)

MODEL_CLASSES = {"qwen2": Qwen2ForCausalLM, "llama": LlamaForCausalLM, "mistral": MistralForCausalLM}


def tiny_config(tokenizer, hidden_size=128, num_layers=2, num_heads=4, num_kv_heads=2,
                intermediate_size=None, max_position_embeddings=2048, family="qwen2"):
    """A config of `family` (qwen2, llama3 or mistral) sized for CPU, with the tokenizer's special token ids.

    Each family keeps the published models' own choices: Qwen2 biases on q/k/v (small ones: tied
    embeddings), Llama-3.1's RoPE base and its long-context scaling, Mistral v0.3's RoPE base and no
    sliding window; Llama and Mistral untied embeddings and a begin-of-sequence token.
    """
    shape = {"vocab_size": len(tokenizer), "hidden_size": hidden_size,
             "intermediate_size": intermediate_size or 4 * hidden_size, "num_hidden_layers": num_layers,
             "num_attention_heads": num_heads, "num_key_value_heads": num_kv_heads,
             "max_position_embeddings": max_position_embeddings, "eos_token_id": tokenizer.eos_token_id,
             "torch_dtype": "float32"}
    if family == "qwen2":
        return Qwen2Config(**shape, rope_theta=10000.0, tie_word_embeddings=True, bos_token_id=None,
                           pad_token_id=tokenizer.convert_tokens_to_ids("<|endoftext|>"))
    if family == "llama3":
        return LlamaConfig(**shape, rope_theta=500000.0, tie_word_embeddings=False, bos_token_id=tokenizer.bos_token_id,
                           attention_bias=False, mlp_bias=False,
                           rope_scaling={"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0,
                                         "high_freq_factor": 4.0, "original_max_position_embeddings": 256})
    if family == "mistral":
        return MistralConfig(**shape, rope_theta=1000000.0, tie_word_embeddings=False, sliding_window=None,
                             head_dim=hidden_size // num_heads, bos_token_id=tokenizer.bos_token_id)
    raise ValueError(f"unknown family {family!r} (known: qwen2, llama3, mistral)")


def init_model(config, seed=0):
    """A freshly initialised causal LM of the config's architecture, the same weights for the same seed."""
    torch.manual_seed(seed)
    return MODEL_CLASSES[config.model_type](config)


def save_model(model, tokenizer, out_dir):
    """Save as a normal HF model folder (safetensors) that transformers, PEFT and LLaMA-Factory load."""
    model.generation_config.eos_token_id = tokenizer.eos_token_id
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    model.generation_config.bos_token_id = tokenizer.bos_token_id
    model.save_pretrained(out_dir, safe_serialization=True)
    tokenizer.save_pretrained(out_dir)
