"""What both backends share: the prompt's token ids and the stop tokens (common/chat.py, for every base-model
family), the candidate continuations and the output records, so that hf and vllm write the same bytes for the
same predictions."""

from common.chat import prompt_ids, stop_ids  # noqa: F401  (the backends import them from here)
from common.prompt import CANDIDATES_OPEN, HISTORY_OPEN, SEP, TOP_K
from inference.constrained import unique_titles

# score mode's rules (--score-norm), from each candidate's summed log-likelihood s = sum_j lp_j,
# lp_j = log p(u_j | prompt, u_<j), its token count n, and s0, the same sum after the neutral prompt:
#   sum         s           (the likelihood; long titles pay for every token)
#   mean        s / n       (per token)
#   calibrated  s - s0      (log p(c | prompt) - log p(c | neutral prompt): what the user's history adds,
#                            cancelling what every prompt gives the candidate: its length, its words' prior,
#                            its place in the list)
SCORE_RULES = {
    "sum": lambda s, n, s0: s,
    "mean": lambda s, n, s0: s / n,
    "calibrated": lambda s, n, s0: s - s0,
}
NEEDS_NEUTRAL = {"calibrated"}


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


def neutral_prompt_ids(tokenizer, ids):
    """The neutral prompt of the calibrated rule: the same prompt with an empty purchase history
    (decoded, the history cut out, encoded again: the chat template of the same user turn without it)."""
    text = tokenizer.decode(ids, skip_special_tokens=False, clean_up_tokenization_spaces=False)
    start, end = text.find(HISTORY_OPEN), text.rfind(CANDIDATES_OPEN)
    if start < 0 or end < start + len(HISTORY_OPEN):
        raise ValueError("the prompt is not a WeaveRec prompt: no purchase history to leave out")
    return tokenizer.encode(text[:start + len(HISTORY_OPEN)] + text[end:], add_special_tokens=False)


def score_record(example, titles, sums, norm="sum", lengths=None, neutral_sums=None):
    """Titles ranked by the score rule `norm` (SCORE_RULES) of their summed log-likelihoods `sums`
    (token counts `lengths`; `neutral_sums` after the neutral prompt); equal scores keep candidate order."""
    rule = SCORE_RULES[norm]
    lengths = lengths or [None] * len(sums)
    neutral_sums = neutral_sums or [None] * len(sums)
    scores = [rule(s, n, s0) for s, n, s0 in zip(sums, lengths, neutral_sums)]
    order = sorted(range(len(titles)), key=lambda i: (-scores[i], i))
    ranking = [titles[i] for i in order]
    return {"id": example["id"], "output": SEP.join(ranking[:TOP_K]), "ranking": ranking,
            "scores": [round(float(scores[i]), 6) for i in order]}
