"""A co-occurrence world (Elazar et al. 2022, M13): subjects, relations with text patterns and
objects, and a word-level corpus whose pattern-object (POC) and subject-object (SOC) co-occurrence
counts are set by arguments, so a model trained on it can be tested for predictions that follow
data statistics rather than facts — and the statistics can be intervened on, corpus-side.

Sentences (word tokens, BOS ... EOS, right-padded with PAD):

- fact         ``BOS <subject> <pattern of r> <object> EOS``   (the gold fact (s, r) -> o)
- POC distractor ``BOS <generic> <pattern of r> <object> EOS`` (object with the pattern, no subject)
- SOC distractor ``BOS <subject> <connective> <object> EOS``   (object with the subject, no pattern)

Probe prompts are ``BOS <subject> <pattern of r>`` -> the gold object of (s, r). A co-occurrence
count is the number of sentences holding both items: ``poc[r, o]`` counts sentences with a pattern
of relation r and object o; ``soc[s, o]`` sentences with subject s and object o.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

PAD, BOS, EOS = 0, 1, 2  # PAD is never emitted inside a sentence
FACT, POC, SOC = 0, 1, 2  # sentence kinds
KINDS = {"fact": FACT, "poc": POC, "soc": SOC}


@dataclass(frozen=True)
class Vocab:
    """Word-level vocabulary: ``words[i]`` is token i; blocks of subjects, pattern words, objects,
    generic subjects and connective words follow PAD, BOS, EOS."""

    n_subjects: int
    n_relations: int
    n_patterns: int  # patterns per relation
    pattern_len: int  # words per pattern
    n_objects: int
    n_generic: int
    n_connectives: int
    connective_len: int

    @property
    def subject_base(self) -> int:
        return 3

    @property
    def pattern_base(self) -> int:
        return self.subject_base + self.n_subjects

    @property
    def object_base(self) -> int:
        return self.pattern_base + self.n_relations * self.n_patterns * self.pattern_len

    @property
    def generic_base(self) -> int:
        return self.object_base + self.n_objects

    @property
    def connective_base(self) -> int:
        return self.generic_base + self.n_generic

    @property
    def size(self) -> int:
        return self.connective_base + self.n_connectives * self.connective_len

    @property
    def words(self) -> list[str]:
        w = ["<pad>", "<bos>", "<eos>"] + [f"s{i}" for i in range(self.n_subjects)]
        w += [f"r{r}p{p}w{j}" for r in range(self.n_relations) for p in range(self.n_patterns)
              for j in range(self.pattern_len)]
        w += [f"o{i}" for i in range(self.n_objects)] + [f"g{i}" for i in range(self.n_generic)]
        w += [f"c{i}w{j}" for i in range(self.n_connectives) for j in range(self.connective_len)]
        return w

    def subject_token(self, s):
        return self.subject_base + np.asarray(s)

    def object_token(self, o):
        return self.object_base + np.asarray(o)

    def pattern_tokens(self, r: int, p: int) -> np.ndarray:
        start = self.pattern_base + (r * self.n_patterns + p) * self.pattern_len
        return np.arange(start, start + self.pattern_len)

    def connective_tokens(self, c: int) -> np.ndarray:
        start = self.connective_base + c * self.connective_len
        return np.arange(start, start + self.connective_len)

    def encode(self, words) -> np.ndarray:
        """Token ids of a sequence of words (unknown words refused, naming them)."""
        index = {w: i for i, w in enumerate(self.words)}
        bad = [w for w in words if w not in index]
        if bad:
            raise ValueError(f"words not in the vocabulary: {bad[:5]}")
        return np.array([index[w] for w in words], np.int32)

    def decode(self, ids) -> list[str]:
        """Words of token ids (PAD dropped)."""
        words = self.words
        return [words[int(i)] for i in np.asarray(ids) if int(i) != PAD]


@dataclass(frozen=True)
class World:
    """Facts and the planted co-occurring objects. ``gold[s, r]``: the object of fact (s, r);
    ``known[s, r]``: the fact is stated in the corpus (else it is a held-out probe);
    ``poc_object[r]``: the object planted with relation r's patterns; ``soc_object[s]``: the
    non-answer object planted with subject s. Planted objects differ from every gold object of the
    held-out facts they could explain (so "explained by" categories are disjoint)."""

    vocab: Vocab
    gold: np.ndarray  # [S, R] object index
    known: np.ndarray  # [S, R] bool
    poc_object: np.ndarray  # [R]
    soc_object: np.ndarray  # [S]

    @property
    def n_subjects(self) -> int:
        return self.vocab.n_subjects

    @property
    def n_relations(self) -> int:
        return self.vocab.n_relations

    @property
    def n_objects(self) -> int:
        return self.vocab.n_objects


@dataclass(frozen=True)
class Corpus:
    """Sentences as padded tokens ``tokens_NT`` with per-sentence metadata: ``kind`` (FACT, POC,
    SOC), ``subject`` (-1 for a generic subject), ``relation``/``pattern`` (-1 without a pattern),
    ``obj`` (the object index, -1 once removed), ``aux`` (the generic subject of a POC sentence,
    the connective of a SOC sentence, -1 for a fact) and ``length`` (tokens before padding)."""

    tokens_NT: np.ndarray
    length: np.ndarray
    kind: np.ndarray
    subject: np.ndarray
    relation: np.ndarray
    pattern: np.ndarray
    obj: np.ndarray
    aux: np.ndarray

    def __len__(self) -> int:
        return len(self.kind)

    def loss_mask(self) -> np.ndarray:
        """[N, T] float32: 1 on every emitted token after BOS (the LM predicts each from its prefix)."""
        t_T = np.arange(self.tokens_NT.shape[1])
        return ((t_T[None, :] >= 1) & (t_T[None, :] < self.length[:, None])).astype(np.float32)


def _check_int(name: str, value, lo: int):
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < lo:
        raise ValueError(f"{name} must be an integer >= {lo}; got {value!r}")


def make_world(n_subjects: int = 64, n_relations: int = 4, n_objects: int = 32, n_patterns: int = 2,
               pattern_len: int = 2, known_frac: float = 0.5, n_generic: int = 4, n_connectives: int = 4,
               connective_len: int = 2, seed: int = 0) -> World:
    """A seeded world: distinct gold objects per subject; a ``known_frac`` share of each subject's
    relations stated (at least one relation known and one held out); one planted POC object per
    relation and one SOC object per subject, none equal to a gold object of that subject or to any
    relation's POC object."""
    for name, v, lo in (("n_subjects", n_subjects, 1), ("n_relations", n_relations, 2), ("n_objects", n_objects, 1),
                        ("n_patterns", n_patterns, 1), ("pattern_len", pattern_len, 1), ("n_generic", n_generic, 1),
                        ("n_connectives", n_connectives, 1), ("connective_len", connective_len, 1), ("seed", seed, 0)):
        _check_int(name, v, lo)
    if not (isinstance(known_frac, (int, float)) and 0.0 < known_frac < 1.0):
        raise ValueError(f"known_frac must be in (0, 1) (some facts stated, some held out); got {known_frac!r}")
    if n_objects < 2 * n_relations + 1:
        raise ValueError(f"n_objects={n_objects} must be >= 2 * n_relations + 1 = {2 * n_relations + 1} "
                         f"(distinct POC objects, a subject's distinct golds and its SOC object)")
    rng = np.random.default_rng(seed)
    vocab = Vocab(n_subjects, n_relations, n_patterns, pattern_len, n_objects, n_generic, n_connectives, connective_len)
    poc_object = rng.choice(n_objects, n_relations, replace=False)
    free = np.setdiff1d(np.arange(n_objects), poc_object)  # golds and SOC objects avoid the POC objects
    gold = np.zeros((n_subjects, n_relations), np.int64)
    soc_object = np.zeros(n_subjects, np.int64)
    n_known = min(max(int(round(known_frac * n_relations)), 1), n_relations - 1)
    known = np.zeros((n_subjects, n_relations), bool)
    for s in range(n_subjects):
        pick = rng.choice(free, n_relations + 1, replace=False)
        gold[s], soc_object[s] = pick[:n_relations], pick[n_relations]
        known[s, rng.choice(n_relations, n_known, replace=False)] = True
    return World(vocab, gold, known, poc_object, soc_object)


def _as_table(name: str, value, shape: tuple[int, int], planted: np.ndarray) -> np.ndarray:
    """An int count table [rows, objects]: an integer k puts k on each row's planted object."""
    if isinstance(value, (bool, np.bool_)):
        raise ValueError(f"{name} must be an integer >= 0 or an integer array of shape {shape}; got {value!r}")
    if isinstance(value, (int, np.integer)):
        if value < 0:
            raise ValueError(f"{name} must be >= 0; got {value}")
        t = np.zeros(shape, np.int64)
        t[np.arange(shape[0]), planted] = int(value)
        return t
    a = np.asarray(value)
    if a.shape != shape or not np.issubdtype(a.dtype, np.integer) or (a < 0).any():
        raise ValueError(f"{name} must be an integer >= 0 or a non-negative integer array of shape {shape}; "
                         f"got shape {a.shape}, dtype {a.dtype}")
    return a.astype(np.int64)


def make_corpus(world: World, fact_repeats: int = 2, poc_extra=16, soc_extra=6, seed: int = 0) -> Corpus:
    """The corpus: every known fact ``fact_repeats`` times with each of its relation's patterns;
    ``poc_extra[r, o]`` POC distractor sentences (object o with a pattern of r, generic subject;
    an integer k: k sentences of each relation's planted POC object); ``soc_extra[s, o]`` SOC
    distractor sentences (subject s, a connective, object o; an integer: the planted SOC object).
    Patterns, generics and connectives of distractors are drawn from ``seed``; sentence order is
    shuffled with it."""
    _check_int("fact_repeats", fact_repeats, 1)
    _check_int("seed", seed, 0)
    v = world.vocab
    S, R, O = world.n_subjects, world.n_relations, world.n_objects
    poc = _as_table("poc_extra", poc_extra, (R, O), world.poc_object)
    soc = _as_table("soc_extra", soc_extra, (S, O), world.soc_object)
    rng = np.random.default_rng(seed)
    rows = []  # (kind, subject, relation, pattern, object, generic/connective index)
    for s, r in zip(*np.nonzero(world.known)):
        for p in range(v.n_patterns):
            rows += [(FACT, s, r, p, world.gold[s, r], -1)] * fact_repeats
    for r, o in zip(*np.nonzero(poc)):
        for _ in range(poc[r, o]):
            rows.append((POC, -1, r, rng.integers(v.n_patterns), o, rng.integers(v.n_generic)))
    for s, o in zip(*np.nonzero(soc)):
        for _ in range(soc[s, o]):
            rows.append((SOC, s, -1, -1, o, rng.integers(v.n_connectives)))
    meta = np.array(rows, np.int64).reshape(-1, 6)[rng.permutation(len(rows))]
    kind, subject, relation, pattern, obj, aux = meta.T
    return _render(v, kind, subject, relation, pattern, obj, aux)


def _sentence(v: Vocab, kind, s, r, p, o, aux) -> list[int]:
    first = v.subject_base + s if kind != POC else v.generic_base + aux
    middle = v.pattern_tokens(r, p) if kind != SOC else v.connective_tokens(aux)
    tail = [] if o < 0 else [v.object_base + o]
    return [BOS, int(first), *map(int, middle), *tail, EOS]


def _render(v: Vocab, kind, subject, relation, pattern, obj, aux) -> Corpus:
    """Tokens of every sentence from its metadata, right-padded to the longest possible sentence."""
    T = 4 + max(v.pattern_len, v.connective_len)
    sents = [_sentence(v, *row) for row in zip(kind, subject, relation, pattern, obj, aux)]
    tokens = np.full((len(sents), T), PAD, np.int32)
    for i, t in enumerate(sents):
        tokens[i, :len(t)] = t
    length = np.array([len(t) for t in sents], np.int64)
    return Corpus(tokens, length, *(np.asarray(x, np.int64) for x in (kind, subject, relation, pattern, obj, aux)))


def cooccurrence(world: World, corpus: Corpus) -> dict[str, np.ndarray]:
    """Exact counts from the corpus metadata: ``poc`` [R, O] (sentences with a pattern of r and
    object o), ``soc`` [S, O] (sentences with subject s and object o), ``object_count`` [O]."""
    S, R, O = world.n_subjects, world.n_relations, world.n_objects
    has = corpus.obj >= 0
    poc = np.zeros((R, O), np.int64)
    soc = np.zeros((S, O), np.int64)
    m = has & (corpus.relation >= 0)
    np.add.at(poc, (corpus.relation[m], corpus.obj[m]), 1)
    m = has & (corpus.subject >= 0)
    np.add.at(soc, (corpus.subject[m], corpus.obj[m]), 1)
    return {"poc": poc, "soc": soc, "object_count": np.bincount(corpus.obj[has], minlength=O)}


def probes(world: World, which: str = "held_out") -> dict[str, np.ndarray]:
    """Probe prompts ``BOS <subject> <pattern>`` for every (s, r) fact (``which``: "held_out",
    "known" or "all") and every pattern: ``tokens_NT`` int32, ``subject``, ``relation``,
    ``pattern`` and ``gold`` (object index) per prompt."""
    masks = {"held_out": ~world.known, "known": world.known, "all": np.ones_like(world.known)}
    if which not in masks:
        raise ValueError(f"which={which!r} is not one of {sorted(masks)}")
    v = world.vocab
    rows = [(s, r, p) for s, r in zip(*np.nonzero(masks[which])) for p in range(v.n_patterns)]
    s_N, r_N, p_N = (np.array(x, np.int64) for x in zip(*rows))
    tokens = np.stack([np.concatenate([[BOS, v.subject_base + s], v.pattern_tokens(r, p)])
                       for s, r, p in rows]).astype(np.int32)
    return {"tokens_NT": tokens, "subject": s_N, "relation": r_N, "pattern": p_N, "gold": world.gold[s_N, r_N]}


def remove_objects(world: World, corpus: Corpus, subjects, objects=None, kinds=("soc",)) -> Corpus:
    """The intervention: a new corpus with the object token deleted from every sentence of a
    chosen subject (``subjects``) that holds the chosen object (``objects[i]`` for ``subjects[i]``;
    default: the subject's planted SOC object) and is of one of ``kinds`` (default: the SOC
    distractors, i.e. the subject's other sentences, never its facts). Nothing else changes."""
    subjects = np.asarray(subjects, np.int64).reshape(-1)
    if subjects.size and (subjects.min() < 0 or subjects.max() >= world.n_subjects):
        raise ValueError(f"subjects must be indices in [0, {world.n_subjects}); got {subjects.tolist()}")
    if len(set(subjects.tolist())) != subjects.size:
        raise ValueError(f"subjects must be distinct; got {subjects.tolist()}")
    objects = world.soc_object[subjects] if objects is None else np.asarray(objects, np.int64).reshape(-1)
    if objects.shape != subjects.shape or (objects.size and (objects.min() < 0 or objects.max() >= world.n_objects)):
        raise ValueError(f"objects must be one object index in [0, {world.n_objects}) per subject; "
                         f"got {objects.tolist()} for {subjects.size} subjects")
    bad = [k for k in kinds if k not in KINDS]
    if bad or not kinds:
        raise ValueError(f"kinds {list(kinds)!r} must be a non-empty subset of {sorted(KINDS)}")
    target = dict(zip(subjects.tolist(), objects.tolist()))
    want = np.array([target.get(int(s), -2) for s in corpus.subject])
    hit = (corpus.subject >= 0) & (corpus.obj == want) & np.isin(corpus.kind, [KINDS[k] for k in kinds])
    obj = np.where(hit, -1, corpus.obj)
    return _render(world.vocab, corpus.kind, corpus.subject, corpus.relation, corpus.pattern, obj, corpus.aux)
