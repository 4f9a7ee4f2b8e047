"""Score mode: rank every candidate by the model's log-likelihood of it as the answer's first item.

score(c) = sum_j log p(u_j | prompt, u_<j), u = tokens of c + "||" (the separator marks where the
first item ends), or that sum divided by len(u) with --score-norm mean (inference.records).

A prompt runs once. Then all its candidates are packed end to end into one continuation that reuses
the prompt's KV cache (nothing is copied per candidate): a 4D attention mask lets each candidate token
see the prompt and the earlier tokens of its own candidate only, and position ids restart at the
prompt's end for every candidate, so each candidate is scored exactly as if it followed the prompt
alone. On CPU prompts are scored one at a time: a prompt plus its packed candidates (about 1,400 tokens)
already fills the matrix products, and unpadded prompts keep the fast causal attention path (padded
batches measured slower). On a GPU one prompt per pass leaves it idle between small launches: there
several prompts, each with its candidates, are packed into the rows of one pass (pack_rows, the packing
merge/objectives.py scores with, there with gradients).
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


def pack_rows(prompts, continuations, device, dtype):
    """One row per prompt: its ids, then every candidate's ids end to end, right-padded to the longest row.

    Returns the additive 4D mask (a candidate token sees the prompt and its own candidate's earlier tokens;
    a prompt token sees the prompt causally), position ids restarting at the prompt's end for every
    candidate, and for each candidate token: "src", the flat row position whose output predicts it,
    "tok", its id, "seg", its candidate's index over all rows; "per_prompt", candidates per row.
    """
    rows = [p + [t for c in conts for t in c] for p, conts in zip(prompts, continuations)]
    width = max(len(r) for r in rows)
    ids = torch.zeros((len(rows), width), dtype=torch.long)
    pos = torch.zeros((len(rows), width), dtype=torch.long)
    allowed = torch.zeros((len(rows), width, width), dtype=torch.bool)
    src, tok, seg, n_cands = [], [], [], 0
    for b, (prompt, conts, row) in enumerate(zip(prompts, continuations, rows)):
        plen = len(prompt)
        ids[b, :len(row)] = torch.tensor(row)
        allowed[b, :plen, :plen] = torch.ones(plen, plen, dtype=torch.bool).tril()
        pos[b, :plen] = torch.arange(plen)
        start = plen
        for cand in conts:
            n = len(cand)
            allowed[b, start:start + n, :plen] = True
            allowed[b, start:start + n, start:start + n] = torch.ones(n, n, dtype=torch.bool).tril()
            pos[b, start:start + n] = torch.arange(plen, plen + n)
            src += [b * width + plen - 1] + [b * width + start + j for j in range(n - 1)]
            tok += cand
            seg += [n_cands] * n
            n_cands += 1
            start += n
        allowed[b, len(row):, 0] = True  # padding rows attend somewhere (their outputs are unused)
    mask = torch.zeros(allowed.shape, dtype=dtype).masked_fill_(~allowed, torch.finfo(dtype).min)
    lengths = [len(c) for conts in continuations for c in conts]
    return {"input_ids": ids.to(device), "attention_mask": mask[:, None].to(device),
            "position_ids": pos.to(device), "src": torch.tensor(src, device=device),
            "tok": torch.tensor(tok, device=device), "seg": torch.tensor(seg, device=device),
            "lengths": torch.tensor(lengths, dtype=torch.float32, device=device),
            "per_prompt": [len(conts) for conts in continuations]}


def _score_packed(model, prompts, continuations):
    """Summed log-probs of every candidate of several prompts in one forward pass (pack_rows); the
    vocabulary's log-softmax only at candidate tokens, in float64, LOGIT_BUDGET entries at a time."""
    batch = pack_rows(prompts, continuations, model.device, model.get_input_embeddings().weight.dtype)
    hidden = model.get_decoder()(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"],
                                 position_ids=batch["position_ids"], use_cache=False).last_hidden_state
    hidden = hidden.reshape(-1, hidden.shape[-1])
    head = model.get_output_embeddings()
    step = max(1, LOGIT_BUDGET // head.weight.shape[0])
    tok_lp = []
    for q0 in range(0, batch["src"].shape[0], step):
        logp = torch.log_softmax(head(hidden[batch["src"][q0:q0 + step]]).double(), dim=-1)
        tok_lp.append(logp.gather(1, batch["tok"][q0:q0 + step, None]).squeeze(-1))
    tok_lp = torch.cat(tok_lp)
    sums = tok_lp.new_zeros(len(batch["lengths"])).index_add_(0, batch["seg"], tok_lp)
    return [s.tolist() for s in sums.cpu().split(batch["per_prompt"])]


@torch.no_grad()
def score_candidates(model, prompts, continuations, batch_size=1):
    """Summed log-likelihood of each candidate continuation, per prompt, in the given order.

    Args:
        prompts: token id lists (chat template applied, generation prompt added).
        continuations: per prompt, one token id list per candidate (inference.records.candidate_tokens).
        batch_size: prompts per forward pass. 1: each prompt once, its candidates reusing its KV cache
            (the fastest on CPU); more: prompts and their candidates packed into rows (pack_rows), one
            pass for the batch, which keeps a GPU busy. The same scores up to float rounding.
    """
    if batch_size == 1:
        return [_score_one(model, prompt, conts)[0].tolist() for prompt, conts in zip(prompts, continuations)]
    out = []
    for i in range(0, len(prompts), batch_size):
        out += _score_packed(model, prompts[i:i + batch_size], continuations[i:i + batch_size])
    return out
