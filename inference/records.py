"""What both backends share: the prompt's token ids, the stop tokens, the candidate continuations and the
output records, so that hf and vllm write the same bytes for the same predictions."""

from common.prompt import SEP, TOP_K
from inference.constrained import unique_titles


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


def decode_until_stop(tokenizer, tokens, stops):
    """The text of generated tokens up to the first stop token, special tokens left out."""
    end = next((i for i, t in enumerate(tokens) if t in stops), len(tokens))
    return tokenizer.decode(tokens[:end], skip_special_tokens=True)


def candidate_tokens(tokenizer, title):
    """The continuation whose likelihood is the candidate's score: the title and the separator."""
    return tokenizer.encode(title + SEP, add_special_tokens=False)


def score_titles(example):
    """The titles score mode ranks: the prompt's candidates without empties and repeats."""
    return unique_titles(example["candidates"])


def free_record(example, text):
    return {"id": example["id"], "output": text.strip()}


def constrained_record(example, titles):
    if titles is None:
        raise RuntimeError(f"constrained decoding did not finish for test line {example['id']}")
    return {"id": example["id"], "output": SEP.join(titles)}


def score_record(example, titles, scores, norm="sum", lengths=None):
    """Titles ranked by score (equal scores keep candidate order); norm "mean" divides each summed
    log-likelihood by its token count `lengths`."""
    if norm == "mean":
        scores = [s / n for s, n in zip(scores, lengths)]
    order = sorted(range(len(titles)), key=lambda i: (-scores[i], i))
    ranking = [titles[i] for i in order]
    return {"id": example["id"], "output": SEP.join(ranking[:TOP_K]), "ranking": ranking,
            "scores": [round(float(scores[i]), 6) for i in order]}
