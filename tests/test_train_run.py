"""The bookkeeping around a LoRA run, on small folders laid out as LLaMA-Factory and transformers 4.52.4 write
them: skip / resume / fresh, the best checkpoint's adapter, the precision chosen for the hardware."""

import json

import pytest

from common.cli import UserError
from models.check_train_inputs import choose_precision, precision_overrides
from models.train_finish import select
from models.train_run import ADAPTER, RECORD, checkpoints, plan, prepare

INPUTS = {"data": "d1", "config": "c1", "model": "m1", "overrides": "PRECISION=auto", "world_size": 1}


def write_checkpoint(folder, step, adapter=None, complete=True):
    path = folder / f"checkpoint-{step}"
    path.mkdir(parents=True)
    (path / ADAPTER).write_bytes(adapter or f"adapter {step}".encode())
    (path / "adapter_config.json").write_text(json.dumps({"r": 4, "step": step}))
    if complete:  # transformers writes trainer_state.json last
        (path / "trainer_state.json").write_text("{}")
    return path


def write_record(folder, inputs):
    folder.mkdir(parents=True, exist_ok=True)
    (folder / RECORD).write_text(json.dumps({"inputs": inputs, "resumed_from": []}))


def test_finished_module_with_the_same_inputs_is_skipped(tmp_path):
    out = tmp_path / "beauty"
    write_record(out, INPUTS)
    (out / ADAPTER).write_bytes(b"done")
    assert plan(str(out), INPUTS)[0] == "skip"
    assert plan(str(out), INPUTS, skip_existing=False)[0] == "fresh"


@pytest.mark.parametrize("key", ["data", "config", "model", "overrides", "world_size"])
def test_changed_inputs_retrain_a_finished_module_and_restart_a_partial_one(tmp_path, key):
    out = tmp_path / "beauty"
    write_record(out, INPUTS)
    (out / ADAPTER).write_bytes(b"done")
    new = dict(INPUTS, **{key: "other"})
    action, reason, _ = plan(str(out), new)
    assert action == "fresh" and f"{key} changed" in reason

    partial = tmp_path / "toys.partial"
    write_record(partial, INPUTS)
    write_checkpoint(partial, 10)
    action, reason, checkpoint = plan(str(tmp_path / "toys"), new)
    assert (action, checkpoint) == ("fresh", None) and f"{key} changed" in reason


def test_adapter_from_elsewhere_is_kept(tmp_path):
    """The authors' checkpoints (no record of ours) are finished modules, never retrained unasked."""
    out = tmp_path / "sports"
    out.mkdir()
    (out / ADAPTER).write_bytes(b"published")
    assert plan(str(out), INPUTS)[0] == "skip"


def test_partial_module_resumes_from_its_last_complete_checkpoint(tmp_path):
    out = tmp_path / "beauty"
    partial = tmp_path / "beauty.partial"
    write_record(partial, INPUTS)
    write_checkpoint(partial, 10)
    write_checkpoint(partial, 20)
    write_checkpoint(partial, 30, complete=False)  # killed while saving
    (partial / ADAPTER).write_bytes(b"written by LLaMA-Factory before the kill")  # never a finished module
    log = [{"current_steps": s, "loss": 1.0} for s in (5, 10, 15, 20, 25)]
    (partial / "trainer_log.jsonl").write_text("".join(json.dumps(row) + "\n" for row in log))
    action, _, checkpoint = plan(str(out), INPUTS)
    assert (action, checkpoint) == ("resume", str(partial / "checkpoint-20"))

    prepare(str(out), INPUTS, action, checkpoint)
    assert [step for step, _ in checkpoints(partial)] == [10, 20]
    assert not (partial / "checkpoint-30").exists() and not (partial / ADAPTER).exists()
    steps = [json.loads(line)["current_steps"] for line in (partial / "trainer_log.jsonl").read_text().splitlines()]
    assert steps == [5, 10, 15, 20]
    assert json.loads((partial / RECORD).read_text())["resumed_from"] == ["checkpoint-20"]
    assert not out.exists()


def test_partial_module_without_checkpoint_starts_again(tmp_path):
    partial = tmp_path / "beauty.partial"
    write_record(partial, INPUTS)
    write_checkpoint(partial, 10, complete=False)
    assert plan(str(tmp_path / "beauty"), INPUTS)[0] == "fresh"
    prepare(str(tmp_path / "beauty"), INPUTS, "fresh", None)
    assert sorted(p.name for p in partial.iterdir()) == [RECORD]


def trainer_state(evals, final):
    """log_history as transformers 4.52.4 writes it: training rows, then eval rows at eval steps."""
    history = [{"step": s, "loss": 2.0} for s in range(1, final + 1)]
    history += [{"step": s, "eval_loss": v} for s, v in evals.items()]
    return {"global_step": final, "log_history": history, "best_metric": min(evals.values())}


# 9 steps, evaluated and saved every 2, saved at the end too (step 9, evaluated by LLaMA-Factory's final
# evaluation into eval_results.json); save_total_limit 3 kept the best and the last ones
@pytest.mark.parametrize("evals, final_eval, kept, expect", [
    ({2: 3.0, 4: 2.5, 6: 2.7, 8: 2.9}, 2.95, [4, 8, 9], 4),   # the best, earlier than the end
    ({2: 3.0, 4: 2.5, 6: 2.4, 8: 2.9}, 2.3, [6, 8, 9], 9),    # the final model is best: its adapter stays
    ({2: 3.0, 4: 2.5, 6: 2.5, 8: 2.9}, 2.95, [4, 8, 9], 4),   # ties: the earlier step, as transformers keeps it
])
def test_best_evaluated_adapter_is_put_at_the_top(tmp_path, evals, final_eval, kept, expect):
    partial = tmp_path / "beauty.partial"
    partial.mkdir()
    for step in kept:
        write_checkpoint(partial, step)
    (partial / "trainer_state.json").write_text(json.dumps(trainer_state(evals, 9)))
    (partial / "eval_results.json").write_text(json.dumps({"eval_loss": final_eval, "epoch": 1.0}))
    (partial / ADAPTER).write_bytes(b"adapter 9")
    (partial / "adapter_config.json").write_text(json.dumps({"r": 4, "step": 9}))
    source, step, value, n = select(str(partial), "eval_loss", greater_is_better=False)
    assert step == expect and n == 5  # four during training, one after
    assert (partial / ADAPTER).read_bytes() == f"adapter {expect}".encode()
    assert json.loads((partial / "adapter_config.json").read_text())["step"] == expect


def test_greater_is_better_metric_and_no_evaluation(tmp_path):
    partial = tmp_path / "p"
    partial.mkdir()
    for step in (2, 4):
        write_checkpoint(partial, step)
    state = {"global_step": 4, "log_history": [{"step": 2, "eval_accuracy": 0.9}, {"step": 4, "eval_accuracy": 0.5}]}
    (partial / "trainer_state.json").write_text(json.dumps(state))
    (partial / ADAPTER).write_bytes(b"adapter 4")
    (partial / "adapter_config.json").write_text("{}")
    assert select(str(partial), "accuracy", greater_is_better=True)[1] == 2
    assert select(str(partial), None, greater_is_better=False)[:2] == ("the last step", 4)


CPU = {"gpu": None, "bf16": False}
V100 = {"gpu": "Tesla V100-SXM2-32GB", "bf16": False}
A100 = {"gpu": "NVIDIA A100-SXM4-80GB", "bf16": True}


@pytest.mark.parametrize("wanted, requested, dev, expect, says", [
    ("bf16", "auto", A100, "bf16", None),
    ("bf16", "auto", V100, "fp16", "precision fp16: the config asks for bf16 but GPU Tesla V100-SXM2-32GB has no bf16"),
    ("bf16", "auto", CPU, "fp32", "precision fp32: the config asks for bf16 but there is no CUDA GPU here"),
    ("fp32", "auto", A100, "fp32", None),
    ("fp16", "auto", CPU, "fp32", "the config asks for fp16 but there is no CUDA GPU here"),
    ("bf16", "fp32", V100, "fp32", None),
    ("fp32", "fp16", V100, "fp16", None),
])
def test_precision_follows_the_config_within_the_hardware(wanted, requested, dev, expect, says):
    precision, message = choose_precision(wanted, requested, dev)
    assert precision == expect
    assert (message is None) if says is None else (says in message)


@pytest.mark.parametrize("requested, dev, says", [
    ("bf16", V100, "PRECISION=bf16 but GPU Tesla V100-SXM2-32GB has no bf16; use PRECISION=fp16"),
    ("bf16", CPU, "PRECISION=bf16 but there is no CUDA GPU here; use PRECISION=fp32"),
    ("fp16", CPU, "PRECISION=fp16 but there is no CUDA GPU here; use PRECISION=fp32"),
])
def test_precision_the_hardware_lacks_is_refused(requested, dev, says):
    with pytest.raises(UserError, match=says):
        choose_precision("bf16", requested, dev)


def test_precision_overrides_set_both_flags():
    assert precision_overrides("fp16") == ["bf16=false", "fp16=true"]
    assert precision_overrides("fp32") == ["bf16=false", "fp16=false"]
