"""One backend's share of benchmarks/bench_inference.py, in a process of its own: imports, loads the model
(hf) or starts the engine (vllm), times each mode once over the chunks inference.generate would hand
over, writes the figures as JSON and exits. A live vLLM engine keeps a bound OpenMP thread spinning on a
core, so hf must never be timed beside one: each backend gets its own process, one at a time.

    .venv-vllm/bin/python -m benchmarks.bench_inference_worker --backend vllm --model M --test-file T --result r.json
"""

import argparse
import json
import time

START = time.perf_counter()

WARMUP = 4  # prompts run once per mode before timing (first-call costs: allocations, kernel selection)


def parse_args(argv):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--backend", choices=["hf", "vllm"], required=True)
    p.add_argument("--model", required=True)
    p.add_argument("--adapter", nargs="*", default=[])
    p.add_argument("--vllm-adapters", choices=["lora", "merge"], default="merge")
    p.add_argument("--test-file", required=True)
    p.add_argument("--prompts", type=int, default=200)
    p.add_argument("--modes", nargs="+", default=["free", "constrained", "score"])
    p.add_argument("--max-new-tokens", type=int, default=128)
    p.add_argument("--threads", type=int, help="hf: torch threads; vllm: cores the engine is bound to")
    p.add_argument("--compile", action="store_true", help="vllm: compiled model")
    p.add_argument("--engine-args", default="{}", help="vllm: more vllm.LLM arguments, as JSON")
    p.add_argument("--result", required=True, help="JSON file to write")
    return p.parse_args(argv)


def chunks(args, tok):
    from inference.examples import DEFAULT_BATCH_SIZE, chunks_of, read_tests
    from inference.records import prompt_ids

    examples = read_tests(args.test_file, "score", args.prompts)
    for ex in examples:
        ex["prompt_ids"] = prompt_ids(tok, ex["system"], ex["user"])
    return chunks_of(examples, argparse.Namespace(batch_size=DEFAULT_BATCH_SIZE)), examples


def hf_runners(args, tok):
    import torch

    from inference.hf_backend import HFRunner
    from inference.loading import load_model

    if args.threads:
        torch.set_num_threads(args.threads)
    model = load_model(args.model, args.adapter, "cpu", "float32", tok)
    return (lambda mode: HFRunner(model, tok, mode, args.max_new_tokens)), (lambda: None), \
        {"torch_threads": torch.get_num_threads()}


def vllm_runners(args, tok):
    from inference.vllm_backend import VLLMRunner
    from inference.vllm_engine import Engine, cpu_settings, lora_rank_limit

    settings = cpu_settings(args.threads)
    how = args.vllm_adapters if args.adapter else "merge"
    eng = Engine(args.model, args.adapter, how, args.model, "float32", compile_model=args.compile,
                 max_lora_rank=lora_rank_limit(args.adapter) if how == "lora" else None,
                 engine_args=json.loads(args.engine_args))
    lora = eng.serve(args.model, args.adapter)
    return (lambda mode: VLLMRunner(eng, tok, mode, args.max_new_tokens, lora=lora)), eng.close, settings


def main(argv=None):
    args = parse_args(argv)
    from inference.loading import load_tokenizer

    if args.backend == "vllm":
        import vllm  # noqa: F401  (its import time is part of start-up, reported apart)
    imported = time.perf_counter()
    tok = load_tokenizer(args.model)
    parts, examples = chunks(args, tok)
    runner_of, close, settings = (hf_runners if args.backend == "hf" else vllm_runners)(args, tok)
    ready = time.perf_counter()
    rates = {}
    for mode in args.modes:
        runner = runner_of(mode)
        runner(parts[-1][-WARMUP:])
        start = time.perf_counter()
        for chunk in parts:
            runner(chunk)
        rates[mode] = len(examples) / (time.perf_counter() - start)
        print(f"{args.backend} {mode}: {rates[mode]:.2f} samples/s", flush=True)
    close()
    result = {"backend": args.backend, "import_s": imported - START, "start_s": ready - imported,
              "rates": rates, "settings": settings, "prompts": len(examples),
              "mean_prompt_tokens": sum(len(ex["prompt_ids"]) for ex in examples) / len(examples)}
    with open(args.result, "w", encoding="utf-8") as f:
        json.dump(result, f, indent=1)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
