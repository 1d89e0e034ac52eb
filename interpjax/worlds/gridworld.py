"""Karel-like grid world with straight-line robot programs, for Jin & Rinard (2023) style probing.

A language model is trained on ``<spec> <prog> program <eos>`` texts (spec = input/output grid
pairs); linear probes on its hidden states then read out the robot's facing direction now and
1-2 instructions ahead. This module is the world: semantics, random tasks, tokens, probe labels.

Semantics (Karel convention, crashes instead of no-ops):

* ``move``: step one cell in the facing direction. Crash if that cell is outside the grid or a wall.
* ``turnLeft`` / ``turnRight``: facing ``d -> (d + 3) % 4`` / ``d -> (d + 1) % 4``
  (0=north=row-1, 1=east=col+1, 2=south=row+1, 3=west=col-1).
* ``putMarker``: add a marker on the robot's cell. Crash if it already holds ``MAX_MARKERS`` (9).
* ``pickMarker``: remove a marker from the robot's cell. Crash if it holds none.

A crash raises :class:`RobotCrash` (``try_execute`` returns ``None`` instead). The grid border
acts as an implicit wall; walls never hold markers and the robot never stands on a wall.
"""

from __future__ import annotations

import dataclasses
import inspect
from dataclasses import dataclass
from typing import Iterable, Sequence

import numpy as np

__all__ = [
    "INSTRUCTIONS", "DIRECTIONS", "MAX_MARKERS", "RobotCrash", "UnknownInstructionError",
    "World", "Task", "execute", "try_execute", "trace", "facing_trace", "random_world",
    "random_program", "random_task", "check_program", "Vocab", "VOCAB", "encode_world",
    "encode_task", "decode_task", "decode_program", "program_start_index", "sequence_length",
    "facing_labels", "GridDataset", "make_dataset",
]

INSTRUCTIONS: tuple[str, ...] = ("move", "turnLeft", "turnRight", "putMarker", "pickMarker")
MOVE, TURN_LEFT, TURN_RIGHT, PUT_MARKER, PICK_MARKER = range(5)
_OP_OF_NAME = {name: i for i, name in enumerate(INSTRUCTIONS)}
DIRECTIONS: tuple[str, ...] = ("N", "E", "S", "W")
_DR = (-1, 0, 1, 0)
_DC = (0, 1, 0, -1)
MAX_MARKERS = 9


class RobotCrash(RuntimeError):
    """The program crashed the robot (blocked move, pick from empty cell, put on full cell)."""

    def __init__(self, step: int, instruction: str, reason: str):
        super().__init__(f"robot crashed at step {step} ({instruction}): {reason}")
        self.step, self.instruction, self.reason = step, instruction, reason


class UnknownInstructionError(ValueError):
    """A program contained something that is not one of ``INSTRUCTIONS``."""


# ----------------------------------------------------------------------------------------------
# World
# ----------------------------------------------------------------------------------------------


@dataclass(frozen=True, eq=False)
class World:
    """Immutable grid state: walls, marker counts (0..9), robot cell and facing (0=N,1=E,2=S,3=W).

    Arrays are stored read-only; equality compares contents.
    """

    walls_HW: np.ndarray
    markers_HW: np.ndarray
    robot_rc: tuple[int, int]
    facing: int

    def __post_init__(self):
        walls_HW = np.array(self.walls_HW, dtype=bool)
        markers_raw = np.asarray(self.markers_HW)
        if walls_HW.ndim != 2 or walls_HW.shape != markers_raw.shape or walls_HW.size == 0:
            raise ValueError(f"walls {walls_HW.shape} and markers {markers_raw.shape} must be "
                             "equal non-empty 2-D shapes")
        if not np.issubdtype(markers_raw.dtype, np.integer) and markers_raw.dtype != bool:
            raise ValueError(f"markers must be integers, got dtype {markers_raw.dtype}")
        if markers_raw.min() < 0 or markers_raw.max() > MAX_MARKERS:
            raise ValueError(f"marker counts must lie in 0..{MAX_MARKERS}")
        markers_HW = markers_raw.astype(np.int8)
        if np.any(markers_HW[walls_HW] != 0):
            raise ValueError("walls cannot hold markers")
        is_int = lambda v: isinstance(v, (int, np.integer)) and not isinstance(v, (bool, np.bool_))  # noqa: E731
        if len(tuple(self.robot_rc)) != 2 or not all(is_int(x) for x in self.robot_rc):
            raise ValueError(f"robot_rc must be two integers (row, column), got {self.robot_rc!r}")
        if not is_int(self.facing):
            raise ValueError(f"facing must be an integer 0..3, got {self.facing!r}")
        r, c = (int(x) for x in self.robot_rc)
        H, W = walls_HW.shape
        if not (0 <= r < H and 0 <= c < W):
            raise ValueError(f"robot {(r, c)} outside the {H}x{W} grid")
        if walls_HW[r, c]:
            raise ValueError(f"robot {(r, c)} stands on a wall")
        if int(self.facing) not in (0, 1, 2, 3):
            raise ValueError(f"facing must be 0..3, got {self.facing}")
        walls_HW.flags.writeable = False
        markers_HW.flags.writeable = False
        object.__setattr__(self, "walls_HW", walls_HW)
        object.__setattr__(self, "markers_HW", markers_HW)
        object.__setattr__(self, "robot_rc", (r, c))
        object.__setattr__(self, "facing", int(self.facing))

    @classmethod
    def _unchecked(cls, walls_HW, markers_HW, robot_rc, facing) -> "World":
        """Fast constructor for internally produced, already valid states (arrays are adopted)."""
        walls_HW.flags.writeable = False
        markers_HW.flags.writeable = False
        w = object.__new__(cls)
        object.__setattr__(w, "walls_HW", walls_HW)
        object.__setattr__(w, "markers_HW", markers_HW)
        object.__setattr__(w, "robot_rc", robot_rc)
        object.__setattr__(w, "facing", facing)
        return w

    @property
    def shape(self) -> tuple[int, int]:
        return self.walls_HW.shape

    def copy(self) -> "World":
        """Independent copy (fresh read-only arrays)."""
        return World._unchecked(self.walls_HW.copy(), self.markers_HW.copy(), self.robot_rc,
                                self.facing)

    def __eq__(self, other) -> bool:
        if not isinstance(other, World):
            return NotImplemented
        return (self.robot_rc == other.robot_rc and self.facing == other.facing
                and np.array_equal(self.walls_HW, other.walls_HW)
                and np.array_equal(self.markers_HW, other.markers_HW))

    __hash__ = None  # mutable-content arrays: not hashable

    def render(self) -> str:
        """ASCII picture: '#' wall, '.' empty, digit = markers, '^>v<' robot (markers not shown)."""
        rows = []
        for r in range(self.shape[0]):
            row = []
            for c in range(self.shape[1]):
                if (r, c) == self.robot_rc:
                    row.append("^>v<"[self.facing])
                elif self.walls_HW[r, c]:
                    row.append("#")
                else:
                    m = int(self.markers_HW[r, c])
                    row.append(str(m) if m else ".")
            rows.append("".join(row))
        return "\n".join(rows)

    def __repr__(self) -> str:
        return (f"World({self.shape[0]}x{self.shape[1]}, robot={self.robot_rc}, "
                f"facing={DIRECTIONS[self.facing]}, markers={int(self.markers_HW.sum())})")


# ----------------------------------------------------------------------------------------------
# Execution
# ----------------------------------------------------------------------------------------------


def _parse_program(program) -> list[int]:
    """Program (iterable of instruction names) -> op ids; rejects unknown names clearly."""
    if isinstance(program, (str, bytes)):
        raise TypeError("program must be a sequence of instruction names, not a single string; "
                        "use e.g. program.split()")
    ops = []
    for i, name in enumerate(program):
        op = _OP_OF_NAME.get(name) if isinstance(name, str) else None
        if op is None:
            raise UnknownInstructionError(
                f"unknown instruction {name!r} at position {i}; valid: {', '.join(INSTRUCTIONS)}")
        ops.append(op)
    return ops


def _run(ops: Sequence[int], world: World, keep: str | None):
    """Core interpreter. keep=None -> final World; 'worlds' -> list of states; 'facing' -> list."""
    walls_HW = world.walls_HW
    H, W = walls_HW.shape
    markers_HW = world.markers_HW.copy()
    r, c = world.robot_rc
    d = world.facing
    out = [world] if keep == "worlds" else []
    for step, op in enumerate(ops):
        if op == MOVE:
            nr, nc = r + _DR[d], c + _DC[d]
            if not (0 <= nr < H and 0 <= nc < W):
                raise RobotCrash(step, "move", f"moved off the grid from {(r, c)} facing "
                                 f"{DIRECTIONS[d]}")
            if walls_HW[nr, nc]:
                raise RobotCrash(step, "move", f"moved into the wall at {(nr, nc)}")
            r, c = nr, nc
        elif op == TURN_LEFT:
            d = (d + 3) % 4
        elif op == TURN_RIGHT:
            d = (d + 1) % 4
        elif op == PUT_MARKER:
            if markers_HW[r, c] >= MAX_MARKERS:
                raise RobotCrash(step, "putMarker", f"cell {(r, c)} already holds {MAX_MARKERS}")
            markers_HW[r, c] += 1
        else:  # PICK_MARKER
            if markers_HW[r, c] <= 0:
                raise RobotCrash(step, "pickMarker", f"no marker to pick at {(r, c)}")
            markers_HW[r, c] -= 1
        if keep == "worlds":
            out.append(World._unchecked(walls_HW, markers_HW.copy(), (r, c), d))
        elif keep == "facing":
            out.append(d)
    if keep is None:
        return World._unchecked(walls_HW, markers_HW, (r, c), d)
    return out


def execute(program: Sequence[str], world: World) -> World:
    """Run ``program`` on ``world`` and return the final state; raises :class:`RobotCrash`."""
    return _run(_parse_program(program), world, None)


def try_execute(program: Sequence[str], world: World) -> World | None:
    """Like :func:`execute` but returns ``None`` if the robot crashes."""
    ops = _parse_program(program)
    try:
        return _run(ops, world, None)
    except RobotCrash:
        return None


def trace(program: Sequence[str], world: World) -> list[World]:
    """States before each instruction and after the last (``len(program) + 1`` worlds)."""
    return _run(_parse_program(program), world, "worlds")


def facing_trace(program: Sequence[str], world: World) -> np.ndarray:
    """Facing direction after each instruction, int8 array of length ``len(program)``."""
    return np.asarray(_run(_parse_program(program), world, "facing"), dtype=np.int8)


# ----------------------------------------------------------------------------------------------
# Random worlds, programs and tasks
# ----------------------------------------------------------------------------------------------


@dataclass(frozen=True, eq=False)
class Task:
    """A program and the spec it satisfies: ``outputs[i] == execute(program, inputs[i])``."""

    program: tuple[str, ...]
    inputs: tuple[World, ...]
    outputs: tuple[World, ...]

    def __eq__(self, other) -> bool:
        if not isinstance(other, Task):
            return NotImplemented
        return (tuple(self.program) == tuple(other.program)
                and len(self.inputs) == len(other.inputs) == len(self.outputs) == len(other.outputs)
                and all(a == b for a, b in zip(self.inputs, other.inputs))
                and all(a == b for a, b in zip(self.outputs, other.outputs)))

    __hash__ = None

    @property
    def grid(self) -> tuple[int, int]:
        return self.inputs[0].shape


def _sample_marker_prior(rng: np.random.Generator, shape, marker_prob: float,
                         max_init_markers: int) -> np.ndarray:
    """IID cell marker counts: 0 w.p. 1-marker_prob, else uniform in 1..max_init_markers."""
    has_HW = rng.random(shape) < marker_prob
    counts_HW = rng.integers(1, max_init_markers + 1, size=shape)
    return np.where(has_HW, counts_HW, 0).astype(np.int8)


def random_world(rng: np.random.Generator, grid: tuple[int, int] = (8, 8),
                 wall_prob: float = 0.1, marker_prob: float = 0.2,
                 max_init_markers: int = 3) -> World:
    """Unconditioned random world: IID walls and markers, robot on a uniform free cell and facing."""
    H, W = grid
    walls_HW = rng.random((H, W)) < wall_prob
    markers_HW = _sample_marker_prior(rng, (H, W), marker_prob, max_init_markers)
    free = np.flatnonzero(~walls_HW)
    if free.size == 0:  # degenerate draw: free one uniform cell
        free = np.array([rng.integers(H * W)])
        walls_HW.flat[free[0]] = False
    markers_HW[walls_HW] = 0
    k = int(free[rng.integers(free.size)])
    return World._unchecked(walls_HW, markers_HW, (k // W, k % W), int(rng.integers(4)))


def _allowed_next(prev: Sequence[int], op: int) -> bool:
    """Canonical-form rule: no adjacent inverse pair, no third identical turn in a row."""
    if not prev:
        return True
    last = prev[-1]
    if {last, op} == {TURN_LEFT, TURN_RIGHT} or {last, op} == {PUT_MARKER, PICK_MARKER}:
        return False
    if op in (TURN_LEFT, TURN_RIGHT) and len(prev) >= 2 and prev[-1] == prev[-2] == op:
        return False
    return True


def random_program(rng: np.random.Generator, length: int) -> tuple[str, ...]:
    """Random canonical program: each step uniform over instructions allowed by ``_allowed_next``.

    Excluded as obviously redundant: turnLeft/turnRight adjacent in either order (identity),
    putMarker/pickMarker adjacent in either order (identity or a crash), and three identical turns
    in a row (equal to one opposite turn).
    """
    ops: list[int] = []
    for _ in range(length):
        allowed = [op for op in range(5) if _allowed_next(ops, op)]
        ops.append(allowed[int(rng.integers(len(allowed)))])
    return tuple(INSTRUCTIONS[op] for op in ops)


def _relative_effect(ops: Sequence[int], d0: int):
    """Path of a program started at (0,0) facing d0 on an empty unbounded grid.

    Returns (cells visited, {cell: (lo, hi) bounds on its initial marker count}, final cell,
    final facing), or None if some cell would need more than ``MAX_MARKERS`` markers.
    Because moves either succeed or crash, this path is the same on every world it doesn't crash in.
    """
    r = c = 0
    d = d0
    cells = {(0, 0)}
    running: dict[tuple[int, int], list[int]] = {}  # cell -> [net, min_prefix, max_prefix]
    for op in ops:
        if op == MOVE:
            r += _DR[d]
            c += _DC[d]
            cells.add((r, c))
        elif op == TURN_LEFT:
            d = (d + 3) % 4
        elif op == TURN_RIGHT:
            d = (d + 1) % 4
        else:
            s = running.setdefault((r, c), [0, 0, 0])
            s[0] += 1 if op == PUT_MARKER else -1
            s[1] = min(s[1], s[0])
            s[2] = max(s[2], s[0])
    bounds = {}
    for cell, (_, lo_pref, hi_pref) in running.items():
        lo, hi = -lo_pref, MAX_MARKERS - hi_pref
        if lo > hi:
            return None
        bounds[cell] = (lo, hi)
    nets = {cell: s[0] for cell, s in running.items()}
    return cells, bounds, (r, c), d, nets


def _is_identity(ops: Sequence[int]) -> bool:
    """True if the program leaves every world it doesn't crash on unchanged."""
    eff = _relative_effect(ops, 0)
    if eff is None:
        return False
    _, _, end, d, nets = eff
    return end == (0, 0) and d == 0 and all(v == 0 for v in nets.values())


def _sample_conditional_input(rng, ops, grid, wall_prob, marker_prob, max_init_markers):
    """Random input world on which ``ops`` does not crash, or None if no such world exists.

    Exact conditional sampling equivalent to rejection sampling ``random_world`` until no crash:
    (start, facing) is uniform over pairs whose path fits in the grid (each pair has the same
    no-crash probability), path cells are wall-free, and each path cell's marker count is drawn
    from the prior restricted to the no-crash interval. Fallback (documented deviation): if the
    prior puts zero mass on that interval (e.g. 4 picks with ``max_init_markers=3``) the count is
    uniform over the interval.
    """
    H, W = grid
    options = []  # (d0, effect, r_lo, c_lo, n_r, n_c)
    total = 0
    for d0 in range(4):
        eff = _relative_effect(ops, d0)
        if eff is None:
            return None
        cells = eff[0]
        rows = [p[0] for p in cells]
        cols = [p[1] for p in cells]
        n_r = H - (max(rows) - min(rows))
        n_c = W - (max(cols) - min(cols))
        if n_r > 0 and n_c > 0:
            options.append((d0, eff, -min(rows), -min(cols), n_r, n_c))
            total += n_r * n_c
    if total == 0:
        return None
    k = int(rng.integers(total))
    for d0, eff, r_lo, c_lo, n_r, n_c in options:
        if k < n_r * n_c:
            break
        k -= n_r * n_c
    r0, c0 = r_lo + k // n_c, c_lo + k % n_c
    cells, bounds = eff[0], eff[1]
    walls_HW = rng.random((H, W)) < wall_prob
    for dr, dc in cells:
        walls_HW[r0 + dr, c0 + dc] = False
    markers_HW = _sample_marker_prior(rng, (H, W), marker_prob, max_init_markers)
    markers_HW[walls_HW] = 0
    for (dr, dc), (lo, hi) in bounds.items():
        vals = np.arange(lo, hi + 1)
        weights = np.where(vals == 0, 1.0 - marker_prob,
                           np.where(vals <= max_init_markers, marker_prob / max_init_markers, 0.0))
        if weights.sum() <= 0:
            weights = np.ones_like(weights)
        cum = np.cumsum(weights)
        markers_HW[r0 + dr, c0 + dc] = vals[int(np.searchsorted(cum, rng.random() * cum[-1],
                                                                 side="right"))]
    return World._unchecked(walls_HW, markers_HW, (r0, c0), d0)


def random_task(rng: np.random.Generator, n_examples: int = 5, grid: tuple[int, int] = (8, 8),
                program_length: tuple[int, int] = (6, 12), wall_prob: float = 0.1,
                marker_prob: float = 0.2, max_init_markers: int = 3,
                max_program_tries: int = 1000) -> Task:
    """Random non-identity canonical program plus ``n_examples`` crash-free inputs and outputs.

    ``program_length`` is an inclusive (min, max) range. Programs that cannot run crash-free on
    any world of this grid size, or that are the identity on every world, are resampled.
    """
    lo_len, hi_len = program_length
    if not (1 <= lo_len <= hi_len):
        raise ValueError(f"program_length must be (min, max) with 1 <= min <= max, got "
                         f"{program_length}")
    if n_examples < 1:
        raise ValueError("n_examples must be >= 1")
    if not (0 <= wall_prob < 1 and 0 <= marker_prob <= 1 and 1 <= max_init_markers <= MAX_MARKERS):
        raise ValueError("need 0 <= wall_prob < 1, 0 <= marker_prob <= 1, "
                         f"1 <= max_init_markers <= {MAX_MARKERS}")
    grid = (int(grid[0]), int(grid[1]))
    if grid[0] < 1 or grid[1] < 1:
        raise ValueError(f"bad grid {grid}")
    for _ in range(max_program_tries):
        program = random_program(rng, int(rng.integers(lo_len, hi_len + 1)))
        ops = _parse_program(program)
        if _is_identity(ops):
            continue
        inputs = []
        for _ in range(n_examples):
            w = _sample_conditional_input(rng, ops, grid, wall_prob, marker_prob,
                                          max_init_markers)
            if w is None:
                break
            inputs.append(w)
        else:
            outputs = [_run(ops, w, None) for w in inputs]  # cannot crash by construction
            return Task(program, tuple(inputs), tuple(outputs))
    raise RuntimeError(f"no feasible non-identity program found in {max_program_tries} tries "
                       f"for grid={grid}, program_length={program_length}")


def check_program(program: Sequence[str], task: Task) -> bool:
    """True iff ``program`` maps every spec input of ``task`` to its output without crashing."""
    ops = _parse_program(program)
    for w_in, w_out in zip(task.inputs, task.outputs):
        try:
            if _run(ops, w_in, None) != w_out:
                return False
        except RobotCrash:
            return False
    return True


# ----------------------------------------------------------------------------------------------
# Tokens
# ----------------------------------------------------------------------------------------------


class Vocab:
    """Fixed 63-token vocabulary (ids are stable, pad=0).

    Cells: ``.`` empty, ``#`` wall, ``1``..``9`` markers; the robot's cell is ONE token ``rDk``
    (direction D in NESW, k = markers under the robot, 0..9), so grids keep a fixed H*W layout
    and the encoding is lossless.
    """

    SPECIALS = ("<pad>", "<bos>", "<eos>", "<in>", "<out>", "<prog>", "<nl>")

    def __init__(self):
        itos = list(self.SPECIALS) + [".", "#"] + [str(k) for k in range(1, MAX_MARKERS + 1)]
        itos += [f"r{d}{k}" for d in DIRECTIONS for k in range(MAX_MARKERS + 1)]
        itos += list(INSTRUCTIONS)
        self.itos: tuple[str, ...] = tuple(itos)
        self.stoi: dict[str, int] = {s: i for i, s in enumerate(itos)}
        (self.pad, self.bos, self.eos, self.inp, self.out, self.prog,
         self.nl) = (self.stoi[s] for s in self.SPECIALS)
        self.empty, self.wall = self.stoi["."], self.stoi["#"]
        self.marker0 = self.stoi["1"] - 1  # marker k -> marker0 + k
        self.robot0 = self.stoi["rN0"]  # robot(d, k) -> robot0 + 10 * d + k
        self.instr0 = self.stoi[INSTRUCTIONS[0]]  # op -> instr0 + op

    def __len__(self) -> int:
        return len(self.itos)

    @property
    def size(self) -> int:
        return len(self.itos)

    def robot_token(self, facing: int, markers: int) -> int:
        return self.robot0 + (MAX_MARKERS + 1) * facing + markers

    def is_instruction(self, tok: int) -> bool:
        return self.instr0 <= tok < self.instr0 + len(INSTRUCTIONS)

    def to_strings(self, tokens: Iterable[int]) -> list[str]:
        return [self.itos[int(t)] for t in tokens]


VOCAB = Vocab()


def encode_world(world: World, vocab: Vocab = VOCAB) -> list[int]:
    """Grid row by row, ``<nl>`` between rows (H*W + H - 1 tokens)."""
    H, W = world.shape
    cells_HW = np.where(world.walls_HW, vocab.wall,
                        np.where(world.markers_HW > 0, vocab.marker0 + world.markers_HW,
                                 vocab.empty)).astype(np.int64)
    r, c = world.robot_rc
    cells_HW[r, c] = vocab.robot_token(world.facing, int(world.markers_HW[r, c]))
    rows_HW1 = np.concatenate([cells_HW, np.full((H, 1), vocab.nl)], axis=1)
    return rows_HW1.reshape(-1)[:-1].tolist()


def encode_task(task: Task, vocab: Vocab = VOCAB) -> list[int]:
    """``<bos> (<in> grid <out> grid)*n <prog> instr* <eos>`` as token ids."""
    toks = [vocab.bos]
    for w_in, w_out in zip(task.inputs, task.outputs):
        toks.append(vocab.inp)
        toks += encode_world(w_in, vocab)
        toks.append(vocab.out)
        toks += encode_world(w_out, vocab)
    toks.append(vocab.prog)
    toks += [vocab.instr0 + op for op in _parse_program(task.program)]
    toks.append(vocab.eos)
    return toks


def sequence_length(grid: tuple[int, int], n_examples: int, program_len: int) -> int:
    """Number of tokens :func:`encode_task` produces for this configuration."""
    H, W = grid
    return 1 + n_examples * 2 * (1 + H * W + H - 1) + 1 + program_len + 1


def _decode_world(toks: Sequence[int], vocab: Vocab) -> World:
    rows, row = [], []
    for t in toks:
        if t == vocab.nl:
            rows.append(row)
            row = []
        else:
            row.append(int(t))
    rows.append(row)
    if len({len(r) for r in rows}) != 1 or not rows[0]:
        raise ValueError("grid rows have unequal or zero length")
    H, W = len(rows), len(rows[0])
    walls_HW = np.zeros((H, W), bool)
    markers_HW = np.zeros((H, W), np.int8)
    robot = None
    for r in range(H):
        for c, t in enumerate(rows[r]):
            if t == vocab.wall:
                walls_HW[r, c] = True
            elif t == vocab.empty:
                pass
            elif vocab.marker0 + 1 <= t <= vocab.marker0 + MAX_MARKERS:
                markers_HW[r, c] = t - vocab.marker0
            elif vocab.robot0 <= t < vocab.robot0 + 4 * (MAX_MARKERS + 1):
                if robot is not None:
                    raise ValueError("grid has more than one robot")
                d, k = divmod(t - vocab.robot0, MAX_MARKERS + 1)
                robot = ((r, c), d)
                markers_HW[r, c] = k
            else:
                raise ValueError(f"token {vocab.itos[t]!r} is not a grid cell")
    if robot is None:
        raise ValueError("grid has no robot")
    return World(walls_HW, markers_HW, robot[0], robot[1])


def decode_task(tokens: Sequence[int], vocab: Vocab = VOCAB) -> Task:
    """Inverse of :func:`encode_task` (trailing ``<pad>`` allowed); raises ValueError if malformed."""
    toks = [int(t) for t in tokens]
    while toks and toks[-1] == vocab.pad:
        toks.pop()
    if not toks or toks[0] != vocab.bos:
        raise ValueError("sequence must start with <bos>")
    p = program_start_index(toks, vocab)
    seps = {vocab.inp, vocab.out, vocab.prog}
    spec = toks[1:p - 1] + [vocab.prog]
    inputs, outputs, i = [], [], 0
    while spec[i] != vocab.prog:
        kind = spec[i]
        j = i + 1
        while spec[j] not in seps:
            j += 1
        expected = vocab.inp if len(inputs) == len(outputs) else vocab.out
        if kind != expected:
            raise ValueError(f"expected {vocab.itos[expected]} at token {i + 1}")
        world = _decode_world(spec[i + 1:j], vocab)
        (inputs if kind == vocab.inp else outputs).append(world)
        i = j
    if len(inputs) != len(outputs) or not inputs:
        raise ValueError("spec must hold one or more complete <in>/<out> pairs")
    return Task(decode_program(toks, vocab), tuple(inputs), tuple(outputs))


def program_start_index(tokens: Sequence[int], vocab: Vocab = VOCAB) -> int:
    """Index of the first program instruction (one past ``<prog>``); ValueError if absent."""
    for i, t in enumerate(tokens):
        if int(t) == vocab.prog:
            return i + 1
    raise ValueError("no <prog> token in sequence")


def decode_program(tokens: Sequence[int], vocab: Vocab = VOCAB) -> tuple[str, ...]:
    """Instruction names after ``<prog>`` (or from the start if absent) up to ``<eos>``/``<pad>``.

    Raises ValueError on any other token inside the program (a malformed generation).
    """
    toks = [int(t) for t in tokens]
    start = program_start_index(toks, vocab) if vocab.prog in toks else 0
    program = []
    for i in range(start, len(toks)):
        t = toks[i]
        if t in (vocab.eos, vocab.pad):
            break
        if not vocab.is_instruction(t):
            name = vocab.itos[t] if 0 <= t < len(vocab) else str(t)
            raise ValueError(f"token {name!r} at index {i} is not an instruction")
        program.append(INSTRUCTIONS[t - vocab.instr0])
    return tuple(program)


# ----------------------------------------------------------------------------------------------
# Probe labels and datasets
# ----------------------------------------------------------------------------------------------


def facing_labels(task: Task, example: int = 0) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Facing after instructions 0..i, and 1 / 2 instructions later (-1 past the end), per token i.

    Single-trace probing as in Jin & Rinard: labels come from input example ``example`` (the
    first by default), since one program token cannot encode all spec traces at once.
    """
    cur_L = facing_trace(task.program, task.inputs[example])
    L = cur_L.size
    next1_L = np.full(L, -1, np.int8)
    next2_L = np.full(L, -1, np.int8)
    next1_L[:max(L - 1, 0)] = cur_L[1:]
    next2_L[:max(L - 2, 0)] = cur_L[2:]
    return cur_L, next1_L, next2_L


@dataclass
class GridDataset:
    """Padded token batch with program-position mask and facing labels (-1 = no label)."""

    tokens_NT: np.ndarray  # int32, pad = 0
    program_mask_NT: np.ndarray  # bool, True at program instruction tokens
    facing_NT: np.ndarray  # int8, facing after the instruction at this position
    facing_next_NT: np.ndarray  # int8, one instruction later (-1 beyond the end)
    facing_next2_NT: np.ndarray  # int8, two instructions later (-1 beyond the end)
    lengths_N: np.ndarray  # int32, unpadded sequence lengths
    program_start_N: np.ndarray  # int32, index of the first instruction token
    tasks: list[Task] = dataclasses.field(repr=False)


def make_dataset(n: int, seed: int, pad_to: int | None = None, vocab: Vocab = VOCAB,
                 **task_kw) -> GridDataset:
    """``n`` random tasks (``random_task(**task_kw)``) as padded tokens plus probe labels.

    Deterministic for a seed. ``pad_to`` defaults to the longest possible sequence for the
    configuration, so batches with equal settings share one shape. Speed on a 2-core CPU
    (single process): ~3,000 tasks/s with defaults (8x8 grids, 5 examples, T=735) and
    ~5,000 tasks/s with grid=(5, 5), n_examples=3 (T=195).
    """
    rng = np.random.default_rng(seed)
    tasks = [random_task(rng, **task_kw) for _ in range(n)]
    seqs = [encode_task(t, vocab) for t in tasks]
    if pad_to is None:
        defaults = {k: p.default for k, p in inspect.signature(random_task).parameters.items()}
        kw = {**defaults, **task_kw}
        pad_to = sequence_length(kw["grid"], kw["n_examples"], kw["program_length"][1])
    longest = max((len(s) for s in seqs), default=0)
    if longest > pad_to:
        raise ValueError(f"pad_to={pad_to} is shorter than the longest sequence ({longest})")
    tokens_NT = np.full((n, pad_to), vocab.pad, np.int32)
    mask_NT = np.zeros((n, pad_to), bool)
    labels = [np.full((n, pad_to), -1, np.int8) for _ in range(3)]
    lengths_N = np.zeros(n, np.int32)
    starts_N = np.zeros(n, np.int32)
    for i, (task, seq) in enumerate(zip(tasks, seqs)):
        tokens_NT[i, :len(seq)] = seq
        lengths_N[i] = len(seq)
        p = len(seq) - 1 - len(task.program)
        starts_N[i] = p
        mask_NT[i, p:p + len(task.program)] = True
        for arr_NT, lab_L in zip(labels, facing_labels(task)):
            arr_NT[i, p:p + len(task.program)] = lab_L
    return GridDataset(tokens_NT, mask_NT, labels[0], labels[1], labels[2], lengths_N, starts_N,
                       tasks)
