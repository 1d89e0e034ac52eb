"""Othello-GPT world model (Li et al. 2023, "Emergent World Representations"; Nanda et al. 2023):
a GPT trained only on sequences of random legal moves predicts legal next moves, its residual
stream encodes the board (probes per square: empty / mine / theirs, and empty / black / white,
read far better from the trained model than from a random-init one), and moving the residual
along a probe's class directions to flip one square changes the predicted legal moves so they
match the edited board.

    python experiments/othello/run.py --quick     # CI smoke run (about a minute)
    python experiments/othello/run.py             # full mode (sizes and time in the README)

Results (results.json, training.png, probes.png) go to ``--out``/{quick,full}; the Trainer's
checkpoints and metrics.jsonl go to ``--workdir`` (``--resume`` picks a run up from there).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

from interpjax import Config, Custom, forward, run_with_cache
from interpjax.methods import probes
from interpjax.train import TrainConfig, Trainer, init_params
from interpjax.worlds import othello as O

HERE = Path(__file__).resolve().parent
SITE = "resid_post"
# relative labels: 0 empty, 1 mine (player to move next), 2 theirs; absolute: 0 empty, 1 black, 2 white
STATE_NAMES = {"relative": ("empty", "mine", "theirs"), "absolute": ("empty", "black", "white")}

SIZES = {
    "quick": dict(n_layers=2, d_model=64, n_heads=2, batch=32, steps=300, lr=3e-3, n_train=10_000,
                  n_probe_games=400, probe_positions=20, probe_steps=200, mlp_hidden=32, n_edit=60),
    "full": dict(n_layers=4, d_model=64, n_heads=4, batch=64, steps=1200, lr=3e-3, n_train=100_000,
                 n_probe_games=1500, probe_positions=20, probe_steps=800, mlp_hidden=128, n_edit=400),
}


def model_config(n_layers: int, d_model: int, n_heads: int) -> Config:
    """A GPT-2-style decoder over the 61 Othello tokens (0 = padding, 1..60 = squares)."""
    return Config(vocab_size=O.VOCAB_SIZE, d_model=d_model, n_layers=n_layers, n_heads=n_heads,
                  d_head=d_model // n_heads, d_mlp=4 * d_model, n_ctx=O.MAX_MOVES, positions="learned",
                  norm="layernorm", activation="gelu", qkv_bias=True, o_bias=True, mlp_bias=True,
                  tie_embeddings=False)


def legal_token_mask(legal_NT64: np.ndarray) -> np.ndarray:
    """bool [N, T, 61]: which tokens are legal next moves (token 0 = padding never is)."""
    out = np.zeros(legal_NT64.shape[:2] + (O.VOCAB_SIZE,), bool)
    out[..., 1:] = legal_NT64[..., O.TOKEN_TO_MOVE[1:]]
    return out


def make_legal_rate(cfg: Config, tokens_NT: np.ndarray, legal_NTV: np.ndarray, chunk: int = 256):
    """params -> fraction of positions (with a legal move) whose top-1 predicted move is legal."""
    tok = jnp.asarray(tokens_NT, jnp.int32)
    legal = jnp.asarray(legal_NTV)
    has_move = legal.any(-1)

    @jax.jit
    def rate(params):
        from interpjax.core.model import run

        hits = jnp.zeros((), jnp.float32)
        for s in range(0, tok.shape[0], chunk):
            t = tok[s:s + chunk]
            logits = run(cfg, params, t, jnp.ones_like(t), None, (), (), ())[0]
            pred = jnp.argmax(logits[..., 1:], -1) + 1  # never predict padding
            hits = hits + jnp.sum(jnp.take_along_axis(legal[s:s + chunk], pred[..., None], -1)[..., 0]
                                  & has_move[s:s + chunk]).astype(jnp.float32)
        return {"legal_rate": hits / jnp.sum(has_move).astype(jnp.float32)}

    return rate


def train(cfg: Config, size: dict, work: Path, seed: int):
    """Train on random games with the library Trainer; returns (params, metric rows, seconds,
    the step training started from: > 0 when a run was resumed from a checkpoint)."""
    t0 = time.perf_counter()
    tokens_NT = O.encode(O.generate_games(size["n_train"], seed=seed)).astype(np.int32)
    val = O.generate_games(256, seed=seed + 1)
    rate = make_legal_rate(cfg, O.encode(val), legal_token_mask(O.legal_next_moves(val)))
    steps, B = size["steps"], size["batch"]
    tc = TrainConfig(lr=size["lr"], weight_decay=0.1, warmup_steps=max(steps // 20, 1), schedule="cosine",
                     total_steps=steps, clip_norm=1.0, log_every=max(steps // 30, 1),
                     ckpt_every=max(steps // 5, 1), seed=seed)

    def batch_fn(step):
        idx = np.random.default_rng([seed, step]).integers(0, len(tokens_NT), B)
        toks = tokens_NT[idx]
        return {"tokens": toks, "loss_mask": (toks != O.PAD_TOKEN).astype(np.float32)}

    trainer = Trainer(cfg, tc, work / "train", eval_fn=rate, eval_every=tc.log_every)
    start = trainer.step
    trainer.train(batch_fn, steps, progress=False)
    rows = [json.loads(line) for line in trainer.log_path.read_text().splitlines()]
    return trainer.params, rows, time.perf_counter() - t0, start


def residuals(cfg: Config, params, tokens_NT: np.ndarray, chunk: int = 128) -> np.ndarray:
    """float32 [L, N, T, D]: resid_post of every layer at every position."""
    outs = []
    for s in range(0, len(tokens_NT), chunk):
        _, cache = run_with_cache(cfg, params, tokens_NT[s:s + chunk], sites=[SITE])
        outs.append(np.asarray(cache[SITE]))
    return np.concatenate(outs, axis=1)


def probe_set(games_NT: np.ndarray, per_game: int, seed: int):
    """(game index [M], position [M]) sampling ``per_game`` real (non-padding) positions per game."""
    rng = np.random.default_rng(seed)
    lengths = (games_NT >= 0).sum(1)
    g, t = [], []
    for i, n in enumerate(lengths):
        pos = rng.choice(n, size=min(per_game, n), replace=False)
        g.append(np.full(len(pos), i))
        t.append(pos)
    return np.concatenate(g), np.concatenate(t)


def board_labels(games_NT: np.ndarray) -> dict:
    """Per-move labels [N, T, 64]: relative (0 empty / 1 mine / 2 theirs) and absolute (0/1 black/2 white)."""
    lab = O.probe_labels(games_NT)
    b = lab["board_states"]
    absolute = np.where(b == O.BLACK, 1, np.where(b == O.WHITE, 2, 0)).astype(np.int32)
    return {"relative": lab["relative_board_states"].astype(np.int32), "absolute": absolute,
            "legal": lab["legal_next_moves"]}


def fit_board_probes(acts_LMD: np.ndarray, labels: dict, size: dict, seed: int) -> dict:
    """Linear (logistic) and 2-layer MLP probes on every layer; held-out per-square error [L]."""
    M = acts_LMD.shape[1]
    tr, te = probes.split(M, test_frac=0.2, seed=seed)
    X_tr, X_te = jnp.asarray(acts_LMD[:, tr]), jnp.asarray(acts_LMD[:, te])
    out, fitted = {}, {}
    for kind in ("relative", "absolute"):
        y = labels[kind]
        lin = probes.fit_logistic(X_tr, y[tr], 3, l2=1e-4, steps=size["probe_steps"], lr=1e-2,
                                  batch_size=1024, seed=seed)
        mlp = probes.fit_mlp(X_tr, y[tr], task="classification", n_classes=3, hidden=size["mlp_hidden"],
                             steps=size["probe_steps"], lr=3e-3, weight_decay=1e-4, batch_size=512, seed=seed)
        # majority-class baseline per square (from the training split)
        maj = np.stack([np.bincount(y[tr][:, s], minlength=3).argmax() for s in range(64)])
        out[kind] = {"linear_error": (1 - np.asarray(probes.score(lin, X_te, y[te]))).round(4).tolist(),
                     "mlp_error": (1 - np.asarray(probes.score(mlp, X_te, y[te]))).round(4).tolist(),
                     "majority_error": round(float(1 - (y[te] == maj).mean()), 4)}
        fitted[kind] = lin
    return out, fitted


# ---------------------------------------------------------------------------------------------
# probe-based intervention


def _bits(mask_64: np.ndarray) -> np.ndarray:
    """bool [..., 64] -> uint64 bitboards [...]."""
    return np.packbits(mask_64.astype(np.uint8), axis=-1, bitorder="little").view("<u8")[..., 0]


def pick_edits(games_NT: np.ndarray, labels: dict, n: int, seed: int):
    """Positions and one occupied square each whose mine<->theirs flip changes the legal move set.

    Returns dict of arrays: game, pos, square, src, dst, legal_orig [n, 64], legal_edit [n, 64].
    """
    rng = np.random.default_rng(seed)
    rel, legal = labels["relative"], labels["legal"]
    rows = []
    for _ in range(50 * n):
        if len(rows) == n:
            break
        g = int(rng.integers(len(games_NT)))
        length = int((games_NT[g] >= 0).sum())
        if length < 12:
            continue
        t = int(rng.integers(5, length - 1))
        if not legal[g, t].any():
            continue
        board = rel[g, t]
        occupied = np.flatnonzero(board > 0)
        s = int(rng.choice(occupied))
        edited = board.copy()
        edited[s] = 3 - board[s]  # 1 <-> 2
        new_legal = O._squares_from_bits(O._legal_np(_bits(edited == 1)[None], _bits(edited == 2)[None]))[0]
        new_legal = new_legal.astype(bool)
        if not new_legal.any() or (new_legal == legal[g, t]).all():
            continue
        rows.append((g, t, s, int(board[s]), int(edited[s]), legal[g, t], new_legal))
    if len(rows) < n:
        raise RuntimeError(f"found only {len(rows)} of {n} flippable positions")
    g, t, s, src, dst, lo, le = zip(*rows)
    return {"game": np.array(g), "pos": np.array(t), "square": np.array(s), "src": np.array(src),
            "dst": np.array(dst), "legal_orig": np.stack(lo), "legal_edit": np.stack(le)}


def _probe_delta(x_BD, layer_index, p):
    """The edit [B, D] that makes this layer's linear probe read class p['dst'] on square
    p['square'] with a logit margin p['margin'] over every other class: a few closed-form steps
    along w_dst - w_c for the runner-up class c."""
    w_DSC, b_SC = p["w"][layer_index], p["b"][layer_index]
    rows = jnp.arange(x_BD.shape[0])
    w_BDC = jnp.transpose(w_DSC[:, p["square"], :], (1, 0, 2))
    b_BC = b_SC[p["square"]]
    onehot = jax.nn.one_hot(p["dst"], w_BDC.shape[-1], dtype=bool)
    y_BD = x_BD
    for _ in range(3):
        logit_BC = jnp.einsum("bd,bdc->bc", y_BD, w_BDC) + b_BC
        rival = jnp.argmax(jnp.where(onehot, -jnp.inf, logit_BC), -1)
        u_BD = w_BDC[rows, :, p["dst"]] - w_BDC[rows, :, rival]
        gap = logit_BC[rows, rival] - logit_BC[rows, p["dst"]] + p["margin"]
        y_BD = y_BD + (jnp.maximum(gap, 0.0) / jnp.sum(u_BD * u_BD, -1))[:, None] * u_BD
    return y_BD - x_BD


def _probe_edit(x_BTD, layer_index, p):
    """Custom-intervention fn: apply the probe edit at each row's position p['pos']."""
    rows = jnp.arange(x_BTD.shape[0])
    x_BD = x_BTD[rows, p["pos"]]
    return x_BTD.at[rows, p["pos"]].add(_probe_delta(x_BD, layer_index, p))


def _random_edit(x_BTD, layer_index, p):
    """Control: an edit of the same norm as the probe edit but along a random direction p['random']."""
    rows = jnp.arange(x_BTD.shape[0])
    x_BD = x_BTD[rows, p["pos"]]
    norm_B = jnp.linalg.norm(_probe_delta(x_BD, layer_index, p), axis=-1)
    return x_BTD.at[rows, p["pos"]].add(norm_B[:, None] * p["random"])


def topn_errors(logits_BV: np.ndarray, legal_B64: np.ndarray) -> np.ndarray:
    """Per row: how many of the top-N predicted moves (N = number of legal moves) are illegal."""
    scores_B60 = logits_BV[:, 1:]
    errs = []
    for sc, legal in zip(scores_B60, legal_B64):
        n = int(legal.sum())
        top = O.TOKEN_TO_MOVE[1:][np.argsort(-sc)[:n]]
        errs.append(n - int(legal[top].sum()))
    return np.array(errs)


def _move_logp(logits_BV: np.ndarray) -> np.ndarray:
    """[B, 64] log-probability of each square as the next move (-inf for the centre squares)."""
    lp = np.asarray(jax.nn.log_softmax(jnp.asarray(logits_BV[:, 1:]), -1))
    out = np.full((len(lp), 64), -np.inf, np.float32)
    out[:, O.TOKEN_TO_MOVE[1:]] = lp
    return out


def _edit_effect(logits, base, e) -> dict:
    """Top-N errors against both boards, and how the log-prob of the moves whose legality the
    edit changes moves (gained: illegal -> legal, should rise; lost: legal -> illegal, should fall)."""
    gained, lost = e["legal_edit"] & ~e["legal_orig"], e["legal_orig"] & ~e["legal_edit"]
    kept = e["legal_orig"] & e["legal_edit"]
    with np.errstate(invalid="ignore"):  # -inf - -inf on the never-legal centre squares, unused
        d = _move_logp(logits) - _move_logp(base)
    return {"errors_vs_edited": float(topn_errors(logits, e["legal_edit"]).mean()),
            "errors_vs_original": float(topn_errors(logits, e["legal_orig"]).mean()),
            "dlogp_gained": float(d[gained].mean()), "dlogp_lost": float(d[lost].mean()),
            "dlogp_still_legal": float(d[kept].mean()),
            "frac_gained_up": float((d[gained] > 0).mean()), "frac_lost_down": float((d[lost] < 0).mean())}


def intervention_study(cfg: Config, params, games_NT, labels, probe, n_edit: int, seed: int, margin: float):
    """Flip one square's represented state (mine <-> theirs) from each start layer onwards and
    compare the top-N predicted moves with the legal moves of the edited and original boards;
    control: an edit of the same size along a random direction."""
    e = pick_edits(games_NT, labels, n_edit, seed)
    tokens = O.encode(games_NT[e["game"]]).astype(np.int32)
    B = len(tokens)
    rows = np.arange(B)
    base = np.asarray(forward(cfg, params, tokens))[rows, e["pos"]]
    res = {"n": B, "margin": margin,
           "mean_legal_orig": float(e["legal_orig"].sum(1).mean()),
           "mean_legal_edit": float(e["legal_edit"].sum(1).mean()),
           "mean_legal_changed": float((e["legal_orig"] != e["legal_edit"]).sum(1).mean()),
           "no_intervention": {"errors_vs_edited": float(topn_errors(base, e["legal_edit"]).mean()),
                               "errors_vs_original": float(topn_errors(base, e["legal_orig"]).mean())},
           "by_start_layer": []}
    r_BD = np.random.default_rng(seed + 1).normal(size=(B, cfg.d_model)).astype(np.float32)
    p = {"w": jnp.asarray(probe.params["w"]), "b": jnp.asarray(probe.params["b"]),
         "pos": jnp.asarray(e["pos"]), "square": jnp.asarray(e["square"]), "dst": jnp.asarray(e["dst"]),
         "margin": jnp.float32(margin), "random": jnp.asarray(r_BD / np.linalg.norm(r_BD, axis=-1, keepdims=True))}
    for start in range(cfg.n_layers):
        layers = jnp.arange(start, cfg.n_layers)
        iv = Custom(site=SITE, fn=_probe_edit, layer=layers, params=p)
        logits, cache = run_with_cache(cfg, params, tokens, sites=[SITE], interventions=iv)
        logits = np.asarray(logits)[rows, e["pos"]]
        # does the last layer's probe (after the edit) read the edited square as intended?
        last = jnp.asarray(np.asarray(cache[SITE])[-1][rows, e["pos"]])
        read = np.asarray(jnp.einsum("bd,dbc->bc", last, probe.params["w"][-1][:, e["square"], :])
                          + probe.params["b"][-1][e["square"]]).argmax(-1)
        ctrl = np.asarray(forward(cfg, params, tokens, interventions=Custom(
            site=SITE, fn=_random_edit, layer=layers, params=p)))[rows, e["pos"]]
        res["by_start_layer"].append({"start_layer": start, **_edit_effect(logits, base, e),
                                      "probe_reads_edit": float((read == e["dst"]).mean()),
                                      "random_direction": _edit_effect(ctrl, base, e)})
    return res


# ---------------------------------------------------------------------------------------------
# plots and main


def _save_fig(fig, path: Path):
    tmp = path.with_name(path.stem + ".tmp.png")
    fig.savefig(tmp, dpi=90)
    os.replace(tmp, path)


def plot_training(rows, path: Path):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(1, 2, figsize=(10, 3.5))
    st = [r["step"] for r in rows]
    ax[0].plot(st, [r["loss"] for r in rows]), ax[0].set_title("train loss"), ax[0].set_xlabel("step")
    ax[1].plot(st, [r["eval_legal_rate"] for r in rows]), ax[1].set_title("top-1 legal-move rate (held out)")
    ax[1].set_xlabel("step")
    fig.tight_layout()
    _save_fig(fig, path)
    plt.close(fig)


def plot_probes(res: dict, path: Path):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(1, 2, figsize=(11, 3.8), sharey=True)
    for a, kind in zip(ax, ("relative", "absolute")):
        for model, style in (("trained", "-"), ("untrained", "--")):
            for probe_kind, color in (("linear_error", "C0"), ("mlp_error", "C1")):
                e = res[model][kind][probe_kind]
                a.plot(range(len(e)), e, style, color=color, marker="o", label=f"{model} {probe_kind[:-6]}")
        a.axhline(res["trained"][kind]["majority_error"], color="gray", lw=0.8, label="majority class")
        a.set_title(f"{kind}: " + " / ".join(STATE_NAMES[kind])), a.set_xlabel(f"layer ({SITE})")
        a.set_xticks(range(len(res["trained"][kind]["linear_error"])))
    ax[0].set_ylabel("per-square probe error (held out)")
    ax[1].legend(fontsize=7)
    fig.tight_layout()
    _save_fig(fig, path)
    plt.close(fig)


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--steps", type=int, default=None, help="override the training steps")
    ap.add_argument("--margin", type=float, default=4.0, help="probe logit margin the intervention enforces")
    ap.add_argument("--out", default=str(HERE / "results"))
    ap.add_argument("--workdir", default=None,
                    help="checkpoints + metrics.jsonl (default: <repo>/runs/othello, or <out>/work with --out)")
    ap.add_argument("--resume", action="store_true", help="resume the training run found in --workdir")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    mode = "quick" if args.quick else "full"
    size = dict(SIZES[mode])
    if args.steps is not None:
        if args.steps < 1:
            raise ValueError(f"--steps must be >= 1, got {args.steps}")
        size["steps"] = args.steps
    if args.margin <= 0:
        raise ValueError(f"--margin must be > 0, got {args.margin}")
    out = Path(args.out) / mode
    out.mkdir(parents=True, exist_ok=True)
    default_out = Path(args.out).resolve() == (HERE / "results")
    work = Path(args.workdir) if args.workdir else (HERE.parents[1] / "runs" / "othello" if default_out
                                                     else Path(args.out) / "work")
    work = work / mode
    if work.exists() and not args.resume:
        shutil.rmtree(work)
    t0 = time.perf_counter()
    cfg = model_config(size["n_layers"], size["d_model"], size["n_heads"])
    params, rows, train_s, start_step = train(cfg, size, work, args.seed)
    plot_training(rows, out / "training.png")

    # held-out games (a seed the training set never used) for legal-move rate, probes, edits
    games = O.generate_games(size["n_probe_games"], seed=args.seed + 1000)
    labels = board_labels(games)
    tokens = O.encode(games).astype(np.int32)
    legal_rate = float(make_legal_rate(cfg, tokens, legal_token_mask(labels["legal"]))(params)["legal_rate"])

    t1 = time.perf_counter()
    gi, ti = probe_set(games, size["probe_positions"], args.seed)
    lab = {k: labels[k][gi, ti] for k in ("relative", "absolute")}
    probe_res, fitted = {}, {}
    untrained = init_params(cfg, jax.random.PRNGKey(args.seed + 7))
    for name, prm in (("trained", params), ("untrained", untrained)):
        acts_LMD = residuals(cfg, prm, tokens)[:, gi, ti]
        probe_res[name], fitted[name] = fit_board_probes(acts_LMD, lab, size, args.seed)
        del acts_LMD
    probe_s = time.perf_counter() - t1
    plot_probes(probe_res, out / "probes.png")

    t2 = time.perf_counter()
    edit = intervention_study(cfg, params, games, labels, fitted["trained"]["relative"], size["n_edit"],
                              args.seed, args.margin)
    edit["seconds"] = round(time.perf_counter() - t2, 1)

    summary = {"mode": mode, "model": {k: size[k] for k in ("n_layers", "d_model", "n_heads")},
               "train": {k: size[k] for k in ("steps", "batch", "lr", "n_train")},
               "games_seen": size["steps"] * size["batch"], "final_train_loss": rows[-1]["loss"],
               "legal_move_rate": round(legal_rate, 4),
               "untrained_legal_move_rate": round(float(make_legal_rate(
                   cfg, tokens, legal_token_mask(labels["legal"]))(untrained)["legal_rate"]), 4),
               "n_probe_examples": int(len(gi)), "train_resumed_from_step": int(start_step), "probes": probe_res, "intervention": edit,
               "seconds": {"train": round(train_s, 1), "probes": round(probe_s, 1),
                           "total": round(time.perf_counter() - t0, 1)}}
    tmp = out / "results.json.tmp"
    tmp.write_text(json.dumps(summary, indent=1))
    os.replace(tmp, out / "results.json")
    print(json.dumps(summary, indent=1))


if __name__ == "__main__":
    main()
