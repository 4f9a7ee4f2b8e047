"""Decoding modes on real prompts (HF backend): constrained output is always 5 distinct candidates of the
prompt (whatever the tokenizer does at title boundaries) and equals generate with the allowed tokens of
each prompt alone; score ranks equal a direct computation. Runs in both environments."""

import random
import re

import pytest
import torch
from transformers import AutoTokenizer, GenerationConfig

from common.prompt import SEP, split_titles
from inference.constrained import CandidateConstraint
from inference.examples import read_tests
from inference.generate import main
from inference.hf_backend import CandidateLogits, HFRunner
from inference.loading import load_model, load_tokenizer
from inference.records import candidate_tokens, prompt_ids
from tests.helpers import gen_args, read_lines

TRICKY = ["Foo", "Foo Bar", "Foo Bar 2", "Foo|", "|Bar", "Eye Cream| | Age Eye Cream |100%",
          "Crème brûlée ® 3 ½ oz", "naïve 日本語 ~ 1/3 fl.oz.", "Foo", "(Pack of 2) #2101 [Beauty]",
          "Spaced  title\xa0"]


@pytest.fixture(scope="module")
def runner(varied_model_dir):
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    tok = load_tokenizer(str(varied_model_dir))
    yield HFRunner(load_model(str(varied_model_dir), (), "cpu", "float32", tok), tok, "constrained")
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def examples(real_test_file, runner):
    exs = read_tests(str(real_test_file), "score")
    for ex in exs:
        ex["prompt_ids"] = prompt_ids(runner.tok, ex["system"], ex["user"])
    return exs


def test_real_prompts_hold_the_hard_titles(examples):
    titles = {t for ex in examples for t in ex["candidates"]}
    assert any(any(ord(c) > 127 for c in t) for t in titles)
    assert any("|" in t for t in titles)
    assert any(re.search(r"\d", t) for t in titles)


def constrained_tokens(runner, batch):
    """The HF backend's constrained generation of a batch: (constraints, generated ids per prompt)."""
    constraints = runner.constraints(batch)
    gens = runner._generate(batch, max(c.max_tokens for c in constraints),
                            lambda width: CandidateLogits(constraints, width))
    return constraints, gens


def test_constrained_output_is_five_distinct_candidates(runner, examples):
    tok = runner.tok
    for start in range(0, len(examples), 4):
        batch = examples[start:start + 4]
        constraints, gens = constrained_tokens(runner, batch)
        for ex, c, ids in zip(batch, constraints, gens):
            titles = c.parse(ids)
            assert len(titles) == 5 and len(set(titles)) == 5
            assert set(titles) <= set(ex["candidates"])
            # the generated tokens spell exactly the written answer
            assert tok.decode(ids, skip_special_tokens=True) == SEP.join(titles)
        records = runner(batch)
        assert [r["output"] for r in records] == [SEP.join(c.parse(g)) for c, g in zip(constraints, gens)]


def constrained_alone(model, tok, prompt, constraint):
    """Greedy constrained decoding of one prompt by transformers' generate, the allowed tokens given by
    replaying the automaton over what was generated (prefix_allowed_tokens_fn)."""
    def allowed(_, ids):
        states = constraint.start()
        for token in ids[len(prompt):].tolist():
            states = constraint.advance(states, token)
        return constraint.allowed(states)

    config = GenerationConfig(max_new_tokens=constraint.max_tokens, do_sample=False, num_beams=1,
                              eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id,
                              temperature=None, top_p=None, top_k=None)
    with torch.no_grad():
        out = model.generate(input_ids=torch.tensor([prompt]), generation_config=config,
                             prefix_allowed_tokens_fn=allowed)
    return out[0, len(prompt):].tolist()


def test_constrained_batches_equal_generate_with_allowed_tokens(runner, examples):
    """Batches of two left-padded prompts through the backend's logits processor: the tokens of
    transformers' own prefix_allowed_tokens_fn on each prompt alone."""
    tok, batch = runner.tok, examples[:6]
    expected = [constrained_alone(runner.model, tok, ex["prompt_ids"], c)
                for ex, c in zip(batch, runner.constraints(batch))]
    got = []
    for i in range(0, len(batch), 2):
        got += constrained_tokens(runner, batch[i:i + 2])[1]
    assert got == expected
    assert all(ids[-1] == tok.eos_token_id for ids in got)


def random_walk(constraint, rng):
    """Decode with random choices among the allowed tokens; returns (token ids, most live parses)."""
    states, ids, widest = constraint.start(), [], 1
    while constraint.result(states) is None:
        token = rng.choice(constraint.allowed(states))
        ids.append(token)
        states = constraint.advance(states, token)
        widest = max(widest, len(states))
        assert states, "a token the automaton allowed killed every parse"
    assert constraint.allowed(states) == [constraint.eos]
    return ids, constraint.result(states), widest


def test_every_allowed_path_spells_distinct_candidates(random_model_dir):
    tok = AutoTokenizer.from_pretrained(random_model_dir)
    rng = random.Random(0)
    widest = 1
    for k in (5, 3):
        constraint = CandidateConstraint(TRICKY, tok, tok.eos_token_id, k=k)
        for _ in range(300):
            ids, titles, width = random_walk(constraint, rng)
            widest = max(widest, width)
            assert ids[-1] == tok.eos_token_id
            assert len(titles) == k and len(set(titles)) == k and set(titles) <= set(TRICKY)
            assert tok.decode(ids[:-1]) == SEP.join(titles)
            assert len(ids) <= constraint.max_tokens
    print(f"at most {widest} parses were alive at once")


def test_automaton_from_tokens_is_the_same(random_model_dir):
    """What travels to vLLM's engine process (token lists, no tokenizer) rebuilds the same automaton."""
    tok = AutoTokenizer.from_pretrained(random_model_dir)
    built = CandidateConstraint(TRICKY, tok, tok.eos_token_id, k=5)
    spec = built.spec()
    again = CandidateConstraint.from_spec(spec)
    assert (again.mid, again.last, again.first_mid, again.first_last, again.max_tokens) == \
        (built.mid, built.last, built.first_mid, built.first_last, built.max_tokens)
    rng = random.Random(2)
    for _ in range(50):  # the same steps allowed, the same answer (by index)
        states, other = built.start(), again.start()
        while built.result(states) is None:
            allowed = built.allowed(states)
            assert again.allowed(other) == allowed
            token = rng.choice(allowed)
            states, other = built.advance(states, token), again.advance(other, token)
        assert [built.titles[i] for i in again.result(other)] == built.result(states)


def test_shared_title_cache_gives_the_same_automaton(random_model_dir):
    tok = AutoTokenizer.from_pretrained(random_model_dir)
    cache = {}
    CandidateConstraint(TRICKY[:6], tok, tok.eos_token_id, cache=cache)
    again = CandidateConstraint(TRICKY[::-1], tok, tok.eos_token_id, cache=cache)  # hits and misses
    fresh = CandidateConstraint(TRICKY[::-1], tok, tok.eos_token_id)
    assert set(cache) == set(TRICKY)
    assert cache["Foo|"][:2] == (tok.encode("Foo|" + SEP, add_special_tokens=False),
                                 tok.encode("Foo|", add_special_tokens=False))
    assert (again.titles, again.mid, again.last) == (fresh.titles, fresh.mid, fresh.last)
    assert again.max_tokens == fresh.max_tokens


def test_fewer_candidates_than_five(random_model_dir):
    tok = AutoTokenizer.from_pretrained(random_model_dir)
    constraint = CandidateConstraint(["B", "A", "B", "C", " "], tok, tok.eos_token_id)
    _, titles, _ = random_walk(constraint, random.Random(1))
    assert sorted(titles) == ["A", "B", "C"]


def test_free_mode_reports_its_validity_rate(real_test_file, varied_model_dir, tmp_path, capsys):
    out = tmp_path / "output.jsonl"
    main(gen_args(real_test_file, varied_model_dir, out, "--limit", "4", "--max-new-tokens", "24"))
    printed = re.search(r"valid titles ([\d.]+)%", capsys.readouterr().out)
    examples = read_tests(str(real_test_file), "free", 4)
    titles = [(t, ex) for ex, r in zip(examples, read_lines(out)) for t in split_titles(r["output"])]
    rate = sum(t in ex["candidates"] for t, ex in titles) / max(len(titles), 1)
    assert printed and float(printed.group(1)) == pytest.approx(100 * rate, abs=0.05)


def direct_scores(model, tok, prompt_ids, titles):
    """Per-candidate log-likelihoods from full forward passes over prompt + candidate, no cache."""
    seqs = [prompt_ids + candidate_tokens(tok, t) for t in titles]
    width = max(len(s) for s in seqs)
    ids = torch.tensor([s + [tok.pad_token_id] * (width - len(s)) for s in seqs])
    with torch.no_grad():
        logp = torch.log_softmax(model(input_ids=ids).logits.float(), dim=-1)
    out = []
    for row, s in enumerate(seqs):
        positions = range(len(prompt_ids), len(s))
        out.append(sum(logp[row, p - 1, s[p]].item() for p in positions))
    return out


def test_score_mode_equals_direct_computation(runner, examples):
    model, tok = runner.model, runner.tok
    batch = examples[:3]
    records = HFRunner(model, tok, "score")(batch)
    for ex, rec in zip(batch, records):
        assert sorted(rec["ranking"]) == sorted(set(ex["candidates"]))
        assert rec["output"] == SEP.join(rec["ranking"][:5])
        direct = dict(zip(rec["ranking"], direct_scores(model, tok, ex["prompt_ids"], rec["ranking"])))
        assert rec["scores"] == pytest.approx([direct[t] for t in rec["ranking"]], abs=1e-3)
        assert rec["scores"] == sorted(rec["scores"], reverse=True)
        # the ranking is the direct one, up to numerical ties
        by_direct = sorted(rec["ranking"], key=lambda t: -direct[t])
        for a, b in zip(rec["ranking"], by_direct):
            assert a == b or abs(direct[a] - direct[b]) < 1e-3


def test_mean_normalisation_divides_by_token_count(runner, examples):
    ex = examples[0]
    total = HFRunner(runner.model, runner.tok, "score", score_norm="sum")([ex])[0]
    mean = HFRunner(runner.model, runner.tok, "score", score_norm="mean")([ex])[0]
    per_token = dict(zip(mean["ranking"], mean["scores"]))
    for title, score in zip(total["ranking"], total["scores"]):
        n = len(candidate_tokens(runner.tok, title))
        assert per_token[title] == pytest.approx(score / n, abs=1e-4)
