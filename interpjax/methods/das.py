"""Boundless Distributed Alignment Search (Wu et al. 2023, "Interpretability at Scale: Identifying
Causal Mechanisms in Alpaca"): does a linear subspace of a site's representation play the role of a
causal model's intermediate variable?

At a site (e.g. ``resid_post``), layer and position, a learned orthogonal rotation ``R`` (``R =
expm(A - A^T)``, so it is orthogonal by construction) maps the representation ``h`` to coordinates
``h R``. For each of the causal model's K intervened variables a soft interval mask (two learned
boundaries inside the variable's block of coordinates, ``sigmoid((i - lo)/tau) * sigmoid((hi - i)/tau)``
with the temperature ``tau`` annealed towards 0) selects the aligned coordinates. The interchange
intervention replaces those coordinates of the base run by the ones of source run k:

    h' = R^T-rotate-back( (h R) * (1 - sum_k m_k) + sum_k m_k * (s_k R) )

It is an interpjax ``Custom`` intervention fed with the source activations, so training (on the
one ``interpjax.train.Trainer``: cross-entropy of the model's answer against the causal model's
counterfactual label) jits, and a whole layer x position grid of alignments trains at once under
``vmap``. Interchange intervention accuracy (IIA) is measured with hard (0/1) interval masks on
held-out pairs.

    cm = CausalModel("left", variables_fn, output_fn, intervened=("left",))
    base, sources, labels = sample_interchange(cm, sample_fn, n, rng)
    grid = train_das_grid(model, tokens, source_tokens, labels, class_tokens,
                          site="resid_post", layers=[0, 1], positions=[6, 8], steps=300, eval_data=...)
    grid.iia  # [layers, positions]
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from typing import Callable, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from ..core import model as M
from ..core.config import Config
from ..core.handle import require_model
from ..core.inputs import check_layers, check_positions
from ..core.interventions import Custom
from ..core.sites import LAYER_SITES, feature_shape
from ..train import TrainConfig, Trainer, check_train_tokens

F32 = jnp.float32


# ---------------------------------------------------------------------------------------------
# causal models and counterfactual labels


@dataclass(frozen=True)
class CausalModel:
    """A high-level algorithm: ``variables(inputs) -> {name: array}`` computes its intermediate
    variables from a dict of input arrays, ``output(inputs, variables) -> labels`` the answer (an
    integer class per example). ``intervened`` names the variables DAS aligns, one subspace each."""

    name: str
    variables: Callable[[dict], dict]
    output: Callable[[dict, dict], np.ndarray]
    intervened: tuple[str, ...]

    def __post_init__(self):
        if not self.intervened:
            raise ValueError(f"causal model {self.name!r} intervenes on no variable")
        if len(set(self.intervened)) != len(self.intervened):
            raise ValueError(f"causal model {self.name!r}: duplicate intervened variables {self.intervened}")


def take_rows(inputs: dict, idx) -> dict:
    """The rows ``idx`` of every array in an inputs dict."""
    return {k: np.asarray(v)[idx] for k, v in inputs.items()}


def _n_rows(inputs: dict) -> int:
    sizes = {len(np.asarray(v)) for v in inputs.values()}
    if len(sizes) != 1:
        raise ValueError(f"input arrays have different lengths {sorted(sizes)}")
    return sizes.pop()


def counterfactual_labels(cm: CausalModel, base: dict, sources: Sequence[dict]) -> np.ndarray:
    """The causal model's output on ``base`` with variable ``cm.intervened[k]`` set to its value
    on ``sources[k]`` (the label an aligned interchange intervention should produce)."""
    if len(sources) != len(cm.intervened):
        raise ValueError(f"causal model {cm.name!r} intervenes on {cm.intervened}: it needs "
                         f"{len(cm.intervened)} source input dicts, got {len(sources)}")
    n = _n_rows(base)
    v = dict(cm.variables(base))
    missing = [name for name in cm.intervened if name not in v]
    if missing:
        raise ValueError(f"causal model {cm.name!r} has no variables {missing}; it computes {sorted(v)}")
    for name, src in zip(cm.intervened, sources):
        if _n_rows(src) != n:
            raise ValueError(f"a source has {_n_rows(src)} rows, the base {n}")
        v[name] = cm.variables(src)[name]
    return np.asarray(cm.output(base, v)).astype(np.int32)


def sample_interchange(cm: CausalModel, sample_fn: Callable, n: int, rng: np.random.Generator,
                       changed_frac: float = 0.5):
    """n (base, sources, counterfactual label) triples from ``sample_fn(rng, m) -> inputs dict``,
    with a fraction ``changed_frac`` whose counterfactual label differs from the base's own label
    (so a do-nothing intervention scores 1 - changed_frac, not more)."""
    if n < 1:
        raise ValueError(f"n must be >= 1, got {n}")
    if not 0.0 <= changed_frac <= 1.0:
        raise ValueError(f"changed_frac must lie in [0, 1], got {changed_frac}")
    want_changed = int(round(changed_frac * n))
    want = {True: want_changed, False: n - want_changed}
    got = {True: [], False: []}
    for _ in range(50):
        base = sample_fn(rng, 4 * n)
        sources = [sample_fn(rng, 4 * n) for _ in cm.intervened]
        cf = counterfactual_labels(cm, base, sources)
        own = np.asarray(cm.output(base, cm.variables(base))).astype(np.int32)
        for flag in (True, False):
            idx = np.flatnonzero((cf != own) == flag)[: want[flag] - sum(len(g[2]) for g in got[flag])]
            if len(idx):
                got[flag].append((take_rows(base, idx), [take_rows(s, idx) for s in sources], cf[idx]))
        if all(sum(len(g[2]) for g in got[f]) >= want[f] for f in (True, False)):
            break
    else:
        raise ValueError(f"could not sample {want} changed/unchanged interchange pairs for {cm.name!r}")
    parts = got[True] + got[False]
    base = {k: np.concatenate([p[0][k] for p in parts]) for k in parts[0][0]}
    sources = [{k: np.concatenate([p[1][j][k] for p in parts]) for k in parts[0][1][j]}
               for j in range(len(cm.intervened))]
    labels = np.concatenate([p[2] for p in parts])
    perm = rng.permutation(n)
    return take_rows(base, perm), [take_rows(s, perm) for s in sources], labels[perm]


# ---------------------------------------------------------------------------------------------
# the rotation, the boundaries and the interchange intervention


def init_das(key, d: int, n_vars: int = 1, init_width: float = 0.5) -> dict:
    """DAS parameters for a d-dim site: a skew generator (rotation near identity) and, per variable,
    two boundary logits placing an interval of ``init_width`` of its block."""
    if n_vars < 1 or d < n_vars:
        raise ValueError(f"need 1 <= n_vars <= d, got n_vars={n_vars}, d={d}")
    if not 0.0 < init_width < 1.0:
        raise ValueError(f"init_width must lie in (0, 1), got {init_width}")
    return {"skew": 0.01 / np.sqrt(d) * jax.random.normal(key, (d, d), F32),
            "lo": jnp.full((n_vars,), -4.0, F32),
            "hi": jnp.full((n_vars,), float(np.log(init_width / (1 - init_width))), F32)}


def rotation(das: dict):
    """The orthogonal matrix R = expm(A - A^T) [D, D]; rotated coordinates are h @ R."""
    a = das["skew"]
    return jax.scipy.linalg.expm(a - a.T)


def orthogonality_error(das: dict) -> float:
    """max |R^T R - I|: how far the learned rotation is from orthogonal."""
    r = rotation(das)
    return float(jnp.max(jnp.abs(r.T @ r - jnp.eye(r.shape[0]))))


def _bounds(das: dict, d: int):
    """(lo, hi) [K] in coordinate units: each variable's interval inside its own block of d // K."""
    k = das["lo"].shape[0]
    width = d // k
    start = (jnp.arange(k) * width).astype(F32)
    return start + width * jax.nn.sigmoid(das["lo"]), start + width * jax.nn.sigmoid(das["hi"])


def boundary_masks(das: dict, d: int, temperature):
    """Soft interval masks [K, D]: sigmoid((i + 1/2 - lo)/tau) * sigmoid((hi - i - 1/2)/tau)."""
    lo, hi = _bounds(das, d)
    i = jnp.arange(d, dtype=F32) + 0.5
    t = jnp.asarray(temperature, F32)
    return jax.nn.sigmoid((i - lo[:, None]) / t) * jax.nn.sigmoid((hi[:, None] - i) / t)


def hard_masks(das: dict, d: int):
    """The 0/1 interval masks [K, D] the soft masks tend to as the temperature goes to 0."""
    lo, hi = _bounds(das, d)
    i = jnp.arange(d, dtype=F32) + 0.5
    return ((i > lo[:, None]) & (i < hi[:, None])).astype(F32)


def _interchange(x_BTD, layer_index, p):
    """Custom-intervention body: at position p["position"], swap the masked rotated coordinates
    of the base for those of each source."""
    del layer_index
    T = x_BTD.shape[1]
    r = p["rotation"].astype(F32)
    m_KD = p["mask"]
    rot_BTD = jnp.einsum("btd,de->bte", x_BTD.astype(F32), r)
    src_KBD = jnp.einsum("kbd,de->kbe", p["source"].astype(F32), r)
    mixed = rot_BTD * (1.0 - m_KD.sum(0)) + jnp.einsum("kd,kbd->bd", m_KD, src_KBD)[:, None, :]
    back = jnp.einsum("bte,de->btd", mixed, r)
    on_T = jnp.arange(T) == jnp.where(p["position"] < 0, p["position"] + T, p["position"])
    return jnp.where(on_T[None, :, None], back, x_BTD.astype(F32))


def interchange_intervention(site: str, layer, position, rotation_DD, mask_KD, source_KBD) -> Custom:
    """A Custom intervention: at (site, layer, position) replace the base's masked rotated
    coordinates by the sources' (``source_KBD``: each source run's activation there, [K, B, D])."""
    return Custom(site, _interchange, layer=layer,
                  params={"rotation": rotation_DD, "mask": mask_KD, "source": source_KBD,
                          "position": jnp.asarray(position, jnp.int32)})


# ---------------------------------------------------------------------------------------------
# training a grid of alignments


@dataclass
class DASGrid:
    """Alignments trained at every (layer, position): ``iia`` [layers, positions] on held-out pairs
    (hard masks), ``train_iia`` on the training pairs, ``widths`` [layers, positions, K] the number of
    coordinates each variable's interval holds, ``params`` the stacked DAS parameters."""

    site: str
    layers: tuple
    positions: tuple
    iia: np.ndarray
    train_iia: np.ndarray
    widths: np.ndarray
    params: dict
    loss: np.ndarray  # [steps, layers, positions] training loss

    def cell(self, li: int, pi: int) -> dict:
        """The DAS parameters of one (layer index, position index) cell."""
        return jax.tree.map(lambda a: a[li, pi], self.params)


def _check_grid_inputs(cfg, site, layers, positions, tokens, source_tokens, labels, class_tokens, steps, batch_size,
                       temperature):
    if site not in LAYER_SITES or len(feature_shape(cfg, site)) != 1:
        valid = [s for s in LAYER_SITES if len(feature_shape(cfg, s)) == 1]
        raise ValueError(f"DAS needs a layer site with one feature axis; got {site!r}, valid: {valid}")
    layers = check_layers(cfg, layers, allow_empty=False)
    tokens = np.asarray(tokens)
    if tokens.ndim != 2:
        raise ValueError(f"base tokens must be [N, T], got shape {tokens.shape}")
    n, t = tokens.shape
    tokens = check_train_tokens(cfg, tokens)[0]
    positions = tuple(int(p) for p in check_positions(np.asarray(positions), t))
    source_tokens = np.asarray(source_tokens)
    if source_tokens.ndim != 3 or source_tokens.shape[1:] != (n, t):
        raise ValueError(f"source tokens must be [K, N={n}, T={t}] (one source set per intervened variable), "
                         f"got shape {source_tokens.shape}")
    source_tokens = check_train_tokens(cfg, source_tokens.reshape(-1, t))[0].reshape(source_tokens.shape)
    labels = np.asarray(labels)
    if labels.shape != (n,) or not np.issubdtype(labels.dtype, np.integer):
        raise ValueError(f"labels must be integer classes [N={n}], got {labels.dtype} shape {labels.shape}")
    class_tokens = np.asarray(class_tokens)
    if class_tokens.ndim != 1 or len(class_tokens) < 2 or not np.issubdtype(class_tokens.dtype, np.integer):
        raise ValueError(f"class_tokens must list >= 2 answer token ids (class c -> class_tokens[c]), "
                         f"got {class_tokens}")
    if class_tokens.min() < 0 or class_tokens.max() >= cfg.vocab_size:
        raise ValueError(f"class_tokens {class_tokens.tolist()} outside the vocabulary 0..{cfg.vocab_size - 1}")
    if labels.min() < 0 or labels.max() >= len(class_tokens):
        raise ValueError(f"labels must lie in 0..{len(class_tokens) - 1} (indices into class_tokens); got "
                         f"{sorted(set(labels[(labels < 0) | (labels >= len(class_tokens))].tolist()))[:5]}")
    if isinstance(steps, bool) or not isinstance(steps, (int, np.integer)) or steps < 1:
        raise ValueError(f"steps must be an integer >= 1, got {steps!r}")
    if isinstance(batch_size, bool) or not isinstance(batch_size, (int, np.integer)) or batch_size < 1:
        raise ValueError(f"batch_size must be an integer >= 1, got {batch_size!r}")
    if len(temperature) != 2 or not all(np.isfinite(x) and x > 0 for x in temperature):
        raise ValueError(f"temperature must be (start > 0, end > 0), finite; got {temperature}")
    return layers, positions, tokens, source_tokens, labels.astype(np.int32), class_tokens.astype(np.int32)


def _source_acts(cfg, params, source_tokens_KNT, site, layers, positions, chunk: int = 512):
    """Each source run's activation at every (layer, position): [Lc, Pc, K, N, D]."""
    k, n, t = source_tokens_KNT.shape
    flat = source_tokens_KNT.reshape(k * n, t)
    pos = jnp.asarray(positions)
    outs = []
    for i in range(0, k * n, chunk):  # fixed-size chunks (the last one padded): one compile
        rows = flat[i:i + chunk]
        padded = np.concatenate([rows, np.repeat(rows[:1], chunk - len(rows), 0)]) if len(rows) < chunk else rows
        cache = M.run_with_cache(cfg, params, padded, sites=[site], layers=layers)[1]
        outs.append(jnp.take(cache[site], pos, axis=2)[:, :len(rows)])  # [Lc, b, Pc, D]
    acts = jnp.concatenate(outs, axis=1).astype(F32)  # [Lc, K*N, Pc, D]
    lc, _, pc, d = acts.shape
    return jnp.transpose(acts.reshape(lc, k, n, pc, d), (0, 3, 1, 2, 4))


def _cell_logits(cfg, params, site, das, layer, position, tokens_BT, src_KBD, mask_KD, class_tokens):
    iv = interchange_intervention(site, layer, position, rotation(das), mask_KD, src_KBD)
    # record the final residual and unembed only the last position's label columns: the full
    # [B, T, V] logits are dead code (a 50k vocabulary x every position would not fit per cell)
    _, rec = M.run(cfg, params, tokens_BT, jnp.ones(tokens_BT.shape, jnp.int32), None, (iv,), ("final",), ())
    return M.unembed(cfg, params, rec["final"][:, -1]).astype(F32)[:, class_tokens]  # [B, C]


def _cell_loss(cfg, site, d, params, das_c, layer, position, src_c, tokens_BT, y_B, class_tokens, temp):
    mask = boundary_masks(das_c, d, temp)
    lg = _cell_logits(cfg, params, site, das_c, layer, position, tokens_BT, src_c, mask, class_tokens)
    return -jnp.mean(jnp.take_along_axis(jax.nn.log_softmax(lg), y_B[:, None], 1))


@dataclass(frozen=True)
class DASLoss:
    """The DAS objective on the one Trainer: ``Partial(DASLoss(cfg, site, d), frozen)(das, batch,
    key)`` sums every cell's cross-entropy on the batch rows ``batch["idx"]`` at temperature
    ``batch["temp"]``. Cells are independent, so each cell's gradient is its own loss's (and Adam,
    being elementwise, updates each cell as if trained alone). ``frozen``: the model params, the
    cells' layers and positions, the source activations, the base tokens, labels and class_tokens."""

    cfg: Config
    site: str
    d: int
    loss_name = "loss"

    def __call__(self, frozen, das, batch, key):
        del key
        idx, temp = batch["idx"], batch["temp"]
        tokens, y = frozen["tokens"][idx], frozen["labels"][idx]

        def cell(das_c, layer, position, src_c):
            return _cell_loss(self.cfg, self.site, self.d, frozen["params"], das_c, layer, position, src_c[:, idx],
                              tokens, y, frozen["class_tokens"], temp)

        cell_loss = jax.vmap(cell)(das, frozen["layer"], frozen["position"], frozen["source"])
        return jnp.sum(cell_loss), {"cell_loss": cell_loss}


def das_train_config(steps: int, lr: float, seed: int = 0) -> TrainConfig:
    """Adam (b2 = 0.999), constant ``lr``, no clipping or weight decay: the Boundless-DAS recipe."""
    return TrainConfig(lr=lr, weight_decay=0.0, b1=0.9, b2=0.999, schedule="constant", total_steps=steps,
                       clip_norm=None, log_every=max(steps // 20, 1), ckpt_every=steps, seed=seed, optimizer="adam")


@functools.partial(jax.jit, static_argnums=(0, 1, 2))
def _grid_correct(cfg, site, d, params, das, layer_C, pos_C, src_CKBD, base_BT, y_B, class_tokens, valid_B):
    """Per cell, how many rows the hard-mask interchange answers with the counterfactual label."""
    def one(das_c, layer, position, src_c):
        lg = _cell_logits(cfg, params, site, das_c, layer, position, base_BT, src_c, hard_masks(das_c, d),
                          class_tokens)
        return jnp.sum((jnp.argmax(lg, -1) == y_B) & valid_B)

    return jax.vmap(one)(das, layer_C, pos_C, src_CKBD)


def train_das_grid(model, tokens, source_tokens, labels, class_tokens, *, site: str = "resid_post",
                   layers: Sequence[int], positions: Sequence[int], steps: int = 300, batch_size: int = 64,
                   lr: float = 1e-2, temperature=(4.0, 0.1), eval_data=None, seed: int = 0, init_width: float = 0.5,
                   eval_chunk: int = 256, progress: bool = False) -> DASGrid:
    """Train one Boundless-DAS alignment per (layer, position) of ``model`` (a ``Model``: ``.cfg``,
    ``.params``) at once on the one ``Trainer``, on interchange triples: ``tokens`` [N, T] the base
    prompts, ``source_tokens`` [K, N, T] (K = intervened variables), ``labels`` [N] counterfactual
    classes, read as the model's logits over ``class_tokens`` (class c -> token ``class_tokens[c]``)
    at the last position. Base and source prompts share one length without padding, and the source value
    is taken at the same position as the base's. ``eval_data`` = (tokens, source_tokens, labels)
    held out for IIA (default: the training set). Optimiser: Adam at ``lr`` (``das_train_config``);
    the temperature is annealed log-linearly from ``temperature[0]`` to ``temperature[1]``. The
    per-step losses stay on the device until training ends."""
    require_model(model, "train_das_grid")
    cfg, params = model.cfg, model.params
    layers, positions, tokens, source_tokens, labels, class_tokens = _check_grid_inputs(
        cfg, site, layers, positions, tokens, source_tokens, labels, class_tokens, steps, batch_size, temperature)
    if eval_data is None:
        eval_data = (tokens, source_tokens, labels)
    ev_base, ev_src, ev_labels = _check_grid_inputs(
        cfg, site, layers, positions, eval_data[0], eval_data[1], eval_data[2], class_tokens, steps, batch_size,
        temperature)[2:5]
    if ev_src.shape[0] != source_tokens.shape[0] or ev_base.shape[1] != tokens.shape[1]:
        raise ValueError("eval_data must have the same number of sources and sequence length as the training data")
    tc = das_train_config(int(steps), lr, seed)  # refuses a NaN / inf / negative lr before any compute
    k, n, _ = source_tokens.shape
    d = feature_shape(cfg, site)[0]
    lc, pc = len(layers), len(positions)
    c = lc * pc
    layer_C = jnp.repeat(jnp.asarray(layers), pc)
    pos_C = jnp.tile(jnp.asarray(positions), lc)
    class_tokens_j = jnp.asarray(class_tokens)

    src = _source_acts(cfg, params, source_tokens, site, layers, positions).reshape(c, k, n, d)
    das = jax.vmap(lambda key: init_das(key, d, k, init_width))(jax.random.split(jax.random.PRNGKey(seed), c))
    frozen = {"params": params, "layer": layer_C, "position": pos_C, "source": src, "tokens": jnp.asarray(tokens),
              "labels": jnp.asarray(labels), "class_tokens": class_tokens_j}
    rng = np.random.default_rng(seed)
    idx = [rng.choice(n, size=min(batch_size, n), replace=False) for _ in range(steps)]
    temps = np.geomspace(temperature[0], temperature[1], steps).astype(np.float32)
    trainer = Trainer(jax.tree_util.Partial(DASLoss(cfg, site, d), frozen), tc, None, trainable=das,
                      data_parallel=False, desc="DAS")
    trainer.train(lambda s: {"idx": idx[s], "temp": temps[s]}, steps, progress=progress, history=True)
    das = trainer.trainable
    losses = trainer.stacked_history()["cell_loss"]  # [steps, C]: one transfer at the end

    def accuracy(base_np, src_tok, labels_np):
        src_e = _source_acts(cfg, params, src_tok, site, layers, positions).reshape(c, k, len(labels_np), d)
        total = np.zeros(c)
        for i in range(0, len(labels_np), eval_chunk):  # fixed-size chunks; padded rows never count
            rows = np.arange(i, i + eval_chunk) % len(labels_np)
            valid = jnp.asarray(np.arange(i, i + eval_chunk) < len(labels_np))
            total += np.asarray(_grid_correct(cfg, site, d, params, das, layer_C, pos_C, src_e[:, :, rows],
                                              jnp.asarray(base_np[rows]), jnp.asarray(labels_np[rows]),
                                              class_tokens_j, valid))
        return (total / len(labels_np)).reshape(lc, pc)

    iia = accuracy(ev_base, ev_src, ev_labels)
    train_iia = accuracy(tokens, source_tokens, labels)
    widths = np.asarray(jax.vmap(lambda p: hard_masks(p, d).sum(-1))(das)).reshape(lc, pc, k)
    stacked = jax.tree.map(lambda a: a.reshape((lc, pc) + a.shape[1:]), das)
    return DASGrid(site=site, layers=layers, positions=positions, iia=iia, train_iia=train_iia, widths=widths,
                   params=stacked, loss=losses.reshape(steps, lc, pc))
