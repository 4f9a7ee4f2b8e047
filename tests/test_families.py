"""Base models of every supported family (models/families.py: Qwen2, Llama-3, Mistral): LLaMA-Factory's template
is taken from the model and said in the training line; the prompts a module is trained on (LLaMA-Factory's own
encoding) equal the ones inference builds (the tokenizer's chat template) token for token, with and without a
system message, and the answer ends with a token inference stops at; one-line errors for a model type WeaveRec
does not know, a model without a chat template, a TEMPLATE foreign to the tokenizer, and a chat template that
formats prompts otherwise than LLaMA-Factory (Llama-3.1's); the 8B and 7B configs and the preflight's figures
for their shapes. Training, merging, learned weights and both backends: tests/test_families_vllm.py."""

import json
import re
import shlex
import shutil

import pytest
import torch
import yaml

from common.chat import prompt_ids, stop_ids
from common.cli import UserError
from common.dataset_info import register
from common.prompt import parse_user_prompt, sample_parts, user_prompt
from models import estimate
from models.families import check_prompts, choose_template
from models.preflight import Report, check_model
from tests.helpers import FAMILIES, REPO, TARGETS, read_lines, run_train_lora

# each family's published prompt format, written out here (the reference: not the code under test)
FORMATS = {
    "qwen2": "<|im_start|>system\n{system}<|im_end|>\n<|im_start|>user\n{user}<|im_end|>\n<|im_start|>assistant\n",
    "llama3": "<|begin_of_text|><|start_header_id|>system<|end_header_id|>\n\n{system}<|eot_id|>"
              "<|start_header_id|>user<|end_header_id|>\n\n{user}<|eot_id|><|start_header_id|>assistant<|end_header_id|>\n\n",
    "mistral": "<s>[INST] {system}\n\n{user}[/INST]",  # no system role: the system text opens the user's turn
}
NAMES = {"qwen2": "Qwen2 / Qwen2.5", "llama3": "Llama-3", "mistral": "Mistral"}
# the published config.json shapes (transformers 4.x style)
LLAMA31_8B = {"architectures": ["LlamaForCausalLM"], "model_type": "llama", "hidden_size": 4096,
              "intermediate_size": 14336, "num_hidden_layers": 32, "num_attention_heads": 32, "num_key_value_heads": 8,
              "vocab_size": 128256, "tie_word_embeddings": False, "max_position_embeddings": 131072,
              "rope_theta": 500000.0, "rope_scaling": {"factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
                                                       "original_max_position_embeddings": 8192, "rope_type": "llama3"},
              "attention_bias": False, "mlp_bias": False, "rms_norm_eps": 1e-05, "torch_dtype": "bfloat16"}
MISTRAL_7B = {"architectures": ["MistralForCausalLM"], "model_type": "mistral", "hidden_size": 4096,
              "intermediate_size": 14336, "num_hidden_layers": 32, "num_attention_heads": 32, "num_key_value_heads": 8,
              "vocab_size": 32768, "tie_word_embeddings": False, "max_position_embeddings": 32768,
              "rope_theta": 1000000.0, "sliding_window": None, "rms_norm_eps": 1e-05, "torch_dtype": "bfloat16"}
CONFIGS = {"llama3": "scripts/train_configs/llama3_8b_lora.yaml", "mistral": "scripts/train_configs/mistral_7b_lora.yaml"}
# Meta's Llama-3.1 chat template's way (written here): two date lines open every system turn
LLAMA31_STYLE = (
    "{{- bos_token }}{%- if messages[0]['role'] == 'system' %}{%- set system_message = messages[0]['content'] | trim %}"
    "{%- set messages = messages[1:] %}{%- else %}{%- set system_message = '' %}{%- endif %}"
    "{{- '<|start_header_id|>system<|end_header_id|>\n\nCutting Knowledge Date: December 2023\nToday Date: 26 Jul 2024"
    "\n\n' + system_message + '<|eot_id|>' }}"
    "{%- for message in messages %}{{- '<|start_header_id|>' + message['role'] + '<|end_header_id|>\n\n'"
    " + message['content'] | trim + '<|eot_id|>' }}{%- endfor %}"
    "{%- if add_generation_prompt %}{{- '<|start_header_id|>assistant<|end_header_id|>\n\n' }}{%- endif %}"
)


def tokenizer(model):
    """The tokenizer as inference loads it (not LLaMA-Factory's, which replaces the eos of some templates)."""
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(model)


def copy_model(model, out, chat_template=None, **config):
    """A copy of a model folder with config.json keys changed and a chat template replaced (None: kept, "": gone)."""
    shutil.copytree(model, out)
    cfg = json.loads((out / "config.json").read_text())
    (out / "config.json").write_text(json.dumps({**cfg, **config}))
    if chat_template is not None:
        (out / "chat_template.jinja").unlink()
        tok_cfg = json.loads((out / "tokenizer_config.json").read_text())
        tok_cfg.pop("chat_template", None)
        (out / "tokenizer_config.json").write_text(json.dumps(tok_cfg))
        if chat_template:
            (out / "chat_template.jinja").write_text(chat_template)
    return out


@pytest.fixture(scope="module")
def data_dir(real_test_file, tmp_path_factory):
    """12 real Beauty samples registered as the dataset "beauty"."""
    out = tmp_path_factory.mktemp("families-data")
    shutil.copyfile(real_test_file, out / "beauty.jsonl")
    register(out, ["beauty"])
    return out


@pytest.mark.parametrize("family", list(FAMILIES))
def test_training_prompts_equal_inference_prompts_token_for_token(family, family_model, real_test_file):
    from inference.records import neutral_prompt_ids
    from models.check_lengths import load_template

    model = str(family_model(family))
    template = FAMILIES[family][1]
    assert choose_template(model)[0] == template
    lf_tok, lf_template = load_template(model, template)  # as LLaMA-Factory sets them up for training
    tok = tokenizer(model)
    stops = stop_ids(tok)
    for sample in read_lines(real_test_file):
        system, user, answer = sample_parts(sample)
        turns = [{"role": "user", "content": user}, {"role": "assistant", "content": answer}]
        trained, answer_ids = lf_template.encode_oneturn(lf_tok, turns, system=system)
        assert trained == prompt_ids(tok, system, user)
        assert tok.decode(trained) == FORMATS[family].format(system=system, user=user)
        # without a system message both sides fall back alike (Qwen2: its default system; the others: none)
        bare, _ = lf_template.encode_oneturn(lf_tok, turns, system=None)
        assert bare == list(tok.apply_chat_template(turns[:1], add_generation_prompt=True, tokenize=True))
        # the answer: its text, then a token generation stops at (Qwen2's newline after it is never generated)
        end = next(k for k, t in enumerate(answer_ids) if t in stops)
        assert tok.decode(answer_ids[:end], skip_special_tokens=True) == answer
        assert tok.decode(answer_ids[end + 1:]).strip() == ""
        # the calibrated score's neutral prompt: the same prompt with an empty history, for every tokenizer
        _, candidates = parse_user_prompt(user)
        assert neutral_prompt_ids(tok, trained) == prompt_ids(tok, system, user_prompt([], candidates))
    check_prompts(model, sample, lf_tok, lf_template, template)  # the check train_lora.sh runs: passes


@pytest.mark.parametrize("family", list(FAMILIES))
def test_constrained_mode_allows_the_token_path_training_writes(family, family_model, real_test_file):
    """The answer's tokens as LLaMA-Factory encodes them for training are a path of the candidate automaton,
    read as the answer's titles: constrained decoding offers the model the tokens it learned (a SentencePiece
    tokenizer writes the first title "▁Title" and the later ones "Title")."""
    from inference.constrained import CandidateConstraint
    from models.check_lengths import load_template

    model = str(family_model(family))
    lf_tok, lf_template = load_template(model, FAMILIES[family][1])
    tok = tokenizer(model)
    for sample in read_lines(real_test_file):
        system, user, answer = sample_parts(sample)
        turns = [{"role": "user", "content": user}, {"role": "assistant", "content": answer}]
        _, answer_ids = lf_template.encode_oneturn(lf_tok, turns, system=system)
        end = answer_ids.index(tok.eos_token_id)
        constraint = CandidateConstraint(parse_user_prompt(user)[1], tok, tok.eos_token_id)
        assert constraint.parse(answer_ids[:end + 1]) == answer.split("||")


@pytest.mark.parametrize("family", ["llama3", "mistral"])
def test_lora_targets_are_named_as_qwen2s(family, family_model):
    """LLaMA-Factory's lora_target all finds the same seven projections in every family; so do merging,
    learned weights and vLLM's LoRA (tests/test_families_vllm.py)."""
    from llamafactory.model.model_utils.misc import find_all_linear_modules
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(family_model(family))
    cfg = json.loads((family_model(family) / "config.json").read_text())
    assert sorted(find_all_linear_modules(model, freeze_vision_tower=True)) == sorted(TARGETS)
    assert sorted(estimate.projections(cfg)) == sorted(TARGETS)
    assert estimate.param_count(cfg) == sum(p.numel() for p in model.parameters())


def dry_run(data_dir, save, **env):
    proc = run_train_lora("beauty", DATA_DIR=data_dir, SAVE_DIR=save, DRY_RUN=1, **env)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return proc.stdout, shlex.split(proc.stdout.strip().splitlines()[-1])


@pytest.mark.parametrize("family", ["llama3", "mistral"])
def test_template_comes_from_the_model_and_is_said(family, family_model, data_dir, tmp_path):
    model = family_model(family)
    model_type, template = FAMILIES[family]
    out, cmd = dry_run(data_dir, tmp_path, MODEL=model, CONFIG=CONFIGS[family])
    assert f"template {template} ({NAMES[family]} chat format, model type {model_type})" in out
    assert f"template={template}" in cmd and cmd[2] == CONFIGS[family]
    out, cmd = dry_run(data_dir, tmp_path, MODEL=model, TEMPLATE=template)
    assert f"template {template} (TEMPLATE={template})" in out and f"template={template}" in cmd


@pytest.mark.parametrize("case", ["unknown model type", "no chat template", "TEMPLATE of another family"])
def test_bad_input_is_one_line(case, family_model, data_dir, tmp_path):
    llama = family_model("llama3")
    env, message = {}, None
    if case == "unknown model type":
        model = copy_model(llama, tmp_path / "model", model_type="gemma2", architectures=["Gemma2ForCausalLM"])
        message = (f"error: {model} is a 'gemma2' model, which WeaveRec does not know; supported model types: "
                   "qwen2 (Qwen2, Qwen2.5), llama (Llama-3 chat models), mistral (Mistral); "
                   "TEMPLATE=<LLaMA-Factory template> trains another model with that template")
    elif case == "no chat template":
        model = copy_model(llama, tmp_path / "model", chat_template="")
        message = f"error: {model} has no chat template (no chat_template.jinja, no chat_template in tokenizer_config.json)"
    else:
        model, env = llama, {"TEMPLATE": "qwen"}
        message = (f"error: TEMPLATE=qwen writes <|im_start|> <|im_end|>, which the tokenizer of {model} does not "
                   "have as special tokens (its chat format is Llama-3: TEMPLATE=llama3, or leave TEMPLATE unset")
    proc = run_train_lora("beauty", MODEL=model, DATA_DIR=data_dir, SAVE_DIR=tmp_path / "save", DRY_RUN=1, **env)
    lines = proc.stderr.strip().splitlines()
    assert proc.returncode == 2 and len(lines) == 1 and lines[0].startswith(message), proc.stderr
    assert not (tmp_path / "save").exists()


def test_chat_template_unlike_the_training_template_stops_training(family_model, data_dir, tmp_path):
    """Meta's Llama-3.1 template writes date lines into the system turn, LLaMA-Factory's llama3 does not: the
    check before training names the first token that differs, in one line."""
    model = copy_model(family_model("llama3"), tmp_path / "llama31", chat_template=LLAMA31_STYLE)
    proc = run_train_lora("beauty", MODEL=model, DATA_DIR=data_dir, SAVE_DIR=tmp_path / "save")
    lines = proc.stderr.strip().splitlines()
    assert proc.returncode == 2 and len(lines) == 1, proc.stderr
    assert lines[0].startswith(f"error: LLaMA-Factory's 'llama3' template and the chat template of {model} (what "
                               "inference builds prompts with) differ from prompt token ")
    assert re.search(r"token \d+: '(Y|You)[^']*' against '(C|Cut)[^']*'", lines[0]), lines[0]
    assert not (tmp_path / "save").exists()


def test_answer_ending_with_a_token_inference_does_not_stop_at_is_refused(family_model, real_test_file, tmp_path):
    from models.check_lengths import load_template

    model = tmp_path / "llama"
    shutil.copytree(family_model("llama3"), model)
    tok_cfg = json.loads((model / "tokenizer_config.json").read_text())
    (model / "tokenizer_config.json").write_text(json.dumps({**tok_cfg, "eos_token": "<|end_of_text|>"}))
    lf_tok, lf_template = load_template(str(model), "llama3")
    with pytest.raises(UserError, match=r"'llama3' template ends answers with .*<\|eot_id\|>' but inference stops "
                                        r"at <\|end_of_text\|> \(the eos and pad tokens of "):
        check_prompts(str(model), read_lines(real_test_file)[0], lf_tok, lf_template, "llama3")


def test_gpu_configs_keep_qwen2s_hyperparameters():
    """The Llama and Mistral configs are the Qwen2 one but for the model and cutoff_len; no config pins a
    template (train_lora.sh takes the model's own)."""
    def load(path):
        return yaml.safe_load((REPO / path).read_text())

    qwen = load("scripts/train_configs/qwen2_7b_lora.yaml")
    for path in CONFIGS.values():
        cfg = load(path)
        assert {k: v for k, v in cfg.items() if k not in ("model_name_or_path", "cutoff_len")} == \
            {k: v for k, v in qwen.items() if k not in ("model_name_or_path", "cutoff_len")}
    assert load(CONFIGS["llama3"])["cutoff_len"] == 7168 and load(CONFIGS["mistral"])["cutoff_len"] == 8192
    assert all("template" not in load(p.relative_to(REPO)) for p in (REPO / "scripts/train_configs").glob("*.yaml"))


@pytest.mark.parametrize("family,cfg,params", [("llama3", LLAMA31_8B, 8_030_261_248), ("mistral", MISTRAL_7B, 7_248_023_552)])
def test_preflight_figures_for_the_8b_and_7b_shapes(family, cfg, params, family_model, tmp_path, capsys):
    from transformers import AutoConfig, AutoModelForCausalLM

    with torch.device("meta"):
        big = AutoModelForCausalLM.from_config(AutoConfig.for_model(**{k: v for k, v in cfg.items() if k != "architectures"}))
    assert estimate.param_count(cfg) == sum(p.numel() for p in big.parameters()) == params
    assert estimate.lora_params(cfg, 16, "all") == 41_943_040  # the same projections in both
    assert estimate.kv_bytes_per_token(cfg, "bf16") == 2 * 32 * 8 * 128 * 2 == 128 * 1024
    # a folder as a user downloads it (the config, a tokenizer of the family, a weight file): ok, template said
    model = tmp_path / "model"
    shutil.copytree(family_model(family), model)
    (model / "config.json").write_text(json.dumps(cfg))
    report = Report()
    assert check_model(report, str(model)) == cfg and report.failed == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0] == f"ok    model: {model}: {cfg['architectures'][0]}, {params / 1e9:.2f}B parameters, 1 weight files"
    assert lines[-1].startswith(f"ok    template: {FAMILIES[family][1]} ({NAMES[family]} chat format")
    train = yaml.safe_load((REPO / CONFIGS[family]).read_text())
    assert estimate.gib(estimate.train_memory_bytes(cfg, train, "bf16")) == {"llama3": "37.8 GiB", "mistral": "24.9 GiB"}[family]
