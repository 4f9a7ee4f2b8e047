"""Learned merge weights (merge/learn_weights.py): gradients, the merged model it evaluates, what it learns,
that the entropy objective reads no label, micro-batches, gradient checkpointing and out-of-memory recovery
(merge/fit_memory.py), and one-line errors on bad input.

References independent of the code under test: finite differences of the objective; PEFT loading the
adapter that merge_lora writes from the learned weights file; candidates scored one at a time by the
plain model on prompt + candidate (no packing, no mask)."""

import json
import random
import types
from collections import defaultdict

import pytest
import torch
from safetensors.torch import load_file

from common.cli import UserError, run_main
from common.io import read_jsonl, write_jsonl_atomic
from common.prompt import SEP, make_sample, parse_user_prompt, sample_parts, user_prompt
from merge.adapters import load_adapter
from merge.fit_memory import accumulate_gradient, use_checkpointing
from merge.learn_weights import split
from merge.objectives import Prompt, candidate_scores, objective, read_prompts, unique_titles
from merge.weighted_model import WeightedMerge
from tests.helpers import IDS, make_adapter, merge, real_titles


def learn(*args):
    """Run the learn_weights CLI in-process; return its exit code."""
    from merge.learn_weights import main

    with pytest.raises(SystemExit) as exit_info:
        run_main(main, [str(a) for a in args])
    return exit_info.value.code


def fit_args(base, adapters, prompts, out, *extra):
    return ["--base-model", base, "--adapters", *adapters, "--prompts", prompts, "--out-dir", out,
            "--threads", "1", "--no-progress", *extra]


def load_model(base, dtype=torch.float32):
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(base, torch_dtype=dtype).eval()


def tokenizer(base):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(base)


@pytest.fixture(scope="module")
def trio(random_model_dir, tmp_path_factory):
    root = tmp_path_factory.mktemp("learn-adapters")
    return [make_adapter(random_model_dir, root / f"a{i}", seed=10 + i, r=4 if i != 1 else 2) for i in range(3)]


def with_candidates(row, keep):
    """A copy of a sample whose prompt lists only the candidates `keep`."""
    system, user, answer = sample_parts(row)
    return {"messages": [{"role": "system", "content": system},
                         {"role": "user", "content": user_prompt(parse_user_prompt(user)[0], keep)},
                         {"role": "assistant", "content": answer}]}


@pytest.fixture(scope="module")
def prompts_file(real_test_file, tmp_path_factory):
    """6 labelled real Beauty prompts with 12 candidates each (quick), for the CLI runs."""
    rows = []
    for row in read_jsonl(real_test_file)[:6]:
        _, user, answer = sample_parts(row)
        true = answer.split(SEP)[0]
        rows.append(with_candidates(row, [c for c in parse_user_prompt(user)[1] if c != true][:11] + [true]))
    path = tmp_path_factory.mktemp("learn-data") / "valid.jsonl"
    write_jsonl_atomic(path, rows)
    return path


def float64_norms(model):
    """Qwen2's RMSNorm computes in float32 even in a float64 model; the same formula in float64, so
    that finite differences see no float32 rounding."""
    def forward(self, x):
        return self.weight * x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + self.variance_epsilon)

    for mod in model.modules():
        if type(mod).__name__.endswith("RMSNorm"):
            mod.forward = types.MethodType(forward, mod)
    return model


@pytest.mark.parametrize("name,norm", [("likelihood", "sum"), ("entropy", "mean"), ("likelihood", "calibrated")])
def test_gradient_matches_finite_differences(random_model_dir, trio, prompts_file, name, norm):
    model = float64_norms(load_model(random_model_dir, torch.float64))
    prompts = read_prompts(prompts_file, tokenizer(random_model_dir), labelled=True)[:2]
    merged = WeightedMerge(model, [load_adapter(p) for p in trio], grouping="layer", temperature=0.7).double()
    with torch.no_grad():
        merged.w.copy_(torch.randn(merged.w.shape, generator=torch.Generator().manual_seed(0)))

    def f():
        merged.refresh()
        return objective(model, prompts, name, norm)

    f().backward()
    grad = merged.w.grad.clone()
    numeric = torch.zeros_like(grad)
    eps = 1e-4
    with torch.no_grad():
        for idx in torch.cartesian_prod(*[torch.arange(s) for s in grad.shape]):
            idx = tuple(idx.tolist())
            merged.w[idx] += eps
            up = f().item()
            merged.w[idx] -= 2 * eps
            down = f().item()
            merged.w[idx] += eps
            numeric[idx] = (up - down) / (2 * eps)
    assert grad.abs().max() > 1e-5  # the objective depends on w (the random model's mean-scored
    # candidate distribution is near uniform, its sum-scored one near one-hot: entropy is flat in both)
    torch.testing.assert_close(grad, numeric, rtol=1e-4, atol=1e-9)


def reference_scores(model, prompt):
    """Each candidate scored alone: sum of log p of its tokens after the prompt (plain forward)."""
    out = []
    for cand in prompt.candidates:
        ids = torch.tensor([prompt.ids + cand])
        with torch.no_grad():
            logp = torch.log_softmax(model(ids).logits[0].double(), dim=-1)
        n = len(prompt.ids)
        out.append(sum(logp[n - 1 + j, t].item() for j, t in enumerate(cand)))
    return torch.tensor(out, dtype=torch.float64)


def test_calibrated_scores_are_prompt_minus_empty_history(random_model_dir, prompts_file):
    """The calibrated rule of the objectives = the inference rule: each candidate's summed log-prob after
    the prompt minus after the same prompt without its history (both by plain forward passes here)."""
    from common.prompt import CANDIDATES_OPEN, HISTORY_OPEN

    model, tok = load_model(random_model_dir), tokenizer(random_model_dir)
    prompts = read_prompts(prompts_file, tok, labelled=True)[:2]
    with torch.no_grad():
        got = candidate_scores(model, prompts, "calibrated")
    for scores, prompt in zip(got, prompts):
        text = tok.decode(prompt.ids)
        cut = text[:text.find(HISTORY_OPEN) + len(HISTORY_OPEN)] + text[text.rfind(CANDIDATES_OPEN):]
        neutral = Prompt(tok.encode(cut, add_special_tokens=False), prompt.candidates)
        assert len(neutral.ids) < len(prompt.ids)
        expected = reference_scores(model, prompt) - reference_scores(model, neutral)
        torch.testing.assert_close(scores.double(), expected, rtol=1e-4, atol=1e-4)


def merged_model(base, adapters, weights_file, out):
    from peft import PeftModel

    assert merge("--adapters", *adapters, "--weights-file", weights_file, "--temperature", "0.5", "--out", out) == 0
    return PeftModel.from_pretrained(load_model(base), out).eval()


@pytest.mark.parametrize("fmt,grouping", [("json", "module"), ("safetensors", "layer")])
def test_merging_the_learned_file_gives_the_model_that_was_fitted(random_model_dir, trio, prompts_file,
                                                                   tmp_path, fmt, grouping):
    out = tmp_path / "learned"
    args = fit_args(random_model_dir, trio, prompts_file, out, "--objective", "likelihood", "--format", fmt,
                    "--grouping", grouping, "--temperature", "0.5", "--steps", "6", "--lr", "0.3",
                    "--batch-size", "2", "--holdout", "0")
    assert learn(*args) == 0
    path = out / f"weights.{fmt}"
    table = json.loads(path.read_text()) if fmt == "json" else {k: v.tolist() for k, v in load_file(path).items()}
    assert max(max(w) - min(w) for w in table.values()) > 0.1  # the fit moved the weights
    assert (len({tuple(w) for w in table.values()}) > 1) == (grouping != "adapter")
    assert (out / "lambdas.png").stat().st_size > 0 and (out / "objective.png").stat().st_size > 0

    # the functional model at the learned w ...
    model = load_model(random_model_dir)
    fitted = WeightedMerge(model, [load_adapter(p) for p in trio], grouping=grouping, temperature=0.5)
    fitted.load_table(table)
    fitted.refresh()
    with torch.no_grad():
        functional = model(IDS).logits
        prompts = read_prompts(prompts_file, tokenizer(random_model_dir), labelled=True)[:2]
        packed = [s.double() for s in candidate_scores(model, prompts)]
    fitted.remove()
    # ... equals base + the adapter merge_lora writes from the file, loaded by PEFT
    peft_model = merged_model(random_model_dir, trio, path, tmp_path / "merged")
    with torch.no_grad():
        reference = peft_model(IDS).logits
    torch.testing.assert_close(functional, reference, rtol=1e-5, atol=1e-5)
    for scores, prompt in zip(packed, prompts):
        torch.testing.assert_close(scores, reference_scores(peft_model, prompt), rtol=1e-5, atol=1e-4)


def test_one_adapter_learns_nothing(random_model_dir, trio, prompts_file, tmp_path):
    from peft import PeftModel

    out = tmp_path / "one"
    assert learn(*fit_args(random_model_dir, trio[:1], prompts_file, out, "--objective", "likelihood",
                           "--steps", "4", "--lr", "1.0", "--holdout", "0")) == 0
    table = json.loads((out / "weights.json").read_text())
    assert all(w == [1.0] for w in table.values())
    model = merged_model(random_model_dir, trio[:1], out / "weights.json", tmp_path / "merged")
    with torch.no_grad():
        alone = PeftModel.from_pretrained(load_model(random_model_dir), trio[0]).eval()(IDS).logits
        torch.testing.assert_close(model(IDS).logits, alone, rtol=1e-5, atol=1e-5)


def equal_length_prompts(path, tok, n=12, k=12, seed=0):
    """n prompts of k real Beauty titles that all have the same number of tokens, so that the ranking
    of a random model depends on the titles' tokens, not on their lengths."""
    titles = real_titles()
    by_length = defaultdict(list)
    for title in titles:
        by_length[len(tok.encode(title + SEP, add_special_tokens=False))].append(title)
    pool = max(by_length.values(), key=len)
    rng = random.Random(seed)
    rows = []
    for _ in range(n):
        cands = rng.sample(pool, k)
        rows.append(make_sample(rng.sample(titles, 3), cands, cands[:1]))
    write_jsonl_atomic(path, rows)
    return path


def test_bfloat16_forward_float32_weights(random_model_dir, trio, prompts_file, tmp_path):
    """The GPU default (bf16 forward), here on CPU: the weights stay float32 and the fit moves them."""
    out = tmp_path / "bf16"
    assert learn(*fit_args(random_model_dir, trio, prompts_file, out, "--objective", "likelihood", "--dtype",
                           "bfloat16", "--steps", "3", "--lr", "0.5", "--holdout", "0")) == 0
    report = json.loads((out / "report.json").read_text())
    assert report["dtype"] == "bfloat16"
    table = json.loads((out / "weights.json").read_text())
    values = torch.tensor(list(table.values()), dtype=torch.float64)
    assert torch.equal(values, values.float().double()) and (values - 1).abs().max() > 0.5  # float32, moved


def test_a_harmful_adapter_gets_almost_no_weight(varied_model_dir, tmp_path):
    """Labels are the target adapter's own top candidates; an adapter of random noise factors only hurts."""
    good = make_adapter(varied_model_dir, tmp_path / "good", seed=1)
    noise = make_adapter(varied_model_dir, tmp_path / "noise", seed=2)
    model = load_model(varied_model_dir)
    path = equal_length_prompts(tmp_path / "prompts.jsonl", tokenizer(varied_model_dir))
    target = WeightedMerge(model, [load_adapter(good)])
    target.refresh()
    prompts = read_prompts(path, tokenizer(varied_model_dir), labelled=True)
    rows = read_jsonl(path)
    with torch.no_grad():
        for row, scores in zip(rows, candidate_scores(model, prompts)):
            titles = unique_titles(parse_user_prompt(sample_parts(row)[1])[1])
            row["messages"][2]["content"] = titles[int(scores.argmax())]
    target.remove()
    labelled = tmp_path / "labelled.jsonl"
    write_jsonl_atomic(labelled, rows)
    out = tmp_path / "fit"
    assert learn(*fit_args(varied_model_dir, [good, noise], labelled, out, "--objective", "likelihood",
                           "--grouping", "layer", "--steps", "40", "--lr", "0.3", "--batch-size", "3",
                           "--holdout", "0.25", "--eval-every", "5")) == 0
    report = json.loads((out / "report.json").read_text())
    noise_lambdas = torch.tensor(list(report["lambdas"].values()))[:, 1]
    assert noise_lambdas.max() < 0.05, noise_lambdas
    # what was written is the w with the best held-out objective, better than equal weights (step 0)
    assert report["best_heldout"] == min(v for _, v in report["heldout"]) < report["heldout"][0][1] / 5
    merged = WeightedMerge(model, [load_adapter(good), load_adapter(noise)], grouping="layer")
    merged.load_table(json.loads((out / "weights.json").read_text()))
    merged.refresh()
    held = split(read_prompts(labelled, tokenizer(varied_model_dir), labelled=True), 0.25, 0)[1]
    with torch.no_grad():
        assert objective(model, held, "likelihood").item() == pytest.approx(report["best_heldout"], rel=1e-5)


def test_early_stopping_keeps_the_best_heldout_weights(random_model_dir, trio, prompts_file, tmp_path):
    out = tmp_path / "early"
    assert learn(*fit_args(random_model_dir, trio, prompts_file, out, "--objective", "likelihood", "--steps", "20",
                           "--lr", "0.5", "--batch-size", "2", "--holdout", "0.34", "--eval-every", "1",
                           "--patience", "3")) == 0
    report = json.loads((out / "report.json").read_text())
    assert report["stopped_early"] and report["best_step"] < report["steps_run"] < 20
    model = load_model(random_model_dir)
    merged = WeightedMerge(model, [load_adapter(p) for p in trio])
    merged.load_table(json.loads((out / "weights.json").read_text()))
    merged.refresh()
    held = split(read_prompts(prompts_file, tokenizer(random_model_dir), labelled=True), 0.34, 0)[1]
    with torch.no_grad():  # the written weights are those of the best held-out evaluation, not the last ones
        assert objective(model, held, "likelihood").item() == pytest.approx(report["best_heldout"], rel=1e-6)
    assert report["best_heldout"] == min(v for _, v in report["heldout"])


def test_entropy_reads_no_label(random_model_dir, trio, prompts_file, tmp_path):
    """The same fit whether the answers are there or were removed: the entropy objective never reads them."""
    unlabeled = tmp_path / "unlabeled.jsonl"
    write_jsonl_atomic(unlabeled, [{"messages": r["messages"][:2]} for r in read_jsonl(prompts_file)])
    outs = []
    for i, path in enumerate([unlabeled, prompts_file]):
        outs.append(tmp_path / f"e{i}")
        assert learn(*fit_args(random_model_dir, trio, path, outs[-1], "--objective", "entropy", "--steps", "3",
                               "--lr", "0.5", "--eval-every", "1", "--holdout", "0.34")) == 0
    first = (outs[0] / "weights.json").read_bytes()
    assert (outs[1] / "weights.json").read_bytes() == first
    assert len(set(first.decode().split())) > 10  # the weights moved: not a trivial equality


def error_case(name, base, trio, prompts_file, others, tmp):
    """Arguments of one bad invocation (adapters, prompt file, options) and a phrase its error must contain."""
    rows = read_jsonl(prompts_file)
    if name == "empty file":
        (tmp / "empty.jsonl").write_text("")
        return trio, tmp / "empty.jsonl", [], "empty"
    if name == "unlabeled for likelihood":
        write_jsonl_atomic(tmp / "u.jsonl", [{"messages": r["messages"][:2]} for r in rows])
        return trio, tmp / "u.jsonl", [], "no answer"
    if name == "answer not a candidate":
        rows[2]["messages"][2]["content"] = "Not A Candidate||x"
        write_jsonl_atomic(tmp / "n.jsonl", rows)
        return trio, tmp / "n.jsonl", [], "not one of its candidates"
    if name == "adapters of different modules":
        return [trio[0], make_adapter(base, tmp / "q", seed=5, targets=["q_proj"])], prompts_file, [], \
            "different modules"
    if name == "adapters of another base model":
        return others, prompts_file, [], "do not match --base-model"
    if name == "same adapter twice":
        return [trio[0], trio[0]], prompts_file, [], "twice"
    extra = {"zero temperature": (["--temperature", "0"], "temperature"),
             "negative temperature": (["--temperature", "-2"], "temperature"),
             "holdout 1": (["--holdout", "1"], "holdout"),
             "holdout leaves nothing to fit": (["--holdout", "0.95"], "cannot be split")}
    return trio, prompts_file, *extra[name]


ERRORS = ["empty file", "unlabeled for likelihood", "answer not a candidate", "adapters of different modules",
          "adapters of another base model", "same adapter twice", "zero temperature", "negative temperature",
          "holdout 1", "holdout leaves nothing to fit"]


@pytest.fixture(scope="module")
def others(real_tokenizer_model_dir, tmp_path_factory):
    """Two adapters of another base model (its MLP is 338 wide, the random model's is not)."""
    root = tmp_path_factory.mktemp("other-base")
    return [make_adapter(real_tokenizer_model_dir, root / f"o{i}", seed=3 + i) for i in range(2)]


@pytest.mark.parametrize("name", ERRORS)
def test_bad_input_is_one_line(random_model_dir, trio, prompts_file, others, tmp_path, capsys, name):
    adapters, prompts, extra, phrase = error_case(name, random_model_dir, trio, prompts_file, others, tmp_path)
    capsys.readouterr()
    out = tmp_path / "out"
    assert learn(*fit_args(random_model_dir, adapters, prompts, out, "--objective", "likelihood", "--steps", "1",
                           *extra)) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: ") and phrase in err[0], err
    assert not out.exists()


@pytest.fixture
def one_thread():
    """One torch thread, as the CLI runs here (--threads 1): on a busy 2-core machine two threads wait on
    each other (about 3x slower)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def float64_merge(base, trio):
    model = float64_norms(load_model(base, torch.float64))
    merged = WeightedMerge(model, [load_adapter(p) for p in trio], grouping="layer", temperature=0.7).double()
    with torch.no_grad():
        merged.w.copy_(torch.randn(merged.w.shape, generator=torch.Generator().manual_seed(0)))
    return model, merged


@pytest.mark.parametrize("name,norm", [("likelihood", "sum"), ("entropy", "calibrated")])
def test_micro_batches_add_up_to_the_batch_gradient(random_model_dir, trio, prompts_file, one_thread, name, norm):
    """Reference: backward of the plain objective on all 6 prompts in one pass (rows of different lengths,
    padded). The prompts are cut to their last 120 tokens (neutral ones: 60) to keep float64 quick."""
    model, merged = float64_merge(random_model_dir, trio)
    prompts = [Prompt(p.ids[-120:], p.candidates, p.label, p.neutral_ids[-60:])
               for p in read_prompts(prompts_file, tokenizer(random_model_dir), labelled=True)]
    assert len(prompts) == 6 and len({len(p.ids) + sum(map(len, p.candidates)) for p in prompts}) > 1
    merged.refresh()
    whole = objective(model, prompts, name, norm)
    whole.backward()
    reference, merged.w.grad = merged.w.grad, None
    assert reference.abs().max() > 1e-5
    for size in (1, 3, 4):
        loss = accumulate_gradient(model, merged, prompts, size, name, norm)
        torch.testing.assert_close(merged.w.grad, reference, rtol=1e-10, atol=1e-13)
        assert loss == pytest.approx(whole.item(), rel=1e-12)
        merged.w.grad = None


def test_fitted_weights_do_not_depend_on_the_micro_batch_size(random_model_dir, trio, prompts_file, tmp_path,
                                                              capsys):
    tables, reports = [], []
    for size in (1, 3, 4):
        out = tmp_path / f"micro{size}"
        assert learn(*fit_args(random_model_dir, trio, prompts_file, out, "--objective", "likelihood", "--steps", "3",
                               "--lr", "0.3", "--batch-size", "4", "--micro-batch-size", size, "--holdout", "0.34",
                               "--eval-every", "1")) == 0
        assert f"micro-batch {size}, checkpointing off" in capsys.readouterr().out
        tables.append(torch.tensor(list(json.loads((out / "weights.json").read_text()).values())))
        reports.append(json.loads((out / "report.json").read_text()))
    assert (tables[0] - 1).abs().max() > 0.1  # the fit moved the weights
    for table, report in zip(tables[1:], reports[1:]):
        torch.testing.assert_close(table, tables[0], rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(torch.tensor(report["heldout"]), torch.tensor(reports[0]["heldout"]))
        torch.testing.assert_close(torch.tensor(report["train"]), torch.tensor(reports[0]["train"]))


def test_gradient_checkpointing_gives_the_same_gradient(random_model_dir, trio, prompts_file, one_thread):
    """Checkpointing recomputes each decoder layer in the backward pass (the LoRA hooks run twice) and the
    gradient of w through the hooks is unchanged."""
    model, merged = float64_merge(random_model_dir, trio)
    prompts = read_prompts(prompts_file, tokenizer(random_model_dir), labelled=True)[:2]
    assert not use_checkpointing(model, "auto", "cpu") and not model.training
    calls = []
    model.get_submodule("model.layers.0.self_attn.q_proj").register_forward_hook(lambda *_: calls.append(1))
    grads = []
    for mode in ("off", "on"):
        model.train(mode == "off")  # off: in train mode as well (no dropout); on: use_checkpointing sets it
        if mode == "on":
            assert use_checkpointing(model, mode, "cpu") and model.training
        calls.clear()
        accumulate_gradient(model, merged, prompts, 2, "likelihood", "sum")
        grads.append(merged.w.grad)
        merged.w.grad = None
        assert len(calls) == (2 if mode == "on" else 1)
    assert grads[0].abs().max() > 1e-5
    torch.testing.assert_close(grads[1], grads[0], rtol=1e-10, atol=1e-13)


def test_checkpointing_refuses_a_model_with_dropout(random_model_dir, capsys):
    model = load_model(random_model_dir)
    for mod in model.modules():
        if hasattr(mod, "attention_dropout"):
            mod.attention_dropout = 0.1
    with pytest.raises(UserError, match="dropout"):
        use_checkpointing(model, "on", "cpu")
    assert not use_checkpointing(model, "auto", "cuda") and not model.training  # auto: left off, with a note
    assert "left off" in capsys.readouterr().out


OOM = ("CUDA out of memory. Tried to allocate 2.00 GiB. GPU 0 has a total capacity of 79.15 GiB of which 1.23 GiB "
       "is free.")


def fail_once(monkeypatch, call):
    """Make the decoder raise torch.OutOfMemoryError on its `call`-th forward pass; returns the rows of each
    pass (its micro-batch size)."""
    from transformers.models.qwen2.modeling_qwen2 import Qwen2Model

    original, rows = Qwen2Model.forward, []

    def forward(self, *args, **kwargs):
        rows.append(kwargs["input_ids"].shape[0])
        if len(rows) == call:
            raise torch.OutOfMemoryError(OOM)
        return original(self, *args, **kwargs)

    monkeypatch.setattr(Qwen2Model, "forward", forward)
    return rows


MID_STEP = (["--batch-size", "6", "--micro-batch-size", "4", "--holdout", "0"], 4, 4, 2,
            [4, 2, 4, 2, 2, 2, 2, 2, 2, 2])  # step 2's second micro-batch fails; step 2 is redone at 2
IN_EVALUATION = (["--batch-size", "4", "--micro-batch-size", "4", "--holdout", "0.34", "--eval-every", "1"], 3, 2, 1,
                 [2, 4, 2, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1])  # evaluation, step, evaluation (fails), ...


@pytest.mark.parametrize("extra,call,before,after,rows", [MID_STEP, IN_EVALUATION], ids=["mid-step", "in-evaluation"])
def test_out_of_memory_halves_the_micro_batch(random_model_dir, trio, prompts_file, tmp_path, monkeypatch, capsys,
                                              extra, call, before, after, rows):
    """The pass that fails is redone from its start (the whole step, or the whole evaluation) at half the
    micro-batch size, which the rest of the fit keeps: `rows` are the prompts of each decoder pass.
    Reference: the same fit without the error at the original micro-batch size. The weights are only
    allclose to it, not equal: after the error each step sums its gradient over other micro-batches
    (another rounding), as test_fitted_weights_do_not_depend_on_the_micro_batch_size allows."""
    args = ["--objective", "likelihood", "--steps", "3", "--lr", "0.3", *extra]
    assert learn(*fit_args(random_model_dir, trio, prompts_file, tmp_path / "plain", *args)) == 0
    capsys.readouterr()
    seen = fail_once(monkeypatch, call)
    assert learn(*fit_args(random_model_dir, trio, prompts_file, tmp_path / "oom", *args)) == 0
    out = capsys.readouterr().out.splitlines()
    assert [line for line in out if "out of memory" in line] == \
        [f"out of memory at micro-batch {before}: continuing at {after}"]
    assert seen == rows
    report = json.loads((tmp_path / "oom" / "report.json").read_text())
    assert report["micro_batch_size"] == after and report["steps_run"] == 3
    got, expected = (torch.tensor(list(json.loads((tmp_path / d / "weights.json").read_text()).values()))
                     for d in ("oom", "plain"))
    assert (expected - 1).abs().max() > 0.1
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-6)
    plain = json.loads((tmp_path / "plain" / "report.json").read_text())
    for curve in ("heldout", "train"):
        torch.testing.assert_close(torch.tensor(report[curve]), torch.tensor(plain[curve]))


def test_out_of_memory_at_one_prompt_is_one_line(random_model_dir, trio, prompts_file, tmp_path, monkeypatch, capsys):
    rows = fail_once(monkeypatch, 2)
    out = tmp_path / "oom1"
    assert learn(*fit_args(random_model_dir, trio, prompts_file, out, "--objective", "likelihood", "--steps", "3",
                           "--batch-size", "4", "--holdout", "0")) == 2
    assert rows == [1, 1]  # the default micro-batch is 1 prompt; nothing is retried after the error
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: out of memory"), err
    assert "2.00 GiB" in err[0] and "--micro-batch-size 1" in err[0] and "--batch-size" in err[0]
    assert not (out / "weights.json").exists()


@pytest.mark.parametrize("choice, cudnn", [("auto", False), ("torch", True)])
def test_cudnn_attention_is_off_while_fitting(random_model_dir, trio, prompts_file, tmp_path, monkeypatch,
                                             choice, cudnn):
    """--sdpa-backends auto (the default) keeps cuDNN's attention, a new plan per shape, out of every pass."""
    from transformers.models.qwen2 import modeling_qwen2

    seen, real = [], modeling_qwen2.Qwen2Model.forward

    def forward(self, *a, **kw):
        seen.append(torch.backends.cuda.cudnn_sdp_enabled())
        return real(self, *a, **kw)

    monkeypatch.setattr(modeling_qwen2.Qwen2Model, "forward", forward)
    assert learn(*fit_args(random_model_dir, trio, prompts_file, tmp_path / choice, "--objective", "likelihood",
                           "--steps", "2", "--limit", "6", "--sdpa-backends", choice)) == 0
    assert seen and set(seen) == {cudnn}
