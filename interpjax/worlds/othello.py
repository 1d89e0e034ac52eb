"""Othello (Reversi) engine, random-game generator and probe labels for training an Othello-GPT.

Follows Li et al. 2023 ("Emergent World Representations"): a GPT sees only sequences of legal moves
(passes are implicit, never tokens) and probes read the board state from its activations.

Squares are ints 0..63, ``index = row * 8 + col``; a square is named by its row letter A-H and its
column number 1-8, as in the Othello-GPT paper (square 0 = "A1", 27 = "D4", 63 = "H8").
Start position: D4 (27) and E5 (36) white, D5 (28) and E4 (35) black; black moves first.

Two engines share the same rules:
  * a scalar one on Python-int 64-bit bitboards (bit ``i`` = square ``i``): ``OthelloState``,
    ``random_game``, ``replay``;
  * a batched one on numpy ``uint64`` bitboards (one row per game): ``generate_games`` and the
    probe labels ``board_states``, ``relative_board_states``, ``legal_next_moves``, ``next_player``.
``generate_games(n, seed)`` yields exactly the games ``[random_game(rng) for _ in range(n)]`` with
``rng = np.random.default_rng(seed)`` (each game draws ``rng.random(60)`` and at its t-th move picks
the ``floor(u[t] * n_legal)``-th legal square in increasing order), just faster.

Measured on a 2-core CPU (AMD EPYC, shared with other jobs; Python 3.11, numpy 2.4), one core:
  * ``random_game``: about 3,600 games/s;
  * ``generate_games``: about 50,000 games/s (batched, 8192 games per chunk);
  * ``probe_labels`` (all four label arrays): 15,000-25,000 games/s; the labels take about
    11.5 KB per game, so label large data sets in chunks.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Iterable, Sequence

import numpy as np

__all__ = [
    "BOARD_SIZE",
    "NUM_SQUARES",
    "MAX_MOVES",
    "PAD_MOVE",
    "PAD_TOKEN",
    "VOCAB_SIZE",
    "BLACK",
    "WHITE",
    "EMPTY",
    "CENTRE_SQUARES",
    "MOVE_TO_TOKEN",
    "TOKEN_TO_MOVE",
    "square_name",
    "square_index",
    "OthelloState",
    "random_game",
    "replay",
    "generate_games",
    "encode",
    "decode",
    "board_states",
    "relative_board_states",
    "legal_next_moves",
    "next_player",
    "probe_labels",
]

BOARD_SIZE = 8
NUM_SQUARES = 64
MAX_MOVES = 60  # 64 squares minus the 4 pre-filled centre squares
PAD_MOVE = -1
PAD_TOKEN = 0
VOCAB_SIZE = 61  # padding + 60 playable squares
BLACK, WHITE, EMPTY = 1, -1, 0
CENTRE_SQUARES = (27, 28, 35, 36)

_ROWS = "ABCDEFGH"
_FULL = (1 << 64) - 1
_INNER_COLS = 0x7E7E7E7E7E7E7E7E  # all squares except columns 1 and 8
_START_BLACK = (1 << 28) | (1 << 35)  # D5, E4
_START_WHITE = (1 << 27) | (1 << 36)  # D4, E5
# (shift, use-inner-columns mask): E/W, S/N, SW/NE, SE/NW; each used both left and right.
# Left shift by s moves a square by +s (1 = one column right, 8 = one row down).
_DIRECTIONS = ((1, True), (8, False), (7, True), (9, True))


# ---------------------------------------------------------------------------------------------
# Square names and tokens
# ---------------------------------------------------------------------------------------------


def square_name(i: int) -> str:
    """Name of square ``i`` (0..63): row letter A-H then column number 1-8, e.g. 27 -> "D4"."""
    i = int(i)
    if not 0 <= i < NUM_SQUARES:
        raise ValueError(f"square index must be in 0..63, got {i}")
    return f"{_ROWS[i // 8]}{i % 8 + 1}"


def square_index(name: str) -> int:
    """Index (0..63) of a square named like "D4" (row letter, column number; case-insensitive)."""
    s = name.strip().upper()
    if len(s) != 2 or s[0] not in _ROWS or s[1] not in "12345678":
        raise ValueError(f"bad square name {name!r}; expected a row letter A-H and a column 1-8")
    return _ROWS.index(s[0]) * 8 + int(s[1]) - 1


def _names(squares: Iterable[int]) -> str:
    sq = [square_name(s) for s in squares]
    return ", ".join(sq) if sq else "(none)"


def _build_token_tables() -> tuple[np.ndarray, np.ndarray]:
    move_to_token_64 = np.full(NUM_SQUARES, -1, dtype=np.int64)
    playable = [s for s in range(NUM_SQUARES) if s not in CENTRE_SQUARES]
    move_to_token_64[playable] = np.arange(1, MAX_MOVES + 1)
    token_to_move_V = np.array([PAD_MOVE] + playable, dtype=np.int64)
    move_to_token_64.flags.writeable = False
    token_to_move_V.flags.writeable = False
    return move_to_token_64, token_to_move_V


# MOVE_TO_TOKEN[square] = token 1..60 (-1 for the four centre squares, which are never played);
# TOKEN_TO_MOVE[token] = square (TOKEN_TO_MOVE[0] = -1, the padding move).
MOVE_TO_TOKEN, TOKEN_TO_MOVE = _build_token_tables()


def encode(moves) -> np.ndarray:
    """Moves (squares, -1 = padding; any shape) -> LM tokens (1..60, 0 = padding), int64."""
    moves_A = _checked_ints(moves, -1, NUM_SQUARES - 1, "moves must be squares 0..63 or -1 (padding)")
    tokens_A = np.where(moves_A < 0, PAD_TOKEN, MOVE_TO_TOKEN[np.maximum(moves_A, 0)])
    if (tokens_A < 0).any():
        bad = sorted({int(m) for m in moves_A[tokens_A < 0]})
        raise ValueError(f"centre squares {_names(bad)} are never moves and have no token")
    return tokens_A


def decode(tokens) -> np.ndarray:
    """LM tokens (0..60; any shape) -> moves (squares 0..63, -1 for padding token 0), int64."""
    tokens_A = _checked_ints(tokens, 0, VOCAB_SIZE - 1, f"tokens must be in 0..{VOCAB_SIZE - 1}")
    return TOKEN_TO_MOVE[tokens_A]


def _checked_ints(values, lo: int, hi: int, what: str) -> np.ndarray:
    """``values`` as int64 after checking, in the caller's own dtype, that they are integers in
    lo..hi (floats are refused, not truncated; huge unsigned values do not wrap)."""
    a = np.asarray(values)
    if a.size == 0:
        return a.astype(np.int64)
    if a.dtype == np.bool_ or not np.issubdtype(a.dtype, np.integer):
        raise ValueError(f"{what}; got dtype {a.dtype.name} ({sorted(set(a.ravel().tolist()))[:5]})")
    bad = a[(a < lo) | (a > hi)]
    if bad.size:
        raise ValueError(f"{what}; got {sorted(set(bad.ravel().tolist()))[:5]}")
    return a.astype(np.int64)


# ---------------------------------------------------------------------------------------------
# Scalar bitboard engine (Python ints)
# ---------------------------------------------------------------------------------------------


def _legal_bits(own: int, opp: int) -> int:
    """Bitboard of legal moves for the side owning ``own`` against ``opp``."""
    empty = ~(own | opp) & _FULL
    opp_inner = opp & _INNER_COLS
    moves = 0
    for s, inner in _DIRECTIONS:
        o = opp_inner if inner else opp
        # Runs of opponent discs adjacent to own discs (at most 6 long), in both directions.
        x = (own << s) & o
        x |= (x << s) & o
        x |= (x << s) & o
        x |= (x << s) & o
        x |= (x << s) & o
        x |= (x << s) & o
        moves |= x << s
        x = (own >> s) & o
        x |= (x >> s) & o
        x |= (x >> s) & o
        x |= (x >> s) & o
        x |= (x >> s) & o
        x |= (x >> s) & o
        moves |= x >> s
    return moves & empty


def _flip_bits(own: int, opp: int, move_bit: int) -> int:
    """Bitboard of opponent discs flipped when ``own`` plays ``move_bit`` (assumed empty)."""
    opp_inner = opp & _INNER_COLS
    flips = 0
    for s, inner in _DIRECTIONS:
        o = opp_inner if inner else opp
        x = (move_bit << s) & o
        if x:
            x |= (x << s) & o
            x |= (x << s) & o
            x |= (x << s) & o
            x |= (x << s) & o
            x |= (x << s) & o
            if (x << s) & own:
                flips |= x
        x = (move_bit >> s) & o
        if x:
            x |= (x >> s) & o
            x |= (x >> s) & o
            x |= (x >> s) & o
            x |= (x >> s) & o
            x |= (x >> s) & o
            if (x >> s) & own:
                flips |= x
    return flips


def _bits_to_list(bits: int) -> list[int]:
    out = []
    while bits:
        low = bits & -bits
        out.append(low.bit_length() - 1)
        bits ^= low
    return out


@dataclass(frozen=True)
class OthelloState:
    """Immutable Othello position: ``black``/``white`` bitboards (bit i = square i), ``to_move``.

    ``to_move`` is +1 (black) or -1 (white). ``play`` resolves forced passes itself (see there), so
    along a game played with ``play`` the state's ``to_move`` is always the player who really moves.
    """

    black: int = _START_BLACK
    white: int = _START_WHITE
    to_move: int = BLACK

    def __post_init__(self):
        if self.to_move not in (BLACK, WHITE):
            raise ValueError(f"to_move must be +1 (black) or -1 (white), got {self.to_move}")
        if not (0 <= self.black <= _FULL and 0 <= self.white <= _FULL):
            raise ValueError("bitboards must be 64-bit non-negative ints")
        if self.black & self.white:
            raise ValueError(f"squares occupied by both colours: {_names(_bits_to_list(self.black & self.white))}")

    # -- construction ------------------------------------------------------------------------
    @classmethod
    def initial(cls) -> "OthelloState":
        """The standard start position, black to move."""
        return cls()

    @classmethod
    def from_array(cls, board_88, to_move: int = BLACK) -> "OthelloState":
        """Build from an 8x8 array (``board[row, col]``: 1 black, -1 white, 0 empty)."""
        board_88 = np.asarray(board_88)
        if board_88.shape != (8, 8) or not np.isin(board_88, (-1, 0, 1)).all():
            raise ValueError("board must be an 8x8 array of -1 / 0 / 1")
        flat_64 = board_88.reshape(64)
        black = sum(1 << int(i) for i in np.flatnonzero(flat_64 == BLACK))
        white = sum(1 << int(i) for i in np.flatnonzero(flat_64 == WHITE))
        return cls(black, white, int(to_move))

    # -- queries -----------------------------------------------------------------------------
    def _own_opp(self) -> tuple[int, int]:
        return (self.black, self.white) if self.to_move == BLACK else (self.white, self.black)

    def legal_bits(self) -> int:
        """Bitboard of the legal moves of the player to move."""
        own, opp = self._own_opp()
        return _legal_bits(own, opp)

    def legal_moves(self) -> list[int]:
        """Legal squares for the player to move, ascending (empty if they must pass or game over)."""
        return _bits_to_list(self.legal_bits())

    def must_pass(self) -> bool:
        """True if the player to move has no legal move but the opponent has one."""
        own, opp = self._own_opp()
        return _legal_bits(own, opp) == 0 and _legal_bits(opp, own) != 0

    def is_over(self) -> bool:
        """True when neither player has a legal move (this includes a full board)."""
        own, opp = self._own_opp()
        return _legal_bits(own, opp) == 0 and _legal_bits(opp, own) == 0

    def score(self) -> tuple[int, int]:
        """(number of black discs, number of white discs)."""
        return self.black.bit_count(), self.white.bit_count()

    def winner(self) -> int:
        """+1 black ahead, -1 white ahead, 0 draw (by current disc count)."""
        b, w = self.score()
        return (b > w) - (b < w)

    def to_array(self) -> np.ndarray:
        """int8 [8, 8] board (``[row, col]``): 1 black, -1 white, 0 empty."""
        bits_2 = np.array([self.black, self.white], dtype=np.uint64)
        squares_264 = _squares_from_bits(bits_2).astype(np.int8)
        return (squares_264[0] - squares_264[1]).reshape(8, 8)

    # -- transitions -------------------------------------------------------------------------
    def pass_turn(self) -> "OthelloState":
        """Hand the move to the opponent; only allowed when the player to move must pass."""
        if not self.must_pass():
            what = "the game is over" if self.is_over() else f"legal moves: {_names(self.legal_moves())}"
            raise ValueError(f"{'black' if self.to_move == BLACK else 'white'} cannot pass ({what})")
        return OthelloState(self.black, self.white, -self.to_move)

    def play(self, square: int, auto_pass: bool = True) -> "OthelloState":
        """Play ``square`` for the player to move and return the new state.

        The turn then goes to the opponent; with ``auto_pass`` (default), if the opponent has no
        legal move but the mover does, the opponent passes implicitly and the mover moves again.
        Raises ValueError naming the legal moves if ``square`` is illegal.
        """
        own, opp = self._own_opp()
        legal = _legal_bits(own, opp)
        square = int(square)
        if not (0 <= square < NUM_SQUARES and (legal >> square) & 1):
            who = "black" if self.to_move == BLACK else "white"
            where = square_name(square) if 0 <= square < NUM_SQUARES else "off the board"
            raise ValueError(
                f"illegal move {where} (square {square}) for {who}; legal moves: {_names(_bits_to_list(legal))}"
                + (" (must pass)" if not legal and _legal_bits(opp, own) else "")
                + (" (game over)" if not legal and not _legal_bits(opp, own) else "")
            )
        bit = 1 << square
        flips = _flip_bits(own, opp, bit)
        own |= bit | flips
        opp ^= flips
        to_move = -self.to_move
        if auto_pass and not _legal_bits(opp, own) and _legal_bits(own, opp):
            to_move = self.to_move
        if self.to_move == BLACK:
            return OthelloState(own, opp, to_move)
        return OthelloState(opp, own, to_move)

    def __str__(self) -> str:
        arr_88 = self.to_array()
        legal = self.legal_bits()
        lines = ["  " + " ".join(str(c + 1) for c in range(8))]
        for r in range(8):
            cells = []
            for c in range(8):
                v = arr_88[r, c]
                cells.append("X" if v == BLACK else "O" if v == WHITE else ("*" if (legal >> (r * 8 + c)) & 1 else "."))
            lines.append(_ROWS[r] + " " + " ".join(cells))
        b, w = self.score()
        lines.append(f"{'black (X)' if self.to_move == BLACK else 'white (O)'} to move; X {b} - O {w}; * = legal")
        return "\n".join(lines)


def random_game(rng: np.random.Generator) -> list[int]:
    """Play uniformly random legal moves from the start until neither side can move; return squares.

    Passes are implicit (not in the list). Draws ``rng.random(60)`` once per game (see module doc).
    """
    u_60 = rng.random(MAX_MOVES)
    own, opp = _START_BLACK, _START_WHITE  # black to move
    moves: list[int] = []
    legal = _legal_bits(own, opp)
    while True:
        if not legal:
            own, opp = opp, own  # pass
            legal = _legal_bits(own, opp)
            if not legal:
                break
        k = int(u_60[len(moves)] * legal.bit_count())
        bits = legal
        for _ in range(k):
            bits &= bits - 1
        bit = bits & -bits
        flips = _flip_bits(own, opp, bit)
        own, opp = opp ^ flips, own | bit | flips  # play, then the opponent is to move
        moves.append(bit.bit_length() - 1)
        legal = _legal_bits(own, opp)
    return moves


def replay(moves: Sequence[int], start: OthelloState | None = None) -> list[OthelloState]:
    """States after each move of ``moves`` (from ``start``, default the initial position).

    Passes are implicit; trailing -1 padding is ignored. Raises ValueError on an illegal move,
    naming the ply, the move and the legal moves.
    """
    state = OthelloState.initial() if start is None else start
    states = []
    moves = [int(m) for m in moves]
    n = len(moves)
    while n and moves[n - 1] == PAD_MOVE:
        n -= 1
    for ply, m in enumerate(moves[:n]):
        try:
            state = state.play(m)
        except ValueError as e:
            raise ValueError(f"illegal move sequence at ply {ply}: {e}") from None
        states.append(state)
    return states


# ---------------------------------------------------------------------------------------------
# Batched bitboard engine (numpy uint64, one row per game)
# ---------------------------------------------------------------------------------------------

_U = np.uint64
_U_FULL = _U(_FULL)
_U_INNER = _U(_INNER_COLS)
_U_ZERO = _U(0)
_U_SHIFTS = tuple((_U(s), inner) for s, inner in _DIRECTIONS)


def _ray_np(seed_N: np.ndarray, o_N: np.ndarray, s, left: bool) -> np.ndarray:
    """Opponent discs reachable from ``seed`` by repeated shifts of ``s`` in one direction."""
    step = (lambda a: a << s) if left else (lambda a: a >> s)
    x_N = step(seed_N) & o_N
    for _ in range(5):
        x_N |= step(x_N) & o_N
    return x_N


def _legal_np(own_N: np.ndarray, opp_N: np.ndarray) -> np.ndarray:
    """Batched ``_legal_bits`` on uint64 arrays."""
    empty_N = ~(own_N | opp_N)
    opp_inner_N = opp_N & _U_INNER
    moves_N = np.zeros_like(own_N)
    for s, inner in _U_SHIFTS:
        o_N = opp_inner_N if inner else opp_N
        moves_N |= _ray_np(own_N, o_N, s, True) << s
        moves_N |= _ray_np(own_N, o_N, s, False) >> s
    return moves_N & empty_N


def _flips_np(own_N: np.ndarray, opp_N: np.ndarray, bit_N: np.ndarray) -> np.ndarray:
    """Batched ``_flip_bits``; rows with ``bit == 0`` get no flips."""
    opp_inner_N = opp_N & _U_INNER
    flips_N = np.zeros_like(own_N)
    for s, inner in _U_SHIFTS:
        o_N = opp_inner_N if inner else opp_N
        x_N = _ray_np(bit_N, o_N, s, True)
        flips_N |= np.where(((x_N << s) & own_N) != 0, x_N, _U_ZERO)
        x_N = _ray_np(bit_N, o_N, s, False)
        flips_N |= np.where(((x_N >> s) & own_N) != 0, x_N, _U_ZERO)
    return flips_N


def _squares_from_bits(bits_A: np.ndarray) -> np.ndarray:
    """uint64 bitboards [...] -> uint8 0/1 [..., 64] with entry i = bit i."""
    bytes_A8 = np.ascontiguousarray(bits_A, dtype="<u8").view(np.uint8).reshape(*bits_A.shape, 8)
    return np.unpackbits(bytes_A8, axis=-1, bitorder="little")


def _advance_np(own_N, opp_N, colour_N, bit_N):
    """Play ``bit`` (0 = no move) for each row; return new (own, opp, colour, legal) after passes.

    ``colour`` is the colour of ``own`` (the player to move): +1/-1, or 0 once the game is over.
    """
    flips_N = _flips_np(own_N, opp_N, bit_N)
    moved_N = bit_N != 0
    new_own_N = np.where(moved_N, opp_N ^ flips_N, own_N)
    new_opp_N = np.where(moved_N, own_N | bit_N | flips_N, opp_N)
    colour_N = np.where(moved_N, -colour_N, colour_N).astype(np.int8)
    legal_N = _legal_np(new_own_N, new_opp_N)
    stuck_N = moved_N & (legal_N == 0)
    if stuck_N.any():
        back_N = _legal_np(new_opp_N, new_own_N)
        swap_N = stuck_N & (back_N != 0)  # the opponent passes, the mover goes again
        new_own_N, new_opp_N = np.where(swap_N, new_opp_N, new_own_N), np.where(swap_N, new_own_N, new_opp_N)
        legal_N = np.where(swap_N, back_N, legal_N)
        colour_N = np.where(swap_N, -colour_N, colour_N)
        colour_N = np.where(stuck_N & ~swap_N, 0, colour_N).astype(np.int8)  # game over
    return new_own_N, new_opp_N, colour_N, legal_N


def _start_np(n: int):
    own_N = np.full(n, _START_BLACK, dtype=np.uint64)
    opp_N = np.full(n, _START_WHITE, dtype=np.uint64)
    colour_N = np.ones(n, dtype=np.int8)
    legal_N = _legal_np(own_N, opp_N)
    return own_N, opp_N, colour_N, legal_N


def _random_games_np(u_NT: np.ndarray) -> np.ndarray:
    """Random games driven by uniforms ``u[game, move]`` (same choice rule as ``random_game``)."""
    n = u_NT.shape[0]
    games_NT = np.full((n, MAX_MOVES), PAD_MOVE, dtype=np.int8)
    own_N, opp_N, colour_N, legal_N = _start_np(n)
    for t in range(MAX_MOVES):
        live_N = legal_N != 0
        if not live_N.any():
            break
        legal_N64 = _squares_from_bits(legal_N)
        count_N = legal_N64.sum(axis=1, dtype=np.int64)
        k_N = (u_NT[:, t] * count_N).astype(np.int64)
        square_N = np.argmax(np.cumsum(legal_N64, axis=1, dtype=np.int16) > k_N[:, None], axis=1)
        games_NT[:, t] = np.where(live_N, square_N, PAD_MOVE)
        bit_N = np.where(live_N, np.left_shift(_U(1), square_N.astype(np.uint64)), _U_ZERO)
        own_N, opp_N, colour_N, legal_N = _advance_np(own_N, opp_N, colour_N, bit_N)
    return games_NT


def generate_games(n: int, seed: int, min_length: int | None = None) -> np.ndarray:
    """``n`` uniformly random complete games as int8 ``[n, 60]`` squares, padded with -1.

    Deterministic for ``seed``; equal to consecutive ``random_game(np.random.default_rng(seed))``
    calls, keeping only games with at least ``min_length`` moves (so smaller ``n`` is a prefix).
    """
    if n < 0:
        raise ValueError("n must be >= 0")
    if min_length is not None and not 0 <= min_length <= MAX_MOVES:
        raise ValueError(f"min_length must be in 0..{MAX_MOVES}")
    rng = np.random.default_rng(seed)
    out, have = [], 0
    while have < n:
        # The row stream of uniforms does not depend on chunking, so neither do the games.
        chunk = int(min(8192, max(64, 1.2 * (n - have) if min_length is None else 2 * (n - have))))
        games_NT = _random_games_np(rng.random((chunk, MAX_MOVES)))
        if min_length is not None:
            games_NT = games_NT[(games_NT >= 0).sum(axis=1) >= min_length]
        out.append(games_NT[: n - have])
        have += len(out[-1])
    return np.concatenate(out) if out else np.zeros((0, MAX_MOVES), dtype=np.int8)


def _replay_np(games_NT) -> dict:
    """Replay a batch of padded games, validating legality; return per-move uint64 bitboards etc."""
    games_NT = np.asarray(games_NT)
    if games_NT.ndim != 2 or games_NT.shape[1] > MAX_MOVES:
        raise ValueError(f"games must have shape [n, T<=60], got {games_NT.shape}")
    games_NT = games_NT.astype(np.int64)
    n, T = games_NT.shape
    if games_NT.size and (games_NT.min() < -1 or games_NT.max() >= NUM_SQUARES):
        raise ValueError("moves must be squares 0..63 or -1 (padding)")
    valid_NT = games_NT >= 0
    bad_N = (~valid_NT[:, :-1] & valid_NT[:, 1:]).any(axis=1) if T > 1 else np.zeros(n, bool)
    if bad_N.any():
        raise ValueError(f"game {int(np.argmax(bad_N))}: a move follows -1 padding (padding must be trailing)")
    black_NT = np.zeros((n, T), dtype=np.uint64)
    white_NT = np.zeros((n, T), dtype=np.uint64)
    legal_NT = np.zeros((n, T), dtype=np.uint64)
    next_NT = np.zeros((n, T), dtype=np.int8)
    rel_NT = np.zeros((n, T), dtype=np.int8)  # colour that "mine" refers to; 0 on padding
    own_N, opp_N, colour_N, legal_N = _start_np(n)
    for t in range(T):
        square_N = games_NT[:, t]
        valid_N = valid_NT[:, t]
        bit_N = np.where(valid_N, np.left_shift(_U(1), np.maximum(square_N, 0).astype(np.uint64)), _U_ZERO)
        illegal_N = valid_N & ((legal_N & bit_N) == 0)
        if illegal_N.any():
            g = int(np.argmax(illegal_N))
            who = {1: "black", -1: "white", 0: "nobody (game over)"}[int(colour_N[g])]
            raise ValueError(
                f"game {g}, ply {t}: illegal move {square_name(int(square_N[g]))} (square {int(square_N[g])}) "
                f"for {who}; legal moves: {_names(_bits_to_list(int(legal_N[g])))}"
            )
        mover_N = colour_N
        own_N, opp_N, colour_N, legal_N = _advance_np(own_N, opp_N, colour_N, bit_N)
        # colour 0 (over): own/opp are still (opponent of mover, mover) since no swap happened.
        own_is_black_N = np.where(colour_N != 0, colour_N == BLACK, mover_N == WHITE)
        black_NT[:, t] = np.where(valid_N, np.where(own_is_black_N, own_N, opp_N), _U_ZERO)
        white_NT[:, t] = np.where(valid_N, np.where(own_is_black_N, opp_N, own_N), _U_ZERO)
        legal_NT[:, t] = np.where(valid_N, legal_N, _U_ZERO)
        next_NT[:, t] = np.where(valid_N, colour_N, 0)
        rel_NT[:, t] = np.where(valid_N, np.where(colour_N != 0, colour_N, -mover_N), 0)
    return dict(black_NT=black_NT, white_NT=white_NT, legal_NT=legal_NT, next_NT=next_NT, rel_NT=rel_NT)


def _board_states_from(r: dict) -> np.ndarray:
    return _squares_from_bits(r["black_NT"]).astype(np.int8) - _squares_from_bits(r["white_NT"]).astype(np.int8)


def _relative_from(r: dict) -> np.ndarray:
    black_NT64 = _squares_from_bits(r["black_NT"])
    white_NT64 = _squares_from_bits(r["white_NT"])
    ref_black_NT1 = (r["rel_NT"] == BLACK)[..., None]
    mine_NT64 = np.where(ref_black_NT1, black_NT64, white_NT64)
    theirs_NT64 = np.where(ref_black_NT1, white_NT64, black_NT64)
    return (mine_NT64 + 2 * theirs_NT64).astype(np.int8)


def board_states(games_NT) -> np.ndarray:
    """int8 ``[n, T, 64]``: board after each move (1 black, -1 white, 0 empty); all 0 on padding."""
    return _board_states_from(_replay_np(games_NT))


def relative_board_states(games_NT) -> np.ndarray:
    """int8 ``[n, T, 64]`` after each move: 0 empty, 1 "mine", 2 "theirs"; all 0 on padding.

    "Mine" = discs of the player who moves NEXT, i.e. ``next_player`` (after an implicit pass
    that is the same colour that just moved). After the final move (game over) it is the
    opponent of the player who made that move. Usually the mover's discs are thus "theirs".
    """
    return _relative_from(_replay_np(games_NT))


def legal_next_moves(games_NT) -> np.ndarray:
    """bool ``[n, T, 64]``: legal squares for the player to move after each move (passes resolved).

    All False after the game is over and on padding.
    """
    return _squares_from_bits(_replay_np(games_NT)["legal_NT"]).astype(bool)


def next_player(games_NT) -> np.ndarray:
    """int8 ``[n, T]``: who moves after each move: +1 black, -1 white, 0 game over or padding."""
    return _replay_np(games_NT)["next_NT"]


def probe_labels(games_NT) -> dict[str, np.ndarray]:
    """All four label arrays from one replay: keys ``board_states``, ``relative_board_states``,
    ``legal_next_moves``, ``next_player`` (same meaning and fillers as the functions of those names)."""
    r = _replay_np(games_NT)
    return {
        "board_states": _board_states_from(r),
        "relative_board_states": _relative_from(r),
        "legal_next_moves": _squares_from_bits(r["legal_NT"]).astype(bool),
        "next_player": r["next_NT"],
    }
