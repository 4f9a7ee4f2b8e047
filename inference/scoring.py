"""Score mode: rank every candidate by the model's log-likelihood of it as the answer's first item.

score(c) = sum_j log p(u_j | prompt, u_<j), u = tokens of c + "||" (the separator marks where the
first item ends), or that sum divided by len(u) with --score-norm mean (inference.records).

A prompt runs once. Then all its candidates are packed end to end into one continuation that reuses
the prompt's KV cache (nothing is copied per candidate): a 4D attention mask lets each candidate token
see the prompt and the earlier tokens of its own candidate only, and position ids restart at the
prompt's end for every candidate, so each candidate is scored exactly as if it followed the prompt
alone. Prompts are scored one at a time: a prompt plus its packed candidates (about 1,400 tokens)
already fills the matrix products, and unpadded prompts keep the fast causal attention path (on CPU,
padded batches measured slower).
"""

import torch

LOGIT_BUDGET = 1 << 26  # log-probs held at once, in float64 (512 MiB)


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


def _pack(token_lists):
    """Candidates' tokens end to end: ids, segment (candidate index) and offset in the candidate."""
    ids = torch.tensor([tok for toks in token_lists for tok in toks], dtype=torch.long)
    seg = torch.tensor([c for c, toks in enumerate(token_lists) for _ in toks], dtype=torch.long)
    off = torch.tensor([j for toks in token_lists for j in range(len(toks))], dtype=torch.long)
    return ids, seg, off


def _packed_mask(plen, seg, off, dtype):
    """Additive 4D mask (1, 1, width, plen + width): all of the prompt, then the same candidate's
    tokens up to this one."""
    low = torch.finfo(dtype).min
    width = seg.shape[0]
    out = torch.zeros((1, 1, width, plen + width), dtype=dtype, device=seg.device)
    same = (seg[:, None] == seg[None, :]) & (off[None, :] <= off[:, None])
    out[0, 0, :, plen:] = torch.where(same, 0.0, low).to(dtype)
    return out


def _score_one(model, prompt, token_lists):
    """Summed log-probs and token counts of each candidate continuation of one prompt."""
    device = model.device
    out = model(input_ids=torch.tensor([prompt], device=device), use_cache=True, logits_to_keep=1)
    first = torch.log_softmax(out.logits[0, -1].double(), dim=-1)
    ids, seg, off = (t.to(device) for t in _pack(token_lists))
    dtype = model.get_input_embeddings().weight.dtype
    hidden = model.get_decoder()(
        input_ids=ids[None], attention_mask=_packed_mask(len(prompt), seg, off, dtype),
        position_ids=(len(prompt) + off)[None], past_key_values=out.past_key_values, use_cache=True,
    ).last_hidden_state[0]
    # log p of token i: from the prompt's last position if it starts a candidate, else from i - 1
    tok_lp = first[ids]
    head = model.get_output_embeddings()
    step = max(1, LOGIT_BUDGET // first.shape[-1])
    for q0 in range(0, ids.shape[0] - 1, step):
        q1 = min(ids.shape[0] - 1, q0 + step)
        logp = torch.log_softmax(head(hidden[q0:q1]).double(), dim=-1)
        prev = logp.gather(1, ids[q0 + 1:q1 + 1, None]).squeeze(-1)
        tok_lp[q0 + 1:q1 + 1] = torch.where(off[q0 + 1:q1 + 1] > 0, prev, tok_lp[q0 + 1:q1 + 1])
    sums = torch.zeros(len(token_lists), dtype=torch.float64, device=device).scatter_add_(0, seg, tok_lp)
    return sums.cpu(), torch.tensor([len(t) for t in token_lists], dtype=torch.float32)


@torch.no_grad()
def score_candidates(model, prompts, continuations):
    """Summed log-likelihood of each candidate continuation, per prompt, in the given order.

    Args:
        prompts: token id lists (chat template applied, generation prompt added).
        continuations: per prompt, one token id list per candidate (inference.records.candidate_tokens).
    """
    return [_score_one(model, prompt, conts)[0].tolist() for prompt, conts in zip(prompts, continuations)]
