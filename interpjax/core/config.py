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
