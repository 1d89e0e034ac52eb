"""A memorised-facts world: two-token subjects, relations and attribute tables, so a small
decoder trained here recalls facts the way Geva et al. study (subject ... relation -> attribute).

Prompt layout (fixed length, no padding): BOS, ``n_fill`` random filler tokens, subject token 1,
subject token 2, IS, relation -> the model predicts the attribute at the relation position (the
last one).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

PAD, BOS, IS = 0, 1, 2  # PAD is reserved (never emitted)


@dataclass(frozen=True)
class FactWorld:
    """Token layout and the fact table ``table[subject, relation] -> attribute token``."""

    n_subjects: int
    n_relations: int
    n_parts: int  # subject-part tokens; a subject is an ordered pair of distinct parts
    n_attributes: int  # attribute tokens per relation
    n_fillers: int
    subjects: np.ndarray  # [S, 2] part indices
    table: np.ndarray  # [S, R] attribute index within the relation's attribute block

    @property
    def relation_base(self) -> int:
        return 3

    @property
    def part_base(self) -> int:
        return self.relation_base + self.n_relations

    @property
    def filler_base(self) -> int:
        return self.part_base + self.n_parts

    @property
    def attribute_base(self) -> int:
        return self.filler_base + self.n_fillers

    @property
    def vocab_size(self) -> int:
        return self.attribute_base + self.n_relations * self.n_attributes

    def attribute_token(self, subject, relation):
        return self.attribute_base + relation * self.n_attributes + self.table[subject, relation]

    def attribute_tokens(self, relation: int) -> np.ndarray:
        """Every attribute token of one relation (the candidate set for the attribute rate)."""
        start = self.attribute_base + relation * self.n_attributes
        return np.arange(start, start + self.n_attributes)


def make_world(n_subjects=200, n_relations=4, n_parts=40, n_attributes=16, n_fillers=8, seed=0) -> FactWorld:
    """Random subjects (distinct part pairs) and a random attribute for every (subject, relation)."""
    if n_subjects > n_parts * (n_parts - 1):
        raise ValueError(f"n_subjects={n_subjects} exceeds the {n_parts * (n_parts - 1)} distinct part pairs")
    rng = np.random.default_rng(seed)
    pairs = np.array([(a, b) for a in range(n_parts) for b in range(n_parts) if a != b])
    subjects = pairs[rng.choice(len(pairs), n_subjects, replace=False)]
    table = rng.integers(0, n_attributes, (n_subjects, n_relations))
    return FactWorld(n_subjects, n_relations, n_parts, n_attributes, n_fillers, subjects, table)


def prompts(world: FactWorld, subject_ids, relation_ids, rng, n_fill: int = 2):
    """Prompts [N, 5 + n_fill], the answer token per prompt and the subject-token mask [N, T]."""
    subject_ids, relation_ids = np.asarray(subject_ids), np.asarray(relation_ids)
    N = len(subject_ids)
    fill = world.filler_base + rng.integers(0, world.n_fillers, (N, n_fill))
    parts = world.part_base + world.subjects[subject_ids]
    rel = world.relation_base + relation_ids
    tokens = np.concatenate([np.full((N, 1), BOS), fill, parts, np.full((N, 1), IS), rel[:, None]], 1).astype(np.int32)
    subj = np.zeros(tokens.shape, bool)
    subj[:, 1 + n_fill:3 + n_fill] = True
    answers = world.attribute_token(subject_ids, relation_ids).astype(np.int32)
    return tokens, subj, answers


def training_batch(world: FactWorld, batch: int, rng, n_fill: int = 2):
    """Random facts as training sequences (prompt + answer) with the loss on the answer only."""
    s = rng.integers(0, world.n_subjects, batch)
    r = rng.integers(0, world.n_relations, batch)
    tokens, _, answers = prompts(world, s, r, rng, n_fill)
    seq = np.concatenate([tokens, answers[:, None]], 1)
    loss_mask = np.zeros_like(seq)
    loss_mask[:, -1] = 1
    return seq, loss_mask
