"""LoRA training through LLaMA-Factory with scripts/train_lora.sh: a real run on Beauty killed with SIGKILL and
resumed, finished modules skipped or retrained, the console and train.log, one-line errors, train_modules.sh."""

import json
import os
import shlex
import shutil
import signal
import subprocess
import time

import pytest
import torch
from peft import PeftModel
from transformers import AutoModelForCausalLM, AutoTokenizer

from common.dataset_info import register
from tests.helpers import REPO, run_train_lora

# 12 epochs over 16 real samples: 24 steps, a checkpoint every 6, the last two kept (tiny_cpu_lora.yaml)
EXTRA = "max_samples=16 num_train_epochs=12 logging_steps=2 save_steps=6 learning_rate=1e-2 warmup_ratio=0"


def last_complete_checkpoint(folder):
    steps = [int(p.name.split("-")[1]) for p in folder.glob("checkpoint-*") if (p / "trainer_state.json").is_file()]
    return max(steps) if steps else None


def dry_run(dataset="beauty", **env):
    proc = run_train_lora(dataset, DRY_RUN=1, **env)
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.strip().splitlines()
    env_lines = [line for line in lines if "=" in line.split(" ", 1)[0] and not line.startswith("[")]
    plan = next(line[2:] for line in lines if line.startswith("# "))
    cmd = shlex.split(lines[-1]) if plan != "skip" else []
    return dict(line.split("=", 1) for line in env_lines), plan, cmd, proc.stdout


@pytest.fixture(scope="module")
def resumed(built_model, beauty_dir, tmp_path_factory):
    """A run killed (SIGKILL, the whole process group) once a checkpoint is saved, looked at, then run again."""
    save = tmp_path_factory.mktemp("save")
    env = dict(os.environ, MODEL=str(built_model), DATA_DIR=str(beauty_dir), SAVE_DIR=str(save), TRAIN_ARGS=EXTRA)
    first = subprocess.Popen(["bash", "scripts/train_lora.sh", "beauty"], cwd=REPO, env=env, start_new_session=True,
                             stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    partial = save / "beauty.partial"
    deadline = time.time() + 600
    while not (partial / "checkpoint-12" / "trainer_state.json").is_file():
        assert first.poll() is None and time.time() < deadline, "the run ended before its checkpoint-12"
        time.sleep(0.2)
    os.killpg(first.pid, signal.SIGKILL)
    first.wait()
    facts = {"killed": sorted(p.name for p in partial.iterdir()), "finished": (save / "beauty").exists(),
             "step": last_complete_checkpoint(partial)}
    same = dry_run(MODEL=built_model, DATA_DIR=beauty_dir, SAVE_DIR=save, TRAIN_ARGS=EXTRA)
    other = dry_run(MODEL=built_model, DATA_DIR=beauty_dir, SAVE_DIR=save, TRAIN_ARGS=EXTRA + " lora_dropout=0.1")
    rerun = run_train_lora("beauty", MODEL=built_model, DATA_DIR=beauty_dir, SAVE_DIR=save, TRAIN_ARGS=EXTRA)
    assert rerun.returncode == 0, rerun.stdout[-3000:] + rerun.stderr[-3000:]
    return {"out": save / "beauty", "save": save, "same": same, "other": other, "rerun": rerun, **facts}


@pytest.mark.slow
def test_killed_run_is_unfinished_and_resumes_from_its_last_checkpoint(resumed):
    step = resumed["step"]
    assert step >= 12 and not resumed["finished"]  # no save/beauty until the run is done
    _, plan, cmd, _ = resumed["same"]
    assert plan == "resume" and f"resume_from_checkpoint={resumed['save']}/beauty.partial/checkpoint-{step}" in cmd
    _, plan, cmd, _ = resumed["other"]
    assert plan == "fresh" and not any(arg.startswith("resume_from_checkpoint") for arg in cmd)
    assert "other inputs (overrides changed)" in resumed["other"][3]

    out = resumed["out"]
    assert f"resuming {resumed['save']}/beauty.partial from checkpoint-{step}" in resumed["rerun"].stdout
    assert f"Continuing training from global step {step}" in (out / "train.log").read_text()
    assert json.loads((out / "weaverec_train.json").read_text())["resumed_from"] == [f"checkpoint-{step}"]
    assert not (resumed["save"] / "beauty.partial").exists()
    logged = [json.loads(line) for line in (out / "trainer_log.jsonl").read_text().splitlines()]
    assert [row["current_steps"] for row in logged if "loss" in row] == list(range(2, 25, 2))
    assert json.loads((out / "trainer_state.json").read_text())["global_step"] == 24
    assert sorted(p.name for p in out.glob("checkpoint-*")) == ["checkpoint-18", "checkpoint-24"]


@pytest.mark.slow
def test_resumed_lora_learned_and_changes_the_model(resumed, built_model, beauty_dir):
    out = resumed["out"]
    assert (out / "adapter_config.json").is_file() and (out / "training_loss.png").is_file()
    logs = [json.loads(line) for line in (out / "trainer_log.jsonl").read_text().splitlines()]
    losses = [row["loss"] for row in logs if "loss" in row]
    assert len(losses) == 12 and sum(losses[-2:]) / 2 < sum(losses[:2]) / 2 - 0.3, losses
    config = json.loads((out / "adapter_config.json").read_text())
    assert config["r"] == 16 and {"q_proj", "v_proj", "down_proj"} <= set(config["target_modules"])
    assert (out / "adapter_model.safetensors").read_bytes() == (out / "checkpoint-24" / "adapter_model.safetensors").read_bytes()

    tok = AutoTokenizer.from_pretrained(built_model)
    sample = json.loads((beauty_dir / "beauty.jsonl").read_text().splitlines()[-1])
    ids = tok.apply_chat_template(sample["messages"][:2], add_generation_prompt=True, return_tensors="pt")
    base = AutoModelForCausalLM.from_pretrained(built_model)
    with torch.no_grad():
        before = base(ids).logits
        after = PeftModel.from_pretrained(base, out)(ids).logits
    assert (after - before).abs().max() > 1e-3


@pytest.mark.slow
def test_console_is_short_and_llamafactory_output_goes_to_train_log(resumed):
    rerun = resumed["rerun"]
    assert len(rerun.stdout.splitlines()) <= 6 and "input_ids" not in rerun.stdout + rerun.stderr
    assert len(rerun.stdout.splitlines()) <= 3 and "beauty: step" not in rerun.stderr  # finished: no progress line
    assert f"[train_lora] wrote {resumed['out']} in " in rerun.stdout.splitlines()[-1]
    assert "step 24/24, loss " in rerun.stdout.splitlines()[-1]
    # the run's peak memory (no GPU here: the training processes' summed RSS, sampled by the progress watcher)
    peak = json.loads((resumed["out"] / "peak_memory.json").read_text())
    assert peak["of"] == "RSS" and 100 < peak["peak_mb"] < 20000
    assert f", peak {peak['peak_mb']:.0f} MB RSS: " in rerun.stdout.splitlines()[-1]
    log = (resumed["out"] / "train.log").read_text()
    assert "input_ids" in log and log.count("=== ") == 2  # both runs, each under a header with its command


@pytest.mark.slow
def test_finished_module_is_skipped_and_retrained_when_data_or_model_change(resumed, built_model, beauty_dir, tmp_path):
    adapter = resumed["out"] / "adapter_model.safetensors"
    before = adapter.stat().st_mtime_ns
    again = run_train_lora("beauty", MODEL=built_model, DATA_DIR=beauty_dir, SAVE_DIR=resumed["save"], TRAIN_ARGS=EXTRA)
    assert again.returncode == 0 and "skipped: " in again.stdout and "up to date" in again.stdout
    assert adapter.stat().st_mtime_ns == before and "wrote" not in again.stdout

    data = tmp_path / "data"
    shutil.copytree(beauty_dir, data)  # the same content elsewhere is the same data
    assert dry_run(MODEL=built_model, DATA_DIR=data, SAVE_DIR=resumed["save"], TRAIN_ARGS=EXTRA)[1] == "skip"
    lines = (data / "beauty.jsonl").read_text().splitlines(keepends=True)
    (data / "beauty.jsonl").write_text("".join(lines[1:] + lines[:1]))
    _, plan, _, stdout = dry_run(MODEL=built_model, DATA_DIR=data, SAVE_DIR=resumed["save"], TRAIN_ARGS=EXTRA)
    assert plan == "fresh" and "trained from other inputs (data changed): retrained" in stdout

    model = tmp_path / "model"
    shutil.copytree(built_model, model)
    base = AutoModelForCausalLM.from_pretrained(model)
    with torch.no_grad():
        base.model.norm.weight.mul_(1.01)
    base.save_pretrained(model)
    _, plan, _, stdout = dry_run(MODEL=model, DATA_DIR=beauty_dir, SAVE_DIR=resumed["save"], TRAIN_ARGS=EXTRA)
    assert plan == "fresh" and "(model changed)" in stdout
    assert adapter.is_file()  # a dry run changes nothing


def test_single_process_run_does_not_force_torchrun(built_model, beauty_dir, tmp_path):
    env, plan, cmd, _ = dry_run(MODEL=built_model, DATA_DIR=beauty_dir, SAVE_DIR=tmp_path, FORCE_TORCHRUN="")
    assert "FORCE_TORCHRUN" not in env and "HF_DATASETS_CACHE" in env and plan == "fresh"
    assert "scripts/train_configs/tiny_cpu_lora.yaml" in cmd and f"output_dir={tmp_path}/beauty.partial" in cmd
    assert "bf16=false" in cmd and "fp16=false" in cmd
    assert list(tmp_path.iterdir()) == []


def test_any_registered_dataset_name_trains(built_model, beauty_dir, tmp_path):
    shutil.copy(beauty_dir / "beauty.jsonl", tmp_path / "sports_small.jsonl")
    register(str(tmp_path), ["sports_small"])
    _, plan, cmd, _ = dry_run("sports_small", MODEL=built_model, DATA_DIR=tmp_path, SAVE_DIR=tmp_path / "save")
    assert plan == "fresh" and "dataset=sports_small" in cmd


@pytest.mark.parametrize("dataset, env, message", [
    ("beauty_nope", {}, "error: dataset 'beauty_nope' is not registered in"),
    ("../beauty", {}, "error: dataset name '../beauty' is not a plain name"),
    ("beauty", {"MODEL": "no/such/model"}, "error: base model folder not found: no/such/model"),
    ("beauty", {"CONFIG": "no/such.yaml"}, "error: training config not found: no/such.yaml"),
    ("beauty", {"NPROC": "two"}, "error: NPROC must be a whole number"),
    ("beauty", {"DEEPSPEED": "ds.json"}, "error: DEEPSPEED is not supported"),
    ("beauty", {"TRAIN_ARGS": "deepspeed=ds.json"}, "error: DeepSpeed is not supported"),
    ("beauty", {"PRECISION": "bf16"}, "error: PRECISION=bf16 but there is no CUDA GPU here; use PRECISION=fp32"),
    ("beauty", {"PRECISION": "fp16"}, "error: PRECISION=fp16 but there is no CUDA GPU here"),
    ("beauty", {"PRECISION": "half"}, "error: PRECISION must be one of auto, bf16, fp16, fp32"),
    ("beauty", {"NPROC": "2", "TRAIN_ARGS": "load_best_model_at_end=true"},
     "error: load_best_model_at_end can deadlock several processes"),
    ("beauty", {"TRAIN_ARGS": "val_size=0.1 eval_strategy=steps eval_steps=5 save_steps=10 metric_for_best_model=eval_loss"},
     "error: save_steps must equal eval_steps"),
])
def test_bad_inputs_fail_in_one_line(built_model, beauty_dir, tmp_path, dataset, env, message):
    proc = run_train_lora(dataset, **{"MODEL": built_model, "DATA_DIR": beauty_dir, "SAVE_DIR": tmp_path, **env})
    assert proc.returncode == 2
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(message), proc.stderr
    assert list(tmp_path.iterdir()) == []


def test_prompts_longer_than_cutoff_len_are_refused_with_the_options(built_model, beauty_dir, tmp_path):
    proc = run_train_lora("beauty", MODEL=built_model, DATA_DIR=beauty_dir, SAVE_DIR=tmp_path, TRAIN_ARGS="cutoff_len=300")
    error = proc.stderr.strip()
    assert proc.returncode == 2 and "samples" in error and "are longer than cutoff_len 300 tokens (longest " in error
    assert 'raise cutoff_len (TRAIN_ARGS="cutoff_len=' in error and "lower HISTORY" in error


def test_missing_llamafactory_is_one_line(built_model, beauty_dir, tmp_path):
    """A Python without LLaMA-Factory (a venv made without it) is named, not a traceback."""
    bare = tmp_path / "bare"
    subprocess.run(["python3", "-m", "venv", "--without-pip", str(bare)], check=True)
    proc = run_train_lora("beauty", MODEL=built_model, DATA_DIR=beauty_dir, SAVE_DIR=tmp_path / "save",
                          PYTHON=bare / "bin" / "python")
    assert proc.returncode != 0
    assert proc.stderr.strip() == "error: LLaMA-Factory is not installed in this Python (pip install -r requirements.txt)"


def test_train_modules_skips_finished_and_resumes_partial_modules(built_model, beauty_dir, tmp_path):
    line = (beauty_dir / "beauty.jsonl").read_text().splitlines()[0] + "\n"
    names = ["sports", "sports_beauty", "sports_toys", "beauty", "toys", "sports_beauty_toys"]
    for name in names:
        (tmp_path / f"{name}.jsonl").write_text(line)
    register(str(tmp_path), names)
    save = tmp_path / "save"
    (save / "sports_beauty").mkdir(parents=True)
    (save / "sports_beauty" / "adapter_model.safetensors").write_bytes(b"done")
    (save / "toys.partial").mkdir()  # an interrupted module: an adapter at its top is not a finished one
    (save / "toys.partial" / "adapter_model.safetensors").write_bytes(b"partial")
    env = dict(os.environ, TARGET="sports", SOURCES="beauty toys", SOURCE_ONLY="1", MIXED_ALL="1", DRY_RUN="1",
               MODEL=str(built_model), DATA_DIR=str(tmp_path), SAVE_DIR=str(save))
    proc = subprocess.run(["bash", "scripts/train_modules.sh"], check=False, cwd=REPO, env=env, capture_output=True,
                          text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    trained = [arg.split("=", 1)[1] for out in proc.stdout.splitlines() if "llamafactory-cli" in out
               for arg in shlex.split(out) if arg.startswith("dataset=")]
    assert trained == ["sports", "sports_toys", "beauty", "toys", "sports_beauty_toys"]
    assert "sports_beauty: skipped" in proc.stdout and "toys: dry run" in proc.stdout


def test_failed_run_leaves_no_finished_looking_adapter_and_shows_the_log(built_model, beauty_dir, tmp_path):
    """Retraining over an old module that then fails must not leave the old adapter looking like the new one."""
    old = tmp_path / "beauty"
    old.mkdir()
    (old / "adapter_model.safetensors").write_bytes(b"old run")
    proc = run_train_lora("beauty", MODEL=built_model, DATA_DIR=beauty_dir, SAVE_DIR=tmp_path,
                          TRAIN_ARGS="no_such_argument=1", SKIP_EXISTING=0)
    assert proc.returncode == 1
    assert not old.exists() and not (tmp_path / "beauty.partial" / "adapter_model.safetensors").exists()
    first, *tail = proc.stderr.strip().splitlines()
    assert first == f"error: LLaMA-Factory failed on beauty (exit 1); the last lines of {tmp_path}/beauty.partial/train.log:"
    assert any("no_such_argument" in line for line in tail) and len(tail) <= 30


@pytest.mark.slow
def test_checkpoint_size_is_what_the_preflight_estimates(resumed, built_model):
    """models/estimate.py sizes the 7B module's disk from the same formula: check it on a real checkpoint."""
    import yaml

    from models import estimate

    cfg = json.loads((built_model / "config.json").read_text())
    train = yaml.safe_load((REPO / "scripts/train_configs/tiny_cpu_lora.yaml").read_text())
    folder = resumed["out"] / "checkpoint-24"
    real = sum(p.stat().st_size for p in folder.iterdir())
    assert abs(estimate.checkpoint_bytes(cfg, train, str(built_model)) - real) < 0.05 * real


def test_train_modules_in_parallel_gives_the_bytes_of_one_at_a_time(built_model, beauty_dir, tmp_path):
    """PARALLEL=2: two modules trained at once (on the same lines) are each the module trained alone."""
    data = tmp_path / "data"
    data.mkdir()
    lines = (beauty_dir / "beauty.jsonl").read_text().splitlines(keepends=True)[:16]
    for name in ("sports", "sports_beauty"):
        (data / f"{name}.jsonl").write_text("".join(lines))
    register(str(data), ["sports", "sports_beauty"])
    args = "num_train_epochs=2 save_steps=1000 learning_rate=1e-2"
    alone = run_train_lora("sports", MODEL=built_model, DATA_DIR=data, SAVE_DIR=tmp_path / "alone", TRAIN_ARGS=args)
    assert alone.returncode == 0, alone.stderr[-2000:]
    env = dict(os.environ, TARGET="sports", SOURCES="beauty", MODEL=str(built_model), DATA_DIR=str(data),
               SAVE_DIR=str(tmp_path / "save"), TRAIN_ARGS=args, PARALLEL="2")
    proc = subprocess.run(["bash", "scripts/train_modules.sh"], cwd=REPO, env=env, capture_output=True, text=True,
                          timeout=600, check=False)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    assert "2 modules at once" in proc.stdout and "sports_beauty: trained in" in proc.stdout
    reference = (tmp_path / "alone" / "sports" / "adapter_model.safetensors").read_bytes()
    for name in ("sports", "sports_beauty"):
        assert (tmp_path / "save" / name / "adapter_model.safetensors").read_bytes() == reference
        assert "[train_lora]" in (tmp_path / "save" / f"{name}.console.log").read_text()
    failing = subprocess.run(["bash", "scripts/train_modules.sh"], cwd=REPO, capture_output=True, text=True, timeout=600,
                             env=dict(env, SAVE_DIR=str(tmp_path / "failing"), TRAIN_ARGS="no_such_argument=1"), check=False)
    assert failing.returncode == 1 and "error: training failed for" in failing.stderr, failing.stderr[-2000:]
    assert "no_such_argument" in failing.stderr  # the end of a failed module's console names the cause
    assert not (tmp_path / "failing" / "sports" / "adapter_model.safetensors").exists()
    for bad, message in ((dict(PARALLEL="two"), "PARALLEL=two: a number"), (dict(NPROC="2"), "one at a time on several")):
        proc = subprocess.run(["bash", "scripts/train_modules.sh"], cwd=REPO, env=dict(env, **bad), capture_output=True,
                              text=True, timeout=60, check=False)
        assert proc.returncode == 2 and proc.stderr.startswith("error: ") and message in proc.stderr, proc.stderr
