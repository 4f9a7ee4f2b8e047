"""Fixtures shared by the tests: the real data folder, small random Qwen2 models with a tokenizer (and models of
the other supported families: Llama-3, Mistral), and real Beauty training data with a tiny base model built from
it by the build stage."""

import pytest

from tests.helpers import (
    REAL_TOKENIZER,
    SHARED_DATA,
    SMALL,
    build,
    build_family_model,
    build_real_tokenizer_model,
    build_varied_model,
    process_domain,
    real_titles,
    write_real_prompts,
)


@pytest.fixture(scope="session")
def shared_data():
    """../shared/data/amazon2014 (the real Amazon 2014 files); CI has it at the same path."""
    if not SHARED_DATA.is_dir():
        pytest.fail(f"real data folder missing: {SHARED_DATA}")
    return SHARED_DATA


@pytest.fixture(scope="session")
def random_model_dir(tmp_path_factory):
    """A tiny randomly initialised Qwen2 model folder with a BPE tokenizer trained on real titles.

    Not the embedded default (that one is pre-trained); this is for tests of merging, inference
    and metrics that need a real model quickly. Heads of 32 dimensions: vLLM's CPU attention needs >= 32.
    """
    from common.prompt import CANDIDATES_CLOSE, CANDIDATES_OPEN, HISTORY_OPEN, SYSTEM
    from models.tiny import init_model, save_model, tiny_config
    from models.tokenizer import train_tokenizer

    texts = real_titles() + [SYSTEM, HISTORY_OPEN, CANDIDATES_OPEN, CANDIDATES_CLOSE, "||"]
    tok = train_tokenizer(texts, vocab_size=1024)
    model = init_model(tiny_config(tok, hidden_size=64, num_layers=2, num_heads=2, num_kv_heads=1), seed=0)
    out = tmp_path_factory.mktemp("random-tiny-qwen2")
    save_model(model, tok, out)
    return out


@pytest.fixture(scope="session")
def family_model(tmp_path_factory):
    """family (qwen2, llama3, mistral) -> a tiny random model folder of that family (tests.helpers), built once."""
    built = {}

    def get(family):
        if family not in built:
            built[family] = build_family_model(family, tmp_path_factory.mktemp(f"random-tiny-{family}"))
        return built[family]
    return get


@pytest.fixture(scope="session")
def real_tokenizer_model_dir(tmp_path_factory):
    """A tiny random Qwen2 with the real Qwen2-7B-Instruct tokenizer (tests.helpers)."""
    if not REAL_TOKENIZER.is_dir():
        pytest.fail(f"real tokenizer folder missing: {REAL_TOKENIZER}")
    return build_real_tokenizer_model(tmp_path_factory.mktemp("real-tokenizer-tiny-qwen2"))


@pytest.fixture(scope="session")
def varied_model_dir(random_model_dir, tmp_path_factory):
    return build_varied_model(random_model_dir, tmp_path_factory.mktemp("varied-tiny-qwen2"))


@pytest.fixture(scope="session")
def real_test_file(shared_data, tmp_path_factory):
    return write_real_prompts(shared_data, tmp_path_factory.mktemp("inference-data") / "beauty.jsonl")


# session fixtures of tests/test_models.py and tests/test_train_lora.py: made once per run
@pytest.fixture(scope="session")
def beauty_dir(shared_data, tmp_path_factory):
    train_dir = tmp_path_factory.getbasetemp() / "beauty-traindata"
    if not (train_dir / "dataset_info.json").is_file():
        process_domain(shared_data, train_dir, tmp_path_factory.getbasetemp() / "beauty-testdata")
    return train_dir


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
