"""The vLLM backend on its CPU engine (in .venv-vllm; scripts/test.sh runs it there): equal to the HF
backend in float32 in every mode for the base model, a LLaMA-Factory-trained adapter and a stacked merged
adapter (as LoRA requests and merged into the weights); the LoRA rank check; resume after SIGKILL and
the data-parallel join byte-identical to one run; one-line errors. One engine serves the in-process tests."""

import json
import os
import shutil
import signal
import subprocess
import sys
import time

import pytest
from safetensors.torch import load_file, save_file

from common.cli import UserError
from common.procs import descendants, start_time
from inference.examples import read_tests
from inference.hf_backend import HFRunner
from inference.loading import load_model, load_tokenizer
from inference.records import prompt_ids
from tests.helpers import REPO, SMALL, TRAIN_PYTHON, gen_args, make_adapter, merge

pytestmark = pytest.mark.vllm


def run(cmd, **env):
    return subprocess.run(cmd, cwd=REPO, env=dict(os.environ, **env), capture_output=True, text=True,
                          timeout=900, check=False)


@pytest.fixture(scope="module")
def models(beauty_dir, tmp_path_factory):
    """A tiny base built and a LoRA trained on it by LLaMA-Factory in the training environment (.venv),
    plus a stacked WeaveRec merge of that adapter with a random rank-8 one (rank 24)."""
    root = tmp_path_factory.mktemp("vllm-models")
    base, save = root / "base", root / "save"
    proc = run([str(TRAIN_PYTHON), "-m", "models.build_base", "--train-dir", str(beauty_dir), "--domains",
                "beauty", "--out", str(base), "--no-progress", *SMALL])
    assert proc.returncode == 0, proc.stderr[-2000:]
    proc = run(["bash", "scripts/train_lora.sh", "beauty"], PYTHON=str(TRAIN_PYTHON), MODEL=str(base),
               DATA_DIR=str(beauty_dir), SAVE_DIR=str(save),
               TRAIN_ARGS="max_samples=16 num_train_epochs=3 save_steps=1000 learning_rate=1e-2 warmup_ratio=0")
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    other = make_adapter(base, root / "other", seed=7, r=8, alpha=16)
    assert merge("--adapters", save / "beauty", other, "--out", root / "stacked", "--method", "weaverec") == 0
    return {"base": base, "lf": save / "beauty", "stacked": root / "stacked"}


@pytest.fixture(scope="module")
def engine(models):
    from inference.vllm_engine import Engine, cpu_settings

    cpu_settings()
    eng = Engine(str(models["base"]), [], "lora", str(models["base"]), "float32", max_lora_rank=32)
    yield eng
    eng.close()


@pytest.fixture(scope="module")
def examples(real_test_file, models):
    tok = load_tokenizer(str(models["base"]))
    exs = read_tests(str(real_test_file), "score")
    for ex in exs:
        ex["prompt_ids"] = prompt_ids(tok, ex["system"], ex["user"])
    return sorted(exs, key=lambda ex: -len(ex["prompt_ids"]))


KINDS = {"base": [], "lf": ["lf"], "stacked": ["stacked"]}
MODES = ["free", "constrained", "score"]
_hf_cache = {}


def hf_records(models, examples, kind, mode):
    """The HF backend's records (the reference), computed once per kind and mode."""
    if (kind, mode) not in _hf_cache:
        tok = load_tokenizer(str(models["base"]))
        model = load_model(str(models["base"]), [str(models[k]) for k in KINDS[kind]], "cpu", "float32", tok)
        for m in MODES:
            _hf_cache[kind, m] = HFRunner(model, tok, m, max_new_tokens=24, batch_size=4)(examples)
    return _hf_cache[kind, mode]


def vllm_records(engine, models, examples, kind, mode, how="lora"):
    from inference.vllm_backend import VLLMRunner

    engine.how = how
    tok = load_tokenizer(str(models["base"]))
    lora = engine.serve(str(models["base"]), [str(models[k]) for k in KINDS[kind]])
    return VLLMRunner(engine, tok, mode, max_new_tokens=24, lora=lora)(examples)


def assert_same(hf, vl, mode):
    assert [r["id"] for r in hf] == [r["id"] for r in vl]
    if mode != "score":
        assert [r["output"] for r in vl] == [r["output"] for r in hf]
        return
    for a, b in zip(hf, vl):
        assert a["ranking"] == b["ranking"]
        assert max(abs(x - y) for x, y in zip(a["scores"], b["scores"])) < 1e-4


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("kind", list(KINDS))
def test_vllm_equals_hf_as_lora_requests(engine, models, examples, kind, mode):
    hf = hf_records(models, examples, kind, mode)
    assert_same(hf, vllm_records(engine, models, examples, kind, mode), mode)
    if mode == "free":
        assert len({r["output"] for r in hf}) > 1  # outputs depend on the prompt
    if mode == "constrained":
        for ex, rec in zip(examples, hf):
            titles = rec["output"].split("||")
            assert len(set(titles)) == 5 and set(titles) <= set(ex["candidates"])


@pytest.mark.parametrize("kind", ["lf", "stacked"])
def test_vllm_equals_hf_with_adapters_merged_into_the_weights(engine, models, examples, kind):
    for mode in MODES:
        assert_same(hf_records(models, examples, kind, mode),
                    vllm_records(engine, models, examples, kind, mode, how="merge"), mode)


def test_calibrated_scores_equal_hf(engine, models, examples):
    """The calibrated rule needs each candidate's log-likelihood after the neutral prompt too."""
    from inference.vllm_backend import VLLMRunner

    tok = load_tokenizer(str(models["base"]))
    model = load_model(str(models["base"]), [str(models["lf"])], "cpu", "float32", tok)
    hf = HFRunner(model, tok, "score", score_norm="calibrated")(examples)
    engine.how = "lora"
    lora = engine.serve(str(models["base"]), [str(models["lf"])])
    assert_same(hf, VLLMRunner(engine, tok, "score", score_norm="calibrated", lora=lora)(examples), "score")
    assert [r["ranking"] for r in hf] != [r["ranking"] for r in hf_records(models, examples, "lf", "score")]


def test_adapters_change_the_output(models, examples):
    assert hf_records(models, examples, "base", "score") != hf_records(models, examples, "lf", "score")
    assert hf_records(models, examples, "lf", "score") != hf_records(models, examples, "stacked", "score")


def test_lora_rank_limit_is_chosen_from_the_allowed_sizes_and_checked(models, tmp_path):
    from inference.vllm_engine import lora_rank_limit

    assert lora_rank_limit([str(models["lf"])]) == 16
    assert lora_rank_limit([str(models["lf"]), str(models["stacked"])]) == 32  # ranks 16 and 24
    with pytest.raises(UserError, match=r"has rank 24, above the engine's max_lora_rank 16"):
        lora_rank_limit([str(models["stacked"])], 16)
    big = make_adapter(models["base"], tmp_path / "big", seed=1, r=600, targets=["q_proj"])
    with pytest.raises(UserError, match="above vLLM's largest max_lora_rank 512"):
        lora_rank_limit([str(big)])


def cli(*args, python=sys.executable, timeout=600):
    return subprocess.run([str(python), "-m", "inference.generate", *map(str, args)], cwd=REPO,
                          capture_output=True, text=True, timeout=timeout, check=False)


def one_error_line(proc, fragment):
    lines = proc.stderr.strip().splitlines()
    assert proc.returncode == 2 and lines and lines[-1].startswith("error: ") and fragment in lines[-1], \
        proc.stderr[-2000:]
    assert not any("Traceback" in line for line in lines)


def test_bad_input_is_one_line_error_before_the_engine_starts(models, real_test_file, tmp_path):
    out = tmp_path / "o" / "output.jsonl"
    base, test = models["base"], real_test_file
    over = cli(*gen_args(test, base, out, "--backend", "vllm", "--adapter", models["stacked"],
                         "--vllm-adapters", "lora", "--max-lora-rank", "16"))
    one_error_line(over, "has rank 24, above the engine's max_lora_rank 16")
    wrong = make_adapter(base, tmp_path / "wrong", seed=2)
    path = wrong / "adapter_model.safetensors"
    save_file({k: v[:, :8].contiguous() if "lora_A" in k else v for k, v in load_file(path).items()}, path)  # width 8
    one_error_line(cli(*gen_args(test, base, out, "--backend", "vllm", "--adapter", wrong)),
                   "does not match the base model")
    narrow = tmp_path / "narrow"  # heads of 16 dimensions: no CPU attention kernel in vLLM 0.32
    shutil.copytree(base, narrow)
    config = json.loads((narrow / "config.json").read_text())
    (narrow / "config.json").write_text(json.dumps(dict(config, num_attention_heads=4, num_key_value_heads=2)))
    one_error_line(cli(*gen_args(test, narrow, out, "--backend", "vllm")), "heads of 16 dimensions")
    empty = tmp_path / "empty.jsonl"
    empty.write_text("")
    one_error_line(cli(*gen_args(empty, base, out, "--backend", "vllm")), "test file is empty")
    bad = tmp_path / "bad.jsonl"
    bad.write_text(test.read_text().splitlines()[0] + "\n{oops\n")
    one_error_line(cli(*gen_args(bad, base, out, "--backend", "vllm", "--mode", "score")), "bad.jsonl:2: not valid JSON")
    assert not out.exists()


def test_auto_takes_hf_for_a_short_run_on_cpu(models, real_test_file, tmp_path):
    """--backend auto with vLLM installed: a run of a few prompts does not pay for vLLM's engine start."""
    out = tmp_path / "auto" / "output.jsonl"
    proc = cli(*gen_args(real_test_file, models["base"], out, "--backend", "auto", "--mode", "constrained",
                         "--limit", "4"))
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "--backend auto: hf for 4 prompts" in proc.stdout
    assert json.loads(open(str(out) + ".run.json").read())["backend"] == "hf"
    assert count_lines(out) == 4


def count_lines(path):
    return open(path, "rb").read().count(b"\n") if os.path.exists(path) else 0


def test_resume_after_sigkill_and_data_parallel_join_equal_one_run(models, real_test_file, tmp_path):
    """Constrained mode with chunks of 8 prompts (batch size 1): one run; a run killed after its first
    chunk, then resumed; two data-parallel workers (one CPU core each). The same bytes each time."""
    extra = ("--backend", "vllm", "--mode", "constrained", "--batch-size", "1", "--adapter", models["lf"])
    one, killed, parallel = (tmp_path / d / "output.jsonl" for d in ("one", "killed", "parallel"))
    proc = cli(*gen_args(real_test_file, models["base"], one, *extra))
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "wrote" in proc.stdout and "INFO" not in proc.stdout + proc.stderr  # engine logs in the file
    assert os.path.getsize(str(one) + ".vllm.log") > 0

    cmd = [sys.executable, "-m", "inference.generate", *map(str, gen_args(real_test_file, models["base"], killed, *extra))]
    run_ = subprocess.Popen(cmd, cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    progress, deadline = str(killed) + ".progress", time.time() + 300
    while time.time() < deadline and run_.poll() is None and count_lines(progress) < 8:
        time.sleep(0.01)
    assert run_.poll() is None, "the run ended before it could be killed"
    engine = [(pid, start_time(pid)) for pid in descendants(run_.pid)]
    assert engine, "the run has no engine process"
    os.kill(run_.pid, signal.SIGKILL)
    run_.wait()
    assert not killed.exists() and count_lines(progress) == 8
    # vLLM's engine process outlives a killed parent (vllm-project/vllm#55510); the run's reaper ends it
    deadline = time.time() + 30
    while time.time() < deadline and any(start_time(pid) == start for pid, start in engine):
        time.sleep(0.1)
    assert not any(start_time(pid) == start for pid, start in engine), "the engine outlived its run"
    proc = cli(*gen_args(real_test_file, models["base"], killed, *extra))
    assert proc.returncode == 0 and "(8 resumed)" in proc.stdout, proc.stderr[-3000:]
    assert killed.read_bytes() == one.read_bytes()

    proc = cli(*gen_args(real_test_file, models["base"], parallel, *extra, "--data-parallel", "2"))
    assert proc.returncode == 0 and "joined from 2 workers" in proc.stdout, proc.stderr[-3000:]
    assert parallel.read_bytes() == one.read_bytes()
    assert [r["id"] for r in map(json.loads, parallel.read_text().splitlines())] == list(range(12))
    assert not list(parallel.parent.glob("output.jsonl.shard-*-of-2"))  # parts joined and removed


def test_requests_past_the_models_positions_equal_hf(models, real_test_file, tmp_path):
    """vLLM refuses a request longer than the model's max_position_embeddings, where transformers runs on:
    a copy of the base with 128 positions, prompts of several hundred tokens, constrained mode."""
    short = tmp_path / "short"
    shutil.copytree(models["base"], short)
    config = json.loads((short / "config.json").read_text())
    (short / "config.json").write_text(json.dumps(dict(config, max_position_embeddings=128)))
    outs = {b: tmp_path / b / "output.jsonl" for b in ("hf", "vllm")}
    for backend, out in outs.items():
        proc = cli(*gen_args(real_test_file, short, out, "--backend", backend, "--mode", "constrained",
                             "--limit", "4"))
        assert proc.returncode == 0, proc.stderr[-3000:]
    assert "beyond the model's 128 positions" in open(str(outs["vllm"]) + ".vllm.log").read()
    records = {b: [json.loads(line) for line in out.read_text().splitlines()] for b, out in outs.items()}
    assert records["vllm"] == records["hf"] and len(records["hf"]) == 4
    assert all(len(set(r["output"].split("||"))) == 5 for r in records["hf"])
