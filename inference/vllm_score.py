"""Score mode on vLLM: each candidate's log-likelihood, sum_j log p(u_j | prompt, u_<j) with u = the
tokens of `title||`, the same sum inference/scoring.py computes on transformers.

Each candidate is one request of the bare prompt, forced (a logits processor, inference/vllm_backend.py)
to produce exactly u; the log-prob vLLM reports for each sampled token is taken from the logits before
any processor (vLLM's default logprobs_mode "raw_logprobs"), i.e. log p(u_j | prompt, u_<j). The 30
requests of a prompt share its prefix-cache blocks, so the prompt is computed once per chunk.

Measured on CPU (docs/inference.md): prompt + candidate as one request with `prompt_logprobs` skips the
prefix cache and prefills the prompt 30 times (3.5x slower than this); reading the cache anyway
(`skip_reading_prefix_cache=False`) loses the log-probs of cached positions and still builds a log-prob
entry for every prompt position in Python (2x slower than this). vLLM 0.32's
`prompt_logprob_token_ids` / `prompt_logprob_start` would avoid that, but they need its V2 model
runner, which needs Triton: not available on the CPU build.
"""

from vllm import SamplingParams

from inference.records import NEEDS_NEUTRAL, candidate_tokens, neutral_prompt_ids, score_record, score_titles

FORCED_KEY = "weaverec_forced"  # extra_args: the exact tokens to produce (inference/vllm_backend.py forces them)


def forced_logprobs(llm, prompts, continuations, lora):
    """Per (prompt, continuation) pair: the log-prob of each continuation token after the prompt and the
    continuation's earlier tokens."""
    params = [SamplingParams(temperature=0.0, max_tokens=len(cont), logprobs=0, ignore_eos=True,
                             detokenize=False, flat_logprobs=True, extra_args={FORCED_KEY: cont})
              for cont in continuations]
    outs = llm.generate([{"prompt_token_ids": p} for p in prompts], params, lora_request=lora, use_tqdm=False)
    result = []
    for cont, out in zip(continuations, outs):
        sample = out.outputs[0]
        if list(sample.token_ids) != cont:
            raise RuntimeError("vLLM did not produce the forced candidate tokens")
        flat = sample.logprobs  # FlatLogprobs: token j's log-prob first at start_indices[j]
        result.append([flat.logprobs[flat.start_indices[j]] for j in range(len(cont))])
    return result


def score_chunk(llm, tok, chunk, lora, norm="sum"):
    """Score records for the examples of `chunk`, as inference.hf_backend writes them."""
    titles = [score_titles(ex) for ex in chunk]
    conts = [[candidate_tokens(tok, t) for t in ts] for ts in titles]
    sums = summed_logprobs(llm, [ex["prompt_ids"] for ex in chunk], conts, lora)
    neutral = [None] * len(chunk)
    if norm in NEEDS_NEUTRAL:
        neutral = summed_logprobs(llm, [neutral_prompt_ids(tok, ex["prompt_ids"]) for ex in chunk], conts, lora)
    return [score_record(ex, ts, s, norm, [len(c) for c in cs], s0)
            for ex, ts, cs, s, s0 in zip(chunk, titles, conts, sums, neutral)]


def summed_logprobs(llm, prompts, conts, lora):
    """Per prompt, the summed log-probs of each of its continuations."""
    flat = [p for p, cs in zip(prompts, conts) for _ in cs]
    logprobs = iter(forced_logprobs(llm, flat, [c for cs in conts for c in cs], lora))
    return [[sum(next(logprobs)) for _ in cs] for cs in conts]
