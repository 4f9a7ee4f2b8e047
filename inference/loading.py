"""Load the tokenizer and the model to run: a base (or full merged) model plus optional PEFT adapters.

Several adapters are combined as the sum of their effects: each is loaded with PEFT and merged into the
weights in turn (`merge_and_unload`), so W' = W + sum_i (lora_alpha_i / r_i) * B_i @ A_i. The usual
case is one adapter (the output of merge/); a full merged model folder needs none.
"""

import contextlib
import os

import torch

from common.cli import UserError
from common.folders import check_adapter_folder, check_model_folder

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def resolve_device(name):
    """'auto' -> cuda when available, else cpu."""
    if name == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise UserError(f"--device {name} asked for, but no CUDA device is available")
    return name


def resolve_dtype(name, device):
    """'auto' -> bfloat16 on a GPU, float32 on CPU."""
    if name == "auto":
        return "bfloat16" if device.startswith("cuda") else "float32"
    return name


SDPA_BACKENDS = ("auto", "torch")


@contextlib.contextmanager
def attention_backends(choice="auto"):
    """The attention kernels the model's forward passes may use. "auto": every SDPA backend but cuDNN's.

    Since torch 2.9, bf16/fp16 attention on Hopper GPUs goes to cuDNN first, which builds an execution
    plan for every new shape; prompts of varying lengths, a KV cache that grows by one token a step, and
    a 4D mask make nearly every call a new shape (docs/gpu.md). Flash, memory-efficient and math kernels
    need no plans; float32 never ran on cuDNN, and CPUs have no cuDNN: their outputs do not change.
    "torch": torch's own order.
    """
    if choice == "torch":
        yield
        return
    from torch.nn.attention import SDPBackend, sdpa_kernel

    with sdpa_kernel([SDPBackend.FLASH_ATTENTION, SDPBackend.EFFICIENT_ATTENTION, SDPBackend.MATH]):
        yield


def load_tokenizer(path):
    """The tokenizer, left-padded, with a pad token and a chat template."""
    from transformers import AutoTokenizer

    if not os.path.isdir(path):
        raise UserError(f"tokenizer folder not found: {path}")
    try:
        tok = AutoTokenizer.from_pretrained(path, trust_remote_code=False)
    except (OSError, ValueError) as err:
        raise UserError(f"cannot load a tokenizer from {path}: {str(err).splitlines()[0]}") from None
    if not tok.chat_template:
        raise UserError(f"the tokenizer in {path} has no chat template")
    tok.padding_side = "left"
    if tok.pad_token_id is None:
        tok.pad_token = tok.eos_token
    return tok


def apply_adapter(model, path):
    """Merge one PEFT adapter into `model`; a one-line UserError if it does not fit the model."""
    from peft import PeftModel

    check_adapter_folder(path)
    try:
        peft_model = PeftModel.from_pretrained(model, path, is_trainable=False)
    except (ValueError, RuntimeError, KeyError) as err:
        first = " ".join(str(err).split())[:300]
        raise UserError(f"adapter {path} does not match the base model: {first}") from None
    merged = peft_model.merge_and_unload()
    if hasattr(merged, "peft_config"):  # left behind by PEFT; a next adapter would warn about it
        del merged.peft_config
    return merged


def load_model(base, adapters=(), device="cpu", dtype="float32", tokenizer=None):
    """The base model on `device` in `dtype`, with every adapter merged in, in eval mode."""
    from transformers import AutoModelForCausalLM

    check_model_folder(base, "base model folder")
    import transformers

    transformers.utils.logging.disable_progress_bar()  # transformers 5 draws one per load and save
    # transformers 5 names the argument dtype (torch_dtype is deprecated there, unknown before 4.56)
    key = "dtype" if int(transformers.__version__.split(".")[0]) >= 5 else "torch_dtype"
    try:
        model = AutoModelForCausalLM.from_pretrained(
            base, trust_remote_code=False, low_cpu_mem_usage=True, **{key: DTYPES[dtype]})
    except (OSError, ValueError) as err:
        raise UserError(f"cannot load a model from {base}: {str(err).splitlines()[0]}") from None
    model.to(device)
    # the model's own generation defaults (Qwen2-Instruct: sampling, repetition penalty 1.05) are not
    # applied: transformers merges them into any GenerationConfig passed to generate
    from transformers import GenerationConfig
    model.generation_config = GenerationConfig()
    for path in adapters:
        model = apply_adapter(model, path)
    if tokenizer is not None and len(tokenizer) > model.get_input_embeddings().weight.shape[0]:
        raise UserError(f"the tokenizer has {len(tokenizer)} tokens but the model's embedding has "
                        f"{model.get_input_embeddings().weight.shape[0]}: they do not belong together")
    return model.eval()


def _tensor_shapes(files):
    """name -> shape of every tensor in safetensors files, read from their headers only."""
    from safetensors import safe_open

    shapes = {}
    for path in files:
        with safe_open(path, framework="pt") as f:
            for name in f.keys():
                shapes[name] = tuple(f.get_slice(name).get_shape())
    return shapes


def _lora_shapes(adapter):
    path = os.path.join(adapter, "adapter_model.safetensors")
    if not os.path.isfile(path):
        raise UserError(f"{adapter} has no adapter_model.safetensors")
    try:
        return _tensor_shapes([path])
    except Exception as err:  # a damaged header: safetensors raises its own error types
        raise UserError(f"{path} cannot be read: {str(err).splitlines()[0]}") from None


def adapter_rank(adapter):
    """The largest LoRA rank in an adapter, read from its lora_A weights (rank_pattern included)."""
    check_adapter_folder(adapter)
    ranks = [shape[0] for name, shape in _lora_shapes(adapter).items() if ".lora_A." in name]
    if not ranks:
        raise UserError(f"{adapter} holds no lora_A weights: not a LoRA adapter")
    return max(ranks)


def check_adapter_matches(adapter, base):
    """UserError unless every LoRA module of `adapter` names a weight of `base` with matching shapes
    (B @ A has the weight's shape). Reads file headers only."""
    files = [os.path.join(base, n) for n in sorted(os.listdir(base)) if n.endswith(".safetensors")]
    if not files:
        return  # no safetensors weights to compare with (the engine checks them when loading)
    weights, lora = _tensor_shapes(files), _lora_shapes(adapter)
    for name, shape in lora.items():
        if ".lora_A." not in name:
            continue
        module = name.split(".lora_A.")[0].removeprefix("base_model.model.")
        b_shape = lora.get(name.replace(".lora_A.", ".lora_B."))
        target = weights.get(module + ".weight")
        if target is None or b_shape is None or (b_shape[0], shape[1]) != target:
            found = "no such weight" if target is None else f"weight {tuple(target)}"
            raise UserError(f"adapter {adapter} does not match the base model {base}: {module} "
                            f"(lora_A {shape}, lora_B {b_shape}; base: {found})")
