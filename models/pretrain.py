"""Next-title pre-training of the tiny base: causal LM over users' title sequences "t1||t2||...||t_next".

The sequences come from the sharegpt samples (history + the true next item), so the base "knows the
products" (their words, brands and which items follow which) before any LoRA is trained.
Everything random is drawn from generators seeded by `seed`: the same steps give the same weights.
"""

import math
import random
import time

import torch
from tqdm import tqdm

from common.prompt import SEP, parse_user_prompt, sample_parts, split_titles


def title_sequences(samples, seed):
    """Distinct [history..., target] title lists of sharegpt samples, in a seeded random order."""
    seen, out = set(), []
    for lineno, sample in enumerate(samples, 1):
        _, user, answer = sample_parts(sample, lineno)
        history, _ = parse_user_prompt(user)
        answer = split_titles(answer or "")
        seq = tuple(history + answer[:1])
        if len(seq) >= 2 and seq not in seen:
            seen.add(seq)
            out.append(list(seq))
    random.Random(seed).shuffle(out)
    return out


def token_stream(tokenizer, sequences, max_tokens=None, chunk=2000):
    """Encode sequences as 't1||...||tn' + <|endoftext|>, in order, until `max_tokens`; concatenate."""
    eos = tokenizer.convert_tokens_to_ids("<|endoftext|>")
    ids = []
    for i in range(0, len(sequences), chunk):
        texts = [SEP.join(seq) for seq in sequences[i:i + chunk]]
        for enc in tokenizer(texts, add_special_tokens=False)["input_ids"]:
            ids.extend(enc)
            ids.append(eos)
        if max_tokens and len(ids) >= max_tokens:
            break
    return torch.tensor(ids[:max_tokens] if max_tokens else ids, dtype=torch.long)


def lr_at(step, steps, lr, warmup):
    """Linear warm-up then cosine decay to 10% of `lr`."""
    if step < warmup:
        return lr * (step + 1) / warmup
    progress = (step - warmup) / max(1, steps - warmup)
    return lr * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * progress)))


def pretrain(model, stream, steps, batch_size=16, block_size=128, lr=3e-3, seed=0,
             max_minutes=None, progress=True):
    """Train `model` on random windows of `stream`; return (losses per step, seconds, stopped_early)."""
    if len(stream) <= block_size + 1:
        raise ValueError(f"only {len(stream)} tokens of pre-training text; need more than {block_size + 1}")
    gen = torch.Generator().manual_seed(seed)
    opt = torch.optim.AdamW(model.parameters(), lr=lr, betas=(0.9, 0.95), weight_decay=0.1)
    warmup = max(1, steps // 20)
    offsets = torch.arange(block_size)
    losses, start, stopped = [], time.time(), False
    model.train()
    bar = tqdm(range(steps), desc="pre-training", disable=not progress, mininterval=2)
    for step in bar:
        for group in opt.param_groups:
            group["lr"] = lr_at(step, steps, lr, warmup)
        starts = torch.randint(0, len(stream) - block_size, (batch_size,), generator=gen)
        batch = stream[starts[:, None] + offsets]
        loss = model(input_ids=batch, labels=batch).loss  # transformers shifts the labels
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        losses.append(loss.item())
        bar.set_postfix(loss=f"{sum(losses[-20:]) / len(losses[-20:]):.3f}", refresh=False)
        if max_minutes is not None and time.time() - start > 60 * max_minutes:
            stopped = True
            break
    model.eval()
    return losses, time.time() - start, stopped
