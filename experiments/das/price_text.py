"""The price-bracket task of Wu et al. 2023 as text, for a pretrained LM (``run.py --model``).

A prompt is the paper's instruction followed by the input amount, amounts in dollars with two
decimals (0.00 .. 9.99, i.e. integer cents 0 .. 999, drawn by ``price.sample_inputs``):

    Please say yes only if it costs between 1.25 and 4.80 dollars, otherwise no.
    Input: 3.07 dollars
    Answer:                                        ->  " Yes" | " No"   (Yes iff X <= Z <= Y)

DAS needs every base and source prompt to share one token layout (length and the positions it
intervenes at), and tokenizers split amounts into different numbers of tokens. ``build_prompts``
therefore tokenizes candidate prompts and keeps only those with the most common layout (length,
last token of the Y amount, last token of the Z amount), reporting how many it dropped. The answer
is read where " Yes" and " No" first differ after the prompt: a token both start with (Llama's
bare word boundary, for instance) is appended to every prompt, so the last position is where the
model chooses between the two.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass

import numpy as np

import price

LEVELS = 1000  # amounts are integer cents 0..999: 0.00 .. 9.99 dollars
TEMPLATE = "Please say yes only if it costs between {x} and {y} dollars, otherwise no.\nInput: {z} dollars\nAnswer:"
ANSWERS = ("No", "Yes")  # class c of a boolean label -> ANSWERS[c], written " No" / " Yes" after the prompt
POSITION_NAMES = ("Y", "Z", "answer")  # last token of the Y amount, of the Z amount, of the prompt


def amount(cents: int) -> str:
    """An amount of cents as dollars with two decimals ("3.07")."""
    cents = int(cents)
    if not 0 <= cents < LEVELS:
        raise ValueError(f"amount {cents} cents out of range 0..{LEVELS - 1}")
    return f"{cents // 100}.{cents % 100:02d}"


def prompt_text(x: int, y: int, z: int) -> str:
    """The prompt for bracket [x, y] and input z (all in cents)."""
    return TEMPLATE.format(x=amount(x), y=amount(y), z=amount(z))


def amount_ends(x: int, y: int, z: int) -> tuple[int, int]:
    """Character index of the last character of the Y amount and of the Z amount in ``prompt_text``."""
    head, rest = TEMPLATE.split("{x}")
    mid, rest = rest.split("{y}")
    mid2, _ = rest.split("{z}")
    y_end = len(head) + len(amount(x)) + len(mid) + len(amount(y)) - 1
    z_end = y_end + len(mid2) + len(amount(z))
    return y_end, z_end


def answer_ids(tokenizer, prompt: str) -> tuple[list[int], np.ndarray]:
    """(shared, [No id, Yes id]): the tokens " No" and " Yes" share after ``prompt`` (appended to
    every prompt) and their first differing tokens, as the tokenizer splits prompt + answer."""
    p = list(tokenizer(prompt, add_special_tokens=False)["input_ids"])
    tails = []
    for word in ANSWERS:
        full = list(tokenizer(prompt + " " + word, add_special_tokens=False)["input_ids"])
        if full[:len(p)] != p:
            raise ValueError(f"the tokenizer merges the prompt's end with {' ' + word!r}: no clean answer position")
        tails.append(full[len(p):])
    shared = 0
    while shared < min(map(len, tails)) and tails[0][shared] == tails[1][shared]:
        shared += 1
    if shared == min(map(len, tails)):
        raise ValueError(f"' No' and ' Yes' tokenize to the same first token(s) {tails[0][:shared + 1]} after the "
                         "prompt; the answer cannot be read from one position with this tokenizer")
    return tails[0][:shared], np.array([tails[0][shared], tails[1][shared]], np.int32)


@dataclass
class PromptSet:
    """Prompts sharing one token layout: ``inputs`` (x, y, z in cents, and ``row`` indexing
    ``tokens``), ``tokens`` [N, T] (no padding), ``positions`` {name: index}, ``label_tokens``
    [No, Yes] ids read at the last position, ``shared_answer`` ids appended to each prompt, and
    the counts of the layout filter."""

    inputs: dict
    tokens: np.ndarray
    positions: dict
    label_tokens: np.ndarray
    shared_answer: list
    n_candidates: int
    n_kept: int
    layout_counts: list  # [(count, (length, y_pos, z_pos)), ...] most common first; length before the shared answer tokens

    @property
    def n_dropped(self) -> int:
        return self.n_candidates - self.n_kept

    def summary(self) -> dict:
        """The counts and layout, JSON-ready."""
        return {"candidates": self.n_candidates, "kept": self.n_kept, "dropped": self.n_dropped,
                "layout": {"length": int(self.tokens.shape[1]), **{k: int(v) for k, v in self.positions.items()}},
                "n_layouts": len(self.layout_counts),
                "top_layouts": [{"count": c, "length": lay[0], "Y": lay[1], "Z": lay[2]}
                                for c, lay in self.layout_counts[:5]],
                "shared_answer_tokens": [int(i) for i in self.shared_answer],
                "label_tokens": [int(i) for i in self.label_tokens],
                "yes_fraction": float(np.mean(price.label(self.inputs)))}


def _token_at(offsets, char: int) -> int:
    """Index of the token whose character span holds ``char``."""
    for t, (a, b) in enumerate(offsets):
        if a <= char < b:
            return t
    raise ValueError(f"no token covers character {char}: the tokenizer's offsets are unusable")


def build_prompts(model, rng: np.random.Generator, n_candidates: int, n_needed: int) -> PromptSet:
    """Draw ``n_candidates`` distinct (x, y, z) prompts, tokenize them with ``model.to_tokens`` and
    keep those with the most common layout; ValueError if fewer than ``n_needed`` remain."""
    if n_needed < 1 or n_candidates < n_needed:
        raise ValueError(f"need 1 <= n_needed <= n_candidates, got n_needed={n_needed}, n_candidates={n_candidates}")
    tok = model.tokenizer
    if tok is None:
        raise ValueError(f"model {model.name!r} has no tokenizer; the text task needs one")
    raw = price.sample_inputs(rng, n_candidates, LEVELS)
    xyz = np.stack([raw["x"], raw["y"], raw["z"]], 1)
    _, first = np.unique(xyz, axis=0, return_index=True)  # distinct prompts, in drawn order
    keep = np.sort(first)
    inputs = {k: v[keep] for k, v in raw.items()}
    texts = [prompt_text(*t) for t in zip(inputs["x"], inputs["y"], inputs["z"])]
    shared, label_tokens = answer_ids(tok, texts[0])
    tokens, mask = model.to_tokens(texts)
    lengths = mask.sum(1)
    try:
        enc = tok(texts, add_special_tokens=True, return_offsets_mapping=True)
    except (NotImplementedError, ValueError, TypeError) as e:
        raise ValueError(f"the text task needs a fast tokenizer (character offsets locate the amounts): {e}") from e
    layouts = []
    for i, (ids, offs) in enumerate(zip(enc["input_ids"], enc["offset_mapping"])):
        if len(ids) != lengths[i]:
            raise ValueError(f"tokenizer is inconsistent: {len(ids)} vs {lengths[i]} tokens for {texts[i]!r}")
        y_end, z_end = amount_ends(inputs["x"][i], inputs["y"][i], inputs["z"][i])
        layouts.append((int(lengths[i]), _token_at(offs, y_end), _token_at(offs, z_end)))
    counts = Counter(layouts).most_common()
    layout = counts[0][0]
    rows = np.array([i for i, lay in enumerate(layouts) if lay == layout])
    if len(rows) < n_needed:
        raise ValueError(f"only {len(rows)} of {len(texts)} candidate prompts share the most common token layout "
                         f"(length {layout[0]}, Y at {layout[1]}, Z at {layout[2]}); {n_needed} are needed: "
                         "lower --n-train / --n-test")
    length = layout[0]
    kept = tokens[rows][:, tokens.shape[1] - length:]
    kept = np.concatenate([kept, np.tile(np.asarray(shared, np.int32), (len(rows), 1))], 1).astype(np.int32)
    kept_inputs = {k: v[rows] for k, v in inputs.items()}
    kept_inputs["row"] = np.arange(len(rows))
    positions = {"Y": layout[1], "Z": layout[2], "answer": kept.shape[1] - 1}
    return PromptSet(inputs=kept_inputs, tokens=kept, positions=positions, label_tokens=label_tokens,
                     shared_answer=list(shared), n_candidates=len(texts), n_kept=len(rows),
                     layout_counts=[(c, lay) for lay, c in counts])
