"""The frozen Config: every architectural switch the canonical decoder honours.

Converters map Hugging Face configs onto it; the decoder in ``model.py`` reads nothing else.
A Config is hashable, so it is a static argument under ``jax.jit``.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field

NORMS = ("layernorm", "rmsnorm")
POSITIONS = ("learned", "rotary", "none")
ROTARY_STYLES = ("half", "interleaved")
MLP_KINDS = ("standard", "gated")
ACTIVATIONS = ("gelu", "gelu_tanh", "silu", "relu", "gelu_fast", "quick_gelu")
ROPE_SCALINGS = ("none", "linear", "llama3")
HEADS = ("lm", "none", "bert_mlm")


@dataclass(frozen=True)
class Config:
    """Architecture of a transformer, as the canonical model understands it (decoders, and
    BERT-style encoders through the encoder switches).

    ``window`` holds one entry per layer: 0 for global causal attention, w > 0 for local
    attention where a query at position t sees keys s with 0 <= t - s < w.

    Gemma/Qwen3 switches: ``qk_norm`` (RMSNorm over the head dim of q and k, before rotary),
    ``sandwich_norm`` (a norm on each branch's output before it joins the residual), ``norm_offset``
    (RMSNorm multiplies by offset + scale in float32, Gemma's "1 + w"), ``embed_scale`` (token
    embeddings times this, cast to the weights' dtype first), ``attn_softcap``/``final_softcap``
    (cap * tanh(x / cap) on attention logits / final logits; 0 = off) and ``rotary_base_local``
    (the unscaled rope base of windowed layers; 0 = every layer uses ``rotary_base``). Gemma's
    ``query_pre_attn_scalar`` s is ``attn_scale = s ** -0.5``; GeGLU is ``mlp="gated"`` with
    ``activation="gelu_tanh"``.
    """

    vocab_size: int
    d_model: int
    n_layers: int
    n_heads: int
    d_head: int
    d_mlp: int
    n_ctx: int
    n_kv_heads: int | None = None  # None means n_heads (multi-head attention)
    norm: str = "layernorm"
    norm_eps: float = 1e-5
    positions: str = "learned"
    rotary_dim: int = 0  # number of head dims rotated (partial rotary when < d_head)
    rotary_base: float = 10000.0
    rotary_style: str = "half"  # "half": rotate-half (NeoX/Llama); "interleaved": GPT-J pairs
    rope_scaling: str = "none"
    rope_factor: float = 1.0
    rope_low_freq_factor: float = 1.0
    rope_high_freq_factor: float = 4.0
    rope_original_ctx: int = 8192
    parallel_residual: bool = False  # attn and MLP both read resid_pre (NeoX, GPT-J)
    shared_norm: bool = False  # parallel models whose MLP reuses the attention's norm (GPT-J)
    mlp: str = "standard"
    activation: str = "gelu_tanh"
    qkv_bias: bool = False
    o_bias: bool = False
    mlp_bias: bool = False
    norm_bias: bool = True  # LayerNorm has a bias (RMSNorm never does)
    attn_scale: float | None = None  # None: 1/sqrt(d_head); GPT-Neo uses 1.0
    window: tuple[int, ...] = ()  # per-layer local window, () = all global
    tie_embeddings: bool = False
    unembed_bias: bool = False
    qk_norm: bool = False  # RMSNorm of q and k over the head dim (params attn/q_norm, attn/k_norm)
    sandwich_norm: bool = False  # norms on the attn/MLP outputs (params attn/post_norm, mlp/post_norm)
    norm_offset: float = 0.0  # RMSNorm multiplies by (norm_offset + scale) in float32 (Gemma: 1.0)
    embed_scale: float = 1.0  # token embeddings times this (Gemma: sqrt(d_model))
    attn_softcap: float = 0.0  # > 0: attention logits -> cap * tanh(logits / cap) (Gemma 2)
    final_softcap: float = 0.0  # > 0: final logits -> cap * tanh(logits / cap) (Gemma 2)
    rotary_base_local: float = 0.0  # > 0: windowed layers use this rope base, unscaled (Gemma 3)
    # encoder switches (BERT family); the defaults are the decoder's behaviour
    causal: bool = True  # False: bidirectional attention (padding keys still masked)
    post_norm: bool = False  # True: x = ln1(x + attn(x)); x = ln2(x + mlp(x)) (BERT), no final norm
    type_vocab_size: int = 0  # > 0: token-type embeddings added to the input embedding
    embed_norm: bool = False  # a LayerNorm after the embedding sum (params["embed"]["norm"])
    final_norm: bool = True  # False: the final residual goes to the head un-normalised
    head: str = "lm"  # "lm": unembed; "none": output the final hidden states; "bert_mlm": BERT MLM head
    family: str = "custom"  # the converter that produced it (informational)
    extra: tuple[tuple[str, object], ...] = field(default=())  # converter notes, hashable

    def __post_init__(self):
        def choose(name, value, valid):
            if value not in valid:
                raise ValueError(f"Config.{name}={value!r} is not one of {valid}")

        choose("norm", self.norm, NORMS)
        choose("positions", self.positions, POSITIONS)
        choose("rotary_style", self.rotary_style, ROTARY_STYLES)
        choose("mlp", self.mlp, MLP_KINDS)
        choose("activation", self.activation, ACTIVATIONS)
        choose("rope_scaling", self.rope_scaling, ROPE_SCALINGS)
        choose("head", self.head, HEADS)
        for name in ("vocab_size", "d_model", "n_layers", "n_heads", "d_head", "d_mlp", "n_ctx"):
            if int(getattr(self, name)) <= 0:
                raise ValueError(f"Config.{name} must be positive, got {getattr(self, name)}")
        if self.n_heads % self.kv_heads:
            raise ValueError(f"n_heads={self.n_heads} is not a multiple of n_kv_heads={self.kv_heads}")
        if self.positions == "rotary":
            if not (0 < self.rotary_dim <= self.d_head) or self.rotary_dim % 2:
                raise ValueError(f"rotary_dim={self.rotary_dim} must be even and in (0, d_head={self.d_head}]")
        if self.window and len(self.window) != self.n_layers:
            raise ValueError(f"window has {len(self.window)} entries for {self.n_layers} layers")
        if self.shared_norm and not self.parallel_residual:
            raise ValueError("shared_norm needs parallel_residual=True")
        if self.parallel_residual and self.post_norm:
            raise ValueError("post_norm (BERT) and parallel_residual cannot be combined")
        if self.type_vocab_size < 0:
            raise ValueError(f"type_vocab_size must be >= 0, got {self.type_vocab_size}")
        for name in ("attn_softcap", "final_softcap", "rotary_base_local"):
            if not float(getattr(self, name)) >= 0:
                raise ValueError(f"Config.{name} must be >= 0 (0 = off), got {getattr(self, name)}")
        if not float(self.embed_scale) > 0:
            raise ValueError(f"Config.embed_scale must be positive, got {self.embed_scale}")
        if (self.qk_norm or self.norm_offset) and self.norm != "rmsnorm":
            raise ValueError(f"qk_norm and norm_offset need norm='rmsnorm', got norm={self.norm!r}")
        if self.sandwich_norm and (self.post_norm or self.parallel_residual):
            raise ValueError("sandwich_norm cannot be combined with post_norm or parallel_residual")
        if self.rotary_base_local:
            if self.positions != "rotary":
                raise ValueError(f"rotary_base_local needs positions='rotary', got {self.positions!r}")
            if not any(self.windows):
                raise ValueError("rotary_base_local is set but no layer has a window (window=())")

    @property
    def kv_heads(self) -> int:
        return self.n_kv_heads or self.n_heads

    @property
    def scale(self) -> float:
        return self.attn_scale if self.attn_scale is not None else self.d_head**-0.5

    @property
    def windows(self) -> tuple[int, ...]:
        return self.window or (0,) * self.n_layers

    def replace(self, **changes) -> "Config":
        return dataclasses.replace(self, **changes)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> "Config":
        d = dict(d)
        d["window"] = tuple(d.get("window", ()))
        d["extra"] = tuple(tuple(x) for x in d.get("extra", ()))
        return cls(**d)
