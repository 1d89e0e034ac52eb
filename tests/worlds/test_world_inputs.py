"""The worlds refuse floats, bools and out-of-range values by name instead of truncating or wrapping them."""

from __future__ import annotations

import numpy as np
import pytest

from interpjax.worlds import gridworld, othello


@pytest.mark.parametrize("moves, match", [
    (np.array([19.7]), "got dtype float64"),
    (np.array([True]), "got dtype bool"),
    (np.array([64]), r"got \[64\]"),
    (np.array([-2]), r"got \[-2\]"),
    (np.array([2**63 + 19], dtype=np.uint64), "squares 0..63"),  # would wrap to 19 through int64
])
def test_othello_encode_refuses_non_squares(moves, match):
    with pytest.raises(ValueError, match=match):
        othello.encode(moves)


def test_othello_encode_decode_round_trip_and_token_checks():
    moves = np.array([[19, 18, -1]])
    np.testing.assert_array_equal(othello.decode(othello.encode(moves)), moves)
    with pytest.raises(ValueError, match="centre squares"):
        othello.encode(np.array([27]))
    with pytest.raises(ValueError, match=r"tokens must be in 0\.\.60; got dtype float32"):
        othello.decode(np.array([3.0], dtype=np.float32))
    with pytest.raises(ValueError, match=r"tokens must be in 0\.\.60; got \[61\]"):
        othello.decode(np.array([61]))


def _world(**kw):
    base = dict(walls_HW=np.zeros((3, 3), bool), markers_HW=np.zeros((3, 3), np.int8), robot_rc=(1, 1), facing=0)
    return gridworld.World(**(base | kw))


@pytest.mark.parametrize("kw, match", [
    (dict(markers_HW=np.full((3, 3), 0.5)), "markers must be integers"),
    (dict(markers_HW=np.full((3, 3), 10)), r"marker counts must lie in 0\.\.9"),
    (dict(robot_rc=(1.0, 1)), "robot_rc must be two integers"),
    (dict(robot_rc=(True, 1)), "robot_rc must be two integers"),
    (dict(facing=1.5), "facing must be an integer"),
    (dict(facing=4), r"facing must be 0\.\.3"),
    (dict(robot_rc=(3, 0)), "outside the 3x3 grid"),
    (dict(markers_HW=np.zeros((2, 3), np.int8)), "equal non-empty 2-D shapes"),
])
def test_gridworld_world_refuses_bad_state(kw, match):
    with pytest.raises(ValueError, match=match):
        _world(**kw)


def test_a_valid_world_is_read_only():
    w = _world(facing=np.int64(2))
    assert w.facing == 2
    with pytest.raises(ValueError):
        w.markers_HW[0, 0] = 1
