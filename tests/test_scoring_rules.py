"""Score rules of --mode score: each rule equals its formula computed from plain full forward passes
(no shared KV cache, no packing), and the neutral prompt is the chat template of the same user turn
with an empty history."""

import pytest
import torch

from common.prompt import SYSTEM, parse_user_prompt, user_prompt
from inference.generate import SCORE_NORMS, main, read_tests
from inference.loading import load_model, load_tokenizer
from inference.scoring import SCORE_RULES, candidate_tokens, neutral_prompt_ids, score_candidates
from tests.helpers import REAL_TOKENIZER, gen_args, read_lines


@pytest.fixture(scope="module")
def model_tok(varied_model_dir):
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    tok = load_tokenizer(str(varied_model_dir))
    yield load_model(str(varied_model_dir), (), "cpu", "float32", tok), tok
    torch.set_num_threads(threads)


def chat_ids(tok, user):
    messages = [{"role": "system", "content": SYSTEM}, {"role": "user", "content": user}]
    return tok.apply_chat_template(messages, add_generation_prompt=True, tokenize=True)


def direct_logprob(model, prompt, cont):
    """log p(cont | prompt) from one full forward pass over prompt + cont."""
    ids = torch.tensor([prompt + cont])
    with torch.no_grad():
        logp = torch.log_softmax(model(input_ids=ids).logits[0].float(), dim=-1)
    return sum(logp[len(prompt) + j - 1, tok].item() for j, tok in enumerate(cont))


def test_generate_offers_exactly_the_rules_of_scoring():
    assert SCORE_NORMS == list(SCORE_RULES)


@pytest.mark.parametrize("tokenizer", ["tiny", "qwen2"])
def test_neutral_prompt_is_the_template_of_the_prompt_without_history(model_tok, real_test_file, tokenizer):
    tok = model_tok[1] if tokenizer == "tiny" else load_tokenizer(str(REAL_TOKENIZER))
    for ex in read_tests(str(real_test_file), "score")[:6]:
        history, cands = parse_user_prompt(ex["user"])
        assert history
        assert neutral_prompt_ids(tok, chat_ids(tok, ex["user"])) == chat_ids(tok, user_prompt([], cands))


def test_each_rule_equals_its_formula(model_tok, real_test_file):
    model, tok = model_tok
    ex = read_tests(str(real_test_file), "score")[0]
    history, cands = parse_user_prompt(ex["user"])
    cands = cands[:8]
    prompt, neutral = chat_ids(tok, user_prompt(history, cands)), chat_ids(tok, user_prompt([], cands))
    got = {rule: score_candidates(model, tok, [prompt], [cands], rule)[0] for rule in SCORE_RULES}
    for i, title in enumerate(cands):
        cont = candidate_tokens(tok, title)
        lp, lp0 = direct_logprob(model, prompt, cont), direct_logprob(model, neutral, cont)
        assert got["sum"][i] == pytest.approx(lp, abs=1e-3)
        assert got["mean"][i] == pytest.approx(lp / len(cont), abs=1e-4)
        assert got["calibrated"][i] == pytest.approx(lp - lp0, abs=1e-3)
    # the calibrated ranking is not the likelihood's ranking in disguise
    assert sorted(range(8), key=lambda i: -got["calibrated"][i]) != sorted(range(8), key=lambda i: -got["sum"][i])


def test_unknown_rule_is_refused(model_tok):
    model, tok = model_tok
    with pytest.raises(ValueError, match="unknown score rule"):
        score_candidates(model, tok, [[1, 2, 3]], [["a"]], "median")


def test_cli_writes_calibrated_scores_best_first(varied_model_dir, real_test_file, tmp_path):
    out = tmp_path / "output.jsonl"
    main(gen_args(real_test_file, varied_model_dir, out, "--mode", "score", "--score-norm", "calibrated",
                  "--limit", "3"))
    for row in read_lines(out):
        assert row["scores"] == sorted(row["scores"], reverse=True)
        assert row["output"].split("||") == row["ranking"][:5]
