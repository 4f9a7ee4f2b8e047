"""Finish a LoRA run: reads save/<dataset>.partial (LLaMA-Factory's output); writes its chosen adapter at the
top and renames the folder to save/<dataset>.

With evaluation on and `metric_for_best_model` set, the adapter kept is the best evaluated one: the
checkpoints' evaluations in trainer_state.json (transformers keeps `best_model_checkpoint` through
`save_total_limit` rotation) and the final model's in eval_results.json. This replaces
`load_best_model_at_end`, which can deadlock under torchrun in transformers 4.52.4.

    python -m models.train_finish --out save/beauty --config C [--extra "k=v ..."] [--seconds S]
"""

import argparse
import json
import os
import shutil

from common.cli import UserError, run_main
from common.io import read_json, write_json_atomic
from models.check_train_inputs import effective_config
from models.train_progress import PEAK_FILE, new_rows
from models.train_run import ADAPTER, ADAPTER_FILES, RECORD, checkpoints, read_record


def metric_key(metric):
    return metric if metric.startswith("eval_") else f"eval_{metric}"


def evaluations(state, metric):
    """{step: value} of `metric` in the log history of a trainer_state.json."""
    key = metric_key(metric)
    return {row["step"]: row[key] for row in state.get("log_history", []) if key in row and "step" in row}


def choose(candidates, greater_is_better):
    """(step, value) of the best candidate {step: value}; the earliest step among equals."""
    sign = -1 if greater_is_better else 1
    return min(candidates.items(), key=lambda kv: (sign * kv[1], kv[0]))


def copy_adapter(src, dst):
    for name in ADAPTER_FILES:
        tmp = os.path.join(dst, f".{name}.tmp")
        shutil.copyfile(os.path.join(src, name), tmp)
        os.replace(tmp, os.path.join(dst, name))


def select(partial, metric, greater_is_better):
    """Put the best evaluated adapter at the top of `partial`; returns (source, step, value, evaluations)."""
    with open(os.path.join(partial, "trainer_state.json"), encoding="utf-8") as f:
        state = json.load(f)
    final = state["global_step"]
    evals = evaluations(state, metric) if metric else {}
    final_eval = os.path.join(partial, "eval_results.json")
    if metric and os.path.isfile(final_eval):
        with open(final_eval, encoding="utf-8") as f:
            value = json.load(f).get(metric_key(metric))
        if value is not None:
            evals[final] = value  # LLaMA-Factory's evaluation after training: the model at the top
    kept = dict(checkpoints(partial))
    candidates = {step: value for step, value in evals.items() if step in kept or step == final}
    if not candidates:
        return "the last step", final, None, 0
    step, value = choose(candidates, greater_is_better)
    if choose(evals, greater_is_better)[0] != step:  # transformers' rotation keeps its best: not expected
        print(f"[train_lora] warning: the best evaluation has no checkpoint left; kept step {step}")
    if step != final:
        copy_adapter(kept[step], partial)
    return ("the last step" if step == final else os.path.basename(kept[step])), step, value, len(evals)


def folder_size(path):
    """A folder's size in words: '1.3 MB'."""
    size = sum(os.path.getsize(os.path.join(d, f)) for d, _, files in os.walk(path) for f in files)
    for unit in ("bytes", "KB", "MB", "GB"):
        if size < 1024 or unit == "GB":
            return f"{size:.0f} {unit}" if unit == "bytes" else f"{size:.1f} {unit}"
        size /= 1024


def last_logged(folder):
    """'step 75/75, loss 2.1963; ': the last step and training loss LLaMA-Factory logged, or ''."""
    rows, _ = new_rows(os.path.join(folder, "trainer_log.jsonl"), 0)
    if not rows:
        return ""
    step, total = rows[-1].get("current_steps"), rows[-1].get("total_steps")
    loss = next((r["loss"] for r in reversed(rows) if isinstance(r.get("loss"), (int, float))), None)
    return f"step {step}/{total}" + (f", loss {loss:.4f}" if loss is not None else "") + "; "


def peak_memory(folder):
    """', peak 43.4 GB GPU' (or 'MB RSS' on CPU) from the progress watcher's record, or ''."""
    path = os.path.join(folder, PEAK_FILE)
    if not os.path.isfile(path):
        return ""
    peak = read_json(path, "peak memory record")
    mb, where = peak.get("peak_mb", 0), peak.get("of", "")
    return f", peak {mb / 1024:.1f} GB {where}" if mb >= 10240 else f", peak {mb:.0f} MB {where}"


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", required=True, help="the module folder, save/<dataset>; trained in <out>.partial")
    p.add_argument("--config", required=True)
    p.add_argument("--extra", default="", help="the key=value overrides the run was given")
    p.add_argument("--seconds", type=int)
    args = p.parse_args(argv)
    partial = args.out + ".partial"
    if not os.path.isfile(os.path.join(partial, ADAPTER)):
        raise UserError(f"LLaMA-Factory finished without writing {os.path.join(partial, ADAPTER)}")
    if os.path.exists(args.out):
        raise UserError(f"{args.out} appeared while {partial} was training; neither was changed")
    cfg = effective_config(args.config, args.extra.split())
    metric = cfg.get("metric_for_best_model")
    greater = cfg.get("greater_is_better")
    greater = (not metric.endswith("loss")) if greater is None and metric else bool(greater)
    source, step, value, n = select(partial, metric, greater)
    record = read_record(partial) or {"inputs": {}, "resumed_from": []}
    record["adapter"] = {"from": source, "step": step, "metric": metric, "value": value, "evaluations": n}
    write_json_atomic(os.path.join(partial, RECORD), record)
    kept = checkpoints(partial)
    os.rename(partial, args.out)

    what = f"adapter of {source} (step {step}" + (f", {metric_key(metric)} {value:.4f}, the best of {n} evaluations)" if value is not None else ")")
    each = f", {folder_size(os.path.join(args.out, os.path.basename(kept[-1][1])))} each" if kept else ""
    took = f" in {args.seconds}s" if args.seconds is not None else ""
    took += peak_memory(args.out)
    print(f"[train_lora] wrote {args.out}{took}: {last_logged(args.out)}{what}; {len(kept)} checkpoints kept{each}; "
          f"log {os.path.join(args.out, 'train.log')}")
    return 0


if __name__ == "__main__":
    run_main(main)
