"""Neuron explanations (Bills et al. 2023, "Language models can explain neurons in language models"):
explain a neuron from its top-activating excerpts, simulate its activations from the explanation
alone, and score the explanation by the correlation of simulated and true activations.

The pieces are plain values and plain callables, so any model (or an API client) can play a role:

* ``NeuronRecord``: one excerpt's token strings and the neuron's activation at each, with the
  ``scale`` (the neuron's max over its top excerpts) that maps activations to the paper's 0..10.
* ``Explainer = (records) -> str``: the explanation, the completion of "the main thing this
  neuron does is find". ``Simulator = (explanation, [token strings per excerpt]) -> [float arrays]``:
  a predicted activation per token. An external client is a function of the same shape, e.g.
  ``lambda recs: call_api(explainer_messages(recs))`` that returns the reply's text, and a simulator
  that sends ``simulator_messages`` per excerpt and returns one number per token.
* ``LMExplainer`` / ``LMSimulator``: an instruct model of this library with its chat template. The
  simulator is the paper's "all at once" one: each token is a line ``token<TAB>unknown``; one forward
  pass reads, at every tab, the distribution over the digit tokens and takes its expected value.
  Digits 0..9 are single tokens in every tokenizer we use while "10" is two, so the simulator's own
  scale is 0..9 (the score is a correlation, so the scale does not matter).
* ``TokenLookupExplainer`` / ``lookup_simulator``: the baseline whose explanation is a table token
  -> mean normalised activation on the explanation excerpts (JSON text), simulated by lookup.
* ``sample_excerpts``: the paper's split (top excerpts by max activation divided between
  explanation and scoring, random excerpts for scoring, disjoint random ones for revision).
* ``score``: Pearson correlation over the concatenated excerpts; ``nan`` when either side is
  constant. ``mean_score`` counts a ``nan`` as 0 (an explanation that predicts nothing explains nothing).
* ``false_positives`` and ``revise``: one revision round, shown excerpts where the simulation fires
  and the neuron does not.
* ``records_html``: the excerpts coloured by activation beside explanation and score.
"""

from __future__ import annotations

import functools
import html
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from ..core import model as M
from ..core.handle import require_model
from ..io.artifacts import atomic_write_text

SCALE_MAX = 10  # the paper's activation scale: integers 0..10
SIM_DIGITS = tuple(str(d) for d in range(10))  # the simulator's scale: single-token digits 0..9
PREFIX = "the main thing this neuron does is find"
PLACEHOLDER = "unknown"

Explainer = Callable[[Sequence["NeuronRecord"]], str]
Simulator = Callable[[str, Sequence[Sequence[str]]], list]


# ---------------------------------------------------------------------------------------------
# records and sampling


@dataclass(frozen=True)
class NeuronRecord:
    """One excerpt: ``tokens`` (the text of each token) and the neuron's ``activations`` [n] there;
    ``scale`` is the activation that maps to 10 (the neuron's max over its top excerpts)."""

    tokens: tuple
    activations: np.ndarray
    scale: float = 1.0
    meta: dict = field(default_factory=dict, compare=False)

    def __post_init__(self):
        a = np.asarray(self.activations, np.float32)
        if a.ndim != 1 or len(a) != len(self.tokens) or len(a) == 0:
            raise ValueError(f"a record needs one activation per token; got {len(self.tokens)} tokens and "
                             f"activations of shape {a.shape}")
        if not (np.isfinite(self.scale) and self.scale > 0):
            raise ValueError(f"scale must be a positive finite number, got {self.scale!r}")
        object.__setattr__(self, "tokens", tuple(str(t) for t in self.tokens))
        object.__setattr__(self, "activations", a)

    def normalized(self, top: int = SCALE_MAX) -> np.ndarray:
        return normalize(self.activations, self.scale, top)

    def next_token(self) -> "NeuronRecord":
        """The paper's next-token variant: each activation paired with the token after it."""
        if len(self.tokens) < 2:
            raise ValueError("the next-token variant needs excerpts of >= 2 tokens")
        return NeuronRecord(self.tokens[1:], self.activations[:-1], self.scale, dict(self.meta))


def normalize(acts, scale: float, top: int = SCALE_MAX) -> np.ndarray:
    """Activations as integers 0..top: negative -> 0, ``scale`` (and above) -> top, rounded."""
    if not (np.isfinite(scale) and scale > 0):
        raise ValueError(f"scale must be a positive finite number, got {scale!r}")
    a = np.asarray(acts, np.float64)
    return np.rint(np.clip(a / scale, 0.0, 1.0) * top).astype(np.int32)


def sample_excerpts(max_N, *, n_explain: int = 5, n_top_score: int = 5, n_random_score: int = 5,
                    n_random_revise: int = 10, seed: int = 0) -> dict:
    """Excerpt indices as the paper samples them, from each excerpt's max activation ``max_N``.

    The ``n_explain + n_top_score`` excerpts with the highest max are shuffled (``seed``) and split:
    "explain" (shown to the explainer) and "top" (scoring); "random" (scoring) and "revise" (the
    revision's false-positive search) are drawn uniformly from the rest, disjoint. No index is in
    two sets. Ties at the top are broken by the lower index."""
    m = np.asarray(max_N, np.float64)
    sizes = dict(n_explain=n_explain, n_top_score=n_top_score, n_random_score=n_random_score,
                 n_random_revise=n_random_revise)
    bad = {k: v for k, v in sizes.items() if isinstance(v, bool) or not isinstance(v, (int, np.integer)) or v < 0}
    if bad or n_explain < 1 or n_top_score < 1:
        raise ValueError(f"set sizes must be integers >= 0 (n_explain, n_top_score >= 1); got {sizes}")
    if m.ndim != 1 or not np.isfinite(m).all():
        raise ValueError(f"max_N must be a 1-D array of finite numbers, got shape {m.shape}")
    need = sum(sizes.values())
    if need > m.size:
        raise ValueError(f"{m.size} excerpts cannot give {need} disjoint ones ({sizes})")
    rng = np.random.default_rng(seed)
    n_top = n_explain + n_top_score
    order = np.lexsort((np.arange(m.size), -m))  # max descending, then index
    top = rng.permutation(order[:n_top])
    rest = rng.permutation(order[n_top:])
    return {"explain": np.sort(top[:n_explain]), "top": np.sort(top[n_explain:]),
            "random": np.sort(rest[:n_random_score]),
            "revise": np.sort(rest[n_random_score:n_random_score + n_random_revise])}


# ---------------------------------------------------------------------------------------------
# scoring


def score(simulated, true) -> float:
    """Pearson correlation of simulated and true activations over the concatenated excerpts; ``nan``
    when either is constant (no correlation is defined)."""
    s = np.concatenate([np.asarray(x, np.float64).ravel() for x in simulated])
    t = np.concatenate([np.asarray(x, np.float64).ravel() for x in true])
    if s.shape != t.shape:
        raise ValueError(f"simulated and true activations differ in length: {s.size} vs {t.size}")
    if s.size < 2 or np.ptp(s) == 0 or np.ptp(t) == 0:
        return float("nan")
    s, t = s - s.mean(), t - t.mean()
    return float(np.clip((s @ t) / np.sqrt((s @ s) * (t @ t)), -1.0, 1.0))


def nan_as_zero(scores) -> np.ndarray:
    """Scores with ``nan`` (a constant simulation) counted as 0, the aggregation rule."""
    return np.nan_to_num(np.asarray(scores, np.float64), nan=0.0)


def mean_score(scores) -> float:
    return float(nan_as_zero(scores).mean())


def simulate_and_score(simulator: Simulator, explanation: str, records: Sequence[NeuronRecord]) -> tuple:
    """(score, simulated arrays) of ``explanation`` on ``records``."""
    sims = simulator(explanation, [r.tokens for r in records])
    _check_sims(sims, records)
    return score(sims, [r.activations for r in records]), sims


def _check_sims(sims, records):
    if len(sims) != len(records) or any(len(s) != len(r.tokens) for s, r in zip(sims, records)):
        raise ValueError("a simulator must return one array per excerpt with one value per token")


# ---------------------------------------------------------------------------------------------
# the token-lookup baseline


def token_table(records: Sequence[NeuronRecord]) -> dict:
    """Mean normalised (0..10) activation of each token text over ``records``."""
    sums, counts = {}, {}
    for r in records:
        for t, v in zip(r.tokens, r.normalized()):
            sums[t] = sums.get(t, 0.0) + float(v)
            counts[t] = counts.get(t, 0) + 1
    return {t: sums[t] / counts[t] for t in sums}


class TokenLookupExplainer:
    """The baseline explainer: the explanation is ``token_table`` as JSON text."""

    def __call__(self, records: Sequence[NeuronRecord]) -> str:
        return json.dumps(token_table(records), sort_keys=True)


def lookup_simulator(explanation: str, excerpts: Sequence[Sequence[str]]) -> list:
    """Simulate a token-lookup explanation: each token's table value, 0 for unseen tokens."""
    try:
        table = json.loads(explanation)
    except json.JSONDecodeError as e:
        raise ValueError(f"a token-lookup explanation is a JSON object of token -> value; got {explanation[:60]!r}") from e
    return [np.array([float(table.get(t, 0.0)) for t in toks], np.float32) for toks in excerpts]


def shuffle_table(explanation: str, seed: int = 0) -> str:
    """The control of the lookup baseline: the same values dealt to the table's tokens at random."""
    table = json.loads(explanation)
    keys = sorted(table)
    vals = np.array([table[k] for k in keys], np.float64)
    vals = vals[np.random.default_rng(seed).permutation(len(vals))]
    return json.dumps(dict(zip(keys, vals.tolist())), sort_keys=True)


# ---------------------------------------------------------------------------------------------
# prompts


SIM_EXAMPLE = ((" I", 0), (" fed", 0), (" my", 0), (" dog", 9), (" and", 0), (" cat", 7), (".", 0))


def _line(t: str, v) -> str:
    return f"{t.replace(chr(10), '⏎')}\t{v}"


def excerpt_window(r: NeuronRecord, before: int = 12, after: int = 3) -> tuple:
    """The part of an excerpt shown to the explainer: ``before`` tokens up to its max, ``after`` past it."""
    i = int(np.argmax(r.activations))
    a, b = max(0, i - before), min(len(r.tokens), i + after + 1)
    return r.tokens[a:b], r.normalized()[a:b]


def explainer_messages(records: Sequence[NeuronRecord], *, window: tuple = (12, 3)) -> list:
    """Chat messages asking for an explanation: the excerpts (each cut to a window around its max)
    as ``token<TAB>activation`` lines and the tokens with the highest activations; the answer is to
    complete ``PREFIX``. (No worked example: SmolLM2-135M copied the example's answer verbatim.)"""
    intro = ("We study one neuron of a language model. Below are text excerpts; each line is a token, a tab, "
             f"and the neuron's activation on that token, from 0 to {SCALE_MAX}. Say what the tokens with high "
             "activations have in common, in a few words.\n\n")
    parts = []
    best: dict = {}
    for k, r in enumerate(records):
        toks, vals = excerpt_window(r, *window)
        parts.append(f"Excerpt {k + 1}:\n" + "\n".join(_line(t, int(v)) for t, v in zip(toks, vals)))
        for t, v in zip(r.tokens, r.normalized()):
            if v > 0:
                best[t.strip() or t] = max(best.get(t.strip() or t, 0), int(v))
    top = sorted(best, key=lambda t: (-best[t], t))[:8]
    user = intro + "\n\n".join(parts) + "\n\nTokens with the highest activations: " + ", ".join(top)
    return [{"role": "user", "content": user}]


def revision_messages(explanation: str, false_pos: Sequence[NeuronRecord], records: Sequence[NeuronRecord], *,
                      window: tuple = (12, 3)) -> list:
    """Chat messages asking to revise ``explanation`` after seeing excerpts where it predicts
    activity the neuron does not have (``false_pos``), beside the top excerpts again."""
    msgs = explainer_messages(records, window=window)
    fp = []
    for k, r in enumerate(false_pos):
        fp.append(f"Excerpt {k + 1}:\n" + "\n".join(_line(t, int(v)) for t, v in zip(r.tokens[:24], r.normalized()[:24])))
    msgs[-1] = {"role": "user", "content": msgs[-1]["content"] +
                f"\n\nA first explanation said the neuron finds {explanation}. But the neuron stays near 0 on these "
                "excerpts, where that explanation predicts it fires:\n\n" + "\n\n".join(fp) +
                "\n\nWrite a better explanation that fits the first excerpts but not these."}
    return msgs


def simulator_messages(explanation: str) -> list:
    """Chat messages before the simulated lines: the task, a worked example and the explanation."""
    ex = "\n".join(_line(t, v) for t, v in SIM_EXAMPLE)
    user = ("A neuron of a language model fires on some tokens. Given what it looks for, predict its activation "
            "on each token of a text, from 0 (does not fire) to 9 (fires most). Most tokens are 0.\n\n"
            f"Example. The neuron finds the words dog and cat.\n{ex}\n\n"
            f"Now: the neuron finds {explanation.strip()}\nWrite each token, a tab, and its activation.")
    return [{"role": "user", "content": user}]


def _clean(text: str) -> str:
    text = text.strip().split("\n")[0]
    return text[:text.index(".") + 1] if "." in text else text


# ---------------------------------------------------------------------------------------------
# a model of this library as explainer and simulator


class _Chat:
    """Tokenising chat messages with a tokenizer (its chat template when it has one)."""

    def __init__(self, model, tokenizer=None):
        self.model = require_model(model, type(self).__name__)
        self.tok = tokenizer if tokenizer is not None else model.tokenizer
        if self.tok is None:
            raise ValueError(f"model {model.name!r} has no tokenizer; pass tokenizer=")

    def enc(self, text: str) -> list:
        return list(self.tok(text, add_special_tokens=False)["input_ids"])

    def one(self, text: str) -> int:
        ids = self.enc(text)
        if len(ids) != 1:
            raise ValueError(f"{text!r} must be one token of this tokenizer; it is {ids}")
        return ids[0]

    def chat_ids(self, messages, assistant_prefix: str = "") -> list:
        if getattr(self.tok, "chat_template", None):
            text = self.tok.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
        else:
            text = "".join(f"{m['role']}: {m['content']}\n" for m in messages) + "assistant: "
        return self.enc(text + assistant_prefix)


def _bucket(n: int, step: int) -> int:
    return -(-n // step) * step


@functools.partial(jax.jit, static_argnums=(0,))
def _digit_probs(cfg, params, tokens_BT, mask_BT, read_BP, digit_K):
    """Probabilities of the digit tokens (renormalised among them) at each read position [B, P, K]."""
    B, T = tokens_BT.shape
    idx = jnp.broadcast_to(jnp.arange(T, dtype=jnp.int32)[None], (B, T))
    ctx = M.make_ctx(cfg, idx, mask_BT, idx, mask_BT, rope_pos_BT=idx)
    x = M.embed(cfg, params, tokens_BT, idx)
    x, _, _ = M.run_layers(cfg, params, x, ctx, (), (), ())
    x_BPD = jnp.take_along_axis(x, read_BP[:, :, None], axis=1)
    logits = M.final_logits(cfg, params, x_BPD).astype(jnp.float32)[..., digit_K]
    return jax.nn.softmax(logits, axis=-1)


class LMSimulator(_Chat):
    """The paper's all-at-once simulator on an instruct model: the chat prompt of
    ``simulator_messages``, then (as the assistant's reply) one line ``token<TAB>unknown`` per
    excerpt token; at each tab the model's distribution over the digits 0..9 gives the expected
    activation. Excerpts are scored ``batch_size`` at a time, right-padded to a multiple of
    ``bucket`` tokens, so a whole run compiles one program per padded length."""

    def __init__(self, model, *, tokenizer=None, batch_size: int = 8, bucket: int = 128, max_tokens: int = 64):
        super().__init__(model, tokenizer)
        if batch_size < 1 or bucket < 1 or max_tokens < 1:
            raise ValueError(f"batch_size, bucket, max_tokens must be >= 1; got {batch_size}, {bucket}, {max_tokens}")
        self.batch_size, self.bucket, self.max_tokens = batch_size, bucket, max_tokens
        self.tab, self.nl = self.enc("\t"), self.enc("\n")
        self.slot = self.enc(PLACEHOLDER)
        self.digits = np.array([self.one(d) for d in SIM_DIGITS], np.int32)
        self.pad = self.nl[-1]

    def prompt(self, explanation: str, tokens: Sequence[str]) -> tuple:
        """(ids, read positions): the position of each token's tab, whose next token is the slot."""
        ids = self.chat_ids(simulator_messages(explanation))
        reads = []
        for t in tokens:
            ids += self.enc(t.replace("\n", "⏎")) + self.tab
            reads.append(len(ids) - 1)
            ids += self.slot + self.nl
        return ids, reads

    def simulate_many(self, jobs: Sequence[tuple]) -> list:
        """[(explanation, tokens of one excerpt)] -> expected activation (0..9) per token, batched."""
        prompts = [self.prompt(e, t) for e, t in jobs]
        for (_, t) in jobs:
            if not 1 <= len(t) <= self.max_tokens:
                raise ValueError(f"excerpts must have 1..{self.max_tokens} tokens, got {len(t)}")
        n_ctx = self.model.cfg.n_ctx
        out = [None] * len(prompts)
        order = np.argsort([len(p[0]) for p in prompts], kind="stable")  # similar lengths share a batch
        for s in range(0, len(order), self.batch_size):
            rows = order[s:s + self.batch_size]
            T = _bucket(max(len(prompts[i][0]) for i in rows), self.bucket)
            if T > n_ctx:
                raise ValueError(f"a simulator prompt of {T} tokens exceeds the model's n_ctx={n_ctx}")
            tok = np.full((self.batch_size, T), self.pad, np.int32)
            mask = np.zeros((self.batch_size, T), np.int32)
            read = np.zeros((self.batch_size, self.max_tokens), np.int32)
            for r, i in enumerate(rows):
                ids, reads = prompts[i]
                tok[r, :len(ids)], mask[r, :len(ids)], read[r, :len(reads)] = ids, 1, reads
            mask[len(rows):, 0] = 1  # filler rows: one real token each
            p = np.asarray(_digit_probs(self.model.cfg, self.model.params, jnp.asarray(tok), jnp.asarray(mask),
                                        jnp.asarray(read), jnp.asarray(self.digits)))
            ev = p @ np.arange(len(SIM_DIGITS), dtype=np.float32)
            for r, i in enumerate(rows):
                out[i] = ev[r, :len(prompts[i][1])].astype(np.float32)
        return out

    def __call__(self, explanation: str, excerpts: Sequence[Sequence[str]]) -> list:
        return self.simulate_many([(explanation, t) for t in excerpts])


class LMExplainer(_Chat):
    """Explanations from an instruct model: greedy completion of ``PREFIX`` after
    ``explainer_messages`` (or ``revision_messages``), cut at the first newline or full stop."""

    def __init__(self, model, *, tokenizer=None, max_new_tokens: int = 20, batch_size: int = 8, bucket: int = 128):
        super().__init__(model, tokenizer)
        self.max_new_tokens, self.batch_size, self.bucket = max_new_tokens, batch_size, bucket
        stops = {self.enc("\n")[-1]}
        for name in ("eos_token_id",):
            if getattr(self.tok, name, None) is not None:
                stops.add(int(getattr(self.tok, name)))
        self.stops = sorted(stops)

    def generate_many(self, message_lists: Sequence[list]) -> list:
        from ..generate import generate

        prompts = [self.chat_ids(m, assistant_prefix="The main thing this neuron does is find") for m in message_lists]
        out = [None] * len(prompts)
        for s in range(0, len(prompts), self.batch_size):
            part = prompts[s:s + self.batch_size]
            T = _bucket(max(map(len, part)), self.bucket)
            tok = np.full((self.batch_size, T), self.stops[0], np.int32)
            mask = np.zeros((self.batch_size, T), np.int32)
            mask[:, -1] = 1
            for r, ids in enumerate(part):
                tok[r, T - len(ids):], mask[r, T - len(ids):] = ids, 1
            g = generate(self.model.cfg, self.model.params, tok, self.max_new_tokens, attention_mask=mask,
                         stop_tokens=self.stops, pad_token_id=self.stops[0])
            for r in range(len(part)):
                new = [int(t) for t, m in zip(g.tokens[r, T:], g.mask[r, T:]) if m and int(t) not in self.stops]
                out[s + r] = _clean(self.tok.decode(new))
        return out

    def explain_many(self, record_sets: Sequence[Sequence[NeuronRecord]]) -> list:
        return self.generate_many([explainer_messages(rs) for rs in record_sets])

    def revise_many(self, items: Sequence[tuple]) -> list:
        """[(explanation, false-positive records, top records)] -> revised explanations."""
        return self.generate_many([revision_messages(e, fp, rs) for e, fp, rs in items])

    def __call__(self, records: Sequence[NeuronRecord]) -> str:
        return self.explain_many([records])[0]

    def revise(self, explanation: str, false_pos: Sequence[NeuronRecord], records: Sequence[NeuronRecord]) -> str:
        return self.revise_many([(explanation, false_pos, records)])[0]


# ---------------------------------------------------------------------------------------------
# revision


def false_positives(simulated, records: Sequence[NeuronRecord], k: int = 3, *, sim_top: float = 9.0,
                    true_max: int = 1) -> list:
    """Indices of up to ``k`` excerpts where the simulation fires and the neuron does not: true
    normalised max <= ``true_max``, ranked by the simulation's max (as a share of ``sim_top``),
    highest first; excerpts whose simulation never rises above its own minimum are skipped."""
    cand = []
    for i, (s, r) in enumerate(zip(simulated, records)):
        s = np.asarray(s, np.float64)
        if r.normalized().max() <= true_max and np.ptp(s) > 0:
            cand.append((-float(s.max()) / sim_top, i))
    return [i for _, i in sorted(cand)[:k]]


def revise(explainer, explanation: str, false_positive_records: Sequence[NeuronRecord],
           records: Sequence[NeuronRecord] = ()) -> str:
    """One revision round: ``explainer.revise(explanation, false positives, top records)``. A plain
    callable explainer cannot revise: give it a ``revise`` method of that signature."""
    fn = getattr(explainer, "revise", None)
    if fn is None:
        raise TypeError(f"{type(explainer).__name__} has no revise(explanation, false_positives, records) method")
    return fn(explanation, list(false_positive_records), list(records))


# ---------------------------------------------------------------------------------------------
# HTML


def _bg(v: float) -> str:
    a = float(np.clip(v, 0.0, 1.0))
    return f"rgba(230, 120, 0, {a:.2f})"


def records_html(neurons: Sequence[dict], path, title: str = "Neuron explanations") -> Path:
    """A self-contained page (inline CSS, no scripts): per neuron (``{"name", "explanation",
    "score", "records", "simulated" (optional)}``), its explanation and score, then each excerpt
    coloured by the true normalised activation (and, if given, a second line by the simulation)."""
    esc = lambda t: html.escape(t) or "&middot;"  # noqa: E731
    blocks = []
    for n in neurons:
        sims = n.get("simulated")
        rows = []
        for j, r in enumerate(n["records"]):
            norm = r.normalized()
            spans = "".join(f'<span class="t" style="background:{_bg(v / SCALE_MAX)}" title="{int(v)}">{esc(t)}</span>'
                            for t, v in zip(r.tokens, norm))
            rows.append(f'<div class="x"><span class="lab">true</span>{spans}</div>')
            if sims is not None:
                s = np.asarray(sims[j], np.float64)
                top = max(float(s.max()), 1e-9)
                spans = "".join(f'<span class="t" style="background:{_bg(v / top)}" title="{v:.2f}">{esc(t)}</span>'
                                for t, v in zip(r.tokens, s))
                rows.append(f'<div class="x sim"><span class="lab">sim</span>{spans}</div>')
        sc = n.get("score")
        sc = "n/a" if sc is None or not np.isfinite(sc) else f"{sc:.2f}"
        blocks.append(f'<section><h3>{html.escape(str(n["name"]))}</h3><p class="e">explanation: '
                      f'<b>{html.escape(str(n["explanation"]))}</b> &mdash; score {sc}</p>' + "".join(rows) + "</section>")
    page = f"""<!DOCTYPE html>
<html><head><meta charset="utf-8"><title>{html.escape(title)}</title>
<style>
body {{ font-family: sans-serif; margin: 2em; max-width: 100%; }}
.x {{ font-family: monospace; font-size: 14px; line-height: 2; white-space: pre-wrap; overflow-wrap: anywhere;
      margin: 0.3em 0; border-left: 3px solid #ddd; padding-left: 0.5em; }}
.sim {{ border-left-color: #89c; }}
.lab {{ color: #888; font-size: 11px; margin-right: 0.6em; }}
.t {{ border-radius: 2px; }}
</style></head><body>
<h2>{html.escape(title)}</h2>
<p>Each excerpt is coloured by the neuron's activation (0..10 of its top-excerpt max; orange = high); a
"sim" line is the simulator's prediction (scaled to its own max). Hover a token for its value.</p>
{''.join(blocks)}
</body></html>
"""
    return atomic_write_text(Path(path), page)
