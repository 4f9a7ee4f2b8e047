"""scripts/preflight.sh on this CPU machine: one line per check, exit 1 when something will fail; and the
estimates behind it, against transformers' and PEFT's own parameter counts."""

import json
import os
import shutil
import subprocess

import pytest
import torch

from models import estimate
from models.preflight import Report, check_model
from tests.helpers import REAL_TOKENIZER, REPO

GPU_CONFIG = "scripts/train_configs/qwen2_7b_lora.yaml"
# Qwen2-7B-Instruct's published config.json (the shapes that matter)
QWEN2_7B = {"architectures": ["Qwen2ForCausalLM"], "model_type": "qwen2", "hidden_size": 3584,
            "intermediate_size": 18944, "num_hidden_layers": 28, "num_attention_heads": 28, "num_key_value_heads": 4,
            "vocab_size": 152064, "tie_word_embeddings": False, "max_position_embeddings": 32768,
            "rope_theta": 1000000.0, "rms_norm_eps": 1e-06, "torch_dtype": "bfloat16"}


@pytest.fixture(scope="module")
def qwen2_7b_folder(tmp_path_factory):
    """A Qwen2-7B-Instruct folder as a user downloads it, minus the weights' content: its config, the real
    tokenizer, an (empty) weight file."""
    out = tmp_path_factory.mktemp("Qwen2-7B-Instruct")
    for name in os.listdir(REAL_TOKENIZER):
        shutil.copyfile(REAL_TOKENIZER / name, out / name)
    (out / "config.json").write_text(json.dumps(QWEN2_7B))
    (out / "model-00001-of-00004.safetensors").write_bytes(b"")
    return out


@pytest.fixture(scope="module")
def bare_venv(tmp_path_factory):
    """An environment that starts but has none of the packages (as a half-made .venv-vllm)."""
    out = tmp_path_factory.mktemp("bare") / "venv"
    subprocess.run(["python3", "-m", "venv", "--without-pip", str(out)], check=True)
    return out


def preflight(**env):
    full = dict(os.environ, **{k: str(v) for k, v in env.items()})
    proc = subprocess.run(["bash", "scripts/preflight.sh"], cwd=REPO, env=full, capture_output=True, text=True,
                          timeout=600, check=False)
    lines = {line[6:].split(":", 1)[0]: (line[:4].strip(), line[6:]) for line in proc.stdout.splitlines()
             if line[:4].strip() in ("ok", "warn", "FAIL")}
    return proc, lines


def test_tiny_pipeline_passes_on_this_cpu(built_model, bare_venv, tmp_path):
    proc, lines = preflight(MODEL=built_model, SAVE_DIR=tmp_path / "save", VLLM_VENV=bare_venv)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert proc.stdout.strip().splitlines()[-1] == "preflight: all checks pass"
    assert lines["training env"][0] == "ok" and "llamafactory 0.9.3" in lines["training env"][1]
    assert lines["vLLM env"][0] == "warn" and "cannot import" in lines["vLLM env"][1]  # hf inference needs no vLLM
    assert lines["torch"] == ("warn", f"torch: {torch.__version__}, a CPU build (no CUDA): training and inference "
                                      "run on the CPU")
    assert lines["GPUs"][0] == "warn" and all(lines[k][0] == "ok" for k in
                                              ("model", "tokenizer", "disk", "training memory", "inference memory"))
    assert len(proc.stdout.strip().splitlines()) == len(lines) + 1  # one line per check and the verdict


def test_7b_job_on_this_cpu_fails_where_it_would(qwen2_7b_folder, bare_venv, tmp_path):
    proc, lines = preflight(MODEL=qwen2_7b_folder, CONFIG=GPU_CONFIG, NPROC=8, BACKEND="vllm", VLLM_VENV=bare_venv,
                            MODULES=10**6, SAVE_DIR=tmp_path)
    assert proc.returncode == 1
    assert lines["model"] == ("ok", f"model: {qwen2_7b_folder}: Qwen2ForCausalLM, 7.62B parameters, 1 weight files")
    assert lines["tokenizer"][0] == "ok"
    failing = {k for k, (status, _) in lines.items() if status == "FAIL"}
    assert failing == {"vLLM env", "GPUs", "disk", "training memory", "inference memory"}
    assert "none visible but NPROC=8; the config's bf16 becomes fp32" in lines["GPUs"][1]
    ckpt = estimate.checkpoint_bytes(QWEN2_7B, {"lora_rank": 16, "lora_target": "all"}, str(qwen2_7b_folder))
    assert f"3 checkpoints of {estimate.gib(ckpt)}" in lines["disk"][1]
    assert proc.stdout.strip().splitlines()[-1] == "preflight: 5 checks fail"


def test_missing_environment_and_wrong_model_are_failures(tmp_path):
    model = tmp_path / "gemma2"
    model.mkdir()
    (model / "config.json").write_text(json.dumps({"model_type": "gemma2", "architectures": ["Gemma2ForCausalLM"]}))
    proc, lines = preflight(MODEL=model, VENV=tmp_path / "no-venv", VLLM_VENV=tmp_path / "no-vllm")
    assert proc.returncode == 1
    assert lines["training env"] == ("FAIL", f"training env: {tmp_path}/no-venv not found (bash scripts/setup.sh)")
    assert lines["model"] == ("FAIL", (f"model: {model} is a 'gemma2' model ['Gemma2ForCausalLM'], which WeaveRec does "
                                       "not know; supported model types: qwen2 (Qwen2, Qwen2.5), llama (Llama-3 chat "
                                       "models), mistral (Mistral); TEMPLATE=<LLaMA-Factory template> trains another "
                                       "model with that template"))


def test_tokenizer_without_chat_template_fails(qwen2_7b_folder, tmp_path, capsys):
    model = tmp_path / "model"
    shutil.copytree(qwen2_7b_folder, model)
    os.remove(model / "chat_template.jinja")
    tok_cfg = json.loads((model / "tokenizer_config.json").read_text())
    tok_cfg.pop("chat_template", None)
    (model / "tokenizer_config.json").write_text(json.dumps(tok_cfg))
    report = Report()
    assert check_model(report, str(model)) is None and report.failed == 1
    assert capsys.readouterr().out.splitlines()[-1] == f"FAIL  tokenizer: {model}: no chat template"


def test_parameter_counts_match_transformers_and_peft(built_model):
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM, Qwen2Config, Qwen2ForCausalLM

    with torch.device("meta"):
        big = Qwen2ForCausalLM(Qwen2Config(**{k: v for k, v in QWEN2_7B.items() if k != "architectures"}))
    assert estimate.param_count(QWEN2_7B) == sum(p.numel() for p in big.parameters()) == 7_615_616_512

    cfg = json.loads((built_model / "config.json").read_text())
    model = AutoModelForCausalLM.from_pretrained(built_model)
    assert estimate.param_count(cfg) == sum(p.numel() for p in model.parameters())
    peft = get_peft_model(model, LoraConfig(r=16, target_modules=list(estimate.projections(cfg)), task_type="CAUSAL_LM"))
    trainable = sum(p.numel() for p in peft.parameters() if p.requires_grad)
    assert estimate.lora_params(cfg, 16, "all") == trainable
    assert estimate.lora_params(cfg, 16, "q_proj,v_proj") == sum(
        p.numel() for n, p in peft.named_parameters() if p.requires_grad and ("q_proj" in n or "v_proj" in n))


def test_qwen2_7b_figures():
    """The figures docs/gpu.md gives: a rank-16 adapter on all 7 projections, KV cache per token in bf16."""
    assert estimate.lora_params(QWEN2_7B, 16, "all") == 40_370_176
    assert estimate.kv_bytes_per_token(QWEN2_7B, "bf16") == 2 * 28 * 4 * 128 * 2 == 56 * 1024
