"""The state of one LoRA module's folders: what a run was trained from, and what to do with it next.

    save/<dataset>/          finished: the chosen adapter at its top, checkpoint-N/, train.log, weaverec_train.json
    save/<dataset>.partial/  a run in progress or interrupted (LLaMA-Factory's output_dir)

A module is finished exactly when save/<dataset>/adapter_model.safetensors exists: training only ever writes
into the .partial folder, which finish() renames into place once the adapter is chosen. plan() says what a
new run does: skip (finished from the same inputs), resume (the .partial folder's last complete checkpoint,
same inputs) or fresh. The inputs are digests of the dataset file, the config file, the model folder and
the overrides, and the number of processes (it sets the global batch). models/check_train_inputs.py plans
and prepares a run, models/train_finish.py finishes it.
"""

import hashlib
import json
import os
import re
import shutil

from common.dataset_info import load
from common.io import write_json_atomic

ADAPTER = "adapter_model.safetensors"
ADAPTER_FILES = (ADAPTER, "adapter_config.json")
RECORD = "weaverec_train.json"
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "vocab.json", "merges.txt", "chat_template.jinja",
                   "special_tokens_map.json", "generation_config.json")
SAMPLE = 8 << 20  # bytes hashed at each end of a weight file: any retraining changes them, reading 15 GB is slow


def file_digest(path, sample=None):
    """sha256 of a file, or of its size and first and last `sample` bytes."""
    h = hashlib.sha256()
    size = os.path.getsize(path)
    with open(path, "rb") as f:
        if sample is None or size <= 2 * sample:
            for block in iter(lambda: f.read(1 << 20), b""):
                h.update(block)
        else:
            h.update(str(size).encode())
            h.update(f.read(sample))
            f.seek(size - sample)
            h.update(f.read(sample))
    return h.hexdigest()


def model_digest(model):
    """Digest of a model folder: config and tokenizer files in full, weight files sampled at both ends."""
    h = hashlib.sha256()
    for name in sorted(os.listdir(model)):
        path = os.path.join(model, name)
        if name == "config.json" or name in TOKENIZER_FILES:
            h.update(f"{name}:{file_digest(path)}\n".encode())
        elif name.endswith((".safetensors", ".bin")):
            h.update(f"{name}:{file_digest(path, SAMPLE)}\n".encode())
    return h.hexdigest()


def run_inputs(dataset, data_dir, model, config, overrides, world_size):
    """What a trained module depends on, as digests (compared field by field by plan())."""
    entry = load(data_dir)[dataset]
    data = hashlib.sha256(json.dumps(entry, sort_keys=True).encode())
    data.update(file_digest(os.path.join(data_dir, entry["file_name"])).encode())
    return {"data": data.hexdigest(), "config": file_digest(config), "model": model_digest(model),
            "overrides": " ".join(overrides), "world_size": world_size}


def read_record(folder):
    path = os.path.join(folder, RECORD)
    if not os.path.isfile(path):
        return None
    with open(path, encoding="utf-8") as f:
        return json.load(f)


def changed(record, inputs):
    """Names of the inputs that differ from the ones `record` was trained from."""
    old = (record or {}).get("inputs", {})
    return [key for key in inputs if old.get(key) != inputs[key]]


def checkpoints(folder):
    """[(step, path)] of the complete checkpoints (trainer_state.json is written last), by step."""
    found = []
    for name in os.listdir(folder) if os.path.isdir(folder) else []:
        m = re.fullmatch(r"checkpoint-(\d+)", name)
        path = os.path.join(folder, name)
        if m and all(os.path.isfile(os.path.join(path, f)) for f in (ADAPTER, "trainer_state.json")):
            found.append((int(m.group(1)), path))
    return sorted(found)


def plan(out, inputs, skip_existing=True):
    """(action, reason, checkpoint): action is skip, resume or fresh; checkpoint is the resume point."""
    partial = out + ".partial"
    if os.path.isfile(os.path.join(out, ADAPTER)):
        record = read_record(out)
        if not skip_existing:
            return "fresh", f"{out} retrained (SKIP_EXISTING=0)", None
        if record is None:
            return "skip", f"skipped: {out} holds an adapter trained elsewhere (SKIP_EXISTING=0 retrains)", None
        diff = changed(record, inputs)
        if not diff:
            return "skip", f"skipped: {out} is finished and up to date (SKIP_EXISTING=0 retrains)", None
        return "fresh", f"{out} was trained from other inputs ({', '.join(diff)} changed): retrained", None
    if os.path.isdir(partial) and skip_existing:
        diff = changed(read_record(partial), inputs)
        done = checkpoints(partial)
        if diff:
            return "fresh", f"{partial} is from other inputs ({', '.join(diff)} changed): started again", None
        if done:
            return "resume", f"resuming {partial} from {os.path.basename(done[-1][1])}", done[-1][1]
        return "fresh", f"{partial} has no complete checkpoint: started again", None
    return "fresh", f"training {out}", None


def prepare(out, inputs, action, checkpoint):
    """Set up the .partial folder for `action` (fresh or resume); returns its path."""
    partial = out + ".partial"
    if action == "fresh":
        shutil.rmtree(out, ignore_errors=True)  # an old adapter must not outlive a failed retraining
        shutil.rmtree(partial, ignore_errors=True)
        os.makedirs(partial)
        write_json_atomic(os.path.join(partial, RECORD), {"inputs": inputs, "resumed_from": []})
        return partial
    step = int(checkpoint.rsplit("-", 1)[1])
    for later, path in checkpoints(partial) + incomplete(partial):
        if later > step:
            shutil.rmtree(path)
    truncate_log(os.path.join(partial, "trainer_log.jsonl"), step)
    for name in ADAPTER_FILES:  # an adapter left at the top by LLaMA-Factory belongs to no finished run
        if os.path.exists(os.path.join(partial, name)):
            os.remove(os.path.join(partial, name))
    record = read_record(partial)
    record["resumed_from"].append(os.path.basename(checkpoint))
    write_json_atomic(os.path.join(partial, RECORD), record)
    return partial


def incomplete(folder):
    names = [n for n in os.listdir(folder) if re.fullmatch(r"checkpoint-\d+", n)]
    complete = {os.path.basename(p) for _, p in checkpoints(folder)}
    return [(int(n.split("-")[1]), os.path.join(folder, n)) for n in names if n not in complete]


def truncate_log(path, step):
    """Keep LLaMA-Factory's log lines up to `step`: the resumed run writes the later ones again."""
    if not os.path.isfile(path):
        return
    with open(path, encoding="utf-8") as f:
        rows = [line for line in f if line.strip() and json.loads(line).get("current_steps", 0) <= step]
    with open(path, "w", encoding="utf-8") as f:
        f.writelines(rows)
