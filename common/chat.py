"""The prompt as inference builds it, for every base model: the model's own chat template over [system, user]
with the generation prompt, and the tokens generation stops at. Training must see the same ids: before a
module is trained models/families.py checks that LLaMA-Factory's template gives them (tests/test_families.py
checks it for every supported family)."""


def prompt_ids(tokenizer, system, user):
    """Chat template over [system, user] with the generation prompt, as a list of token ids.

    return_dict=False: transformers 5 returns a BatchEncoding from tokenize=True otherwise.
    """
    messages = [{"role": "system", "content": system}, {"role": "user", "content": user}]
    ids = tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=True,
                                        return_dict=False)
    return list(ids)


def stop_ids(tokenizer):
    """Generation stops at the tokenizer's eos and pad tokens."""
    return sorted({tokenizer.eos_token_id, tokenizer.pad_token_id} - {None})
