"""Constrained mode's masks as tensors (inference/constraint_masks.py) against the reference automaton
(inference/constrained.py, one Tracker per row on the host): the same logits every step, on random automata
that often share prefixes or are ambiguous (those rows keep the reference), on real Sports candidates with the
real Qwen2 tokenizer, and through the hf backend: the same outputs."""

import random

import pytest
import torch
from transformers import AutoTokenizer

from common.prompt import parse_user_prompt, sample_parts
from inference.constrained import CandidateConstraint
from inference.constraint_masks import BatchConstraints, prefix_free
from inference.examples import read_tests
from inference.hf_backend import CandidateLogits, HFRunner
from inference.loading import load_model, load_tokenizer
from inference.records import prompt_ids
from tests.helpers import REAL_TOKENIZER, real_prompts

EOS, PAD, VOCAB = 9, 0, 12


def test_prefix_free():
    assert prefix_free([[1, 2], [1, 3], [2]])
    assert not prefix_free([[1, 2], [1, 2, 3]])
    assert not prefix_free([[4], [1, 2], [4]])  # equal sequences
    assert not prefix_free([[1, 2, 3], [5], [1]])
    assert prefix_free([[7]])


def walk(constraints, width, rng, vocab, eos, pad, steps=None):
    """Greedy decoding over random scores with both processors side by side; asserts the masked scores are
    equal every step. Returns the generated ids per row and the tensor processor."""
    rows = len(constraints)
    ids = torch.full((rows, width), pad)
    python = CandidateLogits(constraints, width, "python")
    tensor = CandidateLogits(constraints, width, "tensor")
    done = torch.zeros(rows, dtype=torch.bool)
    limit = steps or max(c.max_tokens for c in constraints)
    for _ in range(limit):
        scores = torch.rand(rows, vocab, generator=torch.Generator().manual_seed(rng.randrange(2**31)))
        expected, got = python(ids, scores.clone()), tensor(ids, scores.clone())
        assert torch.equal(got, expected)
        token = torch.where(done, pad, got.argmax(1))
        done |= token == eos
        ids = torch.cat([ids, token[:, None]], 1)
        if done.all():
            break
    tensor.check()
    return ids[:, width:], tensor


def random_constraint(rng):
    """Candidates over a 6-token alphabet: short sequences, so shared prefixes, titles that are token-prefixes
    of others and ambiguous readings are common; "title||" is sometimes the title plus a separator token."""
    n = rng.randint(1, 7)
    last = [[rng.randint(1, 6) for _ in range(rng.randint(1, 3))] for _ in range(n)]
    mid = [seq + [7] if rng.random() < 0.7 else [rng.randint(1, 7) for _ in range(rng.randint(1, 4))]
           for seq in last]
    if rng.random() < 0.5:  # the first title reads as the others do (Qwen2, Llama-3)
        return CandidateConstraint.from_tokens(mid, last, EOS, k=rng.randint(1, 5))
    first_last = [[8] + seq if rng.random() < 0.5 else seq for seq in last]  # "▁Title" first (SentencePiece)
    first_mid = [seq + [7] for seq in first_last]
    return CandidateConstraint.from_tokens(mid, last, EOS, rng.randint(1, 5), first_mid, first_last)


def test_random_automata_give_the_reference_masks():
    rng = random.Random(0)
    exact = fallback = finished = 0
    for _ in range(150):
        constraints = [random_constraint(rng) for _ in range(rng.randint(1, 6))]
        ids, tensor = walk(constraints, rng.randint(0, 3), rng, VOCAB, EOS, PAD)
        fallback += len(tensor.batch.fallback)
        exact += len(constraints) - len(tensor.batch.fallback)
        for c, row in zip(constraints, ids.tolist()):
            if EOS in row:
                finished += 1
                titles = c.parse(row[:row.index(EOS) + 1])
                assert titles is not None and len(titles) == c.k == len(set(titles))
    assert exact > 200 and fallback > 50  # both kinds of row, mixed in batches
    assert finished == exact + fallback


def test_dead_end_is_an_error():
    c = CandidateConstraint.from_tokens([[1, 7], [2, 7]], [[1], [2]], EOS, k=2)
    batch = BatchConstraints([c], 0, "cpu")
    batch.mask(torch.tensor([[3]]), torch.zeros(1, VOCAB))  # 3 is not allowed first
    with pytest.raises(RuntimeError, match="dead end"):
        batch.check()


def test_real_candidates_with_the_real_tokenizer(shared_data):
    """32 real Sports prompts' candidates (some titles of over a thousand tokens) and Qwen2's 152,064 logits:
    the same masked scores for 100 steps."""
    tok = AutoTokenizer.from_pretrained(str(REAL_TOKENIZER))
    samples = real_prompts(str(shared_data), n=32, category="Sports_and_Outdoors")
    cache = {}
    constraints = [CandidateConstraint(parse_user_prompt(sample_parts(s)[1])[1], tok, tok.eos_token_id, 5, cache)
                   for s in samples]
    ids, _ = walk(constraints, 4, random.Random(1), 152064, tok.eos_token_id, tok.pad_token_id, steps=100)
    finished = [row[:row.index(tok.eos_token_id) + 1] for row in ids.tolist() if tok.eos_token_id in row]
    assert len(finished) > 20
    for c, row in zip(constraints, ids.tolist()):
        if tok.eos_token_id in row:
            assert len(set(c.parse(row[:row.index(tok.eos_token_id) + 1]))) == 5


def test_hf_backend_outputs_equal_the_reference(real_test_file, varied_model_dir):
    tok = load_tokenizer(str(varied_model_dir))
    model = load_model(str(varied_model_dir), (), "cpu", "float32", tok)
    examples = read_tests(str(real_test_file), "constrained")
    for ex in examples:
        ex["prompt_ids"] = prompt_ids(tok, ex["system"], ex["user"])
    examples.sort(key=lambda ex: len(ex["prompt_ids"]))
    out = {masks: HFRunner(model, tok, "constrained", batch_size=4, constraint_masks=masks)(examples)
           for masks in ("python", "tensor")}
    assert out["tensor"] == out["python"]
    assert all(len(r["output"].split("||")) == 5 for r in out["tensor"])
