"""Score mode: rank every candidate by the model's log-likelihood of it as the answer's first item.

Each candidate c gets its token log-probs lp_j = log p(u_j | prompt, u_<j), u = tokens of c + "||"
(the separator marks where the first item ends); a score rule (SCORE_RULES, the `norm` argument)
turns them into one number:
  sum         sum_j lp_j                      (the likelihood; long titles pay for every token)
  mean        sum_j lp_j / len(u)             (per token)
  calibrated  sum_j lp_j - sum_j lp0_j        (log p(c | prompt) - log p(c | neutral prompt))
where lp0 are the same candidate's log-probs after the neutral prompt: the same prompt with an
empty purchase history (neutral_prompt_ids). The calibrated score measures how much the user's
history raises the candidate, cancelling what every prompt gives it (its length, its words' prior,
its place in the candidate list). Rules are small functions of per-token log-probs, so any backend
that returns those (transformers here, vLLM's prompt_logprobs) computes the same score.

A prompt runs once. Then all its candidates are packed end to end into one continuation that reuses
the prompt's KV cache (nothing is copied per candidate): a 4D attention mask lets each candidate token
see the prompt and the earlier tokens of its own candidate only, and position ids restart at the
prompt's end for every candidate, so each candidate is scored exactly as if it followed the prompt
alone. Prompts are scored one at a time: a prompt plus its packed candidates (about 1,400 tokens)
already fills the matrix products, and unpadded prompts keep the fast causal attention path (on CPU,
padded batches measured slower).
"""

from typing import Callable, NamedTuple

import torch

from common.prompt import CANDIDATES_OPEN, HISTORY_OPEN, SEP

LOGIT_BUDGET = 1 << 27  # float32 logits held at once (512 MiB)


class ScoreRule(NamedTuple):
    fn: Callable  # (lp, lp0) -> float; lp, lp0: 1-D float tensors of one candidate's token log-probs
    needs_neutral: bool  # lp0 (the log-probs after the neutral prompt) is computed only when True


def rule_sum(lp, lp0=None):
    return float(lp.sum())


def rule_mean(lp, lp0=None):
    return float(lp.sum() / len(lp))


def rule_calibrated(lp, lp0):
    return float(lp.sum() - lp0.sum())


SCORE_RULES = {
    "sum": ScoreRule(rule_sum, False),
    "mean": ScoreRule(rule_mean, False),
    "calibrated": ScoreRule(rule_calibrated, True),
}


def neutral_prompt_ids(tokenizer, prompt_ids):
    """The same prompt with an empty purchase history (decoded, cut, encoded again)."""
    text = tokenizer.decode(prompt_ids, skip_special_tokens=False, clean_up_tokenization_spaces=False)
    start = text.find(HISTORY_OPEN)
    end = text.rfind(CANDIDATES_OPEN)
    if start < 0 or end < start + len(HISTORY_OPEN):
        raise ValueError("the prompt is not a WeaveRec prompt: no purchase history to leave out")
    neutral = text[:start + len(HISTORY_OPEN)] + text[end:]
    return tokenizer.encode(neutral, add_special_tokens=False)


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


def candidate_tokens(tokenizer, title):
    """The continuation whose likelihood is the candidate's score."""
    return tokenizer.encode(title + SEP, add_special_tokens=False)


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


def _token_logprobs(model, prompt, token_lists):
    """Each candidate continuation's token log-probs after one prompt: a list of 1-D tensors."""
    device = model.device
    out = model(input_ids=torch.tensor([prompt], device=device), use_cache=True, logits_to_keep=1)
    first = torch.log_softmax(out.logits[0, -1].float(), dim=-1)
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
        logp = torch.log_softmax(head(hidden[q0:q1]).float(), dim=-1)
        prev = logp.gather(1, ids[q0 + 1:q1 + 1, None]).squeeze(-1)
        tok_lp[q0 + 1:q1 + 1] = torch.where(off[q0 + 1:q1 + 1] > 0, prev, tok_lp[q0 + 1:q1 + 1])
    return list(torch.split(tok_lp.cpu(), [len(t) for t in token_lists]))


@torch.no_grad()
def score_candidates(model, tokenizer, prompts, candidates, norm="sum"):
    """Scores per prompt, one per candidate in the given order.

    Args:
        prompts: token id lists (chat template applied, generation prompt added).
        candidates: one list of titles per prompt.
        norm: a SCORE_RULES name: "sum" (total log-likelihood), "mean" (per token) or
            "calibrated" (minus the log-likelihood after the neutral prompt).
    """
    if norm not in SCORE_RULES:
        raise ValueError(f"unknown score rule {norm!r} (known: {', '.join(SCORE_RULES)})")
    rule = SCORE_RULES[norm]
    out = []
    for prompt, titles in zip(prompts, candidates):
        tokens = [candidate_tokens(tokenizer, t) for t in titles]
        lps = _token_logprobs(model, prompt, tokens)
        lp0s = (_token_logprobs(model, neutral_prompt_ids(tokenizer, prompt), tokens)
                if rule.needs_neutral else [None] * len(tokens))
        out.append([rule.fn(lp, lp0) for lp, lp0 in zip(lps, lp0s)])
    return out


def rank(titles, scores):
    """Titles and scores, best first; equal scores keep candidate order."""
    order = sorted(range(len(titles)), key=lambda i: (-scores[i], i))
    return [titles[i] for i in order], [scores[i] for i in order]
