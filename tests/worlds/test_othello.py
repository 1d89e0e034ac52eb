"""Tests for the Othello engine, random-game generator, tokens and probe labels."""

import numpy as np
import pytest

from interpjax.worlds import othello as oth
from interpjax.worlds.othello import BLACK, WHITE, OthelloState, square_index, square_name


def board_from(black=(), white=()):
    """8x8 int8 array with the given squares filled."""
    board_88 = np.zeros((8, 8), dtype=np.int8)
    for s in black:
        board_88[s // 8, s % 8] = BLACK
    for s in white:
        board_88[s // 8, s % 8] = WHITE
    return board_88


def naive_flips(board_88, square, colour):
    """Reference rules on an array, walking with explicit row/col bounds: squares flipped (or [])."""
    if board_88.flat[square] != 0:
        return []
    r0, c0 = divmod(square, 8)
    flips = []
    for dr in (-1, 0, 1):
        for dc in (-1, 0, 1):
            if dr == dc == 0:
                continue
            run, r, c = [], r0 + dr, c0 + dc
            while 0 <= r < 8 and 0 <= c < 8 and board_88[r, c] == -colour:
                run.append(r * 8 + c)
                r, c = r + dr, c + dc
            if run and 0 <= r < 8 and 0 <= c < 8 and board_88[r, c] == colour:
                flips += run
    return sorted(flips)


# -------------------------------------------------------------------------------------------
# Squares, start position, tokens
# -------------------------------------------------------------------------------------------


def test_square_names_roundtrip():
    assert square_name(0) == "A1" and square_name(7) == "A8" and square_name(8) == "B1"
    assert square_name(27) == "D4" and square_name(63) == "H8"
    assert [square_index(n) for n in ("D3", "C4", "F5", "E6")] == [26, 19, 44, 37]
    assert all(square_index(square_name(i)) == i for i in range(64))
    with pytest.raises(ValueError):
        square_index("I1")
    with pytest.raises(ValueError):
        square_name(64)


def test_initial_position():
    s = OthelloState.initial()
    arr_88 = s.to_array()
    assert arr_88.dtype == np.int8 and arr_88.shape == (8, 8)
    assert arr_88[3, 3] == WHITE and arr_88[4, 4] == WHITE  # D4, E5
    assert arr_88[3, 4] == BLACK and arr_88[4, 3] == BLACK  # D5, E4
    assert np.count_nonzero(arr_88) == 4
    assert s.to_move == BLACK and s.score() == (2, 2)
    assert s.legal_moves() == [19, 26, 37, 44]
    assert sorted(square_name(m) for m in s.legal_moves()) == ["C4", "D3", "E6", "F5"]
    assert not s.must_pass() and not s.is_over()
    assert OthelloState.from_array(arr_88) == s


def test_tokens():
    assert oth.MOVE_TO_TOKEN.shape == (64,) and oth.TOKEN_TO_MOVE.shape == (61,)
    assert all(oth.MOVE_TO_TOKEN[c] == -1 for c in oth.CENTRE_SQUARES)
    playable = [s for s in range(64) if s not in oth.CENTRE_SQUARES]
    assert sorted(oth.MOVE_TO_TOKEN[playable].tolist()) == list(range(1, 61))
    assert oth.TOKEN_TO_MOVE[0] == -1
    assert all(oth.TOKEN_TO_MOVE[oth.MOVE_TO_TOKEN[s]] == s for s in playable)
    games = oth.generate_games(3, seed=1)
    tokens = oth.encode(games)
    assert tokens.min() >= 0 and tokens.max() <= 60
    assert np.array_equal(oth.decode(tokens), games)
    assert oth.encode([-1, 0, 63]).tolist() == [0, 1, 60]
    with pytest.raises(ValueError, match="D4"):
        oth.encode([27])
    with pytest.raises(ValueError):
        oth.decode([61])


# -------------------------------------------------------------------------------------------
# Hand-constructed positions
# -------------------------------------------------------------------------------------------


def test_flips_in_all_eight_directions():
    m = square_index("E5")  # row 4, col 4
    white = [
        37, 38,  # east: E6 E7, capped by E8 (39)
        35,  # west: E4, capped by E3 (34)
        28, 20, 12,  # north: D5 C5 B5, capped by A5 (4)
        44,  # south: F5, capped by G5 (52)
        29,  # north-east: D6, capped by C7 (22)
        27, 18,  # north-west: D4 C3, capped by B2 (9)
        45, 54,  # south-east: F6 G7, capped by H8 (63)
        43,  # south-west: F4, capped by G3 (50)
    ]
    black = [39, 34, 4, 52, 22, 9, 63, 50]
    decoys = [0, 62]  # white discs not on a capped line
    board_88 = board_from(black, white + decoys)
    s = OthelloState.from_array(board_88, BLACK)
    assert m in s.legal_moves()
    after = s.play(m, auto_pass=False)
    expected_88 = board_88.copy()
    for sq in white + [m]:
        expected_88[sq // 8, sq % 8] = BLACK
    assert np.array_equal(after.to_array(), expected_88)
    assert sorted(naive_flips(board_88, m, BLACK)) == sorted(white)
    assert after.score() == (len(black) + len(white) + 1, len(decoys))
    assert after.to_move == WHITE


def test_no_wrap_around_edges():
    # East from A8 (row 0, col 7) would wrap to B1, B2; south-east from A8 would wrap to C1, D2.
    for black, white, bad in [([9], [8], 7), ([25], [16], 7), ([22], [23], 24), ([14], [15], 16)]:
        s = OthelloState.from_array(board_from(black, white), BLACK)
        assert bad not in s.legal_moves(), (black, white, bad)
        with pytest.raises(ValueError):
            s.play(bad)
    # Black B2, white B1: the only apparent "capture" west of B1 is off the board.
    s = OthelloState.from_array(board_from([9], [8]), BLACK)
    assert s.legal_moves() == []
    # A real edge capture still works: white on the right edge captured along the column.
    s = OthelloState.from_array(board_from([7], [15]), BLACK)
    assert s.legal_moves() == [23]
    assert s.play(23).to_array()[1, 7] == BLACK


def test_matches_naive_rules_on_random_positions():
    rng = np.random.default_rng(0)
    checked = 0
    for _ in range(150):
        board_88 = rng.choice(np.array([-1, 0, 1], dtype=np.int8), size=(8, 8), p=[0.3, 0.4, 0.3])
        for colour in (BLACK, WHITE):
            s = OthelloState.from_array(board_88, colour)
            expected = [sq for sq in range(64) if naive_flips(board_88, sq, colour)]
            assert s.legal_moves() == expected
            for sq in expected:
                after_88 = s.play(sq, auto_pass=False).to_array()
                ref_88 = board_88.copy()
                for f in naive_flips(board_88, sq, colour) + [sq]:
                    ref_88.flat[f] = colour
                assert np.array_equal(after_88, ref_88)
                checked += 1
    assert checked > 500


def test_pass_and_game_end():
    # Black A1, B1; white A2, C1. White has no move; black can play A3 (flips A2) or D1 (flips C1).
    board_88 = board_from(black=[0, 8], white=[1, 16])
    white_to_move = OthelloState.from_array(board_88, WHITE)
    assert white_to_move.legal_moves() == [] and white_to_move.must_pass() and not white_to_move.is_over()
    with pytest.raises(ValueError, match="must pass"):
        white_to_move.play(2)
    black_to_move = white_to_move.pass_turn()
    assert black_to_move.to_move == BLACK and black_to_move.legal_moves() == [2, 24]

    # After A3 white still has no move, so black moves again (implicit pass).
    s = black_to_move.play(2)
    assert s.to_move == BLACK and s.legal_moves() == [24]
    explicit = black_to_move.play(2, auto_pass=False)
    assert explicit.to_move == WHITE and explicit.must_pass()
    assert explicit.pass_turn() == s

    # After D1 white has no discs: neither side can move.
    end = s.play(24)
    assert end.is_over() and not end.must_pass() and end.legal_moves() == []
    assert end.score() == (6, 0) and end.winner() == BLACK
    with pytest.raises(ValueError, match="game over"):
        end.play(3)
    with pytest.raises(ValueError):
        end.pass_turn()
    assert [st.to_move for st in oth.replay([2, 24], start=black_to_move)] == [BLACK, -BLACK]


def test_game_over_with_empty_squares_and_full_board():
    # Both colours present, empties remain, yet no one can move: white A1, black H8.
    s = OthelloState.from_array(board_from(black=[63], white=[0]), BLACK)
    assert s.is_over() and not s.must_pass()
    full_88 = np.where(np.arange(64).reshape(8, 8) % 3 == 0, BLACK, WHITE).astype(np.int8)
    for colour in (BLACK, WHITE):
        full = OthelloState.from_array(full_88, colour)
        assert full.legal_moves() == [] and full.is_over() and not full.must_pass()
        assert sum(full.score()) == 64


def test_illegal_move_errors_name_legal_moves():
    s = OthelloState.initial()
    with pytest.raises(ValueError, match="C4, D3, E6, F5"):
        s.play(0)
    with pytest.raises(ValueError, match=r"ply 1.*legal moves"):
        oth.replay([19, 19])
    with pytest.raises(ValueError, match=r"game 1, ply 0: illegal move A1.*C4, D3, E6, F5"):
        oth.board_states(np.array([[19] + [-1] * 59, [0] + [-1] * 59]))
    with pytest.raises(ValueError, match="padding"):
        oth.board_states(np.array([[19, -1, 18]]))


# -------------------------------------------------------------------------------------------
# Random games
# -------------------------------------------------------------------------------------------


def test_random_games_are_legal_and_deterministic():
    rng = np.random.default_rng(123)
    games = [oth.random_game(rng) for _ in range(30)]
    for g in games:
        assert 0 < len(g) <= 60 and len(set(g)) == len(g)
        states = oth.replay(g)  # raises on any illegal move
        assert states[-1].is_over()
        for t, st in enumerate(states):
            assert sum(st.score()) == 4 + t + 1
    again = np.random.default_rng(123)
    assert [oth.random_game(again) for _ in range(30)] == games


def test_generate_games_matches_scalar_engine():
    games_NT = oth.generate_games(40, seed=7)
    assert games_NT.shape == (40, 60)
    assert np.array_equal(games_NT, oth.generate_games(40, seed=7))
    assert not np.array_equal(games_NT, oth.generate_games(40, seed=8))
    assert np.array_equal(games_NT[:10], oth.generate_games(10, seed=7))
    rng = np.random.default_rng(7)
    for row in games_NT:
        g = oth.random_game(rng)
        assert row[: len(g)].tolist() == g and (row[len(g):] == -1).all()
    long_NT = oth.generate_games(20, seed=7, min_length=60)
    assert (long_NT >= 0).all()


def pass_mask(games_NT):
    """[n, 60] bool: after this move the same colour moves again (the opponent passes)."""
    next_NT = oth.next_player(games_NT)
    movers_NT = np.concatenate([np.full((len(games_NT), 1), BLACK), next_NT[:, :-1]], axis=1)
    return (next_NT == movers_NT) & (next_NT != 0)


def has_pass(row):
    moves = row[row >= 0].tolist()
    states = oth.replay(moves)
    movers = [BLACK] + [st.to_move for st in states[:-1]]
    return any(movers[t] == movers[t + 1] for t in range(len(moves) - 1))


# -------------------------------------------------------------------------------------------
# Probe labels
# -------------------------------------------------------------------------------------------


def check_labels_against_replay(games_NT):
    labels = oth.probe_labels(games_NT)
    boards_NT64 = labels["board_states"]
    rel_NT64 = labels["relative_board_states"]
    legal_NT64 = labels["legal_next_moves"]
    next_NT = labels["next_player"]
    n = len(games_NT)
    assert boards_NT64.shape == rel_NT64.shape == legal_NT64.shape == (n, 60, 64)
    assert boards_NT64.dtype == rel_NT64.dtype == np.int8 and legal_NT64.dtype == bool
    assert next_NT.shape == (n, 60) and next_NT.dtype == np.int8
    assert np.array_equal(boards_NT64, oth.board_states(games_NT))
    assert np.array_equal(rel_NT64, oth.relative_board_states(games_NT))
    assert np.array_equal(legal_NT64, oth.legal_next_moves(games_NT))
    assert np.array_equal(next_NT, oth.next_player(games_NT))
    for i, row in enumerate(games_NT):
        moves = row[row >= 0].tolist()
        states = oth.replay(moves)
        for t, st in enumerate(states):
            board_64 = st.to_array().reshape(64)
            assert np.array_equal(boards_NT64[i, t], board_64)
            assert np.count_nonzero(board_64) == 4 + t + 1
            over = st.is_over()
            assert next_NT[i, t] == (0 if over else st.to_move)
            legal_64 = np.zeros(64, bool)
            legal_64[st.legal_moves()] = True
            assert np.array_equal(legal_NT64[i, t], legal_64)
            assert not over or not legal_64.any()
            # "mine" = the player who moves next; after the last move, the mover's opponent.
            mover = BLACK if t == 0 else states[t - 1].to_move
            ref = st.to_move if not over else -mover
            rel_64 = np.where(board_64 == ref, 1, np.where(board_64 == -ref, 2, 0))
            assert np.array_equal(rel_NT64[i, t], rel_64)
        pad = slice(len(moves), 60)
        assert (boards_NT64[i, pad] == 0).all() and (rel_NT64[i, pad] == 0).all()
        assert not legal_NT64[i, pad].any() and (next_NT[i, pad] == 0).all()


def test_labels_agree_with_replay_including_pass_and_padding():
    games_NT = oth.generate_games(4, seed=3)
    search_NT = oth.generate_games(1000, seed=0)
    pass_game = search_NT[np.argmax(pass_mask(search_NT).any(axis=1))]
    assert has_pass(pass_game)  # confirmed by the scalar engine
    short_game = search_NT[np.argmax((search_NT < 0).any(axis=1))]
    assert (short_game < 0).any()
    truncated = games_NT[0].copy()
    truncated[25:] = -1  # unfinished game, padded: labels still defined for the played prefix
    batch_NT = np.stack([*games_NT, pass_game, short_game, truncated])
    check_labels_against_replay(batch_NT)
