"""Score mode: rank every candidate by the model's log-likelihood of it as the answer's first item.

score(c) = sum_j log p(u_j | prompt, u_<j), u = tokens of c + "||" (the separator marks where the
first item ends), or that sum divided by len(u) with norm="mean". The prompts of a batch run once; their
KV cache is then repeated for each candidate row, so a candidate costs only its own tokens.
"""

import torch
from transformers import DynamicCache

from common.prompt import SEP

LOGIT_BUDGET = 1 << 27  # float32 logits held at once by a chunk of candidate rows (512 MiB)


def pad_left(seqs, pad_id):
    """Left-padded input ids and attention mask for a list of token id lists."""
    width = max(len(s) for s in seqs)
    ids = torch.full((len(seqs), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(seqs), width), dtype=torch.long)
    for i, s in enumerate(seqs):
        if s:
            ids[i, width - len(s):] = torch.tensor(s, dtype=torch.long)
            mask[i, width - len(s):] = 1
    return ids, mask


def pad_right(seqs, pad_id):
    width = max(len(s) for s in seqs)
    ids = torch.full((len(seqs), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(seqs), width), dtype=torch.long)
    for i, s in enumerate(seqs):
        ids[i, :len(s)] = torch.tensor(s, dtype=torch.long)
        mask[i, :len(s)] = 1
    return ids, mask


def candidate_tokens(tokenizer, title):
    """The continuation whose likelihood is the candidate's score."""
    return tokenizer.encode(title + SEP, add_special_tokens=False)


def _run_prompts(model, prompts, pad_id):
    """Prompt forward pass: (last-position log-probs, legacy cache, mask)."""
    device = model.device
    ids, mask = pad_left(prompts, pad_id)
    pos = (mask.cumsum(-1) - 1).clamp(min=0)
    out = model(input_ids=ids.to(device), attention_mask=mask.to(device), position_ids=pos.to(device),
                use_cache=True, logits_to_keep=1)
    first = torch.log_softmax(out.logits[:, -1].float(), dim=-1)
    cache = out.past_key_values
    legacy = cache.to_legacy_cache() if hasattr(cache, "to_legacy_cache") else cache
    return first, legacy, mask.to(device)


def _continuation_mask(prompt_mask, width, dtype):
    """Additive 4D mask (rows, 1, width, prompt + width): prompt padding hidden, continuation causal.

    Built here once rather than by the model from a 2D mask (several passes over the same size).
    Right padding of the continuations needs no mask: a real token never looks to its right.
    """
    rows, plen = prompt_mask.shape
    low = torch.finfo(dtype).min
    out = torch.empty((rows, 1, width, plen + width), dtype=dtype, device=prompt_mask.device)
    out[:, 0, :, :plen] = ((1 - prompt_mask.to(dtype)) * low)[:, None, :]
    causal = torch.full((width, width), low, dtype=dtype, device=prompt_mask.device).triu(1)
    out[:, 0, :, plen:] = causal
    return out


def _score_rows(model, first, legacy, mask, rows, pad_id):
    """Summed log-probs and token counts of (prompt index, tokens) rows, reusing the prompt cache."""
    device = model.device
    b_idx = torch.tensor([b for b, _ in rows], device=device)
    cont, cmask = (t.to(device) for t in pad_right([toks for _, toks in rows], pad_id))
    cache = DynamicCache.from_legacy_cache(
        tuple((k.index_select(0, b_idx), v.index_select(0, b_idx)) for k, v in legacy))
    full_mask = _continuation_mask(mask.index_select(0, b_idx), cont.shape[1], first.dtype)
    start = mask.sum(1).index_select(0, b_idx)
    pos = start[:, None] + torch.arange(cont.shape[1], device=device)[None, :]
    out = model(input_ids=cont, attention_mask=full_mask, position_ids=pos, past_key_values=cache,
                use_cache=True)
    logp = torch.log_softmax(out.logits[:, :-1].float(), dim=-1)
    tok_lp = torch.cat([first.index_select(0, b_idx).gather(1, cont[:, :1]),
                        logp.gather(2, cont[:, 1:, None]).squeeze(-1)], dim=1)
    return (tok_lp * cmask).sum(1).cpu(), cmask.sum(1).cpu()


@torch.no_grad()
def score_candidates(model, tokenizer, prompts, candidates, norm="sum"):
    """Scores per prompt, one per candidate in the given order.

    Args:
        prompts: token id lists (chat template applied, generation prompt added).
        candidates: one list of titles per prompt.
        norm: "sum" (total log-likelihood) or "mean" (per token).
    """
    pad_id = tokenizer.pad_token_id
    first, legacy, mask = _run_prompts(model, prompts, pad_id)
    rows = [(b, candidate_tokens(tokenizer, t)) for b, titles in enumerate(candidates) for t in titles]
    vocab = first.shape[-1]
    longest = max(len(toks) for _, toks in rows)
    chunk = max(1, LOGIT_BUDGET // (longest * vocab))
    sums, counts = [], []
    for i in range(0, len(rows), chunk):
        s, n = _score_rows(model, first, legacy, mask, rows[i:i + chunk], pad_id)
        sums.append(s)
        counts.append(n)
    scores = torch.cat(sums)
    if norm == "mean":
        scores = scores / torch.cat(counts)
    out, i = [], 0
    for titles in candidates:
        out.append(scores[i:i + len(titles)].tolist())
        i += len(titles)
    return out


def rank(titles, scores):
    """Titles and scores, best first; equal scores keep candidate order."""
    order = sorted(range(len(titles)), key=lambda i: (-scores[i], i))
    return [titles[i] for i in order], [scores[i] for i in order]
