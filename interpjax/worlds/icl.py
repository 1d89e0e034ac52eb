"""An in-context-learning world: sequences of demonstrations ``x -> f(x) ;`` for a task f drawn
per sequence, so a small decoder trained here must infer the task from the demonstrations. The
worlds for task vectors (Hendel et al.) and function vectors (Merullo et al.).

Tokens: PAD 0, BOS 1, ARROW 2, SEP 3, then ``n_items`` item tokens. A prompt with k demos is
``BOS x1 -> y1 ; ... xk -> yk ; xq ->`` and the answer is f(xq); the zero-shot prompt is
``BOS xq ->``. Tasks are "extractive" (the answer already appears in the prompt: copy) or
"abstractive" (it must be computed: shifts and fixed permutations of the items).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

PAD, BOS, ARROW, SEP = 0, 1, 2, 3
ITEM_BASE = 4


@dataclass(frozen=True)
class Task:
    name: str
    kind: str  # "extractive" or "abstractive"
    table: np.ndarray  # [n_items] item -> item


def make_tasks(n_items: int = 32, n_permutations: int = 3, seed: int = 0) -> list[Task]:
    """copy (extractive), +1, -1, +5 (abstractive) and ``n_permutations`` random permutations."""
    items = np.arange(n_items)
    rng = np.random.default_rng(seed)
    tasks = [Task("copy", "extractive", items), Task("next", "abstractive", (items + 1) % n_items),
             Task("prev", "abstractive", (items - 1) % n_items), Task("plus5", "abstractive", (items + 5) % n_items)]
    tasks += [Task(f"perm{i}", "abstractive", rng.permutation(n_items)) for i in range(n_permutations)]
    return tasks


def vocab_size(n_items: int) -> int:
    return ITEM_BASE + n_items


def icl_prompts(task: Task, n_demos: int, n_prompts: int, rng, queries=None):
    """Prompts [N, 1 + 4 * n_demos + 2] with ``n_demos`` demonstrations (k = 0 is zero-shot), the
    answer token per prompt and the query items. Demonstration inputs differ from the query."""
    n_items = len(task.table)
    if n_demos >= n_items:
        raise ValueError(f"n_demos={n_demos} must be smaller than the {n_items} items")
    q = rng.integers(0, n_items, n_prompts) if queries is None else np.asarray(queries)
    rows = []
    for i in range(n_prompts):
        others = np.setdiff1d(np.arange(n_items), [q[i]])
        demo = rng.choice(others, n_demos, replace=False)
        row = [BOS]
        for x in demo:
            row += [ITEM_BASE + x, ARROW, ITEM_BASE + task.table[x], SEP]
        rows.append(row + [ITEM_BASE + q[i], ARROW])
    answers = (ITEM_BASE + task.table[q]).astype(np.int32)
    return np.asarray(rows, np.int32), answers, q


def training_batch(tasks: list[Task], batch: int, n_demos: int, rng):
    """Sequences of ``n_demos + 1`` demonstrations of one random task each, with the loss on every
    answer token (so the model learns to infer the task from what came before)."""
    seqs, masks = [], []
    for _ in range(batch):
        task = tasks[rng.integers(len(tasks))]
        tok, ans, _ = icl_prompts(task, n_demos, 1, rng)
        seq = np.concatenate([tok[0], ans])
        mask = np.zeros_like(seq)
        mask[3::4] = 1  # every answer position: BOS x -> y ; ...
        seqs.append(seq)
        masks.append(mask)
    return np.stack(seqs), np.stack(masks)
