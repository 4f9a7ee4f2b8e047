"""LoRA training through LLaMA-Factory with scripts/train_lora.sh: real run on Beauty, errors, multi-GPU command."""

import json
import os
import shlex
import subprocess

import pytest
import torch
import yaml
from peft import PeftModel
from transformers import AutoModelForCausalLM, AutoTokenizer

from tests.helpers import REPO

GPU_CONFIG = "scripts/train_configs/qwen2_7b_lora.yaml"
DS_CONFIG = "scripts/train_configs/ds_z2_config.json"


def train_lora(dataset, **env):
    """Run scripts/train_lora.sh as a user does, with path variables from `env`."""
    full = dict(os.environ, **{k: str(v) for k, v in env.items()})
    return subprocess.run(["bash", "scripts/train_lora.sh", dataset], check=False, cwd=REPO, env=full,
                          capture_output=True, text=True, timeout=900)


@pytest.fixture(scope="module")
def trained(built_model, beauty_dir, tmp_path_factory):
    save = tmp_path_factory.mktemp("save")
    # 12 epochs over 16 real samples (24 steps): a LoRA that learns lowers the loss on them
    proc = train_lora("beauty", MODEL=built_model, DATA_DIR=beauty_dir, SAVE_DIR=save,
                      EXTRA="max_samples=16 num_train_epochs=12 logging_steps=2 save_steps=12 "
                            "learning_rate=1e-2 warmup_ratio=0")
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return save / "beauty"


@pytest.mark.slow
def test_lora_trains_loss_falls_and_adapter_changes_the_model(trained, built_model, beauty_dir):
    assert (trained / "adapter_config.json").is_file() and (trained / "training_loss.png").is_file()
    assert (trained / "checkpoint-12" / "adapter_model.safetensors").is_file()
    logs = [json.loads(line) for line in (trained / "trainer_log.jsonl").read_text().splitlines()]
    losses = [row["loss"] for row in logs if "loss" in row]
    assert len(losses) == 12 and sum(losses[-2:]) / 2 < sum(losses[:2]) / 2 - 0.3, losses
    config = json.loads((trained / "adapter_config.json").read_text())
    assert config["r"] == 16 and {"q_proj", "v_proj", "down_proj"} <= set(config["target_modules"])

    tok = AutoTokenizer.from_pretrained(built_model)
    sample = json.loads((beauty_dir / "beauty.jsonl").read_text().splitlines()[-1])
    ids = tok.apply_chat_template(sample["messages"][:2], add_generation_prompt=True, return_tensors="pt")
    base = AutoModelForCausalLM.from_pretrained(built_model)
    with torch.no_grad():
        before = base(ids).logits
        after = PeftModel.from_pretrained(base, trained)(ids).logits
    assert (after - before).abs().max() > 1e-3


def dry_run(**env):
    proc = train_lora("beauty", DRY_RUN=1, **env)
    assert proc.returncode == 0, proc.stderr
    *env_lines, command = proc.stdout.strip().splitlines()
    return dict(line.split("=", 1) for line in env_lines), shlex.split(command)


def test_multi_gpu_command_uses_llamafactory_torchrun_and_paper_config(built_model, beauty_dir, tmp_path):
    from llamafactory.hparams.parser import _TRAIN_ARGS
    from omegaconf import OmegaConf

    env, cmd = dry_run(MODEL=built_model, DATA_DIR=beauty_dir, SAVE_DIR=tmp_path, NPROC=8,
                       CONFIG=GPU_CONFIG, DEEPSPEED=DS_CONFIG)
    assert env["FORCE_TORCHRUN"] == "1" and env["NPROC_PER_NODE"] == "8"
    assert cmd[0].endswith("llamafactory-cli") and cmd[1:3] == ["train", GPU_CONFIG]
    # the arguments LLaMA-Factory will see: the YAML merged with the overrides, as its read_args does
    args = OmegaConf.to_container(OmegaConf.merge(yaml.safe_load((REPO / GPU_CONFIG).read_text()),
                                                  OmegaConf.from_cli(cmd[3:])))
    known = {f for cls in _TRAIN_ARGS for f in cls.__dataclass_fields__}
    assert set(args) <= known, set(args) - known
    paper = {"lora_rank": 16, "lora_dropout": 0.05, "lora_target": "all", "cutoff_len": 1200,
             "learning_rate": 2e-4, "lr_scheduler_type": "cosine", "num_train_epochs": 2.0, "bf16": True,
             "per_device_train_batch_size": 2, "gradient_accumulation_steps": 8, "warmup_ratio": 0.05,
             "val_size": 0.02, "eval_steps": 30, "save_steps": 30, "load_best_model_at_end": True, "seed": 42,
             "template": "qwen", "stage": "sft", "finetuning_type": "lora", "trust_remote_code": False}
    assert {k: args[k] for k in paper} == paper
    assert args["dataset"] == "beauty" and args["output_dir"] == f"{tmp_path}/beauty"
    assert args["model_name_or_path"] == str(built_model) and args["deepspeed"] == DS_CONFIG
    ds = json.loads((REPO / DS_CONFIG).read_text())
    assert ds["zero_optimization"]["stage"] == 2 and ds["train_micro_batch_size_per_gpu"] == "auto"


def test_single_process_run_does_not_force_torchrun(built_model, beauty_dir, tmp_path):
    env, cmd = dry_run(MODEL=built_model, DATA_DIR=beauty_dir, SAVE_DIR=tmp_path, FORCE_TORCHRUN="")
    assert "FORCE_TORCHRUN" not in env and "HF_DATASETS_CACHE" in env
    assert "scripts/train_configs/tiny_cpu_lora.yaml" in cmd and f"output_dir={tmp_path}/beauty" in cmd


@pytest.mark.parametrize("dataset, env, message", [
    ("beauty_nope", {}, "error: unknown dataset name 'beauty_nope'"),
    ("beauty_sports", {}, "error: dataset 'beauty_sports' is not registered in"),
    ("beauty", {"MODEL": "no/such/model"}, "error: base model folder not found: no/such/model"),
    ("beauty", {"CONFIG": "no/such.yaml"}, "error: training config not found: no/such.yaml"),
    ("beauty", {"NPROC": "two"}, "error: NPROC must be a whole number"),
])
def test_bad_inputs_fail_in_one_line(built_model, beauty_dir, tmp_path, dataset, env, message):
    proc = train_lora(dataset, **{"MODEL": built_model, "DATA_DIR": beauty_dir, "SAVE_DIR": tmp_path, **env})
    assert proc.returncode != 0
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(message), proc.stderr
    assert list(tmp_path.iterdir()) == []


def test_missing_llamafactory_is_one_line(built_model, beauty_dir, tmp_path):
    """A Python without LLaMA-Factory (a venv made without it) is named, not a traceback."""
    bare = tmp_path / "bare"
    subprocess.run(["python3", "-m", "venv", "--without-pip", str(bare)], check=True)
    proc = train_lora("beauty", MODEL=built_model, DATA_DIR=beauty_dir, SAVE_DIR=tmp_path / "save",
                      PYTHON=bare / "bin" / "python")
    assert proc.returncode != 0
    assert proc.stderr.strip() == "error: LLaMA-Factory is not installed in this Python (pip install -r requirements.txt)"


def test_train_modules_trains_target_hybrids_and_comparisons_skipping_finished(built_model, beauty_dir, tmp_path):
    from common.dataset_info import register

    line = (beauty_dir / "beauty.jsonl").read_text().splitlines()[0] + "\n"
    names = ["sports", "sports_beauty", "sports_toys", "beauty", "toys", "sports_beauty_toys"]
    for name in names:
        (tmp_path / f"{name}.jsonl").write_text(line)
    register(str(tmp_path), names)
    (tmp_path / "save" / "sports_beauty").mkdir(parents=True)
    (tmp_path / "save" / "sports_beauty" / "adapter_model.safetensors").write_bytes(b"done")
    env = dict(os.environ, TARGET="sports", SOURCES="beauty toys", SOURCE_ONLY="1", MIXED_ALL="1", DRY_RUN="1",
               MODEL=str(built_model), DATA_DIR=str(tmp_path), SAVE_DIR=str(tmp_path / "save"))
    proc = subprocess.run(["bash", "scripts/train_modules.sh"], check=False, cwd=REPO, env=env, capture_output=True,
                          text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    trained = [arg.split("=", 1)[1] for out in proc.stdout.splitlines() if "llamafactory-cli" in out
               for arg in shlex.split(out) if arg.startswith("dataset=")]
    assert trained == ["sports", "sports_toys", "beauty", "toys", "sports_beauty_toys"]
    assert "sports_beauty: skipped" in proc.stdout


def test_failed_run_leaves_no_finished_looking_adapter(built_model, beauty_dir, tmp_path):
    """Retraining over an old module that then fails must not leave the old adapter looking like the new one."""
    old = tmp_path / "beauty"
    old.mkdir()
    (old / "adapter_model.safetensors").write_bytes(b"old run")
    proc = train_lora("beauty", MODEL=built_model, DATA_DIR=beauty_dir, SAVE_DIR=tmp_path, EXTRA="no_such_argument=1")
    assert proc.returncode != 0
    assert not (old / "adapter_model.safetensors").exists()
