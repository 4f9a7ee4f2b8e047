"""Fixtures shared by the tests: the real data folder, small random Qwen2 models with a tokenizer, and real
Beauty training data with a tiny base model built from it by the build stage."""

import ast
import gzip
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = REPO.parent / "shared" / "data" / "amazon2014"


@pytest.fixture(scope="session")
def shared_data():
    """../shared/data/amazon2014 (the real Amazon 2014 files); CI has it at the same path."""
    if not SHARED_DATA.is_dir():
        pytest.fail(f"real data folder missing: {SHARED_DATA}")
    return SHARED_DATA


def real_titles(n=2000, category="Beauty"):
    """The first n titles of a real meta file (Python literals, parsed without eval)."""
    titles = []
    with gzip.open(SHARED_DATA / f"meta_{category}.json.gz", "rt", encoding="utf-8") as f:
        for line in f:
            title = ast.literal_eval(line).get("title")
            if title:
                titles.append(title)
            if len(titles) >= n:
                break
    return titles


@pytest.fixture(scope="session")
def random_model_dir(tmp_path_factory):
    """A tiny randomly initialised Qwen2 model folder with a BPE tokenizer trained on real titles.

    Not the embedded default (that one is pre-trained); this is for tests of merging, inference
    and metrics that need a real model quickly.
    """
    from common.prompt import CANDIDATES_CLOSE, CANDIDATES_OPEN, HISTORY_OPEN, SYSTEM
    from models.tiny import init_model, save_model, tiny_config
    from models.tokenizer import train_tokenizer

    texts = real_titles() + [SYSTEM, HISTORY_OPEN, CANDIDATES_OPEN, CANDIDATES_CLOSE, "||"]
    tok = train_tokenizer(texts, vocab_size=1024)
    model = init_model(tiny_config(tok, hidden_size=64, num_layers=2, num_heads=4, num_kv_heads=2), seed=0)
    out = tmp_path_factory.mktemp("random-tiny-qwen2")
    save_model(model, tok, out)
    return out


def build_varied_model(random_model_dir, out):
    """The random tiny Qwen2 re-initialised with larger weights (std 0.2), so that greedy outputs
    differ between prompts (at std 0.02 every prompt just repeats one token)."""
    import torch
    from transformers import AutoConfig, AutoTokenizer, Qwen2ForCausalLM

    config = AutoConfig.from_pretrained(random_model_dir)
    config.initializer_range = 0.2
    torch.manual_seed(0)
    Qwen2ForCausalLM(config).save_pretrained(out, safe_serialization=True)
    AutoTokenizer.from_pretrained(random_model_dir).save_pretrained(out)
    return out


def write_real_prompts(shared_data, path):
    """12 WeaveRec test prompts of real Beauty users (3-item histories, 30 candidates, some with
    '|', digits, '&' and non-ASCII titles)."""
    from benchmarks.bench_inference import real_prompts
    from common.io import write_jsonl_atomic

    write_jsonl_atomic(path, real_prompts(shared_data, n=12, history=3))
    return path


@pytest.fixture(scope="session")
def varied_model_dir(random_model_dir, tmp_path_factory):
    return build_varied_model(random_model_dir, tmp_path_factory.mktemp("varied-tiny-qwen2"))


@pytest.fixture(scope="session")
def real_test_file(shared_data, tmp_path_factory):
    return write_real_prompts(shared_data, tmp_path_factory.mktemp("inference-data") / "beauty.jsonl")


def process_domain(shared_data, train_dir, test_dir, domain="beauty", train=600, valid=300, users=100):
    """Real traindata/testdata files for `domain`, made by the data stage as a user makes them.

    Short prompts (5 history titles, 10 candidates: about 400 tokens) keep LLaMA-Factory runs quick.
    """
    cmd = [sys.executable, "-m", "data_process.process", "--raw-dir", str(shared_data), "--domain", domain,
           "--train-dir", str(train_dir), "--test-dir", str(test_dir), "--train-samples", str(train),
           "--valid-samples", str(valid), "--test-users", str(users), "--history", "5", "--candidates", "10"]
    proc = subprocess.run(cmd, check=False, cwd=REPO, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr


# session fixtures of tests/test_models.py and tests/test_train_lora.py: made once per run
@pytest.fixture(scope="session")
def beauty_dir(shared_data, tmp_path_factory):
    train_dir = tmp_path_factory.getbasetemp() / "beauty-traindata"
    if not (train_dir / "dataset_info.json").is_file():
        process_domain(shared_data, train_dir, tmp_path_factory.getbasetemp() / "beauty-testdata")
    return train_dir


def build(train_dir, out, *extra):
    """Run the build stage as a user does; return the finished process."""
    cmd = [sys.executable, "-m", "models.build_base", "--train-dir", str(train_dir), "--domains", "beauty",
           "--out", str(out), "--no-progress", *extra]
    return subprocess.run(cmd, check=False, cwd=REPO, capture_output=True, text=True, timeout=600)


# a base small enough to build in seconds, pre-trained enough (loss about 7.6 -> 4.2) for a LoRA to learn on
SMALL = ["--vocab-size", "2048", "--hidden-size", "64", "--steps", "200", "--batch-size", "16", "--block-size", "128",
         "--lr", "1e-2", "--threads", "1"]


@pytest.fixture(scope="session")
def built_model(beauty_dir, tmp_path_factory):
    out = tmp_path_factory.getbasetemp() / "built" / "tiny-qwen2"
    if not (out / "build_info.json").is_file():
        proc = build(beauty_dir, out, *SMALL)
        assert proc.returncode == 0, proc.stderr
    return out


@pytest.fixture(autouse=True)
def _isolated_hf_cache(tmp_path, monkeypatch):
    """Each test gets its own datasets cache (a stale shared cache breaks LLaMA-Factory loading)."""
    monkeypatch.setenv("HF_DATASETS_CACHE", str(tmp_path / "hf_datasets_cache"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("TOKENIZERS_PARALLELISM", "false")
    yield
