"""Llama-3 and Mistral base models end to end (in .venv-vllm; scripts/test.sh runs it there): a tiny random model of
each family, a LoRA trained on it by LLaMA-Factory with the template train_lora.sh takes from the model (in the
training environment), merged with another adapter at weights learned by merge.learn_weights, predicted by the
hf backend and by vLLM's CPU engine in the three modes (LoRA requests): equal outputs, as for Qwen2
(tests/test_inference_vllm.py).
The prompts and the base model's logits under transformers 5 equal LLaMA-Factory's prompt ids and transformers
4's logits. One LLaMA-Factory run and one engine per family."""

import json
import os
import subprocess

import pytest
import torch

from common.chat import prompt_ids
from common.cli import run_main
from common.prompt import SEP
from inference.examples import read_tests
from inference.hf_backend import HFRunner
from inference.loading import load_model, load_tokenizer
from tests.helpers import (
    FAMILIES,
    IDS,
    REPO,
    TARGETS,
    TRAIN_PYTHON,
    make_adapter,
    merge,
    read_lines,
)

pytestmark = pytest.mark.vllm

# run by the training environment's Python: build the model, write LLaMA-Factory's prompt ids of the test file and
# transformers 4's logits of the base model
TRAINING_SIDE = r"""
import json, sys, torch
from transformers import AutoModelForCausalLM
from common.prompt import sample_parts
from models.check_lengths import load_template
from tests.helpers import IDS, build_family_model, read_lines
family, base, template, test_file, out = sys.argv[1:]
build_family_model(family, base)
tok, tpl = load_template(base, template)
ids = []
for sample in read_lines(test_file):
    system, user, answer = sample_parts(sample)
    ids.append(tpl.encode_oneturn(tok, [{"role": "user", "content": user}, {"role": "assistant", "content": answer}],
                                  system=system)[0])
with torch.no_grad():
    logits = AutoModelForCausalLM.from_pretrained(base)(IDS).logits
torch.save({"prompt_ids": ids, "logits": logits}, out)
"""
MODES = ["free", "constrained", "score"]
KINDS = {"lf": ["lf"], "learned": ["learned"]}  # the base model alone is Qwen2's case: tests/test_inference_vllm.py


def run(cmd, **env):
    proc = subprocess.run(cmd, cwd=REPO, env=dict(os.environ, **{k: str(v) for k, v in env.items()}),
                          capture_output=True, text=True, timeout=900, check=False)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    return proc


def learn(*args):
    from merge.learn_weights import main

    with pytest.raises(SystemExit) as exit_info:
        run_main(main, [str(a) for a in args])
    return exit_info.value.code


@pytest.fixture(scope="module", params=["llama3", "mistral"])
def trained(request, beauty_dir, real_test_file, tmp_path_factory):
    """family, base, the LLaMA-Factory adapter, the learned merge of it with a random rank-8 adapter (rank 24),
    LLaMA-Factory's prompt ids and transformers 4's logits, the training console."""
    family = request.param
    model_type, template = FAMILIES[family]
    root = tmp_path_factory.mktemp(f"family-{family}")
    base, save, training_side = root / "base", root / "save", root / "training_side.pt"
    run([str(TRAIN_PYTHON), "-c", TRAINING_SIDE, family, base, template, real_test_file, training_side])
    console = run(["bash", "scripts/train_lora.sh", "beauty"], PYTHON=TRAIN_PYTHON, MODEL=base, DATA_DIR=beauty_dir,
                  SAVE_DIR=save, TRAIN_ARGS="max_samples=16 num_train_epochs=1 save_steps=1000 learning_rate=1e-2 "
                                        "warmup_ratio=0").stdout
    other = make_adapter(base, root / "other", seed=7, r=8, alpha=16)
    assert learn("--base-model", base, "--adapters", save / "beauty", other, "--objective", "likelihood", "--prompts",
                 real_test_file, "--limit", "4", "--out-dir", root / "learned_weights", "--steps", "2", "--lr", "0.3",
                 "--holdout", "0", "--threads", "1", "--no-progress") == 0
    weights = root / "learned_weights" / "weights.json"
    assert merge("--adapters", save / "beauty", other, "--weights-file", weights, "--out", root / "learned") == 0
    return {"family": family, "template": template, "model_type": model_type, "base": base, "lf": save / "beauty",
            "learned": root / "learned", "weights": json.loads(weights.read_text()), "console": console,
            **torch.load(training_side)}


@pytest.fixture(scope="module")
def examples(trained, real_test_file):
    tok = load_tokenizer(str(trained["base"]))
    exs = read_tests(str(real_test_file), "score", limit=6)
    for ex in exs:
        ex["prompt_ids"] = prompt_ids(tok, ex["system"], ex["user"])
    return sorted(exs, key=lambda ex: -len(ex["prompt_ids"]))


@pytest.fixture(scope="module")
def engine(trained):
    from inference.vllm_engine import Engine, cpu_settings

    cpu_settings()
    eng = Engine(str(trained["base"]), [], "lora", str(trained["base"]), "float32", max_lora_rank=32)
    yield eng
    eng.close()


def test_trained_with_the_models_template_and_learned_weights_for_its_projections(trained):
    name = {"llama3": "Llama-3", "mistral": "Mistral"}[trained["family"]]
    assert f"template {trained['template']} ({name} chat format, model type {trained['model_type']})" in trained["console"]
    config = json.loads((trained["lf"] / "adapter_config.json").read_text())
    assert sorted(config["target_modules"]) == sorted(TARGETS)
    assert {m.rsplit(".", 1)[-1] for m in trained["weights"]} == set(TARGETS)
    assert json.loads((trained["learned"] / "adapter_config.json").read_text())["r"] == 24


def test_prompts_and_base_model_equal_the_training_environments(trained, real_test_file):
    """transformers 5 (inference here) builds LLaMA-Factory's prompt ids and reads the 4.x config alike
    (Llama-3.1's RoPE scaling included): the same logits."""
    tok = load_tokenizer(str(trained["base"]))
    ours = [prompt_ids(tok, *[m["content"] for m in row["messages"][:2]]) for row in read_lines(real_test_file)]
    assert ours == trained["prompt_ids"]
    model = load_model(str(trained["base"]), (), "cpu", "float32", tok)
    with torch.no_grad():
        torch.testing.assert_close(model(IDS).logits, trained["logits"], rtol=1e-5, atol=1e-5)


_hf_cache = {}


def hf_records(trained, examples, kind, mode):
    key = (trained["family"], kind)
    if key not in _hf_cache:
        tok = load_tokenizer(str(trained["base"]))
        model = load_model(str(trained["base"]), [str(trained[k]) for k in KINDS[kind]], "cpu", "float32", tok)
        _hf_cache[key] = {m: HFRunner(model, tok, m, max_new_tokens=16, batch_size=4)(examples) for m in MODES}
    return _hf_cache[key][mode]


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("kind", list(KINDS))
def test_vllm_equals_hf(trained, engine, examples, kind, mode):
    from inference.vllm_backend import VLLMRunner

    hf = hf_records(trained, examples, kind, mode)
    tok = load_tokenizer(str(trained["base"]))
    lora = engine.serve(str(trained["base"]), [str(trained[k]) for k in KINDS[kind]])
    vl = VLLMRunner(engine, tok, mode, max_new_tokens=16, lora=lora)(examples)
    assert [r["id"] for r in vl] == [r["id"] for r in hf]
    if mode == "score":
        for a, b in zip(hf, vl):
            assert a["ranking"] == b["ranking"]
            assert max(abs(x - y) for x, y in zip(a["scores"], b["scores"])) < 1e-4
    else:
        assert [r["output"] for r in vl] == [r["output"] for r in hf]
    if mode == "free":
        assert len({r["output"] for r in hf}) > 1  # outputs depend on the prompt
    if mode == "constrained":
        for ex, rec in zip(examples, hf):
            titles = rec["output"].split(SEP)
            assert len(set(titles)) == 5 and set(titles) <= set(ex["candidates"])
    if kind == "learned" and mode == "score":  # the merge changes the scores
        assert [r["scores"] for r in hf] != [r["scores"] for r in hf_records(trained, examples, "lf", mode)]
