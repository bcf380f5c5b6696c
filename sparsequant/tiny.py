"""Tiny random decoders and a byte-level tokenizer, built in code (no downloads).

Production code uses them for the built-in `tiny-llama` model (offline smoke pipelines, sparsequant.models);
tests and plugin authors get them, with artifact helpers, from sparsequant.testing.
Sizes are multiples of 32/64 so every in_features (64, 128) fits 2:4, 4:8 and GPTQ groups of 32/64.
"""

from __future__ import annotations

SPECIAL_TOKENS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>", "<pad>"]
TINY_VOCAB = 256 + len(SPECIAL_TOKENS)

_CHAT_TEMPLATE = (
    "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)


def tiny_tokenizer():
    """A byte-level tokenizer (256 byte tokens + 4 specials) built locally with `tokenizers`."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    alphabet = pre_tokenizers.ByteLevel.alphabet()  # the 256 printable stand-ins for bytes
    vocab = {ch: i for i, ch in enumerate(sorted(alphabet))}
    for token in SPECIAL_TOKENS:
        vocab[token] = len(vocab)
    core = Tokenizer(models.BPE(vocab=vocab, merges=[]))
    core.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)
    core.decoder = decoders.ByteLevel()
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=core, eos_token="<|endoftext|>", bos_token="<|im_start|>",
                                        pad_token="<pad>", additional_special_tokens=SPECIAL_TOKENS[1:3])
    tokenizer.chat_template = _CHAT_TEMPLATE
    return tokenizer


def tiny_llama(seed: int = 0, **overrides):
    """A 2-layer LlamaForCausalLM (~0.1 M parameters) with random weights, in eval mode."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(seed)
    config = dict(vocab_size=TINY_VOCAB, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                  num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256,
                  tie_word_embeddings=False, eos_token_id=256, bos_token_id=257, pad_token_id=259)
    return LlamaForCausalLM(LlamaConfig(**(config | overrides))).eval()


# Tiny random decoders of the common families (transformers configs, no downloads): every projection's
# input size is 64, 128 or 256, so 2:4, 4:8 and GPTQ groups of 32/64 fit. Keys: `model_type`s.
_COMMON = dict(vocab_size=TINY_VOCAB, eos_token_id=256, bos_token_id=257, pad_token_id=259, tie_word_embeddings=False)
_LLAMA_LIKE = dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
                   num_key_value_heads=2, max_position_embeddings=256)
TINY_FAMILIES = {
    "llama": ("LlamaConfig", _LLAMA_LIKE),
    "qwen2": ("Qwen2Config", _LLAMA_LIKE),
    "qwen3": ("Qwen3Config", _LLAMA_LIKE | {"head_dim": 16}),
    "mistral": ("MistralConfig", _LLAMA_LIKE | {"sliding_window": 64}),  # v0.1 has a window (4096)
    "gemma2": ("Gemma2Config", _LLAMA_LIKE | {"head_dim": 16, "query_pre_attn_scalar": 16, "sliding_window": 64}),
    "phi3": ("Phi3Config", _LLAMA_LIKE | {"pad_token_id": 259}),
    "opt": ("OPTConfig", dict(hidden_size=64, ffn_dim=128, num_hidden_layers=2, num_attention_heads=4,
                              word_embed_proj_dim=64, max_position_embeddings=256)),
    "gpt2": ("GPT2Config", dict(n_embd=64, n_layer=2, n_head=4, n_positions=256)),
    "gpt_neox": ("GPTNeoXConfig", dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                                       num_attention_heads=4, max_position_embeddings=256, rotary_pct=0.5)),
}


def tiny_decoder(family: str, seed: int = 0):
    """A 2-layer random causal LM of `family` (a key of TINY_FAMILIES), in eval mode."""
    import torch
    import transformers

    config_name, sizes = TINY_FAMILIES[family]
    torch.manual_seed(seed)
    config = getattr(transformers, config_name)(**(_COMMON | sizes))
    return transformers.AutoModelForCausalLM.from_config(config).eval()
