"""inference.decoding: the batched decoder gives what `model.generate` gives each prompt alone, with rows
finishing at different steps and waiting prompts taking their places; its decode-time attention equals
SDPA; sampling is seeded."""

import pytest
import torch
from transformers import GenerationConfig
from transformers.integrations.sdpa_attention import sdpa_attention_forward

from inference import decoding
from inference.decoding import (
    DECODE_ATTENTION,
    Batch,
    BufferCache,
    Decoder,
    decode_attention,
    grouped_decode_attention,
)
from inference.generate import read_tests
from inference.hf_backend import HFRunner
from inference.loading import load_model, load_tokenizer


@pytest.fixture(scope="module")
def model_tok(varied_model_dir):
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    tok = load_tokenizer(str(varied_model_dir))
    yield load_model(str(varied_model_dir), (), "cpu", "float32", tok), tok
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def prompts(real_test_file, model_tok):
    model, tok = model_tok
    runner = HFRunner(model, tok)
    return [runner.prompt_ids(ex["system"], ex["user"]) for ex in read_tests(str(real_test_file), "free")]


def generate_alone(model, prompt, max_new_tokens):
    """Greedy continuation of one unpadded prompt by transformers' own generate, no stop token."""
    config = GenerationConfig(max_new_tokens=max_new_tokens, min_new_tokens=max_new_tokens, do_sample=False,
                              num_beams=1, eos_token_id=None, pad_token_id=0, temperature=None,
                              top_p=None, top_k=None)
    with torch.no_grad():
        out = model.generate(input_ids=torch.tensor([prompt]), generation_config=config,
                             use_model_defaults=False)
    return out[0, len(prompt):].tolist()


def until(tokens, stop):
    """tokens up to and including the first stop token."""
    for i, t in enumerate(tokens):
        if t in stop:
            return tokens[:i + 1]
    return tokens


@pytest.fixture(scope="module")
def alone(model_tok, prompts):
    """Each prompt's greedy continuation (12 tokens) by generate, the prompt alone."""
    return [generate_alone(model_tok[0], p, 12) for p in prompts]


def test_batched_decoding_equals_generate_on_each_prompt_alone(model_tok, prompts, alone):
    model, _ = model_tok
    assert len({len(p) for p in prompts}) > 1, "the batch must need left padding"
    assert len({tuple(a) for a in alone}) > 1, "the prompts must have different answers"
    # stop tokens met at different steps by different rows, so rows leave the batch mid-way
    stop = {alone[0][3], alone[1][7]}
    expected = [until(a, stop) for a in alone]
    assert len({len(e) for e in expected}) > 2
    with torch.no_grad():
        assert Decoder(model, sorted(stop))(prompts, 12) == expected
        assert Decoder(model, [])(prompts, 12) == alone  # no stop token: every row runs to the end


@pytest.mark.parametrize("order", ["longest first", "shortest first"])
def test_continuous_batching_equals_generate_on_each_prompt_alone(model_tok, prompts, alone, order,
                                                                 monkeypatch):
    """Width 3 over 12 prompts: finished rows take the next prompt in place, or leave and come back
    (a longer prompt needs left padding first), and the cache is laid out anew when full."""
    model, _ = model_tok
    seen = []
    relayout = Batch.relayout

    def record(self, rows, room=0, extra=0):
        shared = min((self.start[r] for r in rows), default=self.cache.filled)
        seen.append({"full": self.cache.filled == self.cache.capacity,
                     "padded": room > self.cache.filled - shared, "grown": extra > 0})
        relayout(self, rows, room, extra)

    monkeypatch.setattr(Batch, "relayout", record)
    monkeypatch.setattr(decoding, "RELAYOUT_MARGIN", 5)  # the cache fills up within an answer
    ids = sorted(range(len(prompts)), key=lambda i: len(prompts[i]), reverse=order == "longest first")
    stop = {alone[0][3], alone[1][7], alone[5][2]}
    with torch.no_grad():
        got = Decoder(model, sorted(stop))([prompts[i] for i in ids], 12, width=3)
    assert got == [until(alone[i], stop) for i in ids]
    if order == "longest first":  # each waiting prompt fits in place, until the cache is full
        assert any(s["full"] for s in seen)
    else:  # a longer prompt does not fit in place: it leaves, and comes back with left padding
        assert any(s["padded"] and s["grown"] for s in seen)


def test_decoding_restores_the_attention_implementation(model_tok, prompts):
    model, _ = model_tok
    assert model.config._attn_implementation == "sdpa"
    with pytest.raises(RuntimeError, match="boom"):
        with decode_attention(model):
            assert model.config._attn_implementation == DECODE_ATTENTION
            raise RuntimeError("boom")
    assert model.config._attn_implementation == "sdpa"
    with torch.no_grad():
        Decoder(model, [])(prompts[:2], 3)
    assert model.config._attn_implementation == "sdpa"


class Grouped(torch.nn.Module):
    num_key_value_groups = 3


def test_grouped_decode_attention_equals_sdpa_on_a_buffer_view():
    torch.manual_seed(0)
    batch, kv_heads, groups, dim, filled = 3, 2, 3, 8, 11
    buffer = torch.randn(batch, kv_heads, 20, dim), torch.randn(batch, kv_heads, 20, dim)
    key, value = buffer[0][:, :, :filled], buffer[1][:, :, :filled]  # views, not contiguous
    query = torch.randn(batch, kv_heads * groups, 1, dim)
    mask = torch.zeros(batch, 1, 1, 20)
    mask[0, :, :, :4] = torch.finfo(torch.float32).min  # left padding of row 0
    got, _ = grouped_decode_attention(Grouped(), query, key, value, mask, scaling=0.3)
    want, _ = sdpa_attention_forward(Grouped(), query, key, value, mask, scaling=0.3)
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-6)


def test_buffer_cache_relayout_keeps_the_chosen_rows():
    cache = BufferCache(batch=3, capacity=6)
    for row in range(3):
        k = torch.full((1, 2, 4 - row, 5), float(row))
        cache.write_row(row, 4, [(k, k + 10)])
    cache.set_filled(4)
    assert cache.get_seq_length() == 4
    assert cache.key_cache[0][2, :, :2].abs().sum() == 0  # left padding stays zero
    new = torch.stack([torch.full((2, 1, 5), 100.0 + r) for r in range(3)])
    keys, _ = cache.update(new, new, 0)
    assert keys.shape == (3, 2, 5, 5) and cache.get_seq_length() == 5
    cache.relayout(torch.tensor([2, 0]), -1, 9, extra=1)  # rows 2 and 0, first position dropped
    assert cache.key_cache[0].shape == (3, 2, 4, 5) and cache.capacity == 9
    assert cache.key_cache[0][:, 0, -1, 0].tolist() == [102.0, 100.0, 0.0]
    assert cache.value_cache[0][:, 0, 2, 0].tolist() == [12.0, 10.0, 0.0]
    assert cache.key_cache[0][0, 0, :, 0].tolist() == [0.0, 2.0, 2.0, 102.0]


def test_sampling_is_seeded(model_tok, prompts):
    model, _ = model_tok
    decoder = Decoder(model, [], temperature=1.5)

    def sample(seed):
        with torch.no_grad():
            return decoder(prompts[:4], 10, generator=torch.Generator().manual_seed(seed))

    first = sample(1)
    assert sample(1) == first
    assert sample(2) != first
    with torch.no_grad():
        assert Decoder(model, [])(prompts[:4], 10) != first  # it does sample
