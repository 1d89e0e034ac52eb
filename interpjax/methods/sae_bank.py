"""Banks of sparse autoencoders trained together in one compiled program.

A bank is G SAEs -- a grid over width, k (TopK), L1 coefficient (ReLU) and seed -- whose arrays are
stacked on a leading member axis. Widths differ, so every member is padded to the widest: the
features past a member's width are masked to zero in its encoder and carry zero gradient, so
each member computes exactly what an SAE of its own width would. The loss is the *sum* of the
members' losses, so each member's gradient is its own, and with an element-wise optimizer (Adam,
AdamW without weight decay, no global-norm clipping -- ``bank_train_config`` enforces this) one
step of the bank is G independent steps: training the bank equals training each member alone
(tested). The step is the one ``Trainer`` step (checkpoints, resume, logging come with it).

Member losses (activations x [N, D], reconstruction x_hat):

* ``nmse = sum ||x - x_hat||^2 / sum ||x - mean(x)||^2`` (so the fraction of variance explained
  is ``1 - nmse``);
* ReLU: ``nmse + l1 * mean_n sum_f f_nf * ||W_dec_f||`` (the decoder-norm-weighted L1 of Anthropic's
  2024 update, so the penalty cannot be dodged by shrinking f and growing W_dec);
* TopK: ``nmse`` with the k largest pre-activations kept per token, decoder rows normalised inside
  the forward (so their norm is not a free parameter). No AuxK loss (Gao et al. 2024) yet.

    bank = init_bank(grid(widths=(2048, 4608), ks=(16, 32, 64), seeds=(0, 1)), acts_ND, kind="topk")
    bank, log = train_bank(bank, acts_ND, steps=2000, batch=4096, lr=4e-4)
    bank_metrics(bank, held_out_ND)          # {"l0": [G], "fve": [G], "dead_frac": [G], ...}
    sae = bank.member(3)                      # an interpjax.methods.sae.SAE of its own width
"""

from __future__ import annotations

import dataclasses
import itertools
from typing import Any, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from flax import struct

from ..train import TrainConfig, Trainer
from .sae import SAE, SAESplice

BANK_KINDS = ("relu", "topk")
_EPS = 1e-8


@dataclasses.dataclass(frozen=True)
class Member:
    """One grid point: width ``d_sae``, ``k`` (TopK) or ``l1`` (ReLU), init ``seed``."""

    d_sae: int
    k: int | None = None
    l1: float = 0.0
    seed: int = 0


def grid(widths: Sequence[int], ks: Sequence[int | None] = (None,), l1s: Sequence[float] = (0.0,),
         seeds: Sequence[int] = (0,)) -> tuple[Member, ...]:
    """Every combination of ``widths`` x ``ks`` x ``l1s`` x ``seeds`` (in that nesting order)."""
    return tuple(Member(int(w), None if k is None else int(k), float(l), int(s))
                 for w, k, l, s in itertools.product(widths, ks, l1s, seeds))


@struct.dataclass
class SAEBank:
    """G stacked SAEs of one ``kind``: ``W_enc`` [G, D, F], ``b_enc`` [G, F], ``W_dec`` [G, F, D],
    ``b_dec`` [G, D] with F the widest member; ``width`` [G], ``k`` [G] (TopK; 0 for ReLU) and
    ``l1`` [G] say what each member is. Only the four weight arrays are trained."""

    W_enc: Any
    b_enc: Any
    W_dec: Any
    b_dec: Any
    width: Any
    k: Any
    l1: Any
    kind: str = struct.field(pytree_node=False, default="topk")
    k_max: int = struct.field(pytree_node=False, default=0)
    members: tuple = struct.field(pytree_node=False, default=())

    @property
    def size(self) -> int:
        return len(self.members)

    @property
    def weights(self) -> dict:
        return {"W_enc": self.W_enc, "b_enc": self.b_enc, "W_dec": self.W_dec, "b_dec": self.b_dec}

    def with_weights(self, w: dict) -> "SAEBank":
        return self.replace(**w)

    def member(self, i: int, **static) -> SAE:
        """Member ``i`` as a plain ``SAE`` of its own width (TopK decoders normalised as trained)."""
        if isinstance(i, bool) or not isinstance(i, (int, np.integer)) or not 0 <= i < self.size:
            raise ValueError(f"member index must be an integer in 0..{self.size - 1}, got {i!r}")
        m = self.members[i]
        W_dec = _decoder(self.kind, self.W_dec[i])[: m.d_sae]
        return SAE.create(self.W_enc[i][:, : m.d_sae], self.b_enc[i][: m.d_sae], W_dec, self.b_dec[i],
                          kind=self.kind, k=m.k if self.kind == "topk" else None, apply_b_dec_to_input=True,
                          **static)


def _check_members(members, kind: str, d_in: int) -> None:
    if kind not in BANK_KINDS:
        raise ValueError(f"bank kind {kind!r} is not trainable in a bank; valid kinds: {BANK_KINDS} "
                         f"(jumprelu and batchtopk SAEs load and splice, see methods.sae)")
    if not members:
        raise ValueError("a bank needs at least one member (grid(...) returned nothing)")
    for m in members:
        if not isinstance(m, Member):
            raise ValueError(f"bank members must be Member values (see grid()), got {type(m).__name__}")
        if m.d_sae < 1:
            raise ValueError(f"member {m}: d_sae must be >= 1")
        if kind == "topk" and (m.k is None or not 1 <= m.k <= m.d_sae):
            raise ValueError(f"member {m}: topk needs k in 1..d_sae={m.d_sae}, got k={m.k}")
        if kind == "relu" and m.k is not None:
            raise ValueError(f"member {m}: k is for topk banks; a relu bank's sparsity is set by l1")
        if kind == "relu" and not (np.isfinite(m.l1) and m.l1 >= 0):
            raise ValueError(f"member {m}: l1 must be a finite number >= 0")
    if d_in < 1:
        raise ValueError(f"activations must have a feature axis of width >= 1, got d_in={d_in}")


def _check_acts(acts_ND, d_in: int | None = None) -> np.ndarray:
    if np.ndim(acts_ND) != 2 or np.shape(acts_ND)[0] < 2:
        raise ValueError(f"activations must be [N >= 2, D]; got shape {np.shape(acts_ND)}")
    if d_in is not None and np.shape(acts_ND)[1] != d_in:
        raise ValueError(f"activations have width {np.shape(acts_ND)[1]}; this bank's d_in is {d_in}")
    a = np.asarray(acts_ND, np.float32)
    if not np.isfinite(a).all():
        raise ValueError("activations contain non-finite values")
    return a


def init_bank(members: Sequence[Member], acts_ND, kind: str = "topk") -> SAEBank:
    """A bank of ``members``: per member (its own seed) unit-norm random decoder rows, encoder =
    decoder transpose, zero encoder bias, decoder bias = the mean activation; padded features zero."""
    members = tuple(members)
    acts = _check_acts(acts_ND)
    D = acts.shape[1]
    _check_members(members, kind, D)
    F = max(m.d_sae for m in members)
    mean_D = acts.mean(0)
    W_dec, widths = [], []
    for m in members:
        w = np.asarray(jax.random.normal(jax.random.PRNGKey(m.seed), (m.d_sae, D), jnp.float32))
        w = w / np.linalg.norm(w, axis=1, keepdims=True)
        W_dec.append(np.concatenate([w, np.zeros((F - m.d_sae, D), np.float32)]))
        widths.append(m.d_sae)
    W_dec = np.stack(W_dec)
    G = len(members)
    return SAEBank(W_enc=jnp.asarray(W_dec.transpose(0, 2, 1)), b_enc=jnp.zeros((G, F), jnp.float32),
                   W_dec=jnp.asarray(W_dec), b_dec=jnp.asarray(np.tile(mean_D, (G, 1))),
                   width=jnp.asarray(widths, jnp.int32),
                   k=jnp.asarray([m.k or 0 for m in members], jnp.int32),
                   l1=jnp.asarray([m.l1 for m in members], jnp.float32),
                   kind=kind, k_max=max((m.k or 0) for m in members), members=members)


# ---------------------------------------------------------------------------------------------
# one member's forward (vmapped over the bank)


def _row_norm(W_FD):
    """Row norms [F] with a finite gradient at the padded all-zero rows (where ``norm``'s is NaN)."""
    return jnp.sqrt(jnp.sum(jnp.square(W_FD), axis=-1) + _EPS * _EPS)


def _decoder(kind: str, W_dec_FD):
    """The decoder as used: TopK rows normalised (padded zero rows stay zero), ReLU as stored."""
    if kind != "topk":
        return W_dec_FD
    return W_dec_FD / _row_norm(W_dec_FD)[:, None]


def _encode(kind: str, k_max: int, w: dict, width, k, x_ND):
    """Feature activations [N, F] of one member (features >= width are 0)."""
    F = w["W_enc"].shape[-1]
    pre = jax.nn.relu((x_ND - w["b_dec"]) @ w["W_enc"] + w["b_enc"])
    pre = jnp.where(jnp.arange(F) < width, pre, 0.0)
    if kind == "relu":
        return pre
    top = jax.lax.top_k(pre, k_max)[0]  # [N, k_max], descending
    kth = jax.lax.dynamic_index_in_dim(top, k - 1, axis=1, keepdims=True)
    return jnp.where((pre >= kth) & (pre > 0), pre, 0.0)


def _member_terms(kind: str, k_max: int, w: dict, width, k, l1, x_ND, var_total):
    """(loss, nmse, l0) of one member on a batch; ``var_total`` = sum ||x - mean||^2 of the batch."""
    f = _encode(kind, k_max, w, width, k, x_ND)
    W_dec = _decoder(kind, w["W_dec"])
    x_hat = f @ W_dec + w["b_dec"]
    nmse = jnp.sum(jnp.square(x_ND - x_hat)) / var_total
    l0 = jnp.mean(jnp.sum(f > 0, axis=-1))
    loss = nmse
    if kind == "relu":
        loss = loss + l1 * jnp.mean(f @ _row_norm(W_dec))
    return loss, nmse, l0


def _bank_terms(bank: SAEBank, weights: dict, x_ND):
    var_total = jnp.maximum(jnp.sum(jnp.square(x_ND - x_ND.mean(0))), _EPS)
    fn = lambda w, width, k, l1: _member_terms(bank.kind, max(bank.k_max, 1), w, width, k, l1, x_ND, var_total)
    return jax.vmap(fn)(weights, bank.width, bank.k, bank.l1)


class BankLoss:
    """The Trainer's loss for a bank: the sum of member losses (each member's gradient is its own);
    metrics are per member [G] (``loss``, ``nmse``, ``l0``)."""

    loss_name = "loss_sum"

    def __init__(self, bank: SAEBank):
        self.bank = bank.replace(W_enc=None, b_enc=None, W_dec=None, b_dec=None)  # static description only

    def __call__(self, weights, batch, key):
        del key
        loss_G, nmse_G, l0_G = _bank_terms(self.bank, weights, batch["x"])
        return jnp.sum(loss_G), {"loss_sum": jnp.sum(loss_G), "loss": loss_G, "nmse": nmse_G, "l0": l0_G}


def bank_train_config(lr: float = 4e-4, steps: int = 1000, seed: int = 0, **kw) -> TrainConfig:
    """A TrainConfig under which a bank step is G independent member steps: Adam (AdamW without
    weight decay) and no global-norm clipping (a global norm would couple the members)."""
    for name, bad in (("weight_decay", kw.get("weight_decay", 0.0) != 0.0), ("clip_norm", kw.get("clip_norm") is not None),
                      ("optimizer", kw.get("optimizer", "adamw") != "adamw")):
        if bad:
            raise ValueError(f"bank training needs {name} unset (members must not interact); got {kw[name]!r}")
    kw = {k: v for k, v in kw.items() if k not in ("weight_decay", "clip_norm", "optimizer")}
    return TrainConfig(lr=lr, total_steps=steps, seed=seed, weight_decay=0.0, clip_norm=None, optimizer="adamw", **kw)


def _mask_padding(bank: SAEBank, weights: dict) -> dict:
    """Zero the padded features' weights (they get no gradient, so they stay zero; this only
    guards against a caller's own init)."""
    live_GF = jnp.arange(bank.W_enc.shape[-1])[None] < bank.width[:, None]
    zero = lambda live, a: jnp.where(live, a, jnp.zeros_like(a))  # noqa: E731
    return {"W_enc": zero(live_GF[:, None, :], weights["W_enc"]), "b_enc": zero(live_GF, weights["b_enc"]),
            "W_dec": zero(live_GF[:, :, None], weights["W_dec"]), "b_dec": weights["b_dec"]}


def train_bank(bank: SAEBank, acts_ND, *, steps: int, batch: int = 4096, lr: float = 4e-4, seed: int = 0,
               workdir=None, progress: bool = False, tc: TrainConfig | None = None) -> tuple[SAEBank, dict]:
    """Train every member of ``bank`` at once on rows of ``acts_ND`` [N, D] (batches of ``batch``
    rows drawn with ``seed``, the same for every member); returns (trained bank, last metrics).
    ``workdir``: checkpoints there and resumes (the Trainer's)."""
    acts = _check_acts(acts_ND, bank.W_enc.shape[1])
    if isinstance(batch, bool) or not isinstance(batch, (int, np.integer)) or not 1 <= batch <= len(acts):
        raise ValueError(f"batch must be an integer in 1..N={len(acts)}, got {batch!r}")
    tc = tc or bank_train_config(lr=lr, steps=steps, seed=seed)
    if tc.clip_norm is not None or tc.weight_decay != 0.0:
        raise ValueError("tc must come from bank_train_config (no clipping, no weight decay)")
    acts_dev = jnp.asarray(acts)

    def batch_fn(step):
        idx = jax.random.randint(jax.random.fold_in(jax.random.PRNGKey(seed), step), (batch,), 0, len(acts))
        return {"x": acts_dev[idx]}

    trainer = Trainer(BankLoss(bank), tc, workdir, trainable=_mask_padding(bank, bank.weights),
                      info={"sae_bank": [dataclasses.asdict(m) for m in bank.members], "kind": bank.kind},
                      data_parallel=False, desc="sae bank")
    last = trainer.train(batch_fn, steps, progress=progress)
    return bank.with_weights(trainer.trainable), last


# ---------------------------------------------------------------------------------------------
# evaluation


def bank_metrics(bank: SAEBank, acts_ND, chunk: int = 4096) -> dict:
    """Per-member metrics on held-out activations [N, D]: ``l0`` (mean active features per row),
    ``fve`` (fraction of variance explained, 1 - nmse over all rows), ``dead_frac`` (share of a
    member's features never active on these rows), all numpy [G]."""
    acts = _check_acts(acts_ND, bank.W_enc.shape[1])
    weights = bank.weights
    mean_D = acts.mean(0)

    @jax.jit
    def chunk_stats(x_ND):
        def one(w, width, k):
            f = _encode(bank.kind, max(bank.k_max, 1), w, width, k, x_ND)
            x_hat = f @ _decoder(bank.kind, w["W_dec"]) + w["b_dec"]
            return jnp.sum(jnp.square(x_ND - x_hat)), jnp.sum(f > 0), jnp.any(f > 0, axis=0)
        return jax.vmap(one)(weights, bank.width, bank.k)

    sse, active, fired = 0.0, 0.0, None
    for s in range(0, len(acts), chunk):
        e, a, fr = chunk_stats(jnp.asarray(acts[s:s + chunk]))
        sse, active = sse + np.asarray(e, np.float64), active + np.asarray(a, np.float64)
        fired = np.asarray(fr) if fired is None else fired | np.asarray(fr)
    var = float(np.sum(np.square(acts.astype(np.float64) - mean_D)))
    width = np.asarray(bank.width)
    dead = np.array([1.0 - fired[g, : width[g]].mean() for g in range(bank.size)])
    return {"l0": active / len(acts), "fve": 1.0 - sse / var, "dead_frac": dead}


def downstream_loss(model, tokens_BT, bank: SAEBank, site: str, layer: int, attention_mask=None) -> dict:
    """Next-token cross-entropy of ``model`` on ``tokens`` clean, with ``site`` at ``layer``
    zero-ablated, and with each member spliced in place of the activation (reconstruction only,
    ``keep_error=False``); ``recovered`` [G] = (CE_zero - CE_sae) / (CE_zero - CE_clean)."""
    from ..core.interventions import Ablate
    from ..core.model import forward

    cfg, params = (model.cfg, model.params) if hasattr(model, "cfg") else model
    tokens = np.asarray(tokens_BT)
    mask = np.ones_like(tokens) if attention_mask is None else np.asarray(attention_mask)
    w_BT = (mask[:, 1:] * mask[:, :-1]).astype(np.float64)

    def ce(ivs):
        logp = jax.nn.log_softmax(forward(cfg, params, tokens, mask, ivs)[:, :-1].astype(jnp.float32), axis=-1)
        tgt = np.asarray(jnp.take_along_axis(logp, jnp.asarray(tokens[:, 1:, None]), -1)[..., 0], np.float64)
        return float(-(tgt * w_BT).sum() / w_BT.sum())

    clean = ce(())
    zero = ce((Ablate(site, layer=layer, kind="zero"),))
    spliced = np.array([ce((SAESplice(site, layer=layer, sae=bank.member(g), keep_error=False),))
                        for g in range(bank.size)])
    return {"clean": clean, "zero_ablated": zero, "spliced": spliced,
            "recovered": (zero - spliced) / (zero - clean)}
