"""Othello-GPT world model (M21; Li et al. 2023, "Emergent World Representations"; Nanda et al. 2023).

A GPT trained only on sequences of random legal moves predicts legal next moves; its residual
stream encodes the board, read by per-square probes (empty / mine / theirs relative to the player
to move, and empty / black / white) far better from the trained model than from an untrained one
of the same shape or by a probe fitted to shuffled labels (the controls). The error that matters
is on the *occupied* squares: whether a square is empty is visible from the move list itself,
its colour is the world model. Moving the residual along the linear probe's class directions to
flip one square's colour makes the model's next-move predictions follow the edited board, unlike
an edit of the same norm along a random direction (the control).

    python experiments/othello/run.py --quick     # one small model, seconds (results/quick/)
    python experiments/othello/run.py             # full mode: one model, 3 probe seeds (results/full/, README)

Probes are fitted on 60% of held-out games, the probed layer is chosen on 20% and every number is
reported on the last 20% (split by game); intervals are bootstraps over test games / edit cases
of one run, and Student-t intervals over runs (probe seeds: split, probe init, edit cases) when
there are several. Checkpoints and metrics.jsonl go to ``--workdir``.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

from interpjax import Config, Custom, forward, run_with_cache
from interpjax.evidence import (Record, bootstrap_ci, fmt_ci, markdown_table, paired_bootstrap_diff, seed_summary,
                                sync_readme)
from interpjax.methods import probes
from interpjax.train import TrainConfig, Trainer, init_params
from interpjax.worlds import othello as O

HERE = Path(__file__).resolve().parent
SITE = "resid_post"
LABELINGS = ("relative", "absolute")
STATE_NAMES = {"relative": ("empty", "mine", "theirs"), "absolute": ("empty", "black", "white")}
KINDS = ("linear", "mlp")
CONDITIONS = ("trained", "untrained", "shuffled")  # probe on: trained model / random-init model / shuffled labels
EDITS = ("none", "probe", "random")

SIZES = {
    "quick": dict(n_layers=2, d_model=64, n_heads=2, batch=32, steps=300, lr=3e-3, n_train=10_000,
                  n_probe_games=300, probe_positions=20, probe_steps=200, mlp_hidden=32, n_edit=60,
                  edit_starts=(0,), seeds=(0,), probe_seeds=(0,), logs=10, ckpts=1),
    "full": dict(n_layers=4, d_model=64, n_heads=4, batch=64, steps=800, lr=3e-3, n_train=51_200,
                 n_probe_games=600, probe_positions=20, probe_steps=300, mlp_hidden=128, n_edit=300,
                 edit_starts=None, seeds=(0,), probe_seeds=(0, 1, 2), logs=25, ckpts=4),
}
SPLIT = (0.6, 0.2, 0.2)  # probe-fit / layer-selection / test share of the held-out games
HEADLINE_START = 0  # the edit acts on resid_post of every layer from this one on (fixed a priori)


def model_config(n_layers: int, d_model: int, n_heads: int) -> Config:
    """A GPT-2-style decoder over the 61 Othello tokens (0 = padding, 1..60 = squares)."""
    return Config(vocab_size=O.VOCAB_SIZE, d_model=d_model, n_layers=n_layers, n_heads=n_heads,
                  d_head=d_model // n_heads, d_mlp=4 * d_model, n_ctx=O.MAX_MOVES, positions="learned",
                  norm="layernorm", activation="gelu", qkv_bias=True, o_bias=True, mlp_bias=True,
                  tie_embeddings=False)


# ---------------------------------------------------------------------------------------------
# training and the legal-move rate


def legal_token_mask(legal_NT64: np.ndarray) -> np.ndarray:
    """bool [N, T, 61]: which tokens are legal next moves (token 0 = padding never is)."""
    out = np.zeros(legal_NT64.shape[:2] + (O.VOCAB_SIZE,), bool)
    out[..., 1:] = legal_NT64[..., O.TOKEN_TO_MOVE[1:]]
    return out


def make_legal_rate(cfg: Config, tokens_NT: np.ndarray, legal_NTV: np.ndarray, chunk: int = 256):
    """params -> {"legal_rate"}: share of positions (with a legal move) whose top-1 move is legal."""
    tok, legal = jnp.asarray(tokens_NT, jnp.int32), jnp.asarray(legal_NTV)
    hits_fn = jax.jit(lambda p, t, lg: legal_hits(cfg, p, t, lg, chunk))  # data as arguments, not constants

    def rate(params):
        hits, has = hits_fn(params, tok, legal)
        return {"legal_rate": jnp.sum(hits).astype(jnp.float32) / jnp.sum(has).astype(jnp.float32)}

    return rate


def legal_hits(cfg: Config, params, tok_NT, legal_NTV, chunk: int = 256):
    """(hit [N, T], has_move [N, T]): top-1 predicted move (padding excluded) is legal; the position has one."""
    from interpjax.core.model import run

    has = legal_NTV.any(-1)
    hits = []
    for s in range(0, tok_NT.shape[0], chunk):
        t = tok_NT[s:s + chunk]
        logits = run(cfg, params, t, jnp.ones_like(t), None, (), (), ())[0]
        pred = jnp.argmax(logits[..., 1:], -1) + 1  # never predict padding
        hits.append(jnp.take_along_axis(legal_NTV[s:s + chunk], pred[..., None], -1)[..., 0] & has[s:s + chunk])
    return jnp.concatenate(hits), has


def per_game_legal_rate(cfg: Config, params, tokens_NT, legal_NT64) -> np.ndarray:
    """[N] top-1 legal-move rate of each game (over its positions with a legal move)."""
    hit, has = jax.jit(lambda p, t, lg: legal_hits(cfg, p, t, lg))(
        params, jnp.asarray(tokens_NT, jnp.int32), jnp.asarray(legal_token_mask(legal_NT64)))
    hit, has = np.asarray(hit), np.asarray(has)
    return hit.sum(1) / np.maximum(has.sum(1), 1)


def train(cfg: Config, size: dict, work: Path, seed: int):
    """Train on random games with the library Trainer; returns (params, metric rows, seconds,
    the step training started from: > 0 when a run was resumed from a checkpoint)."""
    t0 = time.perf_counter()
    tokens_NT = O.encode(O.generate_games(size["n_train"], seed=seed)).astype(np.int32)
    val = O.generate_games(256, seed=seed + 1)
    rate = make_legal_rate(cfg, O.encode(val), legal_token_mask(O.legal_next_moves(val)))
    steps, B = size["steps"], size["batch"]
    tc = TrainConfig(lr=size["lr"], weight_decay=0.1, warmup_steps=max(steps // 20, 1), schedule="cosine",
                     total_steps=steps, clip_norm=1.0, log_every=max(steps // size["logs"], 1),
                     ckpt_every=max(steps // size["ckpts"], 1), seed=seed)

    def batch_fn(step):
        idx = np.random.default_rng([seed, step]).integers(0, len(tokens_NT), B)
        toks = tokens_NT[idx]
        return {"tokens": toks, "loss_mask": (toks != O.PAD_TOKEN).astype(np.float32)}

    trainer = Trainer(cfg, tc, work / "train", eval_fn=rate, eval_every=tc.log_every)
    start = trainer.step
    trainer.train(batch_fn, steps, progress=False)
    rows = [json.loads(line) for line in trainer.log_path.read_text().splitlines()]
    return trainer.params, rows, time.perf_counter() - t0, start


# ---------------------------------------------------------------------------------------------
# board probes


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


def game_split(n_games: int, seed: int) -> dict:
    """Disjoint game index sets {"fit", "select", "test"} (shares SPLIT) for probes and edits."""
    perm = np.random.default_rng([seed, 77]).permutation(n_games)
    a, b = int(SPLIT[0] * n_games), int((SPLIT[0] + SPLIT[1]) * n_games)
    return {"fit": np.sort(perm[:a]), "select": np.sort(perm[a:b]), "test": np.sort(perm[b:])}


def board_labels(games_NT: np.ndarray) -> dict:
    """Per-move labels [N, T, 64]: relative (0 empty / 1 mine / 2 theirs) and absolute (0/1 black/2 white)."""
    lab = O.probe_labels(games_NT)
    b = lab["board_states"]
    absolute = np.where(b == O.BLACK, 1, np.where(b == O.WHITE, 2, 0)).astype(np.int32)
    return {"relative": lab["relative_board_states"].astype(np.int32), "absolute": absolute,
            "legal": lab["legal_next_moves"]}


def per_game_error(wrong_LMS: np.ndarray, mask_MS: np.ndarray, game_M: np.ndarray) -> np.ndarray:
    """[L, G] error of each game (over its probed positions' squares where ``mask``), games sorted."""
    _, inv = np.unique(game_M, return_inverse=True)
    G = int(inv.max()) + 1
    num_GL = np.zeros((G, wrong_LMS.shape[0]))
    np.add.at(num_GL, inv, (wrong_LMS & mask_MS[None]).sum(-1).T)
    den_G = np.bincount(inv, weights=mask_MS.sum(-1), minlength=G)
    return (num_GL / np.maximum(den_G, 1)[:, None]).T


def fit_probe(kind: str, X_LND, y_NS, size: dict, seed: int):
    """A linear (multinomial logistic) or 2-layer MLP probe per layer, 3 classes per square."""
    if kind not in KINDS:
        raise ValueError(f"unknown probe kind {kind!r}; choose one of {KINDS}")
    if kind == "linear":
        return probes.fit_logistic(X_LND, y_NS, 3, l2=1e-4, steps=size["probe_steps"], lr=1e-2,
                                   batch_size=min(1024, len(y_NS)), seed=seed)
    return probes.fit_mlp(X_LND, y_NS, task="classification", n_classes=3, hidden=size["mlp_hidden"],
                          steps=size["probe_steps"], lr=3e-3, weight_decay=1e-4, batch_size=min(512, len(y_NS)),
                          seed=seed)


def score_probe(probe, acts_LMD, y_MS, game_M, rows: dict) -> dict:
    """Select the layer on the 'select' rows (occupied-square error), report it on the 'test' rows:
    per-layer errors and bootstrap intervals over test games, on occupied squares and on all squares."""
    out = {}
    for part in ("select", "test"):
        idx = rows[part]
        pred = np.asarray(jnp.argmax(probes.predict(probe, jnp.asarray(acts_LMD[:, idx])), -1))
        wrong = pred != y_MS[idx][None]
        occ = y_MS[idx] > 0
        out[part] = {"occupied": per_game_error(wrong, occ, game_M[idx]),
                     "all": per_game_error(wrong, np.ones_like(occ), game_M[idx])}
    layer = int(np.argmin(out["select"]["occupied"].mean(1)))
    test = out["test"]
    return {"layer": layer,
            "select_occupied_by_layer": out["select"]["occupied"].mean(1).round(4).tolist(),
            "test_occupied_by_layer": test["occupied"].mean(1).round(4).tolist(),
            "test_all_by_layer": test["all"].mean(1).round(4).tolist(),
            "occupied": bootstrap_ci(test["occupied"][layer]), "all": bootstrap_ci(test["all"][layer])}


def probe_study(cfg: Config, params, untrained, games_NT, labels, split, size: dict, seed: int):
    """Probe error of every (labeling, kind, condition) at ``probe_positions`` random moves of each
    game; returns (results, the trained model's relative linear probe, used by the edit)."""
    gi, ti = probe_set(games_NT, size["probe_positions"], seed)
    tokens_NT = O.encode(games_NT).astype(np.int32)
    rows = {part: np.flatnonzero(np.isin(gi, split[part])) for part in split}
    fit_rows = rows["fit"]
    res = {lab: {kind: {} for kind in KINDS} for lab in LABELINGS}
    keep = None
    for model_name, prm in (("trained", params), ("untrained", untrained)):
        acts_LMD = residuals(cfg, prm, tokens_NT)[:, gi, ti]
        for lab in LABELINGS:
            y_MS = labels[lab][gi, ti]
            conds = ("trained", "shuffled") if model_name == "trained" else ("untrained",)
            for cond in conds:
                y_fit = y_MS[fit_rows] if cond != "shuffled" else probes.shuffled_control(y_MS[fit_rows], seed)
                for kind in KINDS:
                    probe = fit_probe(kind, acts_LMD[:, fit_rows], y_fit, size, seed)
                    res[lab][kind][cond] = score_probe(probe, acts_LMD, y_MS, gi, rows)
                    if (cond, lab, kind) == ("trained", "relative", "linear"):
                        keep = probe
        del acts_LMD
    res["majority_error"] = _majority_errors(labels, gi, ti, rows)
    res["n_positions"] = {part: int(len(r)) for part, r in rows.items()}
    return res, keep


def _majority_errors(labels, gi, ti, rows) -> dict:
    """Majority class per square (from the fit rows) on the test rows: occupied and all squares."""
    out = {}
    for lab in LABELINGS:
        y = labels[lab][gi, ti]
        maj = np.array([np.bincount(y[rows["fit"]][:, s], minlength=3).argmax() for s in range(64)])
        yt = y[rows["test"]]
        wrong = yt != maj[None]
        out[lab] = {"occupied": float(wrong[yt > 0].mean()), "all": float(wrong.mean())}
    return out


# ---------------------------------------------------------------------------------------------
# probe-based intervention


def _bits(mask_64: np.ndarray) -> np.ndarray:
    """bool [..., 64] -> uint64 bitboards [...]."""
    return np.packbits(mask_64.astype(np.uint8), axis=-1, bitorder="little").view("<u8")[..., 0]


def pick_edits(games_NT: np.ndarray, labels: dict, game_pool: np.ndarray, n: int, seed: int):
    """Distinct (game, position, square) cases from the games ``game_pool``: one occupied square each
    whose mine <-> theirs flip changes the set of legal moves (legal moves of the edited board from
    the engine). Returns dict of arrays: game, pos, square, src, dst, legal_orig [n, 64], legal_edit."""
    rng = np.random.default_rng([seed, 5])
    rel, legal = labels["relative"], labels["legal"]
    rows, seen = [], set()
    for _ in range(50 * n):
        if len(rows) == n:
            break
        g = int(rng.choice(game_pool))
        length = int((games_NT[g] >= 0).sum())
        if length < 12:
            continue
        t = int(rng.integers(5, length - 1))
        if not legal[g, t].any():
            continue
        board = rel[g, t]
        s = int(rng.choice(np.flatnonzero(board > 0)))
        if (g, t, s) in seen:
            continue
        edited = board.copy()
        edited[s] = 3 - board[s]  # 1 <-> 2
        new_legal = O._squares_from_bits(O._legal_np(_bits(edited == 1)[None], _bits(edited == 2)[None]))[0]
        new_legal = new_legal.astype(bool)
        if not new_legal.any() or (new_legal == legal[g, t]).all():
            continue
        seen.add((g, t, s))
        rows.append((g, t, s, int(board[s]), int(edited[s]), legal[g, t], new_legal))
    if len(rows) < n:
        raise RuntimeError(f"found only {len(rows)} of {n} flippable positions in {len(game_pool)} games")
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
    errs = []
    for sc, legal in zip(logits_BV[:, 1:], legal_B64):
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


def edit_cases(logits, base, e) -> dict:
    """Per-case numbers [B] of one condition. ``legal_edited`` / ``legal_original``: share of the
    top-N predicted moves legal on that board (N = its number of legal moves); ``follows``: share
    of the moves whose legality the flip changes that moved the right way (newly legal: log-prob
    up, newly illegal: down; 0.5 = no preference); ``dlogp_gained`` / ``dlogp_lost``: mean change."""
    gained, lost = e["legal_edit"] & ~e["legal_orig"], e["legal_orig"] & ~e["legal_edit"]
    with np.errstate(invalid="ignore"):  # -inf - -inf on the never-legal centre squares, unused
        d = _move_logp(logits) - _move_logp(base)
    d = np.where(gained | lost, d, 0.0)
    good = (gained & (d > 0)) | (lost & (d < 0))
    tie = (gained | lost) & (d == 0)  # unchanged log-prob (no edit): half credit
    n_ch = (gained | lost).sum(1)
    nan_mean = lambda m: np.where(m.sum(1) > 0, (d * m).sum(1) / np.maximum(m.sum(1), 1), np.nan)  # noqa: E731
    top1 = O.TOKEN_TO_MOVE[1:][np.argmax(logits[:, 1:], -1)]
    rows = np.arange(len(top1))
    return {"legal_edited": 1 - topn_errors(logits, e["legal_edit"]) / e["legal_edit"].sum(1),
            "legal_original": 1 - topn_errors(logits, e["legal_orig"]) / e["legal_orig"].sum(1),
            "top1_legal_edited": e["legal_edit"][rows, top1].astype(float),
            "follows": (good.sum(1) + 0.5 * tie.sum(1)) / n_ch,
            "dlogp_gained": nan_mean(gained), "dlogp_lost": nan_mean(lost)}


def _ci(values) -> dict:
    v = np.asarray(values, float)
    return bootstrap_ci(v[np.isfinite(v)])


def intervention_study(cfg: Config, params, games_NT, labels, probe, game_pool, n_edit: int, seed: int,
                       margin: float, starts=None) -> dict:
    """Flip one square's represented state (mine <-> theirs) at resid_post of layers start..L-1 and
    measure how the next-move predictions follow the edited board; control: an edit of the same
    norm along a random direction. Per-case numbers of the headline start layer are kept."""
    e = pick_edits(games_NT, labels, game_pool, n_edit, seed)
    tokens = O.encode(games_NT[e["game"]]).astype(np.int32)
    B = len(tokens)
    rows = np.arange(B)
    base = np.asarray(forward(cfg, params, tokens))[rows, e["pos"]]
    r_BD = np.random.default_rng([seed, 11]).normal(size=(B, cfg.d_model)).astype(np.float32)
    p = {"w": jnp.asarray(probe.params["w"]), "b": jnp.asarray(probe.params["b"]),
         "pos": jnp.asarray(e["pos"]), "square": jnp.asarray(e["square"]), "dst": jnp.asarray(e["dst"]),
         "margin": jnp.float32(margin), "random": jnp.asarray(r_BD / np.linalg.norm(r_BD, axis=-1, keepdims=True))}
    res = {"n": B, "margin": margin, "headline_start_layer": HEADLINE_START,
           "mean_legal_orig": float(e["legal_orig"].sum(1).mean()),
           "mean_legal_edit": float(e["legal_edit"].sum(1).mean()),
           "mean_legal_changed": float((e["legal_orig"] != e["legal_edit"]).sum(1).mean()),
           "by_start_layer": []}
    none = edit_cases(base, base, e)
    for start in (range(cfg.n_layers) if starts is None else starts):
        layers = jnp.arange(start, cfg.n_layers)
        iv = Custom(site=SITE, fn=_probe_edit, layer=layers, params=p)
        logits, cache = run_with_cache(cfg, params, tokens, sites=[SITE], interventions=iv)
        logits = np.asarray(logits)[rows, e["pos"]]
        # does the last layer's probe read the edited square as intended after the edit?
        last = jnp.asarray(np.asarray(cache[SITE])[-1][rows, e["pos"]])
        read = np.asarray(jnp.einsum("bd,dbc->bc", last, p["w"][-1][:, p["square"], :])
                          + p["b"][-1][p["square"]]).argmax(-1)
        ctrl = np.asarray(forward(cfg, params, tokens, interventions=Custom(
            site=SITE, fn=_random_edit, layer=layers, params=p)))[rows, e["pos"]]
        cases = {"none": none, "probe": edit_cases(logits, base, e), "random": edit_cases(ctrl, base, e)}
        row = {"start_layer": int(start), "probe_reads_edit": float((read == e["dst"]).mean()),
               **{c: {k: _ci(v) for k, v in cases[c].items()} for c in EDITS}}
        res["by_start_layer"].append(row)
        if start == HEADLINE_START:
            res["cases"] = {c: {k: np.round(v, 5).tolist() for k, v in cases[c].items()} for c in EDITS}
    return res


# ---------------------------------------------------------------------------------------------
# the predicates the tests assert


def probe_effect_holds(per_seed: dict, labeling: str = "relative", margin: float = 0.02) -> bool:
    """On every seed and for both probe kinds, the trained model's occupied-square probe error is
    below the untrained model's by ``margin`` with disjoint 95% intervals (bootstrap over test games)."""
    for r in per_seed.values():
        for kind in KINDS:
            t, u = r["probes"][labeling][kind]["trained"]["occupied"], r["probes"][labeling][kind]["untrained"]["occupied"]
            if not (t["value"] < u["value"] - margin and t["hi"] < u["lo"]):
                return False
    return True


def edit_effect_holds(per_seed: dict, margin: float = 0.1) -> bool:
    """On every seed, the probe edit's ``follows`` share beats the norm-matched random edit's on the
    same cases by ``margin`` with a paired 95% interval above 0."""
    for r in per_seed.values():
        c = r["edit"]["cases"]
        d = paired_bootstrap_diff(c["probe"]["follows"], c["random"]["follows"])
        if not (d["value"] > margin and d["lo"] > 0):
            return False
    return True


# ---------------------------------------------------------------------------------------------
# one seed, summaries, tables, figures


def run_model(cfg: Config, size: dict, seed: int, probe_seeds, work: Path, margin: float) -> list[dict]:
    """Train model ``seed``, measure its legal-move rate on held-out games, then for each probe seed
    (its own game split, probe initialisation and edit cases) the probes and the edits."""
    params, rows, train_s, start_step = train(cfg, size, work / f"seed{seed}", seed)
    games = O.generate_games(size["n_probe_games"], seed=seed + 1000)  # a seed training never used
    labels = board_labels(games)
    tokens = O.encode(games).astype(np.int32)
    untrained = init_params(cfg, jax.random.PRNGKey(seed + 7))
    legal = {name: bootstrap_ci(per_game_legal_rate(cfg, prm, tokens, labels["legal"]))
             for name, prm in (("trained", params), ("untrained", untrained))}
    out = []
    for ps in probe_seeds:
        t2 = time.perf_counter()
        split = game_split(len(games), ps)
        probe_res, lin = probe_study(cfg, params, untrained, games, labels, split, size, ps)
        t3 = time.perf_counter()
        pool = np.concatenate([split["select"], split["test"]])  # games the probe was not fitted on
        edit = intervention_study(cfg, params, games, labels, lin, pool, size["n_edit"], ps, margin,
                                  size["edit_starts"])
        out.append({"model_seed": int(seed), "probe_seed": int(ps),
                    "train": {"rows": rows, "final_loss": rows[-1]["loss"], "resumed_from_step": int(start_step)},
                    "legal_rate": legal, "probes": probe_res, "edit": edit,
                    "seconds": {"train": round(train_s, 1), "probes": round(t3 - t2, 1),
                                "edit": round(time.perf_counter() - t3, 1)}})
    return out


def _across(per_seed: dict, get) -> dict:
    """Seed summary (mean, t-interval over seeds) of ``get(seed result)``; with one seed, its bootstrap CI."""
    vals = [get(r) for r in per_seed.values()]
    if len(vals) == 1:
        return dict(vals[0], seeds=1)
    return dict(seed_summary([v["value"] for v in vals]), seeds=len(vals))


def summarise(per_seed: dict) -> dict:
    per_model = {str(r["model_seed"]): r for r in reversed(list(per_seed.values()))}  # one run per model
    s = {"legal_rate": {m: _across(per_model, lambda r, m=m: r["legal_rate"][m]) for m in ("trained", "untrained")},
         "probes": {lab: {kind: {cond: {part: _across(per_seed, lambda r, a=(lab, kind, cond, part):
                                                      r["probes"][a[0]][a[1]][a[2]][a[3]])
                                        for part in ("occupied", "all")}
                                 for cond in CONDITIONS} for kind in KINDS} for lab in LABELINGS}}
    first = next(iter(per_seed.values()))["edit"]
    head = [i for i, row in enumerate(first["by_start_layer"]) if row["start_layer"] == HEADLINE_START][0]
    s["edit"] = {c: {k: _across(per_seed, lambda r, c=c, k=k: r["edit"]["by_start_layer"][head][c][k])
                     for k in first["by_start_layer"][head][c]} for c in EDITS}
    s["edit_follow_diff"] = {str(k): paired_bootstrap_diff(r["edit"]["cases"]["probe"]["follows"],
                                                           r["edit"]["cases"]["random"]["follows"])
                             for k, r in per_seed.items()}
    return s


def tables(per_seed: dict, summ: dict, size: dict) -> dict:
    """Markdown tables of the README (every number from this run)."""
    out = {}
    rows = []
    for lab in LABELINGS:
        for kind in KINDS:
            p = summ["probes"][lab][kind]
            layers = "/".join(str(r["probes"][lab][kind]["trained"]["layer"]) for r in per_seed.values())
            rows.append(["/".join(STATE_NAMES[lab]), kind, layers] +
                        [fmt_ci(p[c]["occupied"], 3) for c in CONDITIONS] +
                        [fmt_ci(p["trained"]["all"], 3), fmt_ci(p["untrained"]["all"], 3)])
    maj = [next(iter(per_seed.values()))["probes"]["majority_error"][lab] for lab in LABELINGS]
    rows.append(["majority class per square (seed 0)", "–", "–", f"{maj[0]['occupied']:.3f} / {maj[1]['occupied']:.3f}",
                 "", "", f"{maj[0]['all']:.3f} / {maj[1]['all']:.3f}", ""])
    out["probes.md"] = markdown_table(
        ["labels", "probe", "layer (per seed)", "occupied squares: trained", "untrained model", "shuffled labels",
         "all squares: trained", "untrained model"], rows)
    lr = summ["legal_rate"]
    out["legal.md"] = markdown_table(["model", "top-1 legal-move rate (held-out games)"],
                                     [["trained", fmt_ci(lr["trained"], 3)], ["untrained", fmt_ci(lr["untrained"], 3)]])
    e = summ["edit"]
    names = {"none": "no edit", "probe": "probe edit", "random": "random direction, same norm"}
    out["edit.md"] = markdown_table(
        ["condition", "top-N legal on edited board", "top-N legal on original board", "top-1 legal on edited board",
         "changed moves that follow the edit", "Δlog p newly legal", "Δlog p newly illegal"],
        [[names[c], fmt_ci(e[c]["legal_edited"], 3), fmt_ci(e[c]["legal_original"], 3),
          fmt_ci(e[c]["top1_legal_edited"], 3), fmt_ci(e[c]["follows"], 3),
          fmt_ci(e[c]["dlogp_gained"]), fmt_ci(e[c]["dlogp_lost"])] for c in EDITS])
    lrows = []
    for k, r in per_seed.items():
        for row in r["edit"]["by_start_layer"]:
            lrows.append([k, f"{row['start_layer']}–{size['n_layers'] - 1}", f"{row['probe_reads_edit']:.2f}",
                          fmt_ci(row["probe"]["follows"], 3), fmt_ci(row["random"]["follows"], 3),
                          fmt_ci(row["probe"]["legal_edited"], 3), fmt_ci(row["random"]["legal_edited"], 3)])
    out["edit_by_layer.md"] = markdown_table(
        ["seed", "edited layers", "probe reads the edit", "follows (probe)", "follows (random)",
         "top-N legal on edited (probe)", "(random)"], lrows)
    return out


def figures(per_seed: dict, size: dict):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(1, 2, figsize=(10, 3.5))
    for k, r in per_seed.items():
        st = [row["step"] for row in r["train"]["rows"]]
        ax[0].plot(st, [row["loss"] for row in r["train"]["rows"]], label=f"seed {k}")
        ax[1].plot(st, [row.get("eval_legal_rate", np.nan) for row in r["train"]["rows"]], label=f"seed {k}")
    ax[0].set_title("train loss"), ax[1].set_title("top-1 legal-move rate (held out)")
    for a in ax:
        a.set_xlabel("step"), a.legend(fontsize=7)
    fig.tight_layout()
    fig2, ax2 = plt.subplots(1, 2, figsize=(11, 3.8), sharey=True)
    L = size["n_layers"]
    for a, lab in zip(ax2, LABELINGS):
        for cond, style in (("trained", "-"), ("untrained", "--"), ("shuffled", ":")):
            for kind, color in (("linear", "C0"), ("mlp", "C1")):
                err = np.mean([r["probes"][lab][kind][cond]["test_occupied_by_layer"] for r in per_seed.values()], 0)
                a.plot(range(L), err, style, color=color, marker="o", label=f"{kind}, {cond}")
        a.set_title(f"{lab}: " + " / ".join(STATE_NAMES[lab])), a.set_xlabel(f"layer ({SITE})")
        a.set_xticks(range(L))
    ax2[0].set_ylabel("probe error on occupied squares (test games)")
    ax2[1].legend(fontsize=7)
    fig2.tight_layout()
    return fig, fig2


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="2 layers, 300 steps, one seed (results/quick/)")
    ap.add_argument("--seeds", type=int, nargs="+", default=None, help="model seeds (default: 0)")
    ap.add_argument("--probe-seeds", type=int, nargs="+", default=None,
                    help="probe seeds per model: game split, probe init, edit cases (default: 0 1 2 full, 0 quick)")
    ap.add_argument("--steps", type=int, default=None, help="override the training steps")
    ap.add_argument("--margin", type=float, default=4.0, help="probe logit margin the intervention enforces")
    ap.add_argument("--out", default=None, help="results base folder (default: this folder's results/)")
    ap.add_argument("--workdir", default=None,
                    help="checkpoints + metrics.jsonl (default: <repo>/runs/othello, or <out>/work with --out)")
    ap.add_argument("--resume", action="store_true", help="resume the training runs found in --workdir")
    args = ap.parse_args(argv)
    mode = "quick" if args.quick else "full"
    size = dict(SIZES[mode])
    if args.steps is not None:
        if args.steps < 1:
            raise ValueError(f"--steps must be >= 1, got {args.steps}")
        size["steps"] = args.steps
    for name in ("seeds", "probe_seeds"):
        val = getattr(args, name)
        if val is not None:
            if len(set(val)) != len(val) or min(val) < 0:
                raise ValueError(f"--{name.replace('_', '-')} must be distinct integers >= 0, got {val}")
            size[name] = tuple(val)
    if not args.margin > 0:
        raise ValueError(f"--margin must be > 0, got {args.margin}")
    rec = Record(HERE, quick=args.quick, model=f"Othello-GPT {size['n_layers']} layers x d_model {size['d_model']}, "
                 "trained here", seeds=[p for _ in size["seeds"] for p in size["probe_seeds"]],
                 argv=["experiments/othello/run.py"] + list(sys.argv[1:] if argv is None else argv),
                 out=None if args.out is None else Path(args.out))
    work = (Path(args.workdir) if args.workdir else
            (HERE.parents[1] / "runs" / "othello" if args.out is None else Path(args.out) / "work")) / mode
    if work.exists() and not args.resume:
        shutil.rmtree(work)
    cfg = model_config(size["n_layers"], size["d_model"], size["n_heads"])
    per_seed = {}  # one entry per (model seed, probe seed) run, keyed "0", "1", ...
    for seed in size["seeds"]:
        for r in run_model(cfg, size, seed, size["probe_seeds"], work, args.margin):
            per_seed[str(len(per_seed))] = r
            print(json.dumps({"model_seed": seed, "probe_seed": r["probe_seed"], "legal": r["legal_rate"]["trained"]["value"],
                              "occ_err_rel_mlp": {c: r["probes"]["relative"]["mlp"][c]["occupied"]["value"]
                                                  for c in CONDITIONS}, "seconds": r["seconds"]}), flush=True)
    summ = summarise(per_seed)
    rec["settings"] = {k: list(v) if isinstance(v, tuple) else v for k, v in size.items()} | {"margin": args.margin,
                                                                                              "split": list(SPLIT)}
    rec["per_seed"] = per_seed
    rec["summary"] = summ
    rec["probe_effect_holds"] = probe_effect_holds(per_seed)
    rec["edit_effect_holds"] = edit_effect_holds(per_seed)
    for name, md in tables(per_seed, summ, size).items():
        rec.table(name, md)
    fig, fig2 = figures(per_seed, size)
    rec.figure("training.png", fig)
    rec.figure("probes.png", fig2)
    path = rec.save()
    if not args.quick:
        sync_readme(HERE / "README.md", rec.out)
    print(rec.tables["probes.md"] + "\n" + rec.tables["edit.md"])
    print(f"probe effect holds: {rec['probe_effect_holds']}, edit effect holds: {rec['edit_effect_holds']}; "
          f"wrote {path}", flush=True)
    return rec


if __name__ == "__main__":
    main()
