"""Score mode on vLLM: every candidate is one request, prompt + `title||`, whose prompt log-probs give
the candidate's log-likelihood (the same sum as inference/scoring.py computes on transformers).

vLLM skips the prefix cache for requests with prompt log-probs (so that every position gets its
log-prob): 30 candidates would prefill the shared prompt 30 times. Here the cache is read anyway
(`skip_reading_prefix_cache=False`): the prompt is computed once, each candidate recomputes only the
last, partly filled cache block and its own tokens. The positions a request took from the cache have no
log-probs (`num_cached_tokens` says how many). A cached position inside a candidate was computed by
another request of the chunk sharing that token prefix (each chunk starts from an empty cache), which
kept only its own token's log-prob; the few candidates hit this way (a block boundary inside a prefix
they share with another candidate) are scored again without reading the cache.
(vLLM 0.32's `prompt_logprob_token_ids` / `prompt_logprob_start` would limit the work too, but they
need its V2 model runner, which needs Triton: not on the CPU build.)
"""

from vllm import SamplingParams

from inference.records import candidate_tokens, score_record, score_titles


def _requests(tok, chunk):
    """One request per (example, candidate): the example, the title and the candidate's tokens."""
    return [(ex, title, candidate_tokens(tok, title), None) for ex in chunk for title in score_titles(ex)]


def _logprobs(request, out):
    """log p of each candidate token a request computed itself (None where it read the cache)."""
    ex, _, cont, _ = request
    plen = len(ex["prompt_ids"])
    first = max(plen, out.num_cached_tokens + 1)  # entry j (token j) comes from position j - 1
    flat = out.prompt_logprobs  # FlatLogprobs: position j's (token, log-prob) pairs from start_indices[j]
    return [flat.logprobs[flat.start_indices[j]] if j >= first else None for j in range(plen, plen + len(cont))]


def _generate(llm, requests, lora, read_cache):
    params = SamplingParams(temperature=0.0, max_tokens=1, prompt_logprobs=0, detokenize=False,
                            skip_reading_prefix_cache=not read_cache, flat_logprobs=True)
    outs = llm.generate([{"prompt_token_ids": ex["prompt_ids"] + cont} for ex, _, cont, _ in requests],
                        params, lora_request=lora, use_tqdm=False)
    return [_logprobs(r, o) for r, o in zip(requests, outs)]


def score_chunk(llm, tok, chunk, lora, norm="sum"):
    """Score records for the examples of `chunk`, as inference.hf_backend writes them."""
    requests = _requests(tok, chunk)
    logprobs = _generate(llm, requests, lora, read_cache=True)
    again = [i for i, lps in enumerate(logprobs) if None in lps]
    if again:
        for i, lps in zip(again, _generate(llm, [requests[i] for i in again], lora, read_cache=False)):
            logprobs[i] = lps
    per_example = {}
    for (ex, title, cont, _), lps in zip(requests, logprobs):
        entry = per_example.setdefault(ex["id"], ([], [], []))
        for part, value in zip(entry, (title, sum(lps), len(cont))):
            part.append(value)
    return [score_record(ex, *per_example[ex["id"]][:2], norm, per_example[ex["id"]][2]) for ex in chunk]
