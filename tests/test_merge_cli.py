"""The merge CLI on bad input (one-line error, exit 2, nothing written) and scripts/merge_and_test.sh."""

import json
import os
import random
import shutil
import subprocess
import sys

import pytest
import torch
from safetensors.torch import load_file, save_file

from common.io import write_jsonl_atomic
from common.prompt import make_sample
from tests.helpers import REPO, make_adapter, merge, real_titles


@pytest.fixture(scope="module")
def pair(random_model_dir, tmp_path_factory):
    root = tmp_path_factory.mktemp("cli-adapters")
    return [make_adapter(random_model_dir, root / "t", 1), make_adapter(random_model_dir, root / "ts", 2, r=2)]


def broken(src, dst, edit):
    """A copy of adapter `src` whose tensors went through edit(dict) -> dict."""
    shutil.copytree(src, dst)
    path = dst / "adapter_model.safetensors"
    save_file(edit(load_file(path)), path)
    return dst


def with_nan(tensors):
    key = min(tensors)
    tensors[key][0, 0] = float("nan")
    return tensors


def other_shape(tensors):
    key = next(k for k in sorted(tensors) if k.endswith("q_proj.lora_A.weight"))
    tensors[key] = torch.zeros(tensors[key].shape[0], 32)
    return tensors


def case_args(name, pair, tmp):
    """Arguments of one bad invocation and a word its error message must contain."""
    if name == "missing adapter":
        return [tmp / "nope", pair[1]], [], "not found"
    if name == "checkpoint folders only":
        (tmp / "run" / "checkpoint-30").mkdir(parents=True)
        return [tmp / "run"], [], "checkpoint-30"
    if name == "pickle only":
        (tmp / "pkl").mkdir()
        shutil.copy(pair[0] / "adapter_config.json", tmp / "pkl")
        (tmp / "pkl" / "adapter_model.bin").write_bytes(b"not loaded")
        return [tmp / "pkl"], [], "pickle"
    if name == "nan tensor":
        return [pair[0], broken(pair[1], tmp / "nan", with_nan)], [], "NaN"
    if name == "different modules":
        return [pair[0], broken(pair[1], tmp / "qv", lambda t: {k: v for k, v in t.items() if "mlp" not in k})], \
            [], "different modules"
    if name == "different base model":
        return [pair[0], broken(pair[1], tmp / "shape", other_shape)], [], "different base models"
    if name in ("weights file keys", "weights file length", "weights file pickle"):
        keys = load_file(pair[0] / "adapter_model.safetensors")
        mods = sorted({k[len("base_model.model."):-len(".lora_A.weight")] for k in keys if "lora_A" in k})
        table = {m: [1, 2] for m in mods}
        if name == "weights file keys":
            table["model.layers.9.self_attn.q_proj"] = table.pop(mods[0])
        if name == "weights file length":
            table[mods[3]] = [1, 2, 3]
        path = tmp / ("w.pt" if name == "weights file pickle" else "w.json")
        path.write_text(json.dumps(table))
        return pair, ["--weights-file", path], {"weights file keys": "keys do not match",
                                                "weights file length": "list of 2", "weights file pickle": "pickle"}[name]
    extra, word = {
        "zero temperature": (["--temperature", "0"], "temperature"),
        "negative temperature": (["--temperature", "-1"], "temperature"),
        "weights count": (["--weights", "1", "2", "3"], "3 values for 2 adapters"),
        "ties stacked": (["--method", "ties"], "--output svd or --output full"),
        "ties negative weight": (["--method", "ties", "--output", "svd", "--weights", "1", "-1"], "positive"),
        "full without base": (["--output", "full", "--base-model", tmp / "no-model"], "base model"),
        "option the method does not take": (["--density", "0.3"], "--density does not apply to --method weaverec"),
        "drop rate for ties": (["--method", "ties", "--output", "svd", "--drop-rate", "0.3"], "(it takes --density"),
        "density out of range": (["--method", "ties", "--output", "svd", "--density", "2"], "--density must be in (0, 1]"),
    }[name]
    return pair, extra, word


CASES = ["missing adapter", "checkpoint folders only", "pickle only", "nan tensor", "different modules",
         "different base model", "weights file keys", "weights file length", "weights file pickle",
         "zero temperature", "negative temperature", "weights count", "ties stacked", "ties negative weight",
         "full without base", "option the method does not take", "drop rate for ties", "density out of range"]


@pytest.mark.parametrize("name", CASES)
def test_bad_input_is_one_line_error_and_writes_nothing(name, pair, tmp_path, capsys):
    adapters, extra, word = case_args(name, pair, tmp_path)
    out = tmp_path / "merged" / "out"
    code = merge("--adapters", *adapters, "--out", out, *extra)
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2
    assert err[-1].startswith("error: ") and word in err[-1], err
    assert not out.exists()
    assert not (tmp_path / "merged").exists() or os.listdir(tmp_path / "merged") == []


def test_a_trained_adapter_folder_is_never_overwritten(pair, tmp_path, capsys):
    victim = tmp_path / "trained"
    shutil.copytree(pair[1], victim)
    before = sorted((p.name, p.read_bytes()) for p in victim.iterdir())
    assert merge("--adapters", pair[0], "--out", victim) == 2
    assert "not an earlier merge output" in capsys.readouterr().err
    assert sorted((p.name, p.read_bytes()) for p in victim.iterdir()) == before


def test_cli_as_a_module(pair, tmp_path):
    run = [sys.executable, "-m", "merge.merge_lora", "--adapters", str(pair[0]), str(pair[1])]
    bad = subprocess.run(run + ["--out", str(tmp_path / "x"), "--temperature", "0"], cwd=REPO,
                         capture_output=True, text=True, check=False)
    assert bad.returncode == 2 and "Traceback" not in bad.stderr
    assert bad.stderr.strip().splitlines() == ["error: --temperature must be a positive number, got 0.0"]
    template = tmp_path / "w.json"
    assert merge("--adapters", *pair, "--write-weights-template", template) == 0
    table = json.loads(template.read_text())
    assert len(table) == 14 and table["model.layers.1.mlp.down_proj"] == [1.0, 1.0]
    ok = subprocess.run(run + ["--out", str(tmp_path / "m"), "--weights-file", str(template)], cwd=REPO,
                        capture_output=True, text=True, check=False)
    assert ok.returncode == 0, ok.stderr
    assert "merged 2 adapters x 14 modules" in ok.stdout


def tiny_test_file(path, n=2, seed=0):
    titles = sorted({t for t in real_titles(300) if "||" not in t})
    rng = random.Random(seed)
    rows = []
    for _ in range(n):
        picked = rng.sample(titles, 33)
        sample = make_sample(picked[:3], rng.sample(picked[3:], 30), picked[3:8])
        rows.append(sample)
    write_jsonl_atomic(path, rows)
    return path


def test_merge_and_test_script(random_model_dir, pair, tmp_path):
    env = dict(os.environ, MODEL=str(random_model_dir), TARGET="tiny", ADAPTERS=f"{pair[0]} {pair[1]}",
               WEIGHTS="2 1", MERGED=str(tmp_path / "merged"), PRED=str(tmp_path / "run" / "output.jsonl"),
               TEST_FILE=str(tiny_test_file(tmp_path / "test.jsonl")), BATCH_SIZE="2", PYTHON=sys.executable)
    done = subprocess.run(["bash", "scripts/merge_and_test.sh"], cwd=REPO, env=env, capture_output=True,
                          text=True, timeout=600, check=False)
    assert done.returncode == 0, done.stderr[-2000:]
    assert (tmp_path / "merged" / "adapter_model.safetensors").is_file()
    config = json.loads((tmp_path / "merged" / "adapter_config.json").read_text())
    assert config["base_model_name_or_path"] == str(random_model_dir) and config["r"] == 4 + 2
    lines = (tmp_path / "run" / "output.jsonl").read_text().splitlines()
    assert [json.loads(line)["id"] for line in lines] == [0, 1]
    assert all(len(json.loads(line)["output"].split("||")) == 5 for line in lines)
