"""The backend behind the jobs of one call: a runner per job, the model or engine loaded once.

hf: the model (+ adapters merged in) is loaded per job, kept while the next job wants the same.
vllm: one engine for every job (inference/vllm_engine.py), started for the first; everything is checked
first (adapters against their base models, LoRA ranks), since a bad adapter kills a running engine.
"""

import contextlib
import importlib.util
import os
import sys

from common.cli import UserError


class Session:
    def __init__(self, args, jobs):
        self.args, self.jobs = args, jobs
        self.model = self.model_key = self.engine = None
        if args.backend == "vllm":
            self._check_vllm()

    def _check_vllm(self):
        from inference.loading import check_adapter_matches
        from inference.vllm_engine import lora_rank_limit

        for job in self.jobs:
            for path in job.adapters:
                check_adapter_matches(path, job.base)
        how = self.args.vllm_adapters_resolved
        adapters = [a for job in self.jobs for a in job.adapters]
        if how == "lora" and any(len(job.adapters) > 1 for job in self.jobs):
            raise UserError("a LoRA request serves one adapter: merge them first (python -m merge.merge_lora) "
                            "or use --vllm-adapters merge")
        self.max_lora_rank = lora_rank_limit(adapters, self.args.max_lora_rank) \
            if how == "lora" and adapters else None

    def runner(self, job):
        a = self.args
        if a.backend == "vllm":
            return self._vllm_runner(job)
        from inference.hf_backend import HFRunner
        from inference.loading import load_model

        if a.threads:
            import torch
            torch.set_num_threads(a.threads)
        key = (os.path.realpath(job.base), tuple(map(os.path.realpath, job.adapters)))
        if key != self.model_key:
            self.model = None  # the last one freed first
            self.model = load_model(job.base, job.adapters, a.device_resolved, a.dtype_resolved, job.tok)
            self.model_key = key
        batch, how = self._batch_size(job)
        on_gpu = a.device_resolved.startswith("cuda")
        runner = HFRunner(self.model, job.tok, a.mode, a.max_new_tokens, a.score_norm, a.temperature, a.seed,
                          batch, score_batch=batch if on_gpu else 1, sdpa=a.sdpa_backends, compile=a.compile,
                          constraint_masks=a.constraint_masks)
        runner.batch_text = f", batch {batch} ({how})" if a.mode != "score" or on_gpu else ", one prompt a pass"
        return runner

    def _batch_size(self, job):
        """(prompts at once, how it was chosen): --batch-size, or auto: the CPU default, or on a GPU
        what fits its free memory at this job's longest prompts (inference/memory.py)."""
        from inference.memory import CPU_BATCH_SIZE, auto_batch_size

        a = self.args
        if a.batch_size != "auto":
            return a.batch_size, "--batch-size"
        if not a.device_resolved.startswith("cuda"):
            return CPU_BATCH_SIZE, "auto, CPU"
        import torch

        free, _ = torch.cuda.mem_get_info(torch.device(a.device_resolved))
        new = a.max_new_tokens if a.mode == "free" else 5 * max(len(c) for ex in job.examples for c in ex["candidates"])
        batch = auto_batch_size(self.model.config.to_dict(), a.dtype_resolved, a.mode, job.examples, new, free)
        return batch, f"auto, {free / 2**30:.1f} GiB free"

    def _vllm_runner(self, job):
        from inference.vllm_backend import VLLMRunner
        from inference.vllm_engine import Engine

        a = self.args
        if self.engine is None:
            self.engine = Engine(job.base, job.adapters, a.vllm_adapters_resolved, job.tokenizer_path,
                                 a.dtype_resolved, a.seed, a.tensor_parallel_size, self.max_lora_rank,
                                 a.compile or a.device_resolved.startswith("cuda"),
                                 os.path.dirname(os.path.abspath(job.output.out)), longest=a.longest_request)
        lora = self.engine.serve(job.base, job.adapters)
        return VLLMRunner(self.engine, job.tok, a.mode, a.max_new_tokens, a.score_norm, a.temperature,
                          a.seed, lora)

    def close(self):
        if self.engine is not None:
            self.engine.close()


@contextlib.contextmanager
def vllm_console(args, jobs):
    """CPU engine settings, then the engine's messages into `<first output>.vllm.log`; yields the console
    stream for progress and results. On failure the log's tail is shown, then one error line."""
    from inference.vllm_engine import cpu_settings, import_vllm, logged_to, tail

    if importlib.util.find_spec("vllm") is None:  # before the log opens: the error stays on the console
        import_vllm()
    if not args.device_resolved.startswith("cuda"):
        cpu_settings(args.threads)
    log = jobs[0].output.out + ".vllm.log"
    try:
        with logged_to(log) as console:
            yield console
    except (UserError, KeyboardInterrupt):
        raise
    except Exception as err:
        sys.stderr.write(tail(log))
        first = (str(err).strip().splitlines() or [type(err).__name__])[0]
        raise UserError(f"vLLM failed: {first} (engine log: {log}, its last lines above)") from None
