"""Tokenizers for the tiny models, one per supported family (models/families.py), each with that family's
special tokens and chat format: Qwen2's (the embedded default model), Llama-3's and Mistral's.

Qwen2 and Llama-3 use byte-level BPE; Mistral uses SentencePiece-style BPE ("▁" for spaces, bytes as
<0xNN> tokens for characters it has never seen) with a begin-of-sequence token, as the published ones do.
The chat templates are written here in each family's format and render token for token as LLaMA-Factory's
template of that family (tests/test_families.py checks it).
"""

import json

from tokenizers import (
    Regex,
    Tokenizer,
    decoders,
    models,
    pre_tokenizers,
    processors,
    trainers,
)
from transformers import PreTrainedTokenizerFast

SPECIAL_TOKENS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
# Qwen2's pre-tokenisation: single digits, words with one leading non-letter, punctuation runs.
QWEN2_SPLIT = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*"
    r"|\s*[\r\n]+|\s+(?!\S)|\s+"
)
# LLaMA-Factory 0.9.3's `qwen` template's system prompt when a conversation has none (Qwen2-7B-Instruct's
# own template says "You are a helpful assistant."; WeaveRec prompts always carry a system turn).
DEFAULT_SYSTEM = "You are Qwen, created by Alibaba Cloud. You are a helpful assistant."
# Qwen2's chat template shape; renders token for token as LLaMA-Factory's `qwen` template does
# (tests/test_models.py checks it), so training and inference see the same ids.
CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "{% if loop.first and messages[0]['role'] != 'system' %}"
    "{{ '<|im_start|>system\n" + DEFAULT_SYSTEM + "<|im_end|>\n' }}{% endif %}"
    "{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)

# Llama-3: up to three digits a token; header tokens around each role, <|eot_id|> ends a turn (and is the
# eos of the Instruct models); no system turn unless one is given; contents trimmed, as Meta's template does.
LLAMA3_SPLIT = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*"
    r"|\s*[\r\n]+|\s+(?!\S)|\s+"
)
LLAMA3_SPECIAL = ["<|begin_of_text|>", "<|end_of_text|>", "<|start_header_id|>", "<|end_header_id|>",
                  "<|eot_id|>", "<|eom_id|>", "<|finetune_right_pad_id|>", "<|python_tag|>"]
LLAMA3_CHAT_TEMPLATE = (
    "{{- bos_token }}"
    "{%- for message in messages %}"
    "{{- '<|start_header_id|>' + message['role'] + '<|end_header_id|>\n\n' + message['content'] | trim"
    " + '<|eot_id|>' }}"
    "{%- endfor %}"
    "{%- if add_generation_prompt %}{{- '<|start_header_id|>assistant<|end_header_id|>\n\n' }}{%- endif %}"
)

# Mistral (v0.3 vocabulary layout): control tokens first, then the 256 byte tokens. The chat format has no
# system role: the system text goes before the last user message, in the same [INST] turn, followed by a
# blank line (LLaMA-Factory's `mistral` template puts it before the first user message: for WeaveRec's
# one-turn prompts that is the same place).
MISTRAL_SPECIAL = ["<unk>", "<s>", "</s>", "[INST]", "[/INST]", "[TOOL_CALLS]", "[AVAILABLE_TOOLS]",
                   "[/AVAILABLE_TOOLS]", "[TOOL_RESULTS]", "[/TOOL_RESULTS]"]
MISTRAL_CHAT_TEMPLATE = (
    "{%- if messages[0]['role'] == 'system' %}"
    "{%- set system_message = messages[0]['content'] %}{%- set loop_messages = messages[1:] %}"
    "{%- else %}{%- set loop_messages = messages %}{%- endif %}"
    "{{- bos_token }}"
    "{%- for message in loop_messages %}"
    "{%- if message['role'] == 'user' %}"
    "{%- if loop.last and system_message is defined %}"
    "{{- '[INST] ' + system_message + '\n\n' + message['content'] + '[/INST]' }}"
    "{%- else %}{{- '[INST] ' + message['content'] + '[/INST]' }}{%- endif %}"
    "{%- elif message['role'] == 'assistant' %}{{- ' ' + message['content'] | trim + eos_token }}"
    "{%- else %}{{- raise_exception('only system, user and assistant roles are supported') }}"
    "{%- endif %}"
    "{%- endfor %}"
)


def train_tokenizer(texts, vocab_size=8192, family="qwen2"):
    """Train a tokenizer of `family` (qwen2, llama3 or mistral) on `texts`; return a transformers tokenizer."""
    if family not in BUILDERS:
        raise ValueError(f"unknown tokenizer family {family!r} (known: {', '.join(BUILDERS)})")
    return BUILDERS[family](list(texts), vocab_size)


def _byte_level_bpe(texts, vocab_size, split, special_tokens):
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Split(Regex(split), behavior="isolated"),
        pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
    ])
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=special_tokens,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(texts, trainer=trainer)
    return tok


def _qwen2(texts, vocab_size):
    return _wrap(_byte_level_bpe(texts, vocab_size, QWEN2_SPLIT, SPECIAL_TOKENS), CHAT_TEMPLATE, 32768,
                 eos_token="<|im_end|>", pad_token="<|endoftext|>", unk_token=None,
                 additional_special_tokens=["<|im_start|>", "<|im_end|>"])


def _wrap(tok, chat_template, max_length, **special):
    """A transformers tokenizer around `tok`, left-padded, with the family's special tokens and chat template."""
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, clean_up_tokenization_spaces=False,
                                   model_max_length=max_length, padding_side="left", **special)
    fast.chat_template = chat_template
    return fast


def _llama3(texts, vocab_size):
    tok = _byte_level_bpe(texts, vocab_size, LLAMA3_SPLIT, LLAMA3_SPECIAL)
    bos = "<|begin_of_text|>"
    tok.post_processor = processors.TemplateProcessing(  # encode() starts with <|begin_of_text|>, as Meta's
        single=f"{bos} $A", pair=f"{bos} $A {bos} $B", special_tokens=[(bos, tok.token_to_id(bos))])
    return _wrap(tok, LLAMA3_CHAT_TEMPLATE, 131072, bos_token=bos,
                 eos_token="<|eot_id|>",  # the Instruct models' eos: the end of an assistant turn
                 unk_token=None, additional_special_tokens=[t for t in LLAMA3_SPECIAL if t not in (bos, "<|eot_id|>")])


def _mistral(texts, vocab_size):
    byte_tokens = [f"<0x{b:02X}>" for b in range(256)]
    trainer = trainers.BpeTrainer(vocab_size=vocab_size - len(byte_tokens), special_tokens=MISTRAL_SPECIAL,
                                  show_progress=False)
    learner = Tokenizer(models.BPE(unk_token="<unk>"))
    learner.pre_tokenizer = pre_tokenizers.Metaspace(replacement="▁", prepend_scheme="first", split=True)
    learner.train_from_iterator(texts, trainer=trainer)
    learned = learner.get_vocab()
    merges = [tuple(m.split(" ", 1)) if isinstance(m, str) else tuple(m)
              for m in json.loads(learner.to_str())["model"]["merges"]]
    # the special tokens, the byte tokens, then the learned pieces (ids in the published files' order)
    vocab = {t: i for i, t in enumerate(MISTRAL_SPECIAL + byte_tokens)}
    for piece, _ in sorted(learned.items(), key=lambda kv: kv[1]):
        vocab.setdefault(piece, len(vocab))
    tok = Tokenizer(models.BPE(vocab=vocab, merges=merges, unk_token="<unk>", byte_fallback=True, fuse_unk=True))
    tok.add_special_tokens(MISTRAL_SPECIAL)
    tok.pre_tokenizer = pre_tokenizers.Metaspace(replacement="▁", prepend_scheme="first", split=False)
    tok.decoder = decoders.Sequence([decoders.Replace("▁", " "), decoders.ByteFallback(), decoders.Fuse(),
                                     decoders.Strip(content=" ", left=1, right=0)])
    tok.post_processor = processors.TemplateProcessing(single="<s> $A", pair="<s> $A <s> $B",
                                                       special_tokens=[("<s>", vocab["<s>"])])
    return _wrap(tok, MISTRAL_CHAT_TEMPLATE, 32768, bos_token="<s>", eos_token="</s>", unk_token="<unk>",
                 additional_special_tokens=MISTRAL_SPECIAL[3:])


BUILDERS = {"qwen2": _qwen2, "llama3": _llama3, "mistral": _mistral}
