"""Memory of a weight fit (merge/learn_weights.py): micro-batches, halved on CUDA out-of-memory, and
gradient checkpointing of the decoder layers.

A step's objective is the mean over its batch B of prompts. Split into micro-batches m,
mean_B = sum_m |m| / |B| * mean_m, so a backward pass on each micro-batch's mean weighted by |m| / |B|
accumulates in w.grad exactly the gradient of the whole batch, while autograd keeps the activations of
one micro-batch at a time: peak memory follows --micro-batch-size, not --batch-size.
"""

import re
from contextlib import contextmanager

import torch
from tqdm import tqdm

from common.cli import UserError
from merge.objectives import objective

CHECKPOINTING = ("auto", "on", "off")


def chunks(prompts, size):
    return [prompts[i:i + size] for i in range(0, len(prompts), size)]


def accumulate_gradient(model, merge, batch, size, name, norm):
    """Backward of the batch's mean objective `name`, `size` prompts per forward/backward pass: adds the
    gradient of the whole batch's mean to w.grad. Returns that mean (a float)."""
    total = 0.0
    for micro in chunks(batch, size):
        merge.refresh()  # each backward frees the graph from w to the coefficients: rebuild it
        loss = objective(model, micro, name, norm) * (len(micro) / len(batch))
        loss.backward()
        total += loss.item()
    return total


@torch.no_grad()
def mean_objective(model, merge, prompts, size, name, norm):
    """Mean objective over `prompts`, `size` prompts per forward pass, without gradients (eval mode)."""
    merge.refresh()
    with eval_mode(model):
        total = sum(objective(model, m, name, norm).item() * len(m) for m in chunks(prompts, size))
    return total / len(prompts)


@contextmanager
def eval_mode(model):
    was = model.training
    model.eval()
    try:
        yield
    finally:
        model.train(was)


class MicroBatches:
    """The micro-batch size of a fit (prompts per forward/backward pass), halved when a pass runs out of
    CUDA memory; every later pass of the fit uses the smaller size."""

    def __init__(self, size, device, checkpointing):
        self.size, self.device, self.checkpointing = size, str(device), checkpointing

    def run(self, fn, prompts, params=()):
        """fn(prompts, size): redone from its start at half the size after a torch.OutOfMemoryError (the
        gradients of `params` dropped first); at one prompt per pass the error is a UserError."""
        while True:
            size = min(self.size, len(prompts))
            try:
                return fn(prompts, size)
            except torch.OutOfMemoryError as err:
                detail = memory_detail(err)
            # here, out of the except block, the error and its traceback no longer hold the pass's tensors
            for p in params:
                p.grad = None
            if self.device.startswith("cuda"):
                torch.cuda.empty_cache()
            if size == 1:
                raise UserError(self.too_large(detail))
            self.size = size // 2
            tqdm.write(f"out of memory at micro-batch {size}: continuing at {self.size}")

    def too_large(self, detail):
        hints = ["--dtype bfloat16", "prompts with fewer candidates", "a larger GPU"]
        if not self.checkpointing:
            hints.insert(0, "--gradient-checkpointing on")
        return (f"out of memory on {self.device} with one prompt per pass ({detail}): --micro-batch-size 1 "
                f"does not fit, whatever --batch-size; try {', '.join(hints)}")


def memory_detail(err):
    """'tried to allocate X, Y free' from torch's CUDA out-of-memory message, else its first line."""
    text = " ".join(str(err).split())
    wanted = re.search(r"Tried to allocate ([\d.]+ \w+)", text)
    free = re.search(r"of which ([\d.]+ \w+) is free", text)
    if wanted and free:
        return f"tried to allocate {wanted[1]}, {free[1]} free"
    return text[:200] or "no detail"


def use_checkpointing(model, mode, device):
    """Gradient checkpointing of the decoder layers (--gradient-checkpointing; auto: on CUDA only); returns
    whether it is on. transformers checkpoints a layer only in train mode (GradientCheckpointingLayer in
    transformers.modeling_layers tests self.training), so the model goes into train mode, which changes
    no output only without dropout: Qwen2's only dropout is attention_dropout, 0.0 in its configs."""
    on = mode == "on" or (mode == "auto" and str(device).startswith("cuda"))
    if not on:
        return False
    dropping = dropout_modules(model)
    if dropping and mode == "on":
        raise UserError(f"--gradient-checkpointing on needs train mode, where {dropping[0]} would drop "
                        "activations at random: use --gradient-checkpointing off for this model")
    if dropping:
        print(f"note: gradient checkpointing left off: in train mode {dropping[0]} would drop activations")
        return False
    model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    model.train()
    return True


def dropout_modules(model):
    """'module (kind rate)' of each module that drops anything in train mode (nn.Dropout, attention_dropout)."""
    out = []
    for name, mod in model.named_modules():
        kind = "dropout" if isinstance(mod, torch.nn.Dropout) else "attention_dropout"
        rate = mod.p if kind == "dropout" else getattr(mod, "attention_dropout", 0.0)
        if isinstance(rate, (int, float)) and rate > 0:
            out.append(f"{name or type(mod).__name__} ({kind} {rate})")
    return out
