"""inference.generate end to end on real Amazon prompts and a tiny random Qwen2 (HF backend): alignment,
determinism, resume after SIGKILL, batch-size invariance, adapters, one-line errors. Runs in both
environments."""

import json
import os
import signal
import subprocess
import sys
import time

import pytest
import torch
from transformers import AutoConfig, Qwen2ForCausalLM

from common.cli import UserError, run_main
from inference.generate import main
from inference.resume import ResumableOutput
from tests.helpers import REPO, TRAIN_PYTHON, gen_args, read_lines


def count_lines(path):
    with open(path, encoding="utf-8") as f:
        return f.read().count("\n")


@pytest.fixture(autouse=True)
def _one_thread():
    """--threads 1 below changes torch's global thread count: restore it after each test."""
    threads = torch.get_num_threads()
    yield
    torch.set_num_threads(threads)


def exit_error(argv, capsys):
    """Run the CLI entry in-process; return (exit code, stderr lines)."""
    with pytest.raises(SystemExit) as exc:
        run_main(main, argv)
    return exc.value.code, capsys.readouterr().err.strip().splitlines()


def test_free_output_is_aligned_and_deterministic(real_test_file, varied_model_dir, tmp_path, capsys):
    a, b = tmp_path / "a" / "output.jsonl", tmp_path / "b" / "output.jsonl"
    main(gen_args(real_test_file, varied_model_dir, a, "--batch-size", "4", "--limit", "8"))
    main(gen_args(real_test_file, varied_model_dir, b, "--batch-size", "4", "--limit", "8"))
    assert a.read_bytes() == b.read_bytes()
    rows = read_lines(a)
    assert [r["id"] for r in rows] == list(range(8))
    assert len({r["output"] for r in rows}) > 1  # outputs depend on the prompt
    assert not os.path.exists(str(a) + ".progress")
    assert "valid titles" in capsys.readouterr().out


def test_rerun_does_nothing_and_other_arguments_are_refused(real_test_file, varied_model_dir,
                                                            tmp_path, capsys):
    out = tmp_path / "output.jsonl"
    args = gen_args(real_test_file, varied_model_dir, out, "--limit", "3")
    main(args)
    before = (out.read_bytes(), out.stat().st_mtime_ns)
    capsys.readouterr()
    main(args)
    assert "already complete" in capsys.readouterr().out
    assert (out.read_bytes(), out.stat().st_mtime_ns) == before
    code, err = exit_error(args + ["--mode", "score"], capsys)
    assert code == 2 and len(err) == 1 and "--overwrite" in err[0] and "mode: free -> score" in err[0]
    assert out.read_bytes() == before[0]
    main(args + ["--mode", "score", "--overwrite"])
    assert "ranking" in read_lines(out)[0]


def test_replace_stale_redoes_only_an_output_whose_inputs_changed(real_test_file, varied_model_dir,
                                                                   tmp_path, capsys):
    out = tmp_path / "output.jsonl"
    args = gen_args(real_test_file, varied_model_dir, out, "--limit", "3", "--replace-stale")
    main(args)
    before = (out.read_bytes(), out.stat().st_mtime_ns)
    capsys.readouterr()
    main(args)  # same arguments and inputs: nothing redone
    assert "already complete" in capsys.readouterr().out
    assert (out.read_bytes(), out.stat().st_mtime_ns) == before
    main(args + ["--mode", "score"])  # other arguments: replaced without an error
    assert "ranking" in read_lines(out)[0] and len(read_lines(out)) == 3


def test_resume_after_sigkill_gives_the_uninterrupted_file(real_test_file, varied_model_dir,
                                                           tmp_path, capsys):
    full, killed = tmp_path / "full" / "output.jsonl", tmp_path / "killed" / "output.jsonl"
    extra = ("--batch-size", "1", "--limit", "12", "--max-new-tokens", "16")
    main(gen_args(real_test_file, varied_model_dir, full, *extra))
    progress = str(killed) + ".progress"
    cmd = [sys.executable, "-m", "inference.generate",
           *gen_args(real_test_file, varied_model_dir, killed, *extra)]
    proc = subprocess.Popen(cmd, cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 120
    while time.time() < deadline and proc.poll() is None:
        if os.path.exists(progress) and count_lines(progress) >= 3:
            break
        time.sleep(0.02)
    assert proc.poll() is None, "the run ended before it could be killed"
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    assert not killed.exists()  # nothing that looks complete
    done = count_lines(progress)
    assert 3 <= done < 12
    with open(progress, "a") as f:  # as if killed in the middle of a write
        f.write('{"id": 11, "outp')
    capsys.readouterr()
    main(gen_args(real_test_file, varied_model_dir, killed, *extra))
    assert f"({done} resumed)" in capsys.readouterr().out
    assert killed.read_bytes() == full.read_bytes()
    main(gen_args(real_test_file, varied_model_dir, killed, *extra))
    assert killed.read_bytes() == full.read_bytes()
    assert [r["id"] for r in read_lines(killed)] == list(range(12))


def test_progress_file_keeps_complete_lines_only(tmp_path):
    out = str(tmp_path / "output.jsonl")
    log = ResumableOutput(out, {"mode": "free"}, 3)
    assert log.open()
    log.add([{"id": 0, "output": "a"}, {"id": 2, "output": "c"}])
    with open(out + ".progress", "a") as f:
        f.write('{"id": 1, "output": "b')
    again = ResumableOutput(out, {"mode": "free"}, 3)
    assert again.open() and sorted(again.done) == [0, 2]
    again.add([{"id": 0, "output": "x"}, {"id": 1, "output": "b"}])  # id 0 is done: kept as it was
    assert again.finish() == [{"id": 0, "output": "a"}, {"id": 1, "output": "b"},
                              {"id": 2, "output": "c"}]
    with pytest.raises(UserError, match="--overwrite"):
        ResumableOutput(out, {"mode": "score"}, 3).open()


@pytest.mark.parametrize("mode", ["free", "constrained", "score"])
def test_batched_run_equals_batch_size_one(real_test_file, varied_model_dir, tmp_path, mode):
    one, many = tmp_path / "one.jsonl", tmp_path / "many.jsonl"
    main(gen_args(real_test_file, varied_model_dir, one, "--mode", mode, "--batch-size", "1",
                  "--limit", "6"))
    main(gen_args(real_test_file, varied_model_dir, many, "--mode", mode, "--batch-size", "6",
                  "--limit", "6"))
    a, b = read_lines(one), read_lines(many)
    assert [r["output"] for r in a] == [r["output"] for r in b]
    if mode == "score":
        for ra, rb in zip(a, b):
            assert ra["ranking"] == rb["ranking"]
            assert ra["scores"] == pytest.approx(rb["scores"], abs=1e-3)


def make_adapter(model_dir, out, seed, targets=("q_proj", "v_proj")):
    """A PEFT LoRA adapter with random non-zero A and B (so it changes the model)."""
    from peft import LoraConfig, get_peft_model

    torch.manual_seed(seed)
    base = Qwen2ForCausalLM.from_pretrained(model_dir)
    config = LoraConfig(r=4, lora_alpha=8, target_modules=list(targets), init_lora_weights=False)
    get_peft_model(base, config).save_pretrained(out)
    return out


def test_several_adapters_are_summed_into_the_weights(varied_model_dir, tmp_path):
    from safetensors.torch import load_file

    from inference.loading import load_model

    adapters = [make_adapter(varied_model_dir, tmp_path / f"a{i}", seed=i) for i in (1, 2)]
    merged = load_model(str(varied_model_dir), [str(a) for a in adapters])
    base = Qwen2ForCausalLM.from_pretrained(varied_model_dir)
    key = "base_model.model.model.layers.1.self_attn.v_proj.lora_{}.weight"
    expected = base.model.layers[1].self_attn.v_proj.weight.detach().clone()
    for a in adapters:
        w = load_file(a / "adapter_model.safetensors")
        expected += (8 / 4) * w[key.format("B")] @ w[key.format("A")]
    got = merged.model.layers[1].self_attn.v_proj.weight
    assert torch.allclose(got, expected, atol=1e-5)
    assert not torch.allclose(got, base.model.layers[1].self_attn.v_proj.weight, atol=1e-3)


def test_an_adapter_changes_the_scores(real_test_file, varied_model_dir, tmp_path):
    adapter = make_adapter(varied_model_dir, tmp_path / "adapter", seed=3)
    plain, adapted = tmp_path / "plain.jsonl", tmp_path / "adapted.jsonl"
    main(gen_args(real_test_file, varied_model_dir, plain, "--mode", "score", "--limit", "2"))
    main(gen_args(real_test_file, varied_model_dir, adapted, "--mode", "score", "--limit", "2",
                  "--adapter", str(adapter)))
    assert read_lines(plain)[0]["scores"] != read_lines(adapted)[0]["scores"]


def write_text(path, text):
    path.write_text(text, encoding="utf-8")
    return path


@pytest.fixture
def bad_inputs(real_test_file, varied_model_dir, tmp_path):
    """name -> (CLI arguments, a fragment of the expected error line)."""
    good_line = real_test_file.read_text(encoding="utf-8").splitlines()[0]
    bad_json = write_text(tmp_path / "bad.jsonl", good_line + "\n{not json\n")
    no_messages = write_text(tmp_path / "nomsg.jsonl", '{"user": "A1"}\n')
    empty = write_text(tmp_path / "empty.jsonl", "")
    other = json.dumps({"messages": [{"role": "system", "content": "s"},
                                     {"role": "user", "content": "hello"}]})
    not_weaverec = write_text(tmp_path / "other.jsonl", other + "\n")
    wrong_targets = make_adapter(varied_model_dir, tmp_path / "wrong_targets", seed=4)
    cfg = json.loads((wrong_targets / "adapter_config.json").read_text())
    cfg["target_modules"] = ["no_such_proj"]
    write_text(wrong_targets / "adapter_config.json", json.dumps(cfg))
    small = AutoConfig.from_pretrained(varied_model_dir)
    small.hidden_size, small.intermediate_size = 32, 64
    small_dir = tmp_path / "small"
    Qwen2ForCausalLM(small).save_pretrained(small_dir)
    wrong_shape = make_adapter(small_dir, tmp_path / "wrong_shape", seed=5)
    model, test = str(varied_model_dir), str(real_test_file)
    return {
        "bad_json": ([str(bad_json), model], "bad.jsonl:2: not valid JSON"),
        "no_messages": ([str(no_messages), model], "no 'messages'"),
        "empty": ([str(empty), model], "test file is empty"),
        "missing_model": ([test, str(tmp_path / "nowhere")], "base model folder not found"),
        "adapter_as_model": ([test, str(wrong_shape)], "is a PEFT adapter"),
        "wrong_targets": ([test, model, "--adapter", str(wrong_targets)], "does not match the base"),
        "wrong_shape": ([test, model, "--adapter", str(wrong_shape)], "does not match the base"),
        "not_weaverec": ([str(not_weaverec), model, "--mode", "constrained"], "not a WeaveRec prompt"),
    }


@pytest.mark.parametrize("case", ["bad_json", "no_messages", "empty", "missing_model",
                                  "adapter_as_model", "wrong_targets", "wrong_shape",
                                  "not_weaverec"])
def test_bad_input_is_one_line_error(bad_inputs, case, tmp_path, capsys):
    (test, model, *extra), fragment = bad_inputs[case]
    out = tmp_path / "run" / "output.jsonl"
    code, err = exit_error(gen_args(test, model, out, *extra), capsys)
    assert code == 2 and len(err) == 1 and err[0].startswith("error: ") and fragment in err[0], err
    assert not out.exists()


def test_cli_error_has_no_traceback(tmp_path):
    empty = write_text(tmp_path / "empty.jsonl", "")
    proc = subprocess.run([sys.executable, "-m", "inference.generate", "--test-file", str(empty),
                           "--base-model", str(tmp_path), "--out", str(tmp_path / "o.jsonl")],
                          cwd=REPO, capture_output=True, text=True, timeout=120, check=False)
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines() == [f"error: test file is empty: {empty}"]


def test_vllm_backend_without_its_environment_names_how_to_create_it(real_test_file, varied_model_dir, tmp_path):
    """The training environment has no vLLM: one line saying how to make the one that has it."""
    out = tmp_path / "output.jsonl"
    proc = subprocess.run([str(TRAIN_PYTHON), "-m", "inference.generate",
                           *map(str, gen_args(real_test_file, varied_model_dir, out, "--backend", "vllm"))],
                          cwd=REPO, capture_output=True, text=True, timeout=120, check=False)
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines() == [
        "error: --backend vllm needs the vLLM environment (.venv-vllm): create it with "
        "`VLLM=1 bash scripts/setup.sh` and run .venv-vllm/bin/python -m inference.generate"]
    assert not out.exists()


def test_jobs_file_runs_several_outputs_as_separate_runs_would(real_test_file, varied_model_dir, tmp_path,
                                                               capsys):
    """--jobs (scripts/compare.sh: one process, one engine for every row) writes what one run per output
    writes, and a rerun of either kind finds them complete."""
    adapter = make_adapter(varied_model_dir, tmp_path / "adapter", seed=3)
    runs = {"plain": [], "adapted": ["--adapter", str(adapter)]}
    jobs = tmp_path / "rows.jobs"
    jobs.write_text("".join(json.dumps({"test_file": str(real_test_file), "base_model": str(varied_model_dir),
                                        "out": str(tmp_path / "jobs" / name / "output.jsonl"),
                                        "adapter": extra[1:]}) + "\n" for name, extra in runs.items()))
    common = ["--mode", "score", "--limit", "3", "--threads", "1"]
    main(["--jobs", str(jobs), *common])
    for name, extra in runs.items():
        single = tmp_path / "single" / name / "output.jsonl"
        main(gen_args(real_test_file, varied_model_dir, single, *common, *extra))
        assert single.read_bytes() == (tmp_path / "jobs" / name / "output.jsonl").read_bytes()
    capsys.readouterr()
    main(["--jobs", str(jobs), *common])
    assert capsys.readouterr().out.count("already complete") == 2
