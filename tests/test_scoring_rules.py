"""Score rules of --mode score: each rule equals its formula computed from plain full forward passes
(no shared KV cache, no packing), and the neutral prompt is the chat template of the same user turn
with an empty history."""

import pytest
import torch

from common.prompt import SYSTEM, parse_user_prompt, user_prompt
from inference.examples import read_tests
from inference.generate import main
from inference.hf_backend import HFRunner
from inference.loading import load_model, load_tokenizer
from inference.records import SCORE_RULES, candidate_tokens, neutral_prompt_ids, prompt_ids
from tests.helpers import REAL_TOKENIZER, gen_args, read_lines


@pytest.fixture(scope="module")
def model_tok(varied_model_dir):
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    tok = load_tokenizer(str(varied_model_dir))
    yield load_model(str(varied_model_dir), (), "cpu", "float32", tok), tok
    torch.set_num_threads(threads)


def direct_logprob(model, prompt, cont):
    """log p(cont | prompt) from one full forward pass over prompt + cont."""
    ids = torch.tensor([prompt + cont])
    with torch.no_grad():
        logp = torch.log_softmax(model(input_ids=ids).logits[0].double(), dim=-1)
    return sum(logp[len(prompt) + j - 1, tok].item() for j, tok in enumerate(cont))


@pytest.mark.parametrize("tokenizer", ["tiny", "qwen2"])
def test_neutral_prompt_is_the_template_of_the_prompt_without_history(model_tok, real_test_file, tokenizer):
    tok = model_tok[1] if tokenizer == "tiny" else load_tokenizer(str(REAL_TOKENIZER))
    for ex in read_tests(str(real_test_file), "score")[:6]:
        history, cands = parse_user_prompt(ex["user"])
        assert history
        assert neutral_prompt_ids(tok, prompt_ids(tok, SYSTEM, ex["user"])) == \
            prompt_ids(tok, SYSTEM, user_prompt([], cands))


def test_each_rule_equals_its_formula(model_tok, real_test_file):
    model, tok = model_tok
    ex = read_tests(str(real_test_file), "score")[0]
    history, cands = parse_user_prompt(ex["user"])
    cands = cands[:8]
    user = user_prompt(history, cands)
    prompt, neutral = prompt_ids(tok, SYSTEM, user), prompt_ids(tok, SYSTEM, user_prompt([], cands))
    example = {"id": 0, "prompt_ids": prompt, "candidates": cands}
    got = {}
    for rule in SCORE_RULES:
        record = HFRunner(model, tok, "score", score_norm=rule)([example])[0]
        got[rule] = dict(zip(record["ranking"], record["scores"]))
    for title in cands:
        cont = candidate_tokens(tok, title)
        lp, lp0 = direct_logprob(model, prompt, cont), direct_logprob(model, neutral, cont)
        assert got["sum"][title] == pytest.approx(lp, abs=1e-4)
        assert got["mean"][title] == pytest.approx(lp / len(cont), abs=1e-4)
        assert got["calibrated"][title] == pytest.approx(lp - lp0, abs=1e-4)
    # the calibrated ranking is not the likelihood's ranking in disguise
    assert sorted(cands, key=lambda t: -got["calibrated"][t]) != sorted(cands, key=lambda t: -got["sum"][t])


def test_cli_writes_calibrated_scores_best_first(varied_model_dir, real_test_file, tmp_path):
    out = tmp_path / "output.jsonl"
    main(gen_args(real_test_file, varied_model_dir, out, "--mode", "score", "--score-norm", "calibrated",
                  "--limit", "3"))
    for row in read_lines(out):
        assert row["scores"] == sorted(row["scores"], reverse=True)
        assert row["output"].split("||") == row["ranking"][:5]
