"""What the hf backend does for GPUs, checked on CPU: out of memory, a batch is halved and the run goes on to
the output an uninterrupted run writes; a batch of one that does not fit is one error line; score mode's
packed batches rank as one prompt at a time does; cuDNN's attention is kept out of the forward passes;
--compile's static KV cache generates what the dynamic one does; --batch-size auto; the peak memory in the
summary line."""

import pytest
import torch
from transformers.models.qwen2 import modeling_qwen2

from common.cli import run_main
from inference.examples import read_tests
from inference.generate import main
from inference.hf_backend import HFRunner
from inference.loading import load_model, load_tokenizer
from inference.memory import auto_batch_size, prompt_bytes
from inference.records import prompt_ids
from tests.helpers import gen_args

OOM = ("CUDA out of memory. Tried to allocate 2.00 GiB. GPU 0 has a total capacity of 139.81 GiB of which "
       "1.25 GiB is free.")


@pytest.fixture
def oom_once(monkeypatch):
    """The decoder's forward raises torch.OutOfMemoryError on its `n`-th call (set fail_at), then runs."""
    real = modeling_qwen2.Qwen2Model.forward
    state = {"calls": 0, "fail_at": {1}, "batches": []}

    def forward(self, *args, **kwargs):
        state["calls"] += 1
        ids = kwargs.get("input_ids", args[0] if args else None)
        if ids is not None:
            state["batches"].append(ids.shape[0])
        if state["calls"] in state["fail_at"]:
            raise torch.OutOfMemoryError(OOM)
        return real(self, *args, **kwargs)

    monkeypatch.setattr(modeling_qwen2.Qwen2Model, "forward", forward)
    return state


@pytest.fixture(autouse=True)
def _threads():
    threads = torch.get_num_threads()
    yield
    torch.set_num_threads(threads)


@pytest.mark.parametrize("mode", ["free", "constrained"])
def test_out_of_memory_halves_the_batch_and_writes_the_same_output(real_test_file, varied_model_dir, tmp_path,
                                                                   capsys, monkeypatch, mode):
    args = ("--mode", mode, "--batch-size", "4", "--limit", "8")
    clean = tmp_path / "clean" / "output.jsonl"
    main(gen_args(real_test_file, varied_model_dir, clean, *args))
    capsys.readouterr()
    real = modeling_qwen2.Qwen2Model.forward
    calls = {"n": 0, "widths": []}

    def forward(self, *a, **kw):
        calls["n"] += 1
        calls["widths"].append(kw["input_ids"].shape[0])
        if calls["n"] == 3:  # the third decoding step of the first batch of 4
            raise torch.OutOfMemoryError(OOM)
        return real(self, *a, **kw)

    monkeypatch.setattr(modeling_qwen2.Qwen2Model, "forward", forward)
    hit = tmp_path / "hit" / "output.jsonl"
    main(gen_args(real_test_file, varied_model_dir, hit, *args))
    err = capsys.readouterr().err
    assert [line for line in err.splitlines() if "out of memory" in line] == \
        ["out of memory at batch 4: continuing at batch 2"]
    assert 2 in calls["widths"] and calls["widths"][0] == 4
    assert hit.read_bytes() == clean.read_bytes()


def test_a_batch_of_one_that_does_not_fit_is_one_line(real_test_file, varied_model_dir, tmp_path, capsys, oom_once):
    out = tmp_path / "output.jsonl"
    with pytest.raises(SystemExit) as exc:
        run_main(main, gen_args(real_test_file, varied_model_dir, out, "--mode", "free", "--batch-size", "1",
                                "--limit", "2"))
    assert exc.value.code == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err
    last = err.strip().split("\n")[-1].split("\r")[-1]  # after the cleared progress bar
    assert last.startswith("error: one prompt does not fit in memory")
    assert "(2.00 GiB more asked for, 1.25 GiB free)" in last and "--batch-size 1" in last
    assert not out.exists()


@pytest.fixture(scope="module")
def score_setup(real_test_file, varied_model_dir):
    tok = load_tokenizer(str(varied_model_dir))
    model = load_model(str(varied_model_dir), (), "cpu", "float32", tok)
    examples = read_tests(str(real_test_file), "score", 6)
    for ex in examples:
        ex["prompt_ids"] = prompt_ids(tok, ex["system"], ex["user"])
    return model, tok, examples


@pytest.mark.parametrize("norm", ["sum", "calibrated"])
def test_packed_score_batches_rank_as_one_prompt_at_a_time(score_setup, norm):
    model, tok, examples = score_setup
    one = HFRunner(model, tok, "score", score_norm=norm, score_batch=1)(examples)
    packed = HFRunner(model, tok, "score", score_norm=norm, score_batch=4)(examples)
    assert [r["ranking"] for r in packed] == [r["ranking"] for r in one]
    for a, b in zip(packed, one):
        assert a["scores"] == pytest.approx(b["scores"], rel=1e-5, abs=1e-5)


def test_packed_score_batch_is_halved_out_of_memory(score_setup, oom_once, capsys):
    model, tok, examples = score_setup
    oom_once["fail_at"] = set()
    want = HFRunner(model, tok, "score", score_norm="sum", score_batch=4)(examples)
    oom_once.update(calls=0, batches=[], fail_at={1})
    runner = HFRunner(model, tok, "score", score_norm="sum", score_batch=4)
    got = runner(examples)
    assert "out of memory at batch 4: continuing at batch 2" in capsys.readouterr().err
    assert runner.batch_size == 2 and oom_once["batches"][:2] == [4, 2]
    assert [r["ranking"] for r in got] == [r["ranking"] for r in want]


@pytest.mark.parametrize("choice, cudnn", [("auto", False), ("torch", True)])
def test_cudnn_attention_is_off_while_the_model_runs(score_setup, monkeypatch, choice, cudnn):
    """auto keeps cuDNN's attention (a new plan per shape on Hopper) out of every forward pass."""
    model, tok, examples = score_setup
    seen = []
    real = modeling_qwen2.Qwen2Model.forward

    def forward(self, *a, **kw):
        seen.append(torch.backends.cuda.cudnn_sdp_enabled())
        return real(self, *a, **kw)

    monkeypatch.setattr(modeling_qwen2.Qwen2Model, "forward", forward)
    for mode in ("score", "constrained"):
        HFRunner(model, tok, mode, max_new_tokens=4, batch_size=2, sdpa=choice)(examples[:2])
    assert seen and set(seen) == {cudnn}
    assert torch.backends.cuda.cudnn_sdp_enabled()  # restored afterwards


def test_auto_batch_size_fits_the_free_memory(score_setup):
    model, _, examples = score_setup
    cfg = model.config.to_dict()
    longest = max(len(ex["prompt_ids"]) for ex in examples)
    need = prompt_bytes(cfg, "bfloat16", "constrained", longest, 100, 0)
    assert auto_batch_size(cfg, "bfloat16", "constrained", examples, 100, 10 * need) == 8  # 80% of 10 prompts
    assert auto_batch_size(cfg, "bfloat16", "constrained", examples, 100, need // 3) == 1
    assert auto_batch_size(cfg, "bfloat16", "score", examples, 0, 1 << 40) == 256
    qwen7b = {"hidden_size": 3584, "intermediate_size": 18944, "num_hidden_layers": 28, "num_attention_heads": 28,
              "num_key_value_heads": 4, "vocab_size": 152064}
    # Qwen2-7B, a 1,400-token prompt and 450 answer tokens: 56 KiB of KV cache a token, about 0.2 GB a prompt
    assert 0.1e9 < prompt_bytes(qwen7b, "bfloat16", "constrained", 1400, 450, 0) < 0.4e9


def test_summary_line_says_batch_and_peak_memory(real_test_file, varied_model_dir, tmp_path, capsys):
    main(gen_args(real_test_file, varied_model_dir, tmp_path / "a.jsonl", "--mode", "constrained", "--limit", "2"))
    line = [x for x in capsys.readouterr().out.splitlines() if x.startswith("wrote ")][0]
    assert "batch 32 (auto, CPU)" in line and " MB RSS" in line and "peak " in line
    main(gen_args(real_test_file, varied_model_dir, tmp_path / "b.jsonl", "--mode", "score", "--limit", "2",
                  "--batch-size", "8"))
    line = [x for x in capsys.readouterr().out.splitlines() if x.startswith("wrote ")][0]
    assert "one prompt a pass" in line


@pytest.mark.parametrize("mode", ["free", "constrained"])
def test_static_cache_generates_what_the_dynamic_one_does(real_test_file, varied_model_dir, tmp_path, mode,
                                                         monkeypatch):
    """--compile: transformers' static KV cache (compiled on a GPU only); float32 outputs the same bytes."""
    from transformers import cache_utils

    made = []
    real_init = cache_utils.StaticCache.__init__
    monkeypatch.setattr(cache_utils.StaticCache, "__init__",
                        lambda self, *a, **kw: made.append(1) or real_init(self, *a, **kw))
    base = ("--mode", mode, "--batch-size", "3", "--limit", "6", "--max-new-tokens", "12")
    plain, static = tmp_path / "plain.jsonl", tmp_path / "static.jsonl"
    main(gen_args(real_test_file, varied_model_dir, plain, *base))
    assert not made
    main(gen_args(real_test_file, varied_model_dir, static, *base, "--compile"))
    assert made  # the static cache did run
    assert static.read_bytes() == plain.read_bytes()
