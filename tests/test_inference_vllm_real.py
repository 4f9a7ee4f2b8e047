"""Both backends at the real Qwen2-7B tokenizer's title boundaries: on real Beauty prompts whose
candidates include titles with '|', digits, '&' and non-ASCII characters, a tiny random Qwen2 with the
real tokenizer gives the same constrained answers (5 distinct candidates of the prompt) and the same
score rankings on vLLM as on transformers. Runs in .venv-vllm (scripts/test.sh)."""

import re

import pytest

from common.prompt import SEP
from inference.examples import read_tests
from inference.hf_backend import HFRunner
from inference.loading import load_model, load_tokenizer
from inference.records import prompt_ids

pytestmark = pytest.mark.vllm


@pytest.fixture(scope="module")
def setup(real_tokenizer_model_dir, real_test_file):
    from inference.vllm_engine import Engine, cpu_settings

    path = str(real_tokenizer_model_dir)
    tok = load_tokenizer(path)
    exs = read_tests(str(real_test_file), "score")
    for ex in exs:
        ex["prompt_ids"] = prompt_ids(tok, ex["system"], ex["user"])
    cpu_settings()
    engine = Engine(path, [], "merge", path, "float32")
    yield tok, load_model(path, (), "cpu", "float32", tok), engine, exs
    engine.close()


def test_real_prompts_hold_the_hard_titles(setup):
    titles = {t for ex in setup[3] for t in ex["candidates"]}
    assert any(any(ord(c) > 127 for c in t) for t in titles)
    assert any("|" in t for t in titles) and any(re.search(r"\d", t) for t in titles)


@pytest.mark.parametrize("mode", ["constrained", "score"])
def test_backends_agree_at_real_tokenizer_boundaries(setup, mode):
    from inference.vllm_backend import VLLMRunner

    tok, model, engine, exs = setup
    hf = HFRunner(model, tok, mode, batch_size=4)(exs)
    engine.serve(engine.loaded[0], [])
    vl = VLLMRunner(engine, tok, mode)(exs)
    if mode == "constrained":
        assert [r["output"] for r in vl] == [r["output"] for r in hf]
        for ex, rec in zip(exs, hf):
            titles = rec["output"].split(SEP)
            assert len(titles) == 5 and len(set(titles)) == 5 and set(titles) <= set(ex["candidates"])
        return
    for ex, a, b in zip(exs, hf, vl):
        assert a["ranking"] == b["ranking"] and sorted(a["ranking"]) == sorted(set(ex["candidates"]))
        assert max(abs(x - y) for x, y in zip(a["scores"], b["scores"])) < 1e-4
