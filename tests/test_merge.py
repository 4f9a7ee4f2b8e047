"""Merging on a real tiny Qwen2 model: merged adapters and models act exactly as the weighted deltas.

References are computed independently of merge/: each adapter's delta comes from PEFT itself
(LoraLayer.get_delta_weight, which knows r, lora_alpha and rsLoRA), and the reference model is the
base model with sum_i lambda_i * delta_i added to its weights.
"""

import json
import math
import shutil

import pytest
import torch
from safetensors.torch import load_file, save_file
from transformers import AutoModelForCausalLM

from tests.helpers import (
    TARGETS,
    adapter_logits,
    assert_close_rel,
    base_plus,
    logits,
    make_adapter,
    merge,
    peft_deltas,
    weighted,
)


@pytest.fixture(scope="module")
def adapters(random_model_dir, tmp_path_factory):
    """Adapters with different r, lora_alpha, rsLoRA, per-module rank/alpha patterns, and a bf16 one."""
    root = tmp_path_factory.mktemp("adapters")
    return {
        "t": make_adapter(random_model_dir, root / "t", 1, r=4, alpha=8),
        "ts1": make_adapter(random_model_dir, root / "ts1", 2, r=8, alpha=4),
        "ts2": make_adapter(random_model_dir, root / "ts2", 3, r=4, alpha=16, rslora=True),
        "pattern": make_adapter(random_model_dir, root / "pattern", 5, r=4, alpha=8,
                                rank_pattern={"q_proj": 2, "model.layers.1.mlp.down_proj": 6},
                                alpha_pattern={"v_proj": 3}),
        "bf16": make_adapter(random_model_dir, root / "bf16", 4, r=4, alpha=8, dtype=torch.bfloat16),
    }


def test_weaverec_merge_equals_weighted_sum_of_adapter_deltas(random_model_dir, adapters, tmp_path):
    names = ["t", "ts1", "ts2", "pattern"]
    w, temp = [2.0, 0.5, -1.0, 1.5], 0.7
    out = tmp_path / "merged"
    assert merge("--adapters", *[adapters[n] for n in names], "--out", out,
                 "--weights", *w, "--temperature", temp) == 0
    lam = torch.softmax(torch.tensor(w, dtype=torch.float64) / temp, 0).tolist()
    deltas = [peft_deltas(random_model_dir, adapters[n]) for n in names]
    expected = logits(base_plus(random_model_dir, weighted(deltas, lambda m: lam)))
    got = adapter_logits(random_model_dir, out)
    assert_close_rel(got, expected)
    # the published code's bug (every adapter merged with lambda_0) gives a clearly different model
    buggy = logits(base_plus(random_model_dir, weighted(deltas, lambda m: [lam[0]] * len(names))))
    assert (got - buggy).abs().max() > 1e-3 * expected.abs().max()
    config = json.loads((out / "adapter_config.json").read_text())
    # ranks add up per module (18 to 22 here); all are zero-padded to the largest, so no rank_pattern
    assert config["r"] == 4 + 8 + 4 + 6 and config["lora_alpha"] == config["r"] and not config["use_rslora"]
    assert config["rank_pattern"] == config["alpha_pattern"] == {}
    info = json.loads((out / "merge_info.json").read_text())
    assert info["lambdas"] == pytest.approx(lam)


@pytest.mark.parametrize("weights,which", [([1, 0], "t"), ([0, 1], "ts1")])
def test_each_adapter_gets_its_own_weight(random_model_dir, adapters, tmp_path, weights, which):
    out = tmp_path / "merged"
    assert merge("--adapters", adapters["t"], adapters["ts1"], "--out", out,
                 "--normalize", "none", "--weights", *weights) == 0
    assert_close_rel(adapter_logits(random_model_dir, out), adapter_logits(random_model_dir, adapters[which]))


def test_single_adapter_at_weight_one_reproduces_it(random_model_dir, adapters, tmp_path):
    out = tmp_path / "merged"
    assert merge("--adapters", adapters["ts2"], "--out", out) == 0  # softmax of one weight = 1
    expected = adapter_logits(random_model_dir, adapters["ts2"])
    assert_close_rel(adapter_logits(random_model_dir, out), expected)
    assert (expected - logits(AutoModelForCausalLM.from_pretrained(random_model_dir))).abs().max() > 1e-2


def test_default_weights_give_the_plain_average_of_deltas(random_model_dir, adapters, tmp_path):
    names = ["t", "ts1", "ts2"]
    out = tmp_path / "merged"
    assert merge("--adapters", *[adapters[n] for n in names], "--out", out) == 0
    deltas = [peft_deltas(random_model_dir, adapters[n]) for n in names]
    merged = peft_deltas(random_model_dir, out)
    assert set(merged) == set(deltas[0]) and len(merged) == 2 * len(TARGETS)
    for m, got in merged.items():
        assert_close_rel(got, sum(d[m] for d in deltas) / 3)


def test_per_module_weights_reach_their_modules(random_model_dir, adapters, tmp_path):
    names = ["t", "ts1"]
    gen = torch.Generator().manual_seed(7)
    modules = sorted(peft_deltas(random_model_dir, adapters["t"]))
    table = {m: (torch.rand(2, generator=gen) * 4 - 2).tolist() for m in modules}
    (tmp_path / "w.json").write_text(json.dumps(table))
    save_file({m: torch.tensor(v, dtype=torch.float64) for m, v in table.items()}, tmp_path / "w.safetensors")
    for kind in ("json", "safetensors"):
        assert merge("--adapters", *[adapters[n] for n in names], "--out", tmp_path / kind,
                     "--weights-file", tmp_path / f"w.{kind}") == 0
    deltas = [peft_deltas(random_model_dir, adapters[n]) for n in names]
    expected = weighted(deltas, lambda m: torch.softmax(torch.tensor(table[m], dtype=torch.float64), 0).tolist())
    merged = peft_deltas(random_model_dir, tmp_path / "json")
    for m in modules:
        assert_close_rel(merged[m], expected[m])
    assert_close_rel(adapter_logits(random_model_dir, tmp_path / "json"),
                     logits(base_plus(random_model_dir, expected)))
    same = [(tmp_path / k / "adapter_model.safetensors").read_bytes() for k in ("json", "safetensors")]
    assert same[0] == same[1]


def test_stacked_output_is_peft_cat_combination(random_model_dir, adapters, tmp_path):
    """PEFT's own add_weighted_adapter(combination_type="cat") with the lambdas as weights is an
    independent reference for the stacked output (it puts lambda_i s_i on A_i, we on B_i)."""
    from peft import PeftModel
    from peft.tuners.lora import LoraLayer

    names, w = ["t", "ts1", "ts2"], [0.5, 1.0, -1.0]
    assert merge("--adapters", *[adapters[n] for n in names], "--out", tmp_path / "stacked",
                 "--weights", *w) == 0
    lambdas = torch.softmax(torch.tensor(w, dtype=torch.float64), 0).tolist()
    model = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(random_model_dir), adapters["t"],
                                      adapter_name="t")
    for n in names[1:]:
        model.load_adapter(adapters[n], adapter_name=n)
    model.add_weighted_adapter(names, lambdas, "cat", combination_type="cat")
    ours = peft_deltas(random_model_dir, tmp_path / "stacked")
    for name, mod in model.base_model.model.named_modules():
        if isinstance(mod, LoraLayer):
            assert mod.r["cat"] == sum(mod.r[n] for n in names)
            assert_close_rel(ours[name], mod.get_delta_weight("cat").float())


def test_bf16_in_bf16_out_accumulated_in_float32(random_model_dir, adapters, tmp_path):
    ins = [adapters["bf16"], adapters["t"], adapters["ts1"]]
    mixed = tmp_path / "mixed"
    assert merge("--adapters", *ins, "--out", mixed) == 0  # mixed dtypes: the widest, float32
    assert {t.dtype for t in load_file(mixed / "adapter_model.safetensors").values()} == {torch.float32}
    assert merge("--adapters", adapters["bf16"], "--out", tmp_path / "bf16") == 0
    assert merge("--adapters", adapters["bf16"], "--out", tmp_path / "fp32", "--dtype", "float32") == 0
    bf16 = load_file(tmp_path / "bf16" / "adapter_model.safetensors")
    fp32 = load_file(tmp_path / "fp32" / "adapter_model.safetensors")
    assert {t.dtype for t in bf16.values()} == {torch.bfloat16}
    for key, value in fp32.items():  # one rounding of the float32 result, nothing lost before it
        assert value.dtype == torch.float32 and torch.equal(bf16[key], value.to(torch.bfloat16))
    expected = peft_deltas(random_model_dir, adapters["bf16"])
    for m, got in peft_deltas(random_model_dir, tmp_path / "fp32").items():
        assert_close_rel(got, expected[m])


def test_full_model_equals_base_plus_merged_adapter(random_model_dir, adapters, tmp_path):
    ins = [adapters["t"], adapters["ts1"], adapters["ts2"]]
    w = ["--weights", "1", "0.2", "-0.5"]
    assert merge("--adapters", *ins, "--out", tmp_path / "stacked", *w) == 0
    assert merge("--adapters", *ins, "--out", tmp_path / "full", *w, "--output", "full",
                 "--base-model", random_model_dir, "--max-shard-size", "100KB") == 0
    full = tmp_path / "full"
    for name in ("config.json", "generation_config.json", "tokenizer.json", "tokenizer_config.json",
                 "model.safetensors.index.json", "merge_info.json"):
        assert (full / name).is_file(), name
    assert len(list(full.glob("model-*.safetensors"))) > 1
    assert_close_rel(logits(AutoModelForCausalLM.from_pretrained(full)),
                     adapter_logits(random_model_dir, tmp_path / "stacked"))


def best_rank_k(delta, k):
    u, s, vh = torch.linalg.svd(delta.double(), full_matrices=False)
    return (u[:, :k] * s[:k]) @ vh[:k], math.sqrt((s[k:] ** 2).sum() / (s ** 2).sum())


def test_svd_output_is_the_best_rank_r_approximation(random_model_dir, adapters, tmp_path):
    names = ["t", "ts1"]
    for rank in (2, 12):
        assert merge("--adapters", *[adapters[n] for n in names], "--out", tmp_path / f"r{rank}",
                     "--output", "svd", "--rank", rank) == 0
    deltas = [peft_deltas(random_model_dir, adapters[n]) for n in names]
    average = weighted(deltas, lambda m: [0.5, 0.5])
    low = peft_deltas(random_model_dir, tmp_path / "r2")
    info = json.loads((tmp_path / "r2" / "merge_info.json").read_text())["svd_relative_error"]
    for m, delta in average.items():
        expected, rel = best_rank_k(delta, 2)
        assert_close_rel(low[m].double(), expected)
        assert info["per_module"][m] == pytest.approx(rel, rel=1e-4)
    assert 0.05 < info["overall"] < 1
    exact = json.loads((tmp_path / "r12" / "merge_info.json").read_text())["svd_relative_error"]
    assert exact["overall"] < 1e-5  # rank >= the sum of the input ranks: nothing is lost
    assert_close_rel(adapter_logits(random_model_dir, tmp_path / "r12"),
                     logits(base_plus(random_model_dir, average)))


def test_ties_svd_at_full_rank_equals_the_ties_delta(random_model_dir, adapters, tmp_path):
    from merge.methods import ties

    names = ["t", "ts1", "ts2"]
    assert merge("--adapters", *[adapters[n] for n in names], "--out", tmp_path / "ties", "--method", "ties",
                 "--density", "0.3", "--output", "svd", "--rank", "64") == 0
    deltas = [peft_deltas(random_model_dir, adapters[n]) for n in names]
    merged = peft_deltas(random_model_dir, tmp_path / "ties")
    for m, got in merged.items():
        assert_close_rel(got, ties([d[m] for d in deltas], torch.ones(3), density=0.3), tol=1e-4)


def test_outputs_are_reproducible_and_dare_follows_its_seed(adapters, tmp_path):
    ins = [adapters["t"], adapters["ts1"]]
    runs = {"a": ["--seed", "1"], "b": ["--seed", "1"], "c": ["--seed", "2"]}
    for name, seed in runs.items():
        assert merge("--adapters", *ins, "--out", tmp_path / name, "--method", "dare_ties",
                     "--output", "svd", *seed) == 0
    data = {n: (tmp_path / n / "adapter_model.safetensors").read_bytes() for n in runs}
    assert data["a"] == data["b"] and data["a"] != data["c"]
    for n in ("s1", "s2"):
        assert merge("--adapters", *ins, "--out", tmp_path / n) == 0
    assert (tmp_path / "s1" / "adapter_model.safetensors").read_bytes() == \
        (tmp_path / "s2" / "adapter_model.safetensors").read_bytes()


def test_base_model_override_and_tokenizer_copy(random_model_dir, adapters, tmp_path):
    first = tmp_path / "with_tokenizer"
    shutil.copytree(adapters["t"], first)
    shutil.copy(random_model_dir / "tokenizer.json", first / "tokenizer.json")
    out = tmp_path / "merged"
    assert merge("--adapters", first, adapters["ts1"], "--out", out, "--base-model", "models/elsewhere") == 0
    assert json.loads((out / "adapter_config.json").read_text())["base_model_name_or_path"] == "models/elsewhere"
    assert (out / "tokenizer.json").read_bytes() == (random_model_dir / "tokenizer.json").read_bytes()
    # rerunning into an earlier merge output replaces it
    assert merge("--adapters", first, "--out", out) == 0
    assert json.loads((out / "adapter_config.json").read_text())["r"] == 4


def test_llamafactory_loads_the_merged_adapter(random_model_dir, adapters, tmp_path):
    from llamafactory.hparams import get_infer_args
    from llamafactory.model import load_model, load_tokenizer

    out = tmp_path / "merged"
    assert merge("--adapters", adapters["t"], adapters["ts2"], "--out", out, "--weights", "1", "3") == 0
    model_args, _, finetuning_args, _ = get_infer_args({
        "model_name_or_path": str(random_model_dir), "adapter_name_or_path": str(out), "template": "qwen",
        "finetuning_type": "lora", "infer_dtype": "float32"})
    tokenizer = load_tokenizer(model_args)["tokenizer"]
    model = load_model(tokenizer, model_args, finetuning_args, is_trainable=False)
    assert_close_rel(logits(model), adapter_logits(random_model_dir, out))
