"""Tests for the Karel-like grid world: semantics, random tasks, serialisation, probe labels."""

import numpy as np
import pytest

from interpjax.worlds import gridworld as gw
from interpjax.worlds.gridworld import VOCAB, RobotCrash, Task, UnknownInstructionError, World, check_program, decode_program, decode_task, encode_task, execute, facing_labels, facing_trace, make_dataset, program_start_index, random_task, random_world, sequence_length, trace, try_execute


def open_world(H=4, W=4, rc=(1, 1), facing=0, walls=(), markers=None):
    """Hand-built world: no walls except those listed, markers given as {cell: count}."""
    walls_HW = np.zeros((H, W), bool)
    for cell in walls:
        walls_HW[cell] = True
    markers_HW = np.zeros((H, W), np.int8)
    for cell, k in (markers or {}).items():
        markers_HW[cell] = k
    return World(walls_HW, markers_HW, rc, facing)


# ---------------------------------------------------------------- semantics


def test_turns_cycle():
    w = open_world(facing=0)
    assert list(facing_trace(["turnRight"] * 4, w)) == [1, 2, 3, 0]
    assert list(facing_trace(["turnLeft"] * 4, w)) == [3, 2, 1, 0]
    assert execute(["turnLeft", "turnRight"], w) == w
    assert execute(["turnLeft"] * 4, w) == w


@pytest.mark.parametrize("facing,expected", [(0, (0, 1)), (1, (1, 2)), (2, (2, 1)), (3, (1, 0))])
def test_move_directions(facing, expected):
    w = execute(["move"], open_world(rc=(1, 1), facing=facing))
    assert w.robot_rc == expected and w.facing == facing


def test_move_into_edge_crashes():
    w = open_world(rc=(0, 3), facing=0)
    with pytest.raises(RobotCrash) as e:
        execute(["turnRight", "move"], w)
    assert e.value.step == 1 and e.value.instruction == "move"
    with pytest.raises(RobotCrash):
        execute(["move"], w)  # north off the grid
    assert try_execute(["move"], w) is None


def test_move_into_wall_crashes():
    w = open_world(rc=(2, 1), facing=1, walls=[(2, 3)])
    assert execute(["move"], w).robot_rc == (2, 2)
    with pytest.raises(RobotCrash, match="wall"):
        execute(["move", "move"], w)


def test_marker_bounds():
    w = open_world(rc=(1, 1), markers={(1, 1): 8})
    w9 = execute(["putMarker"], w)
    assert w9.markers_HW[1, 1] == 9
    with pytest.raises(RobotCrash, match="already holds"):
        execute(["putMarker"], w9)
    assert execute(["pickMarker"] * 9, w9).markers_HW[1, 1] == 0
    with pytest.raises(RobotCrash, match="no marker"):
        execute(["pickMarker"] * 10, w9)
    # markers stay where they were put
    w2 = execute(["putMarker", "move", "putMarker", "putMarker"], open_world(rc=(2, 2)))
    assert w2.markers_HW[2, 2] == 1 and w2.markers_HW[1, 2] == 2 and w2.markers_HW.sum() == 3


def test_execute_does_not_mutate_and_world_is_readonly():
    w = open_world(markers={(1, 1): 2})
    before = w.copy()
    execute(["pickMarker", "move", "putMarker"], w)
    assert w == before
    with pytest.raises(ValueError):
        w.markers_HW[0, 0] = 1
    c = w.copy()
    assert c == w and c.markers_HW is not w.markers_HW


def test_execute_equals_last_of_trace():
    rng = np.random.default_rng(3)
    for _ in range(20):
        t = random_task(rng, n_examples=2, grid=(5, 5))
        for w in t.inputs:
            states = trace(t.program, w)
            assert len(states) == len(t.program) + 1
            assert states[0] == w and states[-1] == execute(t.program, w)
            assert list(facing_trace(t.program, w)) == [s.facing for s in states[1:]]


# ---------------------------------------------------------------- bad inputs


def test_bad_inputs_raise_clear_errors():
    w = open_world()
    with pytest.raises(UnknownInstructionError, match="jump"):
        execute(["move", "jump"], w)
    with pytest.raises(ValueError):  # UnknownInstructionError is a ValueError
        trace(["turnleft"], w)
    with pytest.raises(TypeError):
        execute("move", w)
    with pytest.raises(ValueError, match="wall"):
        open_world(rc=(0, 0), walls=[(0, 0)])
    with pytest.raises(ValueError, match="outside"):
        open_world(rc=(4, 0))
    with pytest.raises(ValueError):
        open_world(facing=4)
    with pytest.raises(ValueError):
        open_world(markers={(0, 0): 10})
    with pytest.raises(RobotCrash):
        execute(["move"] * 5, open_world(rc=(3, 0), facing=0))
    with pytest.raises(ValueError):
        random_task(np.random.default_rng(0), program_length=(5, 3))
    with pytest.raises(RuntimeError):  # 1x1 grid: any move crashes; 40 instructions ~always hold one
        random_task(np.random.default_rng(0), grid=(1, 1), program_length=(40, 40),
                    max_program_tries=20)


# ---------------------------------------------------------------- random tasks


def test_random_tasks_are_consistent():
    rng = np.random.default_rng(0)
    for _ in range(100):
        t = random_task(rng, n_examples=4, grid=(6, 7), program_length=(6, 12), wall_prob=0.2)
        assert 6 <= len(t.program) <= 12
        assert len(t.inputs) == len(t.outputs) == 4
        assert any(a != b for a, b in zip(t.inputs, t.outputs))  # not the identity
        for w_in, w_out in zip(t.inputs, t.outputs):
            assert w_in.shape == (6, 7)
            assert execute(t.program, w_in) == w_out  # no crash, output matches
            World(w_in.walls_HW, w_in.markers_HW, w_in.robot_rc, w_in.facing)  # valid state
        assert check_program(t.program, t)
        for a, b in zip(t.program, t.program[1:]):  # canonical: no adjacent inverse pairs
            assert {a, b} not in ({"turnLeft", "turnRight"}, {"putMarker", "pickMarker"})


def test_check_program_rejects_wrong_and_crashing_programs():
    rng = np.random.default_rng(1)
    t = random_task(rng, n_examples=3, grid=(5, 5))
    assert check_program(t.program, t)
    assert not check_program(list(t.program) + ["turnLeft"], t)
    assert not check_program(["move"] * 6, t)  # crashes on a 5x5 grid
    with pytest.raises(UnknownInstructionError):
        check_program(["fly"], t)


def test_conditional_sampling_matches_rejection_sampling():
    """The direct sampler of crash-free inputs has the same start distribution as rejection."""
    program = ["move", "turnRight", "move", "pickMarker"]
    ops = gw._parse_program(program)
    kw = dict(grid=(3, 3), wall_prob=0.2, marker_prob=0.3, max_init_markers=2)
    rng = np.random.default_rng(0)
    n = 3000
    direct, rejected = np.zeros((4, 3, 3)), np.zeros((4, 3, 3))
    direct_m = rejected_m = 0.0
    for _ in range(n):
        w = gw._sample_conditional_input(rng, ops, kw["grid"], kw["wall_prob"],
                                         kw["marker_prob"], kw["max_init_markers"])
        assert try_execute(program, w) is not None
        direct[(w.facing, *w.robot_rc)] += 1
        direct_m += w.markers_HW.sum()
        while True:
            w = random_world(rng, **kw)
            if try_execute(program, w) is not None:
                break
        rejected[(w.facing, *w.robot_rc)] += 1
        rejected_m += w.markers_HW.sum()
    assert np.abs(direct - rejected).max() / n < 0.035
    assert abs(direct_m - rejected_m) / n < 0.3


# ---------------------------------------------------------------- serialisation


def test_encode_decode_round_trip():
    rng = np.random.default_rng(2)
    for grid, n_ex in [((5, 5), 3), ((8, 8), 5), ((4, 6), 2)]:
        for _ in range(10):
            t = random_task(rng, n_examples=n_ex, grid=grid)
            toks = encode_task(t)
            assert len(toks) == sequence_length(grid, n_ex, len(t.program))
            assert all(0 < x < len(VOCAB) for x in toks)
            assert toks[0] == VOCAB.bos and toks[-1] == VOCAB.eos
            assert decode_task(toks + [VOCAB.pad] * 3) == t
            assert decode_program(toks) == t.program
            p = program_start_index(toks)
            assert toks[p - 1] == VOCAB.prog
            assert decode_program(toks[p:]) == t.program  # a bare generated continuation
            assert VOCAB.to_strings(toks[p:-1]) == list(t.program)


def test_compact_setting_fits_budget():
    assert sequence_length((5, 5), 3, 12) <= 300
    assert sequence_length((8, 8), 5, 12) <= 1024


def test_robot_on_markers_token():
    w = open_world(H=2, W=3, rc=(1, 2), facing=3, walls=[(0, 0)], markers={(1, 2): 4, (0, 1): 9})
    assert VOCAB.to_strings(gw.encode_world(w)) == ["#", "9", ".", "<nl>", ".", ".", "rW4"]
    t = Task(("putMarker",), (w,), (execute(["putMarker"], w),))
    assert decode_task(encode_task(t)) == t
    assert "rW5" in VOCAB.to_strings(encode_task(t))


def test_decode_errors():
    with pytest.raises(ValueError, match="not an instruction"):
        decode_program([VOCAB.prog, VOCAB.instr0, VOCAB.wall, VOCAB.eos])
    with pytest.raises(ValueError, match="<prog>"):
        program_start_index([VOCAB.bos, VOCAB.eos])
    t = random_task(np.random.default_rng(0), n_examples=1, grid=(3, 3), program_length=(2, 2))
    toks = encode_task(t)
    with pytest.raises(ValueError):  # remove the <out> separator
        decode_task([x for x in toks if x != VOCAB.out])


# ---------------------------------------------------------------- labels and datasets


def test_facing_labels_match_step_by_step():
    rng = np.random.default_rng(4)
    for _ in range(20):
        t = random_task(rng, n_examples=2, grid=(5, 5))
        cur, nxt, nxt2 = facing_labels(t)
        L = len(t.program)
        w = t.inputs[0]
        expected = []
        for instr in t.program:  # recompute one instruction at a time
            w = execute([instr], w)
            expected.append(w.facing)
        assert list(cur) == expected
        assert list(nxt) == expected[1:] + [-1]
        assert list(nxt2) == expected[2:] + [-1, -1]
        assert cur.shape == nxt.shape == nxt2.shape == (L,)


def test_make_dataset_alignment_and_determinism():
    kw = dict(grid=(5, 5), n_examples=3, program_length=(4, 9))
    d = make_dataset(40, seed=7, **kw)
    T = sequence_length((5, 5), 3, 9)
    assert d.tokens_NT.shape == d.program_mask_NT.shape == d.facing_NT.shape == (40, T)
    assert d.tokens_NT.dtype == np.int32
    for i, t in enumerate(d.tasks):
        toks = d.tokens_NT[i, :d.lengths_N[i]].tolist()
        assert toks == encode_task(t) and np.all(d.tokens_NT[i, d.lengths_N[i]:] == VOCAB.pad)
        pos = np.flatnonzero(d.program_mask_NT[i])
        assert pos[0] == d.program_start_N[i] == program_start_index(toks)
        assert decode_program(d.tokens_NT[i, pos]) == t.program and len(pos) == len(t.program)
        cur, nxt, nxt2 = facing_labels(t)
        assert np.array_equal(d.facing_NT[i, pos], cur)
        assert np.array_equal(d.facing_next_NT[i, pos], nxt)
        assert np.array_equal(d.facing_next2_NT[i, pos], nxt2)
        off = ~d.program_mask_NT[i]
        assert np.all(d.facing_NT[i, off] == -1) and np.all(d.facing_next2_NT[i, off] == -1)
    d2 = make_dataset(40, seed=7, **kw)
    assert np.array_equal(d.tokens_NT, d2.tokens_NT)
    assert np.array_equal(d.facing_next2_NT, d2.facing_next2_NT)
    assert not np.array_equal(make_dataset(40, seed=8, **kw).tokens_NT, d.tokens_NT)
    with pytest.raises(ValueError, match="pad_to"):
        make_dataset(3, seed=0, pad_to=20, **kw)
