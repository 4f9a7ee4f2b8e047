"""What learn_weights minimises: prompts with their candidates, differentiable candidate scores, objectives.

A candidate's score is the score mode's (inference/records.py: SCORE_RULES): s(c) = sum_j log p(u_j |
prompt, u_<j) over u = the tokens of `title||` (norm "sum"), that sum / len(u) ("mean"), or s(c) - s0(c)
with s0 the same sum after the neutral prompt, the prompt with an empty history ("calibrated"), so the
objectives see the ranking that `inference.generate --mode score --score-norm <norm>` makes. Over each prompt's K candidates
p_k = softmax(s)_k, and
- likelihood: -log p_true, the cross-entropy of the candidate ranking (the log-likelihood of the
  true next item under the model's distribution over the candidates); needs labelled samples;
- entropy: -sum_k p_k log p_k (AdaMerging, Yang et al., ICLR 2024; RecCocktail); reads no label.
Both are averaged over prompts.

Scoring is one forward pass per batch (learn_weights passes micro-batches: merge/fit_memory.py), with
gradients: each row is a prompt followed by all its candidates packed end to end; a 4D mask lets a
candidate token see the prompt and the earlier tokens of its own candidate only, and its position ids
restart at the prompt's end, so every candidate is scored as if it followed the prompt alone (the packing
of inference/scoring.py, without a KV cache). The LM head runs only where a candidate token is predicted.
"""

from dataclasses import dataclass

import torch

from common.cli import UserError
from common.io import read_jsonl
from common.prompt import SEP, parse_user_prompt, sample_parts, split_titles
from common.chat import prompt_ids
from inference.records import neutral_prompt_ids
from inference.scoring import pack_rows

NORMS = ("sum", "mean", "calibrated")


@dataclass
class Prompt:
    """One prompt's token ids, its candidates' continuation ids, the true candidate's index and the
    neutral prompt's ids (the calibrated rule's reference)."""
    ids: list
    candidates: list
    label: int = None
    neutral_ids: list = None


def unique_titles(titles):
    """Candidates without empties and repeats, first occurrence kept (as the score mode ranks them)."""
    return list(dict.fromkeys(t for t in titles if t.strip()))


def read_prompts(path, tokenizer, labelled, limit=None):
    """Prompts of a WeaveRec jsonl file. With labelled=False the answer is never looked at.

    labelled=True: each line's true item is the first title of its assistant answer, which must be
    one of its candidates; a line without an answer is an error. labelled=False: assistant messages
    are dropped from each line before anything else is read from it.
    """
    rows = read_jsonl(path, "prompt file")[:limit]
    if not rows:
        raise UserError(f"{path}: no samples (empty file)")
    out = []
    for i, row in enumerate(rows, 1):
        if not labelled and isinstance(row, dict) and isinstance(row.get("messages"), list):
            row = {"messages": [m for m in row["messages"] if not _is_answer(m)]}
        try:
            system, user, answer = sample_parts(row, i)
            titles = unique_titles(parse_user_prompt(user)[1])
        except UserError as err:
            raise UserError(f"{path}: {err}") from None
        if len(titles) < 2:
            raise UserError(f"{path}: line {i}: fewer than 2 candidates")
        label = None
        if labelled:
            label = _label(path, i, answer, titles)
        cands = [tokenizer.encode(t + SEP, add_special_tokens=False) for t in titles]
        ids = prompt_ids(tokenizer, system, user)
        out.append(Prompt(ids, cands, label, neutral_prompt_ids(tokenizer, ids)))
    return out


def _is_answer(message):
    return isinstance(message, dict) and message.get("role") == "assistant"


def _label(path, lineno, answer, titles):
    first = split_titles(answer or "")
    if not first:
        raise UserError(f"{path}: line {lineno} has no answer: the likelihood objective needs labelled "
                        "samples (use --objective entropy on unlabeled prompts)")
    stripped = [t.strip() for t in titles]
    if first[0] not in stripped:
        raise UserError(f"{path}: line {lineno}: the answer's first title is not one of its candidates")
    return stripped.index(first[0])


def pack(prompts, device, dtype):
    """One row per prompt, its candidates packed after it (inference/scoring.py: pack_rows, the packing score
    mode runs on a GPU), so the objective sees the scores inference computes."""
    return pack_rows([p.ids for p in prompts], [p.candidates for p in prompts], device, dtype)


def candidate_scores(model, prompts, norm="sum"):
    """Each prompt's candidate scores under the rule `norm`, with gradients: one forward pass (two for
    "calibrated": the prompts, then their neutral prompts); float32, float64 for a float64 model."""
    if norm == "calibrated":
        neutral = [Prompt(p.neutral_ids, p.candidates) for p in prompts]
        return [s - s0 for s, s0 in zip(summed_scores(model, prompts), summed_scores(model, neutral))]
    scores = summed_scores(model, prompts)
    if norm == "mean":
        lengths = [torch.tensor([len(c) for c in p.candidates], dtype=s.dtype, device=s.device)
                   for p, s in zip(prompts, scores)]
        scores = [s / n for s, n in zip(scores, lengths)]
    return scores


def summed_scores(model, prompts):
    """Each prompt's summed candidate log-likelihoods, with gradients, in one forward pass.

    The decoder runs without the LM head; the head then runs only on the hidden states at `src`, the
    positions that predict a candidate token. No full-vocabulary logits are computed at prompt positions
    (model(...) would: a [tokens, vocabulary] matrix, 152,064 floats per token for Qwen2, kept for the
    backward pass), so the head's memory follows the candidate tokens, not the packed row's length."""
    emb = model.get_input_embeddings().weight
    batch = pack(prompts, emb.device, emb.dtype)
    hidden = model.get_decoder()(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"],
                                 position_ids=batch["position_ids"], use_cache=False).last_hidden_state
    h = hidden.reshape(-1, hidden.shape[-1])[batch["src"]]
    logits = model.get_output_embeddings()(h)
    logits = logits.to(torch.promote_types(logits.dtype, torch.float32))  # bf16 -> float32, float64 kept
    tok_lp = logits.gather(1, batch["tok"][:, None]).squeeze(1) - torch.logsumexp(logits, dim=-1)
    scores = tok_lp.new_zeros(len(batch["lengths"])).index_add(0, batch["seg"], tok_lp)
    return list(scores.split(batch["per_prompt"]))


def ranking_cross_entropy(scores, label):
    """-log softmax(s)_label: cross-entropy of the candidate ranking against the true item."""
    return -torch.log_softmax(scores, dim=-1)[label]


def candidate_entropy(scores, label=None):
    """-sum_k p_k log p_k with p = softmax(s); `label` is ignored (it is never read)."""
    logp = torch.log_softmax(scores, dim=-1)
    return -(logp.exp() * logp).sum()


OBJECTIVES = {
    "likelihood": {"fn": ranking_cross_entropy, "labelled": True},
    "entropy": {"fn": candidate_entropy, "labelled": False},
}


def objective(model, prompts, name, norm="sum"):
    """Mean objective over `prompts` (a scalar tensor with gradients)."""
    fn = OBJECTIVES[name]["fn"]
    scores = candidate_scores(model, prompts, norm)
    return torch.stack([fn(s, p.label) for s, p in zip(scores, prompts)]).mean()
