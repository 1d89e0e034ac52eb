"""Sparse autoencoder banks (T3: Bricken et al. 2023; Gao et al. 2024 TopK) on SmolLM2-135M-Instruct.

One residual site (``resid_post`` of a middle layer, d = 576) is collected on the training topics of
the Python reference manual (``pydoc_data.topics``, standard library, PSF License) from position 2 on
(position 0 is the start token, position 1 mostly carries SmolLM2's massive attention-sink
activations; the few other rows with such norms are left out too, see ``sink_share``), and
one bank -- a grid of TopK SAEs over width x k, three init seeds on one cell -- is trained in one
compiled program (``methods.sae_bank.train_bank``), plus a small ReLU/L1 bank over L1 coefficients.
Everything is measured on the held-out topics:

- the L0 / fraction-of-variance-explained (FVE) frontier and the dead-feature fraction;
- downstream loss recovered, ``(CE_ablated - CE_spliced) / (CE_ablated - CE_clean)``, with the site
  mean-ablated (the main number: the training mean) and zero-ablated, each member spliced in with
  ``keep_error=False``;
- the control: every member at initialisation, i.e. a random-direction dictionary of the same
  width and k (unit random decoder rows, encoder = their transpose, decoder bias = the mean);
- top-activating held-out contexts of a few features of the best member, and a token-purity score
  of its features against the same member at initialisation.

Intervals: 95% bootstrap over held-out text blocks (FVE and loss recovered), t-intervals over the
three seeds of the seeded cell.

    python experiments/sae_bank/run.py --quick    # CI smoke run (results/quick/)
    python experiments/sae_bank/run.py            # full mode (README numbers)
"""

from __future__ import annotations

import argparse
import dataclasses
import re
import sys
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent / "logit_lens"))

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402

import interpjax  # noqa: E402
from interpjax.core.interventions import Ablate  # noqa: E402
from interpjax.core.model import run_with_cache  # noqa: E402
from interpjax.evidence import Record, bootstrap_ci, fmt_ci, markdown_table, seed_summary, sync_readme  # noqa: E402
from interpjax.methods import sae_bank as SB  # noqa: E402
from interpjax.methods.sae import SAESplice  # noqa: E402
from pydoc_text import pick, token_blocks, topic_split  # noqa: E402

DEFAULT_MODEL = "smollm2-135m-instruct"
SITE = "resid_post"
D_MODEL = 576
SIZES = {
    # widths 2x / 4x d (a bank pads every member to the widest, and 2 shared CPU cores bound the run)
    "full": dict(layer=15, T=128, n_train=128, n_eval=40, n_ds=8, widths=(1152, 2304), ks=(8, 16, 32, 64),
                 cell=(2304, 32), cell_seeds=(0, 1, 2), relu_width=1152, relu_l1s=(0.3, 1.0, 3.0),
                 steps=200, batch=256, lr=2e-3, n_boot=2000, n_features=5, top=10, show=3, batch_lm=4),
    "quick": dict(layer=15, T=64, n_train=32, n_eval=8, n_ds=4, widths=(256,), ks=(8, 32),
                  cell=(256, 32), cell_seeds=(0,), relu_width=0, relu_l1s=(),
                  steps=120, batch=256, lr=2e-3, n_boot=200, n_features=3, top=5, show=2, batch_lm=4),
}
FVE_MARGIN = 0.05   # trained FVE must beat the untrained bank's by this much (every TopK member)
REC_MARGIN = 0.05   # and its mean-ablation loss recovered by this much
FIRST = 2           # rows from position 2 on: 0 is the start token, 1 SmolLM2's attention-sink token
MASSIVE = 10.0      # rows with a norm above MASSIVE x the median training norm are left out (see sink_share)


# ---------------------------------------------------------------------------------------------
# data


def truncated(model, n_layers: int):
    """(cfg, params) of the first ``n_layers`` layers (resid_post of those layers is unchanged;
    collecting a middle layer then skips the rest of the model)."""
    cfg = model.cfg
    if not 1 <= n_layers <= cfg.n_layers:
        raise ValueError(f"n_layers must be in 1..{cfg.n_layers}, got {n_layers}")
    c = dataclasses.replace(cfg, n_layers=n_layers, window=tuple(cfg.window[:n_layers]) if cfg.window else ())
    p = dict(model.params, layers=jax.tree.map(lambda a: a[:n_layers], model.params["layers"]))
    return c, p


def collect_resid(model, blocks_BT: np.ndarray, layer: int, batch: int = 8) -> np.ndarray:
    """``resid_post`` at ``layer`` of every block, the start token dropped: float32 [B, T-1, D]."""
    if not 0 <= layer < model.cfg.n_layers:
        raise ValueError(f"layer must be in 0..{model.cfg.n_layers - 1}, got {layer}")
    cfg, params = truncated(model, layer + 1)
    out = []
    for s in range(0, len(blocks_BT), batch):
        _, cache = run_with_cache(cfg, params, blocks_BT[s:s + batch], sites=(SITE,), layers=(layer,))
        out.append(np.asarray(cache[SITE, layer], np.float32)[:, 1:])
    return np.concatenate(out)


def sink_share(acts_BPD: np.ndarray, limit: float) -> dict:
    """Where SmolLM2's massive activations sit in blocks [B, P, D] (positions 1..): the share of the
    variance held by position 1 and by the rows (anywhere) whose norm exceeds ``limit``; a handful of
    such rows would otherwise dominate every reconstruction metric and the training loss."""
    x = acts_BPD.reshape(-1, acts_BPD.shape[-1]).astype(np.float64)
    dev = np.sum(np.square(x - x.mean(0)), axis=1).reshape(acts_BPD.shape[:2])
    norm = np.linalg.norm(acts_BPD, axis=-1)
    big = norm > limit
    return {"variance_share_position1": float(dev[:, 0].sum() / dev.sum()),
            "variance_share_massive_rows": float(dev[big].sum() / dev.sum()),
            "massive_rows": int(big.sum()), "massive_rows_at_position1": int(big[:, 0].sum()), "rows": int(big.size),
            "max_norm": float(norm.max()), "median_norm": float(np.median(norm)), "limit": float(limit)}


def make_data(model, sz: dict) -> dict:
    """Train / held-out token blocks (pydoc topics split by topic) and their activations from
    position ``FIRST`` on, rows with massive norms (> ``MASSIVE`` x the median) left out."""
    split = topic_split()
    train_all = token_blocks(model, split["train"], sz["T"])
    held_all = token_blocks(model, split["heldout"], sz["T"])
    n_train, n_eval = min(sz["n_train"], len(train_all)), min(sz["n_eval"], len(held_all))
    train = pick(train_all, n_train, seed=0)
    held = pick(held_all, n_eval, seed=1)
    tr = collect_resid(model, train, sz["layer"])
    ev = collect_resid(model, held, sz["layer"])
    limit = MASSIVE * float(np.median(np.linalg.norm(tr[:, FIRST - 1:], axis=-1)))
    sink = {"train": sink_share(tr, limit), "heldout": sink_share(ev, limit)}
    tr, ev = tr[:, FIRST - 1:], ev[:, FIRST - 1:]
    B, P, D = ev.shape
    tr, ev = tr.reshape(-1, D), ev.reshape(-1, D)
    keep_tr, keep_ev = np.linalg.norm(tr, axis=1) <= limit, np.linalg.norm(ev, axis=1) <= limit
    return {"train_blocks": train, "held_blocks": held, "train_ND": tr[keep_tr], "eval_ND": ev[keep_ev],
            "eval_block_N": np.repeat(np.arange(B), P)[keep_ev],
            "eval_pos_N": np.tile(np.arange(FIRST, FIRST + P), B)[keep_ev],
            "eval_tok_N": held[:, FIRST:].reshape(-1)[keep_ev],
            "available_blocks": {"train": len(train_all), "heldout": len(held_all)}, "sink": sink}


# ---------------------------------------------------------------------------------------------
# banks


def bank_members(sz: dict) -> dict:
    """{"topk": members, "relu": members}: TopK widths x ks (seed 0) plus the cell's extra seeds;
    ReLU members at ``relu_width`` over ``relu_l1s`` (scaled later by the activation norm)."""
    w, k = sz["cell"]
    topk = SB.grid(sz["widths"], sz["ks"], seeds=(0,))
    topk += tuple(SB.Member(w, k, 0.0, s) for s in sz["cell_seeds"] if s != 0)
    relu = SB.grid((sz["relu_width"],), l1s=sz["relu_l1s"]) if sz["relu_l1s"] else ()
    return {"topk": topk, "relu": relu}


def relu_scale(acts_ND: np.ndarray) -> float:
    """1 / mean ||x - mean||: the L1 term (sum_f f ||W_dec_f||) grows with the activation norm, so a
    unit coefficient means 'penalty comparable to the reconstruction term'."""
    return float(1.0 / np.mean(np.linalg.norm(acts_ND - acts_ND.mean(0), axis=1)))


# ---------------------------------------------------------------------------------------------
# held-out measurement


def _chunk_stats_fn(sae, x_ND, top: int):
    """Squared error and L0 per row, fire count per feature, each feature's ``top`` activations."""
    f_NF = sae.encode(x_ND)
    err_N = jnp.sum(jnp.square(x_ND - sae.decode(f_NF)), axis=-1)
    vals_FK, idx_FK = jax.lax.top_k(f_NF.T, top)
    return err_N, jnp.sum(f_NF > 0, axis=-1), jnp.sum(f_NF > 0, axis=0), vals_FK, idx_FK


_chunk_stats = jax.jit(_chunk_stats_fn, static_argnames=("top",))


def member_stats(sae, acts_ND: np.ndarray, top: int, chunk: int = 2048) -> dict:
    """Per held-out row: squared error and L0; per feature: how often it fires and its ``top`` largest
    activations with their row indices."""
    errs, l0s, fires, vals, idxs = [], [], 0, [], []
    for s in range(0, len(acts_ND), chunk):
        x = jnp.asarray(acts_ND[s:s + chunk])
        t = min(top, x.shape[0])
        e, l0, fr, v, i = jax.device_get(_chunk_stats(sae, x, top=t))
        errs.append(np.asarray(e, np.float64))
        l0s.append(np.asarray(l0))
        fires = fires + np.asarray(fr, np.int64)
        vals.append(np.asarray(v))
        idxs.append(np.asarray(i, np.int64) + s)
    v, i = np.concatenate(vals, 1), np.concatenate(idxs, 1)
    order = np.argsort(-v, axis=1, kind="stable")[:, :top]
    return {"err_N": np.concatenate(errs), "l0_N": np.concatenate(l0s), "fires_F": fires,
            "top_vals_FK": np.take_along_axis(v, order, 1), "top_idx_FK": np.take_along_axis(i, order, 1)}


def ratio_ci(num_B: np.ndarray, den_B: np.ndarray, n_boot: int, one_minus: bool = False) -> dict:
    """Bootstrap over blocks of sum(num) / sum(den) (or 1 - that)."""
    sign, off = (-1.0, 1.0) if one_minus else (1.0, 0.0)
    stat = lambda ix: off + sign * num_B[ix.astype(np.int64)].sum() / den_B[ix.astype(np.int64)].sum()  # noqa: E731
    return bootstrap_ci(np.arange(len(num_B), dtype=np.float64), stat=stat, n_boot=n_boot)


def reconstruction(st: dict, data: dict, n_boot: int) -> dict:
    """FVE (bootstrap over held-out blocks), L0 and dead fraction of one member."""
    x = data["eval_ND"]
    dev_N = np.sum(np.square(x.astype(np.float64) - x.mean(0, dtype=np.float64)), axis=1)
    nb = int(data["eval_block_N"].max()) + 1
    err_B = np.bincount(data["eval_block_N"], st["err_N"], minlength=nb)
    dev_B = np.bincount(data["eval_block_N"], dev_N, minlength=nb)
    return {"fve": ratio_ci(err_B, dev_B, n_boot, one_minus=True), "l0": float(st["l0_N"].mean()),
            "dead_frac": float(np.mean(st["fires_F"] == 0))}


# ---------------------------------------------------------------------------------------------
# downstream loss


def block_ce(model, blocks_BT: np.ndarray, ivs: tuple, batch: int) -> np.ndarray:
    """Mean next-token cross-entropy of each block [B] under the interventions ``ivs``."""
    out = []
    for s in range(0, len(blocks_BT), batch):
        tok = blocks_BT[s:s + batch]
        logits = interpjax.forward(model.cfg, model.params, tok, None, ivs)[:, :-1]
        logp = jax.nn.log_softmax(logits.astype(jnp.float32), axis=-1)
        nll = -jnp.take_along_axis(logp, jnp.asarray(tok[:, 1:, None]), axis=-1)[..., 0]
        out.append(np.asarray(nll, np.float64).mean(1))
    return np.concatenate(out)


def recovered(ce_ablated_B, ce_clean_B, ce_spliced_B, n_boot: int) -> dict:
    """(CE_ablated - CE_spliced) / (CE_ablated - CE_clean), bootstrap over blocks (jointly)."""
    return ratio_ci(np.asarray(ce_ablated_B) - ce_spliced_B, np.asarray(ce_ablated_B) - ce_clean_B, n_boot)


def edit_positions(T: int) -> np.ndarray:
    """Positions the ablations and splices act on: ``FIRST .. T-1`` (as the SAEs were trained)."""
    return np.arange(FIRST, T, dtype=np.int32)


def splice(sae, layer: int, positions=None) -> tuple:
    """The member spliced in place of the activation (reconstruction only) at ``positions``."""
    return (SAESplice(SITE, layer=layer, sae=sae, keep_error=False, positions=positions),)


# ---------------------------------------------------------------------------------------------
# features


def token_purity(st: dict, tokens_N: np.ndarray, top: int) -> np.ndarray:
    """Per feature with ``top`` positive top activations: the share of them on its most common token
    (1 = a single-token feature, 1/top = every top context a different token)."""
    live = (st["top_vals_FK"][:, :top] > 0).all(1)
    toks = tokens_N[st["top_idx_FK"][live, :top]]
    return np.array([np.unique(r, return_counts=True)[1].max() / top for r in toks], np.float64)


def _md(text: str) -> str:
    """Text safe inside a markdown table cell and a code span: newlines as ⏎, runs of 3+ spaces as one ␣."""
    text = re.sub(" {3,}", "␣", text.replace("\n", "⏎"))
    return text.replace("\\", "\\\\").replace("|", "\\|").replace("`", "'")


def context(model, blocks_BT, b: int, p: int, before: int = 8, after: int = 2) -> str:
    """Tokens ``before`` to ``after`` around block ``b`` position ``p``, the position's token in
    [[ ]] (its spaces shown as ␣)."""
    tok = model.tokenizer
    row = blocks_BT[b]
    left = tok.decode([int(t) for t in row[max(1, p - before):p]])
    right = tok.decode([int(t) for t in row[p + 1:p + 1 + after]])
    mid = tok.decode([int(row[p])]).replace(" ", "␣")
    return f"{_md(left)}[[{_md(mid)}]]{_md(right)}"


def feature_rows(model, st: dict, data: dict, sz: dict, seed: int = 0) -> tuple[list, list]:
    """``n_features`` features drawn (seeded) among those with ``top`` positive held-out activations,
    each with its ``show`` top contexts."""
    top, show = sz["top"], sz["show"]
    live = np.flatnonzero((st["top_vals_FK"][:, :top] > 0).all(1))
    if len(live) == 0:
        return [], []
    chosen = np.sort(np.random.default_rng(seed).choice(live, size=min(sz["n_features"], len(live)), replace=False))
    n = len(data["eval_ND"])
    rows, recs = [], []
    for f in chosen:
        ctx = []
        for j in range(show):
            r = int(st["top_idx_FK"][f, j])
            b, p = int(data["eval_block_N"][r]), int(data["eval_pos_N"][r])
            ctx.append(f"{context(model, data['held_blocks'], b, p)} ({st['top_vals_FK'][f, j]:.1f})")
        rate = st["fires_F"][f] / n
        recs.append({"feature": int(f), "fire_rate": float(rate), "contexts": ctx})
        rows.append([int(f), f"{100 * rate:.2f}%", " · ".join(f"`{c}`" for c in ctx)])
    return rows, recs


# ---------------------------------------------------------------------------------------------
# the verdict predicates


def effect_holds(members: list, fve_margin: float = FVE_MARGIN, rec_margin: float = REC_MARGIN) -> bool:
    """The effect the tests assert: every trained TopK member explains more held-out variance than
    the same member at initialisation (by ``fve_margin``) and recovers more of the mean-ablated
    loss (by ``rec_margin``)."""
    rows = [m for m in members if m["kind"] == "topk"]
    return bool(rows) and all(m["trained"]["fve"]["value"] > m["init"]["fve"]["value"] + fve_margin
                              and m["trained"]["rec_mean"]["value"] > m["init"]["rec_mean"]["value"] + rec_margin
                              for m in rows)


def frontier_monotone(members: list) -> bool:
    """Gao et al.'s shape: at every width, held-out FVE rises with k (seed-0 TopK members)."""
    ok = True
    for w in sorted({m["d_sae"] for m in members if m["kind"] == "topk"}):
        row = sorted((m["k"], m["trained"]["fve"]["value"]) for m in members
                     if m["kind"] == "topk" and m["d_sae"] == w and m["seed"] == 0)
        ok &= all(a[1] < b[1] for a, b in zip(row, row[1:]))
    return bool(ok)


# ---------------------------------------------------------------------------------------------
# tables and figure


def member_label(m: dict) -> str:
    return f"k={m['k']}" if m["kind"] == "topk" else f"l1={m['l1_unit']:g}"


def members_table(members: list) -> str:
    header = ["kind", "width", "k / l1", "seed", "L0", "FVE (95% CI)", "FVE at init", "dead", "dead at init",
              "loss rec. mean-abl.", "at init", "loss rec. zero-abl.", "at init"]
    rows = [[m["kind"], m["d_sae"], member_label(m), m["seed"], f"{m['trained']['l0']:.1f}", fmt_ci(m["trained"]["fve"]),
             f"{m['init']['fve']['value']:.2f}", f"{m['trained']['dead_frac']:.2f}", f"{m['init']['dead_frac']:.2f}",
             fmt_ci(m["trained"]["rec_mean"]), f"{m['init']['rec_mean']['value']:.2f}", fmt_ci(m["trained"]["rec_zero"]),
             f"{m['init']['rec_zero']['value']:.2f}"] for m in members]
    return markdown_table(header, rows)


def seeds_table(members: list, cell: tuple) -> tuple[str, dict]:
    w, k = cell
    rows_m = [m for m in members if m["kind"] == "topk" and m["d_sae"] == w and m["k"] == k]
    out = {}
    for name, get in (("fve", lambda m: m["trained"]["fve"]["value"]), ("rec_mean", lambda m: m["trained"]["rec_mean"]["value"]),
                      ("rec_zero", lambda m: m["trained"]["rec_zero"]["value"]), ("dead_frac", lambda m: m["trained"]["dead_frac"]),
                      ("fve_init", lambda m: m["init"]["fve"]["value"]), ("rec_mean_init", lambda m: m["init"]["rec_mean"]["value"])):
        out[name] = seed_summary([get(m) for m in rows_m])
    header = ["cell", "seeds", "FVE", "FVE at init", "loss rec. mean-abl.", "at init", "loss rec. zero-abl.", "dead"]
    row = [f"TopK width {w}, k={k}", len(rows_m), fmt_ci(out["fve"]), fmt_ci(out["fve_init"]), fmt_ci(out["rec_mean"]),
           fmt_ci(out["rec_mean_init"]), fmt_ci(out["rec_zero"]), fmt_ci(out["dead_frac"])]
    return markdown_table(header, [row]), out


def frontier_figure(members: list):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5.6, 3.8))
    for kind, marker in (("topk", "o"), ("relu", "s")):
        for w in sorted({m["d_sae"] for m in members if m["kind"] == kind}):
            ms = sorted((m for m in members if m["kind"] == kind and m["d_sae"] == w), key=lambda m: m["trained"]["l0"])
            l0 = [m["trained"]["l0"] for m in ms]
            ax.plot(l0, [m["trained"]["fve"]["value"] for m in ms], marker=marker, label=f"{kind} {w} trained")
            ax.plot([m["init"]["l0"] for m in ms], [m["init"]["fve"]["value"] for m in ms], marker=marker,
                    linestyle=":", alpha=0.6, label=f"{kind} {w} at init")
    ax.set_xscale("log")
    ax.set_xlabel("L0 (active features per token, held-out)")
    ax.set_ylabel("fraction of variance explained")
    ax.legend(fontsize=7)
    fig.tight_layout()
    return fig


# ---------------------------------------------------------------------------------------------
# main


def run_bank(model, kind: str, members: tuple, data: dict, sz: dict, cond: dict, timing: dict) -> tuple:
    """Train one bank, then measure every member trained and at init (same member, 0 steps);
    returns (per-member rows, trained bank)."""
    t0 = time.perf_counter()
    bank0 = SB.init_bank(members, data["train_ND"], kind=kind)
    bank, last = SB.train_bank(bank0, data["train_ND"], steps=sz["steps"], batch=sz["batch"], lr=sz["lr"], seed=0)
    jax.block_until_ready(bank.W_enc)
    timing[f"train_{kind}"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    out = []
    for g, m in enumerate(members):
        row = {"kind": kind, "d_sae": m.d_sae, "k": m.k, "l1": m.l1, "seed": m.seed,
               "train_nmse_last": float(np.asarray(last["nmse"])[g])}
        for name, b in (("trained", bank), ("init", bank0)):
            sae = b.member(g)
            st = member_stats(sae, data["eval_ND"], sz["top"])
            res = reconstruction(st, data, sz["n_boot"])
            ce = block_ce(model, data["ds_blocks"], splice(sae, sz["layer"], data["edit_pos"]), sz["batch_lm"])
            res["ce"] = float(ce.mean())
            res["rec_mean"] = recovered(cond["mean"], cond["clean"], ce, sz["n_boot"])
            res["rec_zero"] = recovered(cond["zero"], cond["clean"], ce, sz["n_boot"])
            row[name] = res
            if name == "trained":
                row["_stats"] = st
            else:
                row["_stats_init"] = st
        out.append(row)
        print(f"{kind} {m}: L0 {row['trained']['l0']:.1f} FVE {row['trained']['fve']['value']:.3f} "
              f"(init {row['init']['fve']['value']:.3f}) rec_mean {row['trained']['rec_mean']['value']:.3f} "
              f"(init {row['init']['rec_mean']['value']:.3f})", flush=True)
    timing[f"eval_{kind}"] = time.perf_counter() - t0
    return out, bank


def main(argv=None, model=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="tiny bank, few blocks (CI smoke run)")
    ap.add_argument("--model", default=DEFAULT_MODEL)
    ap.add_argument("--steps", type=int, default=None, help="training steps (default: the mode's)")
    ap.add_argument("--relu", action="store_true", help="also train the ReLU/L1 bank (full mode; it needs "
                    "far more steps than this run's budget to reach sparse codes)")
    ap.add_argument("--out", default=None, help="results folder (default: this folder's results/)")
    args = ap.parse_args(argv)
    sz = dict(SIZES["quick" if args.quick else "full"])
    if args.steps is not None:
        if args.steps < 0:
            raise SystemExit(f"--steps must be >= 0, got {args.steps}")
        sz["steps"] = args.steps
    if args.quick or not args.relu:
        sz["relu_l1s"] = ()
    members = bank_members(sz)
    model = interpjax.load(args.model) if model is None else model
    if model.cfg.d_model != D_MODEL and not args.quick:
        print(f"note: d_model is {model.cfg.d_model}, widths are fixed at {sz['widths']}")
    seeds = sorted({m.seed for ms in members.values() for m in ms})
    rec = Record(HERE, quick=args.quick, model=args.model, seeds=seeds, argv=argv,
                 out=None if args.out is None else Path(args.out))
    timing = {}
    t0 = time.perf_counter()
    data = make_data(model, sz)
    data["ds_blocks"] = data["held_blocks"][:sz["n_ds"]]
    data["edit_pos"] = edit_positions(sz["T"])
    timing["collect"] = time.perf_counter() - t0
    print(f"activations: train {data['train_ND'].shape}, held-out {data['eval_ND'].shape} "
          f"({timing['collect']:.0f} s)", flush=True)

    t0 = time.perf_counter()
    L = sz["layer"]
    mean_D = jnp.asarray(data["train_ND"].mean(0))
    pos = data["edit_pos"]
    cond = {"clean": block_ce(model, data["ds_blocks"], (), sz["batch_lm"]),
            "zero": block_ce(model, data["ds_blocks"], (Ablate(SITE, layer=L, kind="zero", positions=pos),), sz["batch_lm"]),
            "mean": block_ce(model, data["ds_blocks"], (Ablate(SITE, layer=L, kind="mean", source=mean_D[None],
                                                               positions=pos),), sz["batch_lm"])}
    timing["baselines"] = time.perf_counter() - t0

    scale = relu_scale(data["train_ND"])
    relu_members = tuple(dataclasses.replace(m, l1=m.l1 * scale) for m in members["relu"])
    results, banks = [], {}
    for kind, ms in (("topk", members["topk"]), ("relu", relu_members)):
        if ms:
            rows, banks[kind] = run_bank(model, kind, ms, data, sz, cond, timing)
            for r in rows:
                if kind == "relu":
                    r["l1_unit"] = r["l1"] / scale
            results += rows

    # features of the best TopK member with k <= 32 (held-out FVE), against the same member at init
    cand = [i for i, r in enumerate(results) if r["kind"] == "topk" and r["k"] <= 32]
    best = max(cand, key=lambda i: results[i]["trained"]["fve"]["value"])
    tokens_N = data["eval_tok_N"]
    pur = token_purity(results[best]["_stats"], tokens_N, sz["top"])
    pur0 = token_purity(results[best]["_stats_init"], tokens_N, sz["top"])
    frows, frecs = feature_rows(model, results[best]["_stats"], data, sz)
    for r in results:
        r.pop("_stats"), r.pop("_stats_init")

    b = results[best]
    rec["layer"] = L
    rec["site"] = SITE
    rec["sizes"] = {k: v for k, v in sz.items()}
    rec["tokens"] = {"train_rows": int(len(data["train_ND"])), "heldout_rows": int(len(data["eval_ND"])),
                     "downstream_tokens": int(data["ds_blocks"].size), "blocks_available": data["available_blocks"]}
    rec["relu_l1_scale"] = scale
    rec["sink"] = data["sink"]
    rec["first_position"] = FIRST
    rec["baselines"] = {k: bootstrap_ci(v, n_boot=sz["n_boot"]) for k, v in cond.items()}
    rec["members"] = results
    rec["best"] = {"index": best, "d_sae": b["d_sae"], "k": b["k"], "seed": b["seed"],
                   "purity": bootstrap_ci(pur, n_boot=sz["n_boot"]) if len(pur) else None,
                   "purity_init": bootstrap_ci(pur0, n_boot=sz["n_boot"]) if len(pur0) else None,
                   "features": frecs}
    cell_md, cell = seeds_table(results, sz["cell"])
    rec["cell"] = cell
    rec["effect_holds"] = effect_holds(results)
    rec["frontier_monotone"] = frontier_monotone(results)
    rec["timing_s"] = timing

    rec.table("members.md", members_table(results))
    rec.table("seeds.md", cell_md)
    base_rows = [[name, fmt_ci(rec["baselines"][name], 3)] for name in ("clean", "mean", "zero")]
    rec.table("baselines.md", markdown_table(["condition (held-out blocks)", "cross-entropy, nats (95% CI)"],
                                             [[{"clean": "clean", "mean": f"{SITE} L{L} mean-ablated",
                                                "zero": f"{SITE} L{L} zero-ablated"}[r[0]], r[1]] for r in base_rows]))
    pur_rows = [[f"trained (TopK {b['d_sae']}, k={b['k']})", len(pur), fmt_ci(rec["best"]["purity"]) if len(pur) else "-"],
                ["same member at init", len(pur0), fmt_ci(rec["best"]["purity_init"]) if len(pur0) else "-"]]
    rec.table("purity.md", markdown_table(["dictionary", f"features with {sz['top']} active held-out tokens",
                                           f"top-{sz['top']} token purity (95% CI)"], pur_rows))
    rec.table("features.md", markdown_table(["feature", "fires on", f"top {sz['show']} held-out contexts ([[max token]], activation)"],
                                            frows))
    rec.figure("frontier.png", frontier_figure(results))
    path = rec.save()
    if not args.quick:
        sync_readme(HERE / "README.md", rec.out)
    print(members_table(results))
    print(f"effect holds: {rec['effect_holds']}; frontier monotone: {rec['frontier_monotone']}; wrote {path}")
    return rec


if __name__ == "__main__":
    main()
