"""The base-model families WeaveRec supports, and which LLaMA-Factory template trains a model: reads a model
folder's config.json and tokenizer files; writes nothing.

A module must be trained on the prompts inference gives it. Inference builds them with the model's own chat
template (common/chat.py), LLaMA-Factory with its named template, so the template is chosen from the model
(its config.json model_type and the special tokens its chat template writes), TEMPLATE overrides it, and
check_prompts() confirms on a real sample, before training, that both give the same token ids.

| family          | model_type | LLaMA-Factory template | system text                                         |
| Qwen2 / Qwen2.5 | qwen2      | qwen                   | a turn of its own                                   |
| Llama-3         | llama      | llama3                 | a turn of its own                                   |
| Mistral         | mistral    | mistral                | no system role: it opens the user's [INST] turn,    |
|                 |            |                        | followed by a blank line, on both sides             |

All three name their LoRA targets alike (q_proj k_proj v_proj o_proj gate_proj up_proj down_proj); only
Qwen2 has biases (on q, k, v), which LoRA leaves alone.
"""

import json
import os
from dataclasses import dataclass

from common.cli import UserError


@dataclass(frozen=True)
class Family:
    name: str          # what the console says
    model_types: tuple  # config.json model_type values
    template: str      # LLaMA-Factory 0.9.3's template of this chat format
    markers: tuple     # special tokens the format writes: its chat template and its tokenizer carry them


FAMILIES = (
    Family("Qwen2 / Qwen2.5", ("qwen2",), "qwen", ("<|im_start|>", "<|im_end|>")),
    Family("Llama-3", ("llama",), "llama3", ("<|start_header_id|>", "<|end_header_id|>", "<|eot_id|>")),
    Family("Mistral", ("mistral",), "mistral", ("[INST]", "[/INST]")),
)
SUPPORTED = "qwen2 (Qwen2, Qwen2.5), llama (Llama-3 chat models), mistral (Mistral)"


def read_json(path):
    if not os.path.isfile(path):
        return {}
    with open(path, encoding="utf-8") as f:
        try:
            return json.load(f)
        except json.JSONDecodeError as err:
            raise UserError(f"{path}: not valid JSON ({err.msg})") from None


def chat_template(model):
    """The chat template of a model folder (chat_template.jinja, else tokenizer_config.json's), or None."""
    path = os.path.join(model, "chat_template.jinja")
    if os.path.isfile(path):
        with open(path, encoding="utf-8") as f:
            return f.read()
    found = read_json(os.path.join(model, "tokenizer_config.json")).get("chat_template")
    if isinstance(found, list):  # named templates: the default one
        found = next((t.get("template") for t in found if t.get("name") == "default"), None)
    return found or None


def special_tokens(model):
    """The tokenizer's special tokens as its files list them, or None when they list none (a slow tokenizer)."""
    found = {t["content"] for t in read_json(os.path.join(model, "tokenizer.json")).get("added_tokens", [])
             if t.get("special")}
    decoder = read_json(os.path.join(model, "tokenizer_config.json")).get("added_tokens_decoder", {})
    found |= {t["content"] for t in decoder.values() if t.get("special")}
    return found or None


def by_template(name):
    return next((f for f in FAMILIES if f.template == name), None)


def of_model(model):
    """The family whose chat format a model folder's chat template writes, or None."""
    text = chat_template(model) or ""
    return next((f for f in FAMILIES if all(m in text for m in f.markers)), None)


def choose_template(model, explicit=None, source="TEMPLATE"):
    """(LLaMA-Factory template, why) for the model folder `model`; `explicit` (from `source`) overrides the
    model's own. One UserError line for a model without a chat template, a model type WeaveRec does not know,
    or a template whose special tokens the tokenizer lacks."""
    config = read_json(os.path.join(model, "config.json"))
    model_type = config.get("model_type")
    if chat_template(model) is None:
        raise UserError(f"{model} has no chat template (no chat_template.jinja, no chat_template in "
                        "tokenizer_config.json): inference builds its prompts with it; use a chat (Instruct) model")
    specials = special_tokens(model)
    if explicit:
        family = by_template(explicit)
        missing = [m for m in family.markers if specials is not None and m not in specials] if family else []
        if missing:
            own = of_model(model)
            hint = f"its chat format is {own.name}: TEMPLATE={own.template}, or" if own else "choose another, or"
            raise UserError(f"{source}={explicit} writes {' '.join(missing)}, which the tokenizer of {model} does "
                            f"not have as special tokens ({hint} leave TEMPLATE unset to take the model's own)")
        return explicit, f"{source}={explicit}"
    family = next((f for f in FAMILIES if model_type in f.model_types), None)
    if model_type is None and not os.path.isfile(os.path.join(model, "config.json")):
        family = of_model(model)  # a tokenizer folder alone: the format its chat template writes
    if family is None:
        raise UserError(f"{model} is a '{model_type}' model, which WeaveRec does not know; supported model types: "
                        f"{SUPPORTED}; TEMPLATE=<LLaMA-Factory template> trains another model with that template")
    text = chat_template(model)
    missing = [m for m in family.markers if m not in text or (specials is not None and m not in specials)]
    if missing:
        raise UserError(f"{model} is a {model_type} model but its chat template or tokenizer lacks {' '.join(missing)}: "
                        f"not the {family.name} chat format WeaveRec supports for {model_type}; "
                        "TEMPLATE=<LLaMA-Factory template> trains it with another template")
    return family.template, f"{family.name} chat format" + (f", model type {model_type}" if model_type else "")


def check_prompts(model, sample, lf_tokenizer, lf_template, template):
    """UserError unless LLaMA-Factory's template (`lf_template` on `lf_tokenizer`, as set up for training)
    encodes the prompt of `sample` (a sharegpt line) token for token as the model's chat template does for
    inference, and ends the answer's text with a token inference stops generating at (what follows it, such
    as the newline of Qwen2's turns, is never generated)."""
    from jinja2 import TemplateError
    from transformers import AutoTokenizer

    from common.chat import prompt_ids, stop_ids
    from common.prompt import sample_parts

    tokenizer = AutoTokenizer.from_pretrained(model, trust_remote_code=False)
    system, user, answer = sample_parts(sample)
    turns = [{"role": "user", "content": user}, {"role": "assistant", "content": answer or ""}]
    trained, answer_ids = lf_template.encode_oneturn(lf_tokenizer, turns, system=system)
    try:
        built = prompt_ids(tokenizer, system, user)
    except TemplateError as err:  # e.g. Mistral-7B-Instruct-v0.1/v0.2: roles must alternate user/assistant
        raise UserError(f"the chat template of {model} refuses a system message and a user message ({err}); "
                        "inference builds every prompt so: give the model a chat template that takes them") from None
    if trained != built:
        i = next((i for i, (a, b) in enumerate(zip(trained, built)) if a != b), min(len(trained), len(built)))
        lf_text, chat_text = (repr(tokenizer.decode(ids[i:i + 12])) for ids in (trained, built))
        raise UserError(f"LLaMA-Factory's '{template}' template and the chat template of {model} (what inference "
                        f"builds prompts with) differ from prompt token {i}: {lf_text} against {chat_text}; "
                        f"a module trained so would be tested on prompts it never saw: choose the matching template "
                        f"with TEMPLATE=, or give the model a chat template in the '{template}' format (docs/gpu.md)")
    stops = stop_ids(tokenizer)
    end = next((k for k, t in enumerate(answer_ids) if t in stops), None)
    if end is None or tokenizer.decode(answer_ids[:end], skip_special_tokens=True).strip() != (answer or "").strip():
        ends = repr(lf_tokenizer.decode(answer_ids[-3:]))
        raise UserError(f"LLaMA-Factory's '{template}' template ends answers with {ends} but inference stops at "
                        f"{' '.join(tokenizer.convert_ids_to_tokens(stops))} (the eos and pad tokens of {model}): "
                        "set eos_token in its tokenizer_config.json to the token that ends an answer")
