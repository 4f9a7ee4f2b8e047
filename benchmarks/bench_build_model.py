"""Does the built base "know the products"? Reads a model folder, a test file and an items file; prints figures.

Ranks each test user's 30 candidates by the base model's likelihood of the candidate title after the
user's last history titles in the pre-training format ("h1||...||hk||<candidate>"), and prints HR@1 and
NDCG@5 next to random order and popularity (train_count) on the same users. Writes nothing.

    python -m benchmarks.bench_build_model --model models/tiny-qwen2 --test-file testdata/beauty.jsonl \
        --items traindata/beauty.items.jsonl [--users 100] [--history 5]
"""

import argparse
import math
import random
import time

import torch
from tqdm import tqdm
from transformers import AutoModelForCausalLM, AutoTokenizer

from common.cli import UserError, run_main
from common.io import read_jsonl
from common.prompt import SEP, parse_user_prompt, sample_parts, split_titles


def candidate_logprobs(model, tok, history, candidates):
    """Sum of log p(candidate tokens | 'h1||...||hk||') for each candidate, one padded batch."""
    prefix = tok(SEP.join(history) + SEP, add_special_tokens=False).input_ids
    conts = [tok(c, add_special_tokens=False).input_ids + [tok.convert_tokens_to_ids("<|endoftext|>")]
             for c in candidates]
    width = len(prefix) + max(len(c) for c in conts)
    ids = torch.full((len(conts), width), tok.pad_token_id)
    mask = torch.zeros_like(ids)
    for i, c in enumerate(conts):
        ids[i, :len(prefix) + len(c)] = torch.tensor(prefix + c)
        mask[i, :len(prefix) + len(c)] = 1
    with torch.no_grad():
        logp = model(input_ids=ids, attention_mask=mask).logits.float().log_softmax(-1)
    scores = []
    for i, c in enumerate(conts):
        pos = torch.arange(len(prefix) - 1, len(prefix) - 1 + len(c))
        scores.append(logp[i, pos, torch.tensor(c)].sum().item())
    return scores


def rank_of(truth, scores, candidates):
    order = sorted(range(len(candidates)), key=lambda i: -scores[i])
    return [candidates[i] for i in order].index(truth) + 1


def summary(ranks):
    hr1 = sum(r == 1 for r in ranks) / len(ranks)
    ndcg5 = sum(1 / math.log2(r + 1) for r in ranks if r <= 5) / len(ranks)
    return f"HR@1 {hr1:.3f}  NDCG@5 {ndcg5:.3f}"


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", required=True)
    p.add_argument("--test-file", required=True)
    p.add_argument("--items", required=True)
    p.add_argument("--users", type=int, default=100)
    p.add_argument("--history", type=int, default=5)
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)
    rows = read_jsonl(args.test_file, what="test file")[:args.users]
    counts = {r["title"]: r.get("train_count", 0) for r in read_jsonl(args.items, what="items file")}
    if not rows:
        raise UserError(f"no test lines in {args.test_file}")
    tok = AutoTokenizer.from_pretrained(args.model)
    model = AutoModelForCausalLM.from_pretrained(args.model).eval()
    rng = random.Random(args.seed)
    ranks = {"model likelihood": [], "popularity": [], "random": []}
    start = time.time()
    for lineno, row in enumerate(tqdm(rows, desc="scoring", mininterval=2), 1):
        _, user, answer = sample_parts(row, lineno)
        history, cands = parse_user_prompt(user)
        truth = split_titles(answer)[0]
        ranks["model likelihood"].append(rank_of(truth, candidate_logprobs(model, tok, history[-args.history:], cands), cands))
        ranks["popularity"].append(rank_of(truth, [counts.get(c, 0) + 1e-3 * rng.random() for c in cands], cands))
        ranks["random"].append(rank_of(truth, [rng.random() for _ in cands], cands))
    print(f"{len(rows)} users, {len(cands)} candidates, last {args.history} history titles, {time.time() - start:.0f}s")
    for name, r in ranks.items():
        print(f"  {name:17s} {summary(r)}")
    return 0


if __name__ == "__main__":
    run_main(main)
