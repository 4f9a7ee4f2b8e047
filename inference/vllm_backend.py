"""The vLLM backend (GPU): same examples in, same records out as inference.hf_backend.

The base model (or a full merged model) is loaded by vLLM; one adapter is served as a LoRARequest
(several adapters: merge them first with merge/merge_lora.py). Modes: `free` (greedy generation)
and `score` (each prompt + candidate is one request with prompt log-probs; prefix caching computes
the shared prompt once). `constrained` needs a per-request logits processor, which vLLM's V1 engine
does not offer: use --backend hf for it.
"""

from common.cli import UserError
from common.prompt import SEP, TOP_K
from inference.constrained import unique_titles
from inference.loading import check_adapter_folder, check_model_folder
from inference.scoring import candidate_tokens, rank


def import_vllm():
    try:
        import vllm
    except ImportError:
        raise UserError("--backend vllm needs the vllm package (pip install vllm, on a CUDA "
                        "machine); without it use --backend hf") from None
    return vllm


def lora_rank_limit(r):
    """vLLM's max_lora_rank must be one of its supported sizes: the next power of two from 8."""
    size = 8
    while size < r:
        size *= 2
    return size


class VLLMRunner:
    def __init__(self, base, adapters, tokenizer, tokenizer_path, mode="free", max_new_tokens=128, dtype="bfloat16",
                 tensor_parallel_size=1, score_norm="sum", temperature=0.0, seed=0):
        vllm = import_vllm()
        from vllm.lora.request import LoRARequest

        if mode == "constrained":
            raise UserError("--mode constrained is not available with --backend vllm; use --backend hf")
        if len(adapters) > 1:
            raise UserError("vLLM serves one LoRA adapter: merge the adapters first "
                            "(python -m merge.merge_lora), then pass the merged one")
        check_model_folder(base, "base model folder")
        kwargs = {"model": base, "tokenizer": tokenizer_path, "dtype": dtype, "seed": seed,
                  "trust_remote_code": False, "tensor_parallel_size": tensor_parallel_size,
                  "enable_prefix_caching": True}
        self.lora = None
        if adapters:
            config = check_adapter_folder(adapters[0])
            kwargs.update(enable_lora=True, max_lora_rank=lora_rank_limit(int(config.get("r", 8))))
            self.lora = LoRARequest("adapter", 1, adapters[0])
        self.llm = vllm.LLM(**kwargs)
        self.tok = tokenizer
        self.mode = mode
        self.score_norm = score_norm
        stop = sorted({tokenizer.eos_token_id, tokenizer.pad_token_id} - {None})
        self.params = vllm.SamplingParams(temperature=temperature, max_tokens=max_new_tokens,
                                          stop_token_ids=stop, seed=seed)
        self.score_params = vllm.SamplingParams(temperature=0, max_tokens=1, prompt_logprobs=0)

    def prompt_ids(self, system, user):
        messages = [{"role": "system", "content": system}, {"role": "user", "content": user}]
        return self.tok.apply_chat_template(messages, add_generation_prompt=True, tokenize=True)

    def __call__(self, batch):
        return self._score(batch) if self.mode == "score" else self._free(batch)

    def _free(self, batch):
        requests = [{"prompt_token_ids": ex["prompt_ids"]} for ex in batch]
        outs = self.llm.generate(requests, self.params, lora_request=self.lora, use_tqdm=False)
        return [{"id": ex["id"], "output": o.outputs[0].text.strip()} for ex, o in zip(batch, outs)]

    def _score(self, batch):
        titles = [unique_titles(ex["candidates"]) for ex in batch]
        requests, spans = [], []
        for ex, ts in zip(batch, titles):
            for t in ts:
                cont = candidate_tokens(self.tok, t)
                requests.append({"prompt_token_ids": ex["prompt_ids"] + cont})
                spans.append(cont)
        outs = self.llm.generate(requests, self.score_params, lora_request=self.lora, use_tqdm=False)
        scores = []
        for o, cont in zip(outs, spans):
            tail = o.prompt_logprobs[-len(cont):]
            total = sum(pos[tok].logprob for pos, tok in zip(tail, cont))
            scores.append(total / len(cont) if self.score_norm == "mean" else total)
        records, i = [], 0
        for ex, ts in zip(batch, titles):
            ranking, ordered = rank(ts, scores[i:i + len(ts)])
            i += len(ts)
            records.append({"id": ex["id"], "output": SEP.join(ranking[:TOP_K]), "ranking": ranking,
                            "scores": [round(x, 6) for x in ordered]})
        return records
