"""Helpers shared by the tests (and the inference benchmark): paths, builders of small real-data
inputs, tiny models and adapters, and in-process CLI runners. Tests import them from here, never from
each other; fixtures live in tests/conftest.py."""

import ast
import gzip
import html
import json
import os
import random
import shutil
import subprocess
import sys
from collections import defaultdict
from pathlib import Path

import pytest
import torch

from common.cli import run_main
from common.prompt import SEP, make_sample

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared"
SHARED_DATA = SHARED / "data" / "amazon2014"
# the real Qwen2-7B-Instruct tokenizer (no weights): real vocabulary, BPE and chat template
REAL_TOKENIZER = SHARED / "models" / "qwen2-7b-instruct-tokenizer"


# --- real Amazon data -----------------------------------------------------------------------------
def real_titles(n=2000, category="Beauty"):
    """The first n titles of a real meta file (Python literals, parsed without eval)."""
    titles = []
    with gzip.open(SHARED_DATA / f"meta_{category}.json.gz", "rt", encoding="utf-8") as f:
        for line in f:
            title = ast.literal_eval(line).get("title")
            if title:
                titles.append(title)
            if len(titles) >= n:
                break
    return titles


def asin_titles(data_dir, category):
    """asin -> title (HTML entities unescaped, so '&reg;' is '®'; whitespace collapsed)."""
    titles = {}
    with gzip.open(os.path.join(data_dir, f"meta_{category}.json.gz"), "rt", encoding="utf-8") as f:
        for line in f:
            meta = ast.literal_eval(line)
            title = " ".join(html.unescape(meta.get("title") or "").split())
            if title and SEP not in title:
                titles[meta["asin"]] = title
    return titles


def real_prompts(data_dir, n=200, seed=0, history=10, n_candidates=30, category="Beauty", tricky=3):
    """n leave-one-out test samples of seeded real users, each with `tricky` negatives chosen among
    titles with non-ASCII characters or a '|' (the hard cases for tokenisation at title boundaries)."""
    titles = asin_titles(data_dir, category)
    seqs = defaultdict(list)
    with gzip.open(os.path.join(data_dir, f"reviews_{category}_5.json.gz"), "rt", encoding="utf-8") as f:
        for line in f:
            r = json.loads(line)
            if r["asin"] in titles:
                seqs[r["reviewerID"]].append((r["unixReviewTime"], r["asin"]))
    rng = random.Random(seed)
    pool = sorted(set(titles.values()))
    hard = [t for t in pool if "|" in t or any(ord(c) > 127 for c in t)]
    samples = []
    for user in rng.sample(sorted(seqs), n):
        items = list(dict.fromkeys(titles[a] for _, a in sorted(seqs[user])))
        target, past = items[-1], items[:-1][-history:]
        seen = set(items)
        negatives = [t for t in rng.sample(hard, tricky * 3) if t not in seen][:tricky]
        while len(negatives) < n_candidates - 1:
            t = rng.choice(pool)
            if t not in seen and t not in negatives:
                negatives.append(t)
        candidates = negatives + [target]
        rng.shuffle(candidates)
        sample = make_sample(past, candidates, [target] + negatives[:4])
        sample["user"] = user
        samples.append(sample)
    return samples


def write_real_prompts(shared_data, path):
    """12 WeaveRec test prompts of real Beauty users (3-item histories, 30 candidates, some with
    '|', digits, '&' and non-ASCII titles)."""
    from common.io import write_jsonl_atomic

    write_jsonl_atomic(path, real_prompts(shared_data, n=12, history=3))
    return path


def process_domain(shared_data, train_dir, test_dir, domain="beauty", train=600, valid=300, users=100):
    """Real traindata/testdata files for `domain`, made by the data stage as a user makes them.

    Short prompts (5 history titles, 10 candidates: about 400 tokens) keep LLaMA-Factory runs quick.
    """
    cmd = [sys.executable, "-m", "data_process.process", "--raw-dir", str(shared_data), "--domain", domain,
           "--train-dir", str(train_dir), "--test-dir", str(test_dir), "--train-samples", str(train),
           "--valid-samples", str(valid), "--test-users", str(users), "--history", "5", "--candidates", "10"]
    proc = subprocess.run(cmd, check=False, cwd=REPO, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr


# --- small raw files in the Amazon layouts (data stage tests) ------------------------------------
N_ITEMS, N_USERS, PER_USER = 80, 80, 8
UNTITLED = {6: "no title key", 16: "", 26: None}  # item 36 has no meta line at all
SPECIAL = {0: ("Soap &amp; Water \n  Bar", "Acme"), 1: ("Red || Blue | Pen |", "Acme"),
           2: ("Same Name", "BrandX"), 3: ("Same Name", "BrandY"), 4: ("Twin", "Z"), 5: ("Twin", "Z")}
CLEAN = {0: "Soap & Water Bar", 1: "Red | Blue | Pen", 2: "Same Name (BrandX)",
         3: "Same Name (BrandY)", 4: "Twin (A0004)", 5: "Twin (A0005)"}


def asin(i):
    return f"A{i:04d}"


def expected_sequences():
    """User u buys items u, u+10, ..., u+70 (mod 80) in this order; every item has 8 buyers."""
    return {f"U{u:03d}": [(u + 10 * j) % N_ITEMS for j in range(PER_USER)] for u in range(N_USERS)}


def review_lines():
    """Lines in a scrambled file order; U000's 3rd and 4th items share a timestamp, 4th written first."""
    recs = []
    for u, (user, seq) in enumerate(expected_sequences().items()):
        for j, item in enumerate(seq):
            t = 1_300_000_000 + 86400 * (j if not (u == 0 and j == 3) else 2)
            recs.append(((j * 37 + u * 11) % 101, u, j, {"reviewerID": user, "asin": asin(item),
                                                            "unixReviewTime": t}))
    recs.sort(key=lambda r: (r[0], r[1], r[2] if r[1] else -r[2]))
    return [json.dumps(r[3]) + "\n" for r in recs]


def user_order():
    """Users in order of first appearance among the review lines of titled items."""
    recs = [json.loads(line) for line in review_lines()]
    return list(dict.fromkeys(r["reviewerID"] for r in recs if int(r["asin"][1:]) not in (6, 16, 26, 36)))


def meta_records():
    recs = []
    for i in range(N_ITEMS):
        if i == 36:
            continue
        rec = {"asin": asin(i), "title": f"Item number {i}", "brand": f"Brand{i % 7}"}
        if i in SPECIAL:
            rec["title"], rec["brand"] = SPECIAL[i]
        if i in UNTITLED:
            if UNTITLED[i] == "no title key":
                del rec["title"]
            else:
                rec["title"] = UNTITLED[i]
        recs.append(rec)
    return recs


def write_gz(path, lines):
    with gzip.open(path, "wt", encoding="utf-8") as f:
        f.writelines(lines)


def write_raw(folder, layout="2014", reviews=None, meta=None):
    """Small raw files for Beauty: 80 users x 8 items; 2014 meta as Python literals, 2018 as JSON."""
    os.makedirs(folder, exist_ok=True)
    name = "reviews_Beauty_5.json.gz" if layout == "2014" else "Beauty_5.json.gz"
    write_gz(os.path.join(folder, name), review_lines() if reviews is None else reviews)
    dump = repr if layout == "2014" else json.dumps
    write_gz(os.path.join(folder, "meta_Beauty.json.gz"),
             [dump(r) + "\n" for r in meta_records()] if meta is None else meta)
    return folder


# --- tiny models ----------------------------------------------------------------------------------
def build(train_dir, out, *extra):
    """Run the build stage as a user does; return the finished process."""
    cmd = [sys.executable, "-m", "models.build_base", "--train-dir", str(train_dir), "--domains", "beauty",
           "--out", str(out), "--no-progress", *extra]
    return subprocess.run(cmd, check=False, cwd=REPO, capture_output=True, text=True, timeout=600)


# a base small enough to build in seconds, pre-trained enough (loss about 7.6 -> 4.2) for a LoRA to learn on;
# 2 heads of 32 dimensions (vLLM's CPU attention needs head dimensions of 32 or more)
SMALL = ["--vocab-size", "2048", "--hidden-size", "64", "--heads", "2", "--kv-heads", "1", "--steps", "200",
         "--batch-size", "16", "--block-size", "128", "--lr", "1e-2", "--threads", "1"]


def build_varied_model(random_model_dir, out):
    """The random tiny Qwen2 re-initialised with larger weights (std 0.2), so that greedy outputs
    differ between prompts (at std 0.02 every prompt just repeats one token)."""
    from transformers import AutoConfig, AutoTokenizer, Qwen2ForCausalLM

    config = AutoConfig.from_pretrained(random_model_dir)
    config.initializer_range = 0.2
    torch.manual_seed(0)
    Qwen2ForCausalLM(config).save_pretrained(out, safe_serialization=True)
    AutoTokenizer.from_pretrained(random_model_dir).save_pretrained(out)
    return out


def build_real_tokenizer_model(out, hidden_size=64, layers=2, heads=2, kv_heads=1, seed=0):
    """A tiny random Qwen2ForCausalLM with the real Qwen2-7B-Instruct tokenizer: Qwen2-7B's proportions
    scaled down (vocabulary 152,064 embedding rows for 151,646 tokens, untied input and output
    embeddings, grouped KV heads (7:1 in 7B, `heads // kv_heads` here), rope_theta 1e6), so tests see
    the real vocabulary, BPE and chat template. Saved as a normal HF model folder."""
    from transformers import AutoTokenizer, Qwen2Config, Qwen2ForCausalLM

    tok = AutoTokenizer.from_pretrained(REAL_TOKENIZER)
    config = Qwen2Config(
        vocab_size=152064, hidden_size=hidden_size, intermediate_size=int(hidden_size * 18944 / 3584),
        num_hidden_layers=layers, num_attention_heads=heads, num_key_value_heads=kv_heads,
        max_position_embeddings=4096, rope_theta=1_000_000.0, tie_word_embeddings=False,
        bos_token_id=None, eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id,
        torch_dtype="float32")
    torch.manual_seed(seed)
    model = Qwen2ForCausalLM(config)
    model.generation_config.eos_token_id = tok.eos_token_id
    model.generation_config.pad_token_id = tok.pad_token_id
    model.save_pretrained(out, safe_serialization=True)
    for name in os.listdir(REAL_TOKENIZER):
        shutil.copyfile(REAL_TOKENIZER / name, Path(out) / name)  # not the shared folder's read-only mode
    return out


# the families of models/families.py: tokenizer family -> config.json model_type, LLaMA-Factory template
FAMILIES = {"qwen2": ("qwen2", "qwen"), "llama3": ("llama", "llama3"), "mistral": ("mistral", "mistral")}


def build_family_model(family, out, seed=0):
    """A tiny random causal LM of `family` (qwen2, llama3 or mistral: the Qwen2, Llama and Mistral architectures)
    with a tokenizer of that family (its special tokens and chat template: models/tokenizer.py) trained on real
    titles, made as the random Qwen2 of tests/conftest.py: 2 heads of 32 dimensions (vLLM's CPU attention needs
    32 or more), and weights of std 0.2 so that greedy outputs differ between prompts. Saved by transformers 4.x
    (LLaMA-Factory's): run it in the training environment."""
    from common.prompt import CANDIDATES_CLOSE, CANDIDATES_OPEN, HISTORY_OPEN, SYSTEM
    from models.tiny import init_model, save_model, tiny_config
    from models.tokenizer import train_tokenizer

    texts = real_titles() + [SYSTEM, HISTORY_OPEN, CANDIDATES_OPEN, CANDIDATES_CLOSE, "||"]
    tok = train_tokenizer(texts, vocab_size=1024, family=family)
    config = tiny_config(tok, hidden_size=64, num_layers=2, num_heads=2, num_kv_heads=1, family=family)
    config.initializer_range = 0.2
    save_model(init_model(config, seed=seed), tok, out)
    return Path(out)


# --- adapters and the merge CLI ---------------------------------------------------------------
TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
IDS = torch.arange(3, 60).view(1, -1)


def make_adapter(base_dir, out, seed, r=4, alpha=8, rslora=False, targets=TARGETS, dtype=None, **patterns):
    """A PEFT LoRA adapter on base_dir with seeded random A and B (PEFT would start B at zero)."""
    from peft import LoraConfig, get_peft_model
    from safetensors.torch import load_file, save_file
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(base_dir)
    config = LoraConfig(r=r, lora_alpha=alpha, use_rslora=rslora, target_modules=targets,
                        lora_dropout=0.0, task_type="CAUSAL_LM", **patterns)
    peft_model = get_peft_model(model, config)
    gen = torch.Generator().manual_seed(seed)
    for name, param in peft_model.named_parameters():
        if "lora_" in name:
            param.data = torch.randn(param.shape, generator=gen) * 0.15
    peft_model.save_pretrained(out)
    if dtype is not None:
        path = out / "adapter_model.safetensors"
        save_file({k: v.to(dtype) for k, v in load_file(path).items()}, path)
    return out


def merge(*args):
    """Run the merge CLI in-process; return its exit code."""
    from merge.merge_lora import main

    with pytest.raises(SystemExit) as exit_info:
        run_main(main, [str(a) for a in args])
    return exit_info.value.code


def peft_deltas(base_dir, adapter_dir):
    """{module: delta weight} as PEFT computes it for an adapter folder (float32)."""
    from peft import PeftModel
    from peft.tuners.lora import LoraLayer
    from transformers import AutoModelForCausalLM

    model = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(base_dir), adapter_dir)
    return {name: mod.get_delta_weight("default").float()
            for name, mod in model.base_model.model.named_modules() if isinstance(mod, LoraLayer)}


def base_plus(base_dir, deltas):
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(base_dir)
    with torch.no_grad():
        for name, delta in deltas.items():
            model.get_submodule(name).weight += delta
    return model


def logits(model):
    with torch.no_grad():
        return model(IDS).logits


def adapter_logits(base_dir, adapter_dir):
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    return logits(PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(base_dir), adapter_dir))


def weighted(deltas_list, lambdas_of):
    """{module: sum_i lambda_i(module) * delta_i[module]}."""
    return {m: sum(lam * d[m] for lam, d in zip(lambdas_of(m), deltas_list)) for m in deltas_list[0]}


def assert_close_rel(actual, expected, tol=1e-5):
    err = (actual - expected).abs().max().item()
    assert err <= tol * expected.abs().max().item(), f"max abs error {err}"


# --- the inference CLI --------------------------------------------------------------------------
# the training environment (LLaMA-Factory), used by tests running in the vLLM one to make real adapters
TRAIN_PYTHON = REPO / ".venv" / "bin" / "python"


def gen_args(test_file, model, out, *extra):
    return ["--test-file", str(test_file), "--base-model", str(model), "--out", str(out),
            "--threads", "1", "--max-new-tokens", "8", *extra]


def read_lines(path):
    with open(path, encoding="utf-8") as f:
        return [json.loads(line) for line in f]


# --- scripts/train_lora.sh --------------------------------------------------------------------------
def run_train_lora(dataset, timeout=600, **env):
    """Run scripts/train_lora.sh as a user does, with path variables from `env`; a run past `timeout`
    seconds (a hang) is killed with all its processes and fails the test."""
    import signal

    full = dict(os.environ, **{k: str(v) for k, v in env.items()})
    proc = subprocess.Popen(["bash", "scripts/train_lora.sh", dataset], cwd=REPO, env=full, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, start_new_session=True)
    try:
        out, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        out, err = proc.communicate()
        pytest.fail(f"train_lora.sh {dataset} still running after {timeout}s (a hang?):\n{out[-2000:]}{err[-2000:]}")
    return subprocess.CompletedProcess(proc.args, proc.returncode, out, err)
