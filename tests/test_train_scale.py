"""The Qwen2-7B configuration through scripts/train_lora.sh: LLaMA-Factory's torchrun launch really run with two
processes on CPU (gloo), evaluation and best-checkpoint selection as in qwen2_7b_lora.yaml, and the
configuration's settings as LLaMA-Factory reads them."""

import json
import shlex

import pytest
import torch
import yaml
from peft import PeftModel
from transformers import AutoModelForCausalLM, AutoTokenizer

from tests.helpers import REPO, run_train_lora

GPU_CONFIG = "scripts/train_configs/qwen2_7b_lora.yaml"
# qwen2_7b_lora.yaml at tiny scale: 16 training and 8 evaluation samples, 2 processes x batch 2, 5 epochs
# (20 steps), evaluated and saved every 2 steps; a constant high rate over-fits, so the best is not the last
SMALL = ("max_samples=24 val_size=8 num_train_epochs=5 eval_steps=2 save_steps=2 gradient_accumulation_steps=1 "
         "per_device_eval_batch_size=4 logging_steps=1 learning_rate=2e-2 lr_scheduler_type=constant warmup_ratio=0 "
         "preprocessing_num_workers=1 ddp_timeout=120")


@pytest.fixture(scope="module")
def two_processes(built_model, beauty_dir, tmp_path_factory):
    save = tmp_path_factory.mktemp("save-ddp")
    # PATH without the environment's bin/: LLaMA-Factory starts `torchrun` by name, train_lora.sh must find it
    proc = run_train_lora("beauty", timeout=600, MODEL=built_model, DATA_DIR=beauty_dir, SAVE_DIR=save, NPROC=2,
                          CONFIG=GPU_CONFIG, TRAIN_ARGS=SMALL, OMP_NUM_THREADS=1, PATH="/usr/local/bin:/usr/bin:/bin")
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return save / "beauty", proc


def expected_best(out):
    """The step with the lowest eval_loss among the kept checkpoints and the final model, read independently
    of models/train_finish.py from what transformers and LLaMA-Factory wrote."""
    state = json.loads((out / "trainer_state.json").read_text())
    evals = {row["step"]: row["eval_loss"] for row in state["log_history"] if "eval_loss" in row}
    evals[state["global_step"]] = json.loads((out / "eval_results.json").read_text())["eval_loss"]
    kept = {int(p.name.split("-")[1]) for p in out.glob("checkpoint-*")}
    best = min(evals, key=lambda step: (evals[step], step))
    assert best in kept, "transformers' rotation must keep the best checkpoint"
    return best, state


@pytest.mark.slow
def test_two_processes_train_evaluate_and_keep_the_best_adapter(two_processes, built_model, beauty_dir):
    out, proc = two_processes
    log = (out / "train.log").read_text()
    assert "world size: 2" in log and "Process rank: 1" in log
    assert json.loads((out / "weaverec_train.json").read_text())["inputs"]["world_size"] == 2
    assert "precision fp32: the config asks for bf16 but there is no CUDA GPU here" in proc.stdout

    best, state = expected_best(out)
    kept = sorted(int(p.name.split("-")[1]) for p in out.glob("checkpoint-*"))
    assert len(kept) <= 3 and state["global_step"] == 20 and kept[-1] == 20  # save_total_limit 3
    assert str(state["best_model_checkpoint"]).endswith(f"checkpoint-{best}") or best == 20
    top = (out / "adapter_model.safetensors").read_bytes()
    assert top == (out / f"checkpoint-{best}" / "adapter_model.safetensors").read_bytes()
    assert f"adapter of {'the last step' if best == 20 else f'checkpoint-{best}'} (step {best}, eval_loss" in proc.stdout

    sample = json.loads((beauty_dir / "beauty.jsonl").read_text().splitlines()[-1])
    ids = AutoTokenizer.from_pretrained(built_model).apply_chat_template(sample["messages"][:2], return_tensors="pt")
    base = AutoModelForCausalLM.from_pretrained(built_model)
    with torch.no_grad():
        before = base(ids).logits
        after = PeftModel.from_pretrained(base, out)(ids).logits
    assert (after - before).abs().max() > 1e-3


def dry_run(**env):
    proc = run_train_lora("beauty", DRY_RUN=1, **env)
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.strip().splitlines()
    env_lines = [line for line in lines if "=" in line.split(" ", 1)[0] and not line.startswith("[")]
    return dict(line.split("=", 1) for line in env_lines), shlex.split(lines[-1])


def test_multi_gpu_command_uses_llamafactory_torchrun_and_the_7b_config(built_model, beauty_dir, tmp_path):
    from llamafactory.hparams.parser import _TRAIN_ARGS
    from omegaconf import OmegaConf

    env, cmd = dry_run(MODEL=built_model, DATA_DIR=beauty_dir, SAVE_DIR=tmp_path, NPROC=8, NNODES=2, NODE_RANK=0,
                       MASTER_ADDR="10.0.0.1", MASTER_PORT=29500, CONFIG=GPU_CONFIG)
    assert env["FORCE_TORCHRUN"] == "1" and env["NPROC_PER_NODE"] == "8" and env["NNODES"] == "2"
    assert env["MASTER_ADDR"] == "10.0.0.1" and env["MASTER_PORT"] == "29500" and env["NODE_RANK"] == "0"
    assert cmd[0].endswith("llamafactory-cli") and cmd[1:3] == ["train", GPU_CONFIG]
    # the arguments LLaMA-Factory will see: the YAML merged with the overrides, as its read_args does
    args = OmegaConf.to_container(OmegaConf.merge(yaml.safe_load((REPO / GPU_CONFIG).read_text()),
                                                  OmegaConf.from_cli(cmd[3:])))
    known = {f for cls in _TRAIN_ARGS for f in cls.__dataclass_fields__}
    assert set(args) <= known, set(args) - known
    paper = {"lora_rank": 16, "lora_dropout": 0.05, "lora_target": "all", "learning_rate": 2e-4,
             "lr_scheduler_type": "cosine", "num_train_epochs": 2.0, "per_device_train_batch_size": 2,
             "gradient_accumulation_steps": 8, "warmup_ratio": 0.05, "val_size": 0.02, "eval_steps": 30,
             "save_steps": 30, "seed": 42, "template": "qwen", "stage": "sft", "finetuning_type": "lora",
             "trust_remote_code": False}
    assert {k: args[k] for k in paper} == paper
    # what holds at scale: no deadlocking best-model reload, a bounded number of checkpoints, a timeout in minutes
    scale = {"load_best_model_at_end": False, "metric_for_best_model": "eval_loss", "save_total_limit": 3,
             "ddp_timeout": 1800, "cutoff_len": 6144, "eval_strategy": "steps"}
    assert {k: args[k] for k in scale} == scale
    assert args["bf16"] is False and args["fp16"] is False  # no GPU here: fp32, said in one line
    assert args["dataset"] == "beauty" and args["output_dir"] == f"{tmp_path}/beauty.partial"
    assert args["model_name_or_path"] == str(built_model) and "deepspeed" not in args
