"""Crawling a language model's internal knowledge base (LMCRAWL; Cohen, Geva, Berant & Globerson 2023).

Starting from a seed entity, few-shot completion prompts ask the model for the objects of each
(subject, relation); several paraphrases and samples are voted on, "Don't know" answers count as
abstentions, and the objects of expandable relations become the subjects of the next hop. The
result is a small graph of (subject, relation, object) triples with their vote counts.

The model is reached through a plain text-completion callable (``Complete``), so any client can
stand in for it; ``LMComplete`` implements it with ``Model.generate``, one batched call per step.
"""

from __future__ import annotations

import html
import math
import re
import unicodedata
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, ClassVar

import numpy as np

from ..core.handle import require_model
from ..io.artifacts import atomic_write_text
from ..io.plots import save_drawing
from .result import Result

# Complete(prompts, n_samples, temperature, max_new_tokens, seed) -> one list of n_samples strings per prompt
Complete = Callable[..., list]

DONT_KNOW = "Don't know"
MODES = ("full", "greedy")
_ABSTAIN = {"dont know", "do not know", "i dont know", "i do not know", "unknown", "not sure", "no idea", "idk"}
_NONE = {"none", "no", "nothing", "no country", "no countries", "no neighbours", "no neighbors"}
_ARTICLE_RE = re.compile(r"^(the|a|an) ")
_SPLIT_RE = re.compile(r"\s*(?:,|;|/|&|\band\b)\s*")


# ---------------------------------------------------------------------------------------------
# relations and prompts


@dataclass(frozen=True)
class Relation:
    """One relation the crawl asks about: question ``paraphrases`` (``{x}`` = the subject), answered
    ``demos`` (subject, answer) and ``unknown`` subjects whose demonstrated answer is "Don't know".
    ``multi``: answers are lists to split; ``expand``: objects are entities crawled at the next hop."""

    name: str
    paraphrases: tuple
    demos: tuple
    unknown: tuple = ()
    multi: bool = False
    expand: bool = False

    def __post_init__(self):
        if not self.paraphrases or any("{x}" not in p for p in self.paraphrases):
            raise ValueError(f"relation {self.name!r}: every paraphrase needs the slot '{{x}}', got {self.paraphrases!r}")
        if not self.demos:
            raise ValueError(f"relation {self.name!r} needs at least one (subject, answer) demonstration")


_FICTIONAL = ("Zorvania", "Quelmar")  # invented countries: the model cannot know them

COUNTRY_RELATIONS = {
    "capital": Relation(
        "capital", ("What is the capital of {x}?", "Which city is the capital of {x}?",
                    "The capital city of {x} is called what?"),
        (("Japan", "Tokyo"), ("Kenya", "Nairobi"), ("Peru", "Lima")), _FICTIONAL),
    "continent": Relation(
        "continent", ("On which continent is {x}?", "Which continent is {x} part of?",
                      "{x} lies on which continent?"),
        (("Japan", "Asia"), ("Kenya", "Africa"), ("Peru", "South America")), _FICTIONAL),
    "currency": Relation(
        "currency", ("What is the currency of {x}?", "Which currency is used in {x}?",
                     "What money do people pay with in {x}?"),
        (("Japan", "Yen"), ("Kenya", "Kenyan shilling"), ("Peru", "Sol")), _FICTIONAL),
    "neighbour": Relation(
        "neighbour", ("Which countries border {x}?", "Which countries share a border with {x}?",
                      "What are the neighbouring countries of {x}?"),
        (("Kenya", "Ethiopia, Somalia, Tanzania, Uganda, South Sudan"), ("Japan", "None"),
         ("Peru", "Ecuador, Colombia, Brazil, Bolivia, Chile")), _FICTIONAL, multi=True, expand=True),
}


def object_prompt(relation: Relation, subject: str, paraphrase: int = 0, dont_know: bool = True) -> str:
    """The few-shot question/answer prompt for ``(subject, relation)`` in one phrasing; with
    ``dont_know`` the demonstrations include "Don't know" answers for unknowable subjects."""
    if not 0 <= paraphrase < len(relation.paraphrases):
        raise ValueError(f"relation {relation.name!r} has paraphrases 0..{len(relation.paraphrases) - 1}, "
                         f"got {paraphrase}")
    q = relation.paraphrases[paraphrase]
    demos = list(relation.demos)
    if dont_know:  # interleave: an abstention after the first demo, another at the end
        unknown = [(u, DONT_KNOW) for u in relation.unknown]
        demos = demos[:1] + unknown[:1] + demos[1:] + unknown[1:]
    shots = "".join(f"Q: {q.format(x=s)}\nA: {a}\n\n" for s, a in demos)
    return f"{shots}Q: {q.format(x=subject)}\nA:"


def relation_prompt(subject: str, relations: dict) -> str:
    """A few-shot prompt asking which of ``relations`` hold for ``subject`` (the paper's relation
    generation step, restricted to a known relation set)."""
    names = ", ".join(relations)
    shots = (f"Q: Which of these facts ({names}) does Japan have?\nA: {names}\n\n"
             f"Q: Which of these facts ({names}) does the number seven have?\nA: None\n\n")
    return f"{shots}Q: Which of these facts ({names}) does {subject} have?\nA:"


# ---------------------------------------------------------------------------------------------
# parsing and the vote


def normalize(text: str) -> str:
    """Comparable form of an entity name: accents stripped, lower case, punctuation dropped,
    whitespace collapsed, a leading article removed ("The Netherlands" -> "netherlands")."""
    t = unicodedata.normalize("NFKD", str(text))
    t = "".join(c for c in t if not unicodedata.combining(c)).lower().replace("'", "").replace("\u2019", "")
    t = re.sub(r"[^a-z0-9]+", " ", t).strip()
    return _ARTICLE_RE.sub("", t)


def is_abstention(text: str) -> bool:
    """True for "Don't know" and its variants (an answer that declines to name an object)."""
    t = normalize(text).rstrip(".")
    return t in _ABSTAIN or t == ""


def parse_answer(text: str, multi: bool = False) -> list | None:
    """Objects named by one completion (surface forms, de-duplicated by ``normalize``), or None for an
    abstention. ``multi`` splits lists ("France, Spain and Italy"); "None" is an empty list."""
    t = str(text).split("\n", 1)[0].strip().strip(".").strip()
    if is_abstention(t):
        return None
    if normalize(t) in _NONE:
        return []
    parts = _SPLIT_RE.split(t) if multi else [t]
    out, seen = [], set()
    for p in parts:
        p = p.strip().strip(".").strip()
        k = normalize(p)
        if k and k not in seen and k not in _NONE and not is_abstention(p):
            seen.add(k)
            out.append(p)
    return out


def vote(answers: list, min_share: float) -> dict:
    """Consistency vote over one query's answers (each a ``parse_answer`` list, None = abstention).

    An object is kept when at least ``min_share`` of the answers name it; the query abstains when
    "Don't know" is strictly more common than every object. Returns {"kept": [(label, votes)],
    "abstain": bool, "n_dont_know", "n"}; ``min_share=0`` keeps every object named (no vote)."""
    if not 0.0 <= min_share <= 1.0:
        raise ValueError(f"min_share must be in [0, 1], got {min_share!r}")
    n = len(answers)
    n_dk = sum(a is None for a in answers)
    counts, labels = Counter(), {}
    for a in answers:
        for obj in a or ():
            k = normalize(obj)
            counts[k] += 1
            labels.setdefault(k, Counter())[obj] += 1
    top = max(counts.values(), default=0)
    abstain = n_dk > top
    kept = [] if abstain else [(labels[k].most_common(1)[0][0], c) for k, c in
                               sorted(counts.items(), key=lambda kc: -kc[1])
                               if c >= max(1, math.ceil(min_share * n - 1e-9))]
    return {"kept": kept, "abstain": abstain, "n_dont_know": n_dk, "n": n}


# ---------------------------------------------------------------------------------------------
# the crawl


@dataclass(frozen=True)
class CrawlGraph(Result):
    """A crawled knowledge graph. ``entities``: {"name", "hop"} of each crawled subject (hop 0 = the
    seed); ``triples``: {"subject", "relation", "object", "votes", "n_answers", "hop"} (hop = the
    subject's); ``abstained``: {"subject", "relation", "n_dont_know", "n_answers", "hop"};
    ``settings``: how it was crawled; ``n_prompts`` / ``n_calls``: prompts sent, ``complete`` calls."""

    FORMAT: ClassVar[str] = "interpjax.kb_crawl"

    seed_entity: str
    mode: str
    entities: tuple
    triples: tuple
    abstained: tuple
    settings: dict
    n_prompts: int
    n_calls: int

    def nodes(self) -> list:
        """Every node name: crawled entities, then objects that were not crawled, in order of appearance."""
        seen, out = set(), []
        for name in [e["name"] for e in self.entities] + [t["object"] for t in self.triples]:
            if normalize(name) not in seen:
                seen.add(normalize(name))
                out.append(name)
        return out

    def draw(self, ax):
        pos = layout(self)
        for t in self.triples:
            (x0, y0), (x1, y1) = pos[normalize(t["subject"])], pos[normalize(t["object"])]
            ax.plot([x0, x1], [y0, y1], color="0.7", lw=0.8, zorder=1)
            ax.text((x0 + x1) / 2, (y0 + y1) / 2, t["relation"], fontsize=5, color="0.4", ha="center", zorder=2)
        crawled = {normalize(e["name"]) for e in self.entities}
        for name in self.nodes():
            x, y = pos[normalize(name)]
            ax.scatter([x], [y], s=40 if normalize(name) in crawled else 14,
                       color="tab:blue" if normalize(name) in crawled else "tab:orange", zorder=3)
            ax.text(x, y + 0.06, name, fontsize=6, ha="center", va="bottom", zorder=4)
        ax.set_title(f"crawl from {self.seed_entity} ({self.mode}): {len(self.triples)} triples, "
                     f"{len(self.abstained)} abstentions", fontsize=8)
        ax.set_axis_off()
        ax.set_aspect("equal")
        return ax

    def plot(self, path) -> Path:
        return save_drawing(self.draw, path, figsize=(9.0, 9.0))


def _settings(mode, n_samples, n_paraphrases, temperature, dont_know, min_share):
    if mode not in MODES:
        raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
    if mode == "greedy":  # the paper's baseline: one phrasing, argmax, no abstention demos, no vote
        return {"n_samples": 1, "n_paraphrases": 1, "temperature": 0.0,
                "dont_know": False if dont_know is None else bool(dont_know),
                "min_share": 0.0 if min_share is None else float(min_share)}
    for name, v in (("n_samples", n_samples), ("n_paraphrases", n_paraphrases)):
        if isinstance(v, bool) or not isinstance(v, int) or v < 1:
            raise ValueError(f"{name} must be an integer >= 1, got {v!r}")
    if not (isinstance(temperature, (int, float)) and temperature >= 0):
        raise ValueError(f"temperature must be a number >= 0, got {temperature!r}")
    return {"n_samples": n_samples, "n_paraphrases": n_paraphrases, "temperature": float(temperature),
            "dont_know": True if dont_know is None else bool(dont_know),
            "min_share": 0.5 if min_share is None else float(min_share)}


def crawl(complete: Complete, seed_entity: str, *, relations: dict | None = None, hops: int = 2,
          mode: str = "full", n_samples: int = 3, n_paraphrases: int = 2, temperature: float = 0.7,
          dont_know: bool | None = None, min_share: float | None = None, max_expand: int = 4,
          max_new_tokens: int = 12, seed: int = 0) -> CrawlGraph:
    """Crawl from ``seed_entity``: hop h asks every relation of every entity found at hop h (one
    ``complete`` call for the whole hop), votes, and queues the kept objects of expandable relations
    (at most ``max_expand`` per subject, most-voted first) for hop h + 1; ``hops`` hops in all.

    ``mode="full"``: ``n_paraphrases`` phrasings x ``n_samples`` samples at ``temperature``, "Don't
    know" demonstrations, objects kept by a ``min_share`` (default 0.5) vote. ``mode="greedy"``: one
    phrasing, one argmax completion, no abstention demos, every named object kept. ``dont_know`` /
    ``min_share`` override a mode's default (for ablations)."""
    if not isinstance(seed_entity, str):
        raise ValueError(f"seed_entity must be a non-empty string, got {seed_entity!r} (crawl_many takes a list)")
    return crawl_many(complete, [seed_entity], relations=relations, hops=hops, mode=mode, n_samples=n_samples,
                      n_paraphrases=n_paraphrases, temperature=temperature, dont_know=dont_know,
                      min_share=min_share, max_expand=max_expand, max_new_tokens=max_new_tokens, seed=seed)[0]


def crawl_many(complete: Complete, seed_entities, *, relations: dict | None = None, hops: int = 2,
               mode: str = "full", n_samples: int = 3, n_paraphrases: int = 2, temperature: float = 0.7,
               dont_know: bool | None = None, min_share: float | None = None, max_expand: int = 4,
               max_new_tokens: int = 12, seed: int = 0) -> list:
    """``crawl`` from each of ``seed_entities`` (one graph each, crawled independently), with the
    prompts of every crawl's hop h sent in one ``complete`` call."""
    relations = COUNTRY_RELATIONS if relations is None else relations
    if not isinstance(relations, dict) or not relations or not all(isinstance(r, Relation) for r in relations.values()):
        raise ValueError(f"relations must be a non-empty dict of name -> Relation, got {relations!r}")
    for name, v in (("hops", hops), ("max_expand", max_expand), ("max_new_tokens", max_new_tokens)):
        lo = 0 if name == "max_expand" else 1
        if isinstance(v, bool) or not isinstance(v, int) or v < lo:
            raise ValueError(f"{name} must be an integer >= {lo}, got {v!r}")
    roots = list(seed_entities) if not isinstance(seed_entities, str) else None
    if not roots or not all(isinstance(x, str) and x.strip() for x in roots):
        raise ValueError(f"seed_entities must be a non-empty list of non-empty strings, got {seed_entities!r}")
    s = _settings(mode, n_samples, n_paraphrases, temperature, dont_know, min_share)
    for r in relations.values():
        if s["n_paraphrases"] > len(r.paraphrases):
            raise ValueError(f"n_paraphrases={s['n_paraphrases']} but relation {r.name!r} has "
                             f"{len(r.paraphrases)} paraphrases")
    P = s["n_paraphrases"]
    state = [{"seen": {normalize(x)}, "entities": [{"name": x.strip(), "hop": 0}], "triples": [], "abstained": [],
              "frontier": [x.strip()], "n_prompts": 0, "n_calls": 0} for x in roots]
    for hop in range(hops):
        queries = [(k, e, r) for k, st in enumerate(state) for e in st["frontier"] for r in relations.values()]
        if not queries:
            break
        prompts = [object_prompt(r, e, p, s["dont_know"]) for _, e, r in queries for p in range(P)]
        outs = complete(prompts, n_samples=s["n_samples"], temperature=s["temperature"],
                        max_new_tokens=max_new_tokens, seed=seed * 1000 + hop)
        if len(outs) != len(prompts) or any(len(o) != s["n_samples"] for o in outs):
            raise ValueError(f"complete returned {len(outs)} lists for {len(prompts)} prompts (each must hold "
                             f"n_samples={s['n_samples']} strings)")
        for st in state:
            if st["frontier"]:
                st["n_calls"] += 1
                st["n_prompts"] += len(st["frontier"]) * len(relations) * P
            st["next"] = []
        for qi, (k, e, r) in enumerate(queries):
            st = state[k]
            texts = [t for o in outs[qi * P:(qi + 1) * P] for t in o]
            v = vote([parse_answer(t, r.multi) for t in texts], s["min_share"])
            if v["abstain"]:
                st["abstained"].append({"subject": e, "relation": r.name, "n_dont_know": v["n_dont_know"],
                                        "n_answers": v["n"], "hop": hop})
            for obj, votes in v["kept"]:
                st["triples"].append({"subject": e, "relation": r.name, "object": obj, "votes": votes,
                                      "n_answers": v["n"], "hop": hop})
            if r.expand and hop + 1 < hops:
                for obj, _ in v["kept"][:max_expand]:
                    if normalize(obj) not in st["seen"]:
                        st["seen"].add(normalize(obj))
                        st["next"].append(obj)
        for st in state:
            st["entities"] += [{"name": e, "hop": hop + 1} for e in st["next"]]
            st["frontier"] = st.pop("next")
    settings = {**s, "hops": hops, "max_expand": max_expand, "max_new_tokens": max_new_tokens, "seed": seed,
                "relations": list(relations)}
    return [CrawlGraph(x.strip(), mode, tuple(st["entities"]), tuple(st["triples"]), tuple(st["abstained"]),
                       dict(settings), st["n_prompts"], st["n_calls"]) for x, st in zip(roots, state)]


def propose_relations(complete: Complete, subjects: list, relations: dict, *, max_new_tokens: int = 16,
                      seed: int = 0) -> dict:
    """Relation generation (the paper's first step): {subject: [relation names]} the model lists for
    each subject (greedy, one batched call), restricted to the names of ``relations``."""
    outs = complete([relation_prompt(x, relations) for x in subjects], n_samples=1, temperature=0.0,
                    max_new_tokens=max_new_tokens, seed=seed)
    known = {normalize(n): n for n in relations}
    return {x: [known[normalize(o)] for o in (parse_answer(o[0], multi=True) or []) if normalize(o) in known]
            for x, o in zip(subjects, outs)}


# ---------------------------------------------------------------------------------------------
# scoring against a gold knowledge base


def score_triples(triples, gold: dict, match: Callable | None = None) -> list:
    """Per triple: 1 (object correct), 0 (wrong) or None (``gold`` has no entry for the subject and
    relation). ``gold`` maps (normalize(subject), relation) -> set of normalised gold objects;
    ``match(relation, normalised object, gold set) -> bool`` defaults to set membership."""
    match = match or (lambda rel, obj, objs: obj in objs)
    out = []
    for t in triples:
        objs = gold.get((normalize(t["subject"]), t["relation"]))
        out.append(None if objs is None else int(bool(match(t["relation"], normalize(t["object"]), objs))))
    return out


def precision(triples, gold: dict, match: Callable | None = None, unverifiable: str = "wrong") -> float:
    """Share of triples that are correct; ``unverifiable`` triples (subject not in ``gold``) count as
    "wrong" or are "skip"ped. NaN when nothing is scored."""
    if unverifiable not in ("wrong", "skip"):
        raise ValueError(f"unverifiable must be 'wrong' or 'skip', got {unverifiable!r}")
    sc = score_triples(triples, gold, match)
    vals = [0 if c is None else c for c in sc] if unverifiable == "wrong" else [c for c in sc if c is not None]
    return float(np.mean(vals)) if vals else math.nan


# ---------------------------------------------------------------------------------------------
# the model backend


class LMComplete:
    """``Complete`` with ``Model.generate``: every prompt of one call (times ``n_samples``) in one
    batched generation (``max_batch`` rows at a time if set), each completion cut at its first
    newline. Prompts are left-padded to a multiple of ``pad_to`` tokens and the batch to a multiple
    of 8 rows (to exactly ``max_batch`` when set), so that a crawl reuses a few compiled programs.
    ``generate_calls`` counts generations."""

    def __init__(self, model, *, max_batch: int | None = None, pad_to: int = 16):
        self.model = require_model(model, "LMComplete")
        if model.tokenizer is None:
            raise ValueError(f"LMComplete needs a model with a tokenizer; {model.name!r} has none")
        if max_batch is not None and (isinstance(max_batch, bool) or not isinstance(max_batch, int) or max_batch < 1):
            raise ValueError(f"max_batch must be None or an integer >= 1, got {max_batch!r}")
        if isinstance(pad_to, bool) or not isinstance(pad_to, int) or pad_to < 1:
            raise ValueError(f"pad_to must be an integer >= 1, got {pad_to!r}")
        self.max_batch, self.pad_to, self.generate_calls = max_batch, pad_to, 0
        tok = model.tokenizer
        stops = set()
        for text in ("\n", "\n\n", " \n", ".\n", "A\n"):
            for i in tok(text, add_special_tokens=False)["input_ids"]:
                if "\n" in tok.decode([i]):
                    stops.add(int(i))
        if getattr(tok, "eos_token_id", None) is not None:
            stops.add(int(tok.eos_token_id))
        self.stop_tokens = tuple(sorted(stops))

    def __call__(self, prompts, n_samples: int = 1, temperature: float = 0.0, max_new_tokens: int = 12,
                 seed: int = 0) -> list:
        if isinstance(prompts, str) or not prompts or not all(isinstance(p, str) for p in prompts):
            raise ValueError("prompts must be a non-empty list of strings")
        if isinstance(n_samples, bool) or not isinstance(n_samples, int) or n_samples < 1:
            raise ValueError(f"n_samples must be an integer >= 1, got {n_samples!r}")
        rows = [p for p in prompts for _ in range(n_samples)]
        step = self.max_batch or len(rows)
        texts = []
        for i in range(0, len(rows), step):
            texts += self._generate(rows[i:i + step], temperature, max_new_tokens, seed + i)
        return [texts[k * n_samples:(k + 1) * n_samples] for k in range(len(prompts))]

    def _generate(self, rows, temperature, max_new_tokens, seed) -> list:
        tokens, mask = self.model.to_tokens(rows)
        B, T = tokens.shape
        Tp = -(-T // self.pad_to) * self.pad_to
        Bp = self.max_batch or -(-B // 8) * 8
        tok = self.model.tokenizer
        pad = next((int(i) for i in (getattr(tok, "pad_token_id", None), getattr(tok, "eos_token_id", None)) if i is not None), 0)
        tokens = np.pad(tokens, ((0, Bp - B), (Tp - T, 0)), constant_values=pad)
        mask = np.pad(mask, ((0, Bp - B), (Tp - T, 0)))
        tokens[B:], mask[B:] = tokens[0], mask[0]  # filler rows repeat the first prompt; dropped below
        g = self.model.generate(tokens, max_new_tokens, attention_mask=mask, temperature=float(temperature),
                                seed=int(seed), stop_tokens=self.stop_tokens)
        self.generate_calls += 1
        eos = getattr(tok, "eos_token_id", None)
        out = []
        for b in range(B):
            new = [int(t) for t in g.tokens[b, Tp:Tp + int(g.n_new[b])] if eos is None or int(t) != int(eos)]
            out.append(tok.decode(new).split("\n", 1)[0].strip())
        return out


# ---------------------------------------------------------------------------------------------
# views


def layout(graph: CrawlGraph) -> dict:
    """{normalised node name: (x, y)}: a radial tree from the seed (radius = hops from it), each
    node placed under the first subject that named it, leaves sharing the circle evenly."""
    children, parent, order = {}, {}, []
    root = normalize(graph.seed_entity)
    parent[root] = None
    order.append(root)
    for t in graph.triples:
        s, o = normalize(t["subject"]), normalize(t["object"])
        if s not in parent:
            parent[s] = None
            order.append(s)
        if o not in parent:
            parent[o] = s
            children.setdefault(s, []).append(o)
            order.append(o)
    roots = [n for n in order if parent[n] is None]
    leaves = []

    def walk(n, depth, depths):
        depths[n] = depth
        kids = children.get(n, [])
        if not kids:
            leaves.append(n)
        for k in kids:
            walk(k, depth + 1, depths)

    depths: dict = {}
    for r in roots:
        walk(r, 0 if r == root else 1, depths)
    angle = {n: 2 * math.pi * i / max(len(leaves), 1) for i, n in enumerate(leaves)}

    def ang(n):
        if n not in angle:
            kids = children.get(n, [])
            angle[n] = float(np.mean([ang(k) for k in kids])) if kids else 0.0
        return angle[n]

    return {n: (0.0, 0.0) if depths[n] == 0 else (depths[n] * math.cos(ang(n)), depths[n] * math.sin(ang(n)))
            for n in order}


def graph_html(graph: CrawlGraph, path, title: str | None = None) -> Path:
    """A self-contained HTML page of ``graph``: an inline SVG (nodes, edges labelled with their
    relation and votes, sized to the window) and the table of triples and abstentions. No scripts,
    no network; every text is escaped."""
    pos = layout(graph)
    scale, pad = 260.0, 120.0
    xs = [p[0] for p in pos.values()] or [0.0]
    ys = [p[1] for p in pos.values()] or [0.0]
    x0, y0 = min(xs) * scale - pad, min(ys) * scale - pad
    w, h = (max(xs) - min(xs)) * scale + 2 * pad, (max(ys) - min(ys)) * scale + 2 * pad
    P = lambda n: (pos[n][0] * scale, pos[n][1] * scale)  # noqa: E731
    e = html.escape
    crawled = {normalize(x["name"]) for x in graph.entities}
    parts = []
    for t in graph.triples:
        (ax, ay), (bx, by) = P(normalize(t["subject"])), P(normalize(t["object"]))
        parts.append(f'<line x1="{ax:.1f}" y1="{ay:.1f}" x2="{bx:.1f}" y2="{by:.1f}" class="edge"/>'
                     f'<text x="{(ax + bx) / 2:.1f}" y="{(ay + by) / 2:.1f}" class="rel">'
                     f'{e(t["relation"])} ({t["votes"]}/{t["n_answers"]})</text>')
    for name in graph.nodes():
        x, y = P(normalize(name))
        cls = "entity" if normalize(name) in crawled else "object"
        parts.append(f'<circle cx="{x:.1f}" cy="{y:.1f}" r="{9 if cls == "entity" else 6}" class="{cls}"/>'
                     f'<text x="{x:.1f}" y="{y - 12:.1f}" class="label">{e(name)}</text>')
    rows = "".join(f"<tr><td>{t['hop']}</td><td>{e(t['subject'])}</td><td>{e(t['relation'])}</td>"
                   f"<td>{e(t['object'])}</td><td>{t['votes']}/{t['n_answers']}</td></tr>" for t in graph.triples)
    dk = "".join(f"<li>{e(a['subject'])} — {e(a['relation'])} ({a['n_dont_know']}/{a['n_answers']} "
                 f"&ldquo;Don&#x27;t know&rdquo;)</li>" for a in graph.abstained)
    title = title or f"Knowledge-base crawl from {graph.seed_entity} ({graph.mode})"
    page = f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>{e(title)}</title>
<style>
body {{ font-family: sans-serif; margin: 16px; max-width: 100%; }}
svg {{ width: 100%; max-height: 80vh; border: 1px solid #ddd; background: #fcfcfc; }}
.edge {{ stroke: #aaa; stroke-width: 1.2; }}
.entity {{ fill: #1f77b4; }} .object {{ fill: #ff7f0e; }}
.label {{ font-size: 13px; text-anchor: middle; fill: #111; }}
.rel {{ font-size: 10px; text-anchor: middle; fill: #777; }}
table {{ border-collapse: collapse; font-size: 13px; }} td, th {{ border: 1px solid #ccc; padding: 2px 6px; }}
</style></head><body>
<h1>{e(title)}</h1>
<p>{len(graph.entities)} crawled entities (blue), {len(graph.triples)} triples, {len(graph.abstained)} abstentions;
edge labels: relation (votes / answers).</p>
<svg viewBox="{x0:.1f} {y0:.1f} {w:.1f} {h:.1f}" xmlns="http://www.w3.org/2000/svg" role="img">
{''.join(parts)}
</svg>
<h2>Triples</h2>
<table><tr><th>hop</th><th>subject</th><th>relation</th><th>object</th><th>votes</th></tr>{rows}</table>
<h2>Abstentions</h2><ul>{dk}</ul>
</body></html>
"""
    return atomic_write_text(path, page)
