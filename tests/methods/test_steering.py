"""Steering vectors: planted-direction recovery, ActAdd padding and front alignment, combination,
saved artifacts (round trip, refusal on another model, atomic), bad input."""

from __future__ import annotations

import json
from dataclasses import replace

import jax
import numpy as np
import pytest

import interpjax
from interpjax.core import model as M
from interpjax.methods import steering as st
from interpjax.generate import generate, greedy
from interpjax.io.artifacts import model_fingerprint

from conftest import STORIES, needs_stories


def planted(n=48, d=64, seed=0, strength=1.0):
    """Paired activations differing along a planted unit direction u, with anisotropic noise
    (some noise axes larger than the signal) and a shared per-pair base."""
    rng = np.random.default_rng(seed)
    u = rng.normal(size=d)
    u /= np.linalg.norm(u)
    scales = np.where(np.arange(d) < 4, 3.0, 0.3)
    base = rng.normal(size=(n, d)) * scales
    noise = lambda: rng.normal(size=(n, d)) * 0.1  # noqa: E731
    return base + strength * u + noise(), base - strength * u + noise(), u


def test_pca_and_mean_difference_recover_a_planted_direction():
    pos, neg, u = planted()
    unit, info = st.pca_direction(pos, neg, seed=3)
    assert float(unit @ u) > 0.99  # sign-calibrated: positive side points along +u
    md = st.mean_diff_direction(pos, neg)
    assert float(md @ u) / np.linalg.norm(md) > 0.99
    assert info["train_pair_accuracy"] == 1.0
    flipped, _ = st.pca_direction(neg, pos, seed=3)
    assert float(flipped @ u) < -0.99  # swapping the sets flips the calibrated sign


@pytest.fixture(scope="module")
def stories():
    return interpjax.load(STORIES)


@needs_stories
def test_actadd_pads_like_actadd_and_equals_the_manual_difference(stories):
    m = stories
    v = st.actadd(m, " dog", " ", layer=2)
    space = m.tokenizer(" ", add_special_tokens=False)["input_ids"]
    assert v.meta["pad_token"] == space[0]
    pos_ids, neg_ids = v.meta["tokens"]
    assert len(pos_ids) == len(neg_ids) == 3 and neg_ids[-1] == space[0]  # [BOS, ' ', ' '] vs [BOS, 'do', 'g']
    _, cache = m.run_with_cache(np.array(v.meta["tokens"], np.int32), sites=["resid_pre"], layers=[2])
    acts = np.asarray(cache["resid_pre", 2])
    assert np.array_equal(v.vector, acts[0] - acts[1])
    assert np.abs(v.vector[0]).max() == 0.0  # BOS is the same token in the same context


@needs_stories
def test_actadd_at_layer0_coeff1_is_the_prompt_prefix(stories):
    """resid_pre[0] is the embedding: adding (' dog' - ' ') front-aligned onto a space-prefixed input
    turns it into the dog-prefixed input exactly."""
    m = stories
    v = st.actadd(m, " dog", " ", layer=0)
    sent = m.tokenizer("The cat sat on the mat.", add_special_tokens=False)["input_ids"]
    spaced = np.array([v.meta["tokens"][1] + sent], np.int32)
    prefixed = np.array([v.meta["tokens"][0] + sent], np.int32)
    steered = m(spaced, interventions=v.intervention(1.0, seq_len=spaced.shape[1]))
    assert np.abs(np.asarray(steered) - np.asarray(m(prefixed))).max() < 1e-4


@needs_stories
def test_front_alignment_follows_left_padding_and_zero_coeff_is_exact(stories):
    m = stories
    v = st.actadd(m, " happy", " sad", layer=3)
    tokens, mask = m.to_tokens(["Once upon a time, there was a little girl named", "The cat sat"])
    starts = (mask == 0).sum(1)
    T = tokens.shape[1]
    both = np.asarray(m(tokens, attention_mask=mask, interventions=v.intervention(4.0, seq_len=T, start=starts)))
    for b in range(2):
        alone_tok = tokens[b:b + 1, starts[b]:]
        alone = np.asarray(m(alone_tok, interventions=v.intervention(4.0, seq_len=alone_tok.shape[1])))
        assert np.abs(both[b, starts[b]:] - alone[0]).max() < 1e-4
    plain = greedy(m.cfg, m.params, tokens, 12, attention_mask=mask)
    zero = greedy(m.cfg, m.params, tokens, 12, v.intervention(0.0, seq_len=T + 12, start=starts), attention_mask=mask)
    four = greedy(m.cfg, m.params, tokens, 12, v.intervention(8.0, seq_len=T + 12, start=starts), attention_mask=mask)
    assert zero.tolist() == plain.tolist() and four.tolist() != plain.tolist()


@needs_stories
def test_contrast_vectors_combination_and_artifacts(stories, tmp_path, tiny_model):
    m = stories
    pos = ["Lily was happy and she smiled.", "Tom laughed and played all day.", "Sara got a gift and she smiled."]
    neg = ["Lily was sad and she cried.", "Tom cried and sat alone all day.", "Sara lost her gift and she cried."]
    md = st.from_contrast(m, pos, neg, layer=3, method="mean_diff")
    pca = st.from_contrast(m, pos, neg, layer=3, method="pca")
    acts_p = st.activations_at(m, pos, "resid_pre", [3])[0]
    acts_n = st.activations_at(m, neg, "resid_pre", [3])[0]
    assert np.allclose(md.vector, (acts_p - acts_n).mean(0), atol=1e-5)
    unit = pca.vector / np.linalg.norm(pca.vector)
    assert ((acts_p - acts_n) @ unit > 0).mean() >= 0.5  # sign-calibrated
    # bucketed batches (padding to 16 positions, power-of-two rows) equal one text at a time
    one = np.stack([st.activations_at(m, [t], "resid_pre", [3], batch_size=1)[0, 0] for t in pos])
    assert np.abs(one - acts_p).max() < 1e-4

    combo = md - 0.5 * pca
    assert np.allclose(combo.vector, md.vector - 0.5 * pca.vector)
    assert combo.meta["terms"] == [[1.0, "mean_diff"], [-0.5, "pca"]]
    other_layer = st.from_contrast(m, pos, neg, layer=1)
    with pytest.raises(ValueError, match="use steering.combine"):
        md + other_layer
    both = st.combine([(2.0, md), (-1.0, other_layer)])
    assert [(iv.layer, float(iv.coeff)) for iv in both] == [(3, 2.0), (1, -1.0)]

    path = combo.save(tmp_path / "v.safetensors")
    back = st.SteeringVector.load(path, model=m)
    assert np.array_equal(back.vector, combo.vector) and back.meta == combo.meta
    assert (back.site, back.layer, back.method) == ("resid_pre", 3, "combination")
    assert back.meta["prompts"]["positive"] == pos and back.meta["d_model"] == 64
    assert sorted(p.name for p in tmp_path.iterdir()) == ["v.safetensors"]  # no temp file left
    tiny, _ = tiny_model("llama")
    with pytest.raises(ValueError, match=r"made for another model \(model: saved 'llama2c-stories260k'.*d_model: saved 64"):
        st.SteeringVector.load(path, model=tiny)
    # identity is the weights' fingerprint, not the folder name: a copy elsewhere loads, other weights
    # under the same name are refused naming both fingerprints
    assert st.SteeringVector.load(path, model=replace(m, name="elsewhere/another-name")).layer == 3
    other = replace(m, params={**m.params, "final_norm": jax.tree.map(lambda x: x * 1.5, m.params["final_norm"])})
    fp, fp_other = model_fingerprint(m), model_fingerprint(other)
    assert back.meta["fingerprint"] == fp != fp_other
    with pytest.raises(ValueError, match=rf"same name, other weights \(fingerprint: saved '{fp}', model has '{fp_other}'"):
        st.SteeringVector.load(path, model=other)


def old_layout_file(path, arrays: dict, header: dict):
    """A file as the pre-artifact code wrote it: safetensors, JSON under the 'interpjax' header key."""
    from safetensors.numpy import save_file

    save_file({k: np.ascontiguousarray(v, np.float32) for k, v in arrays.items()}, str(path),
              metadata={"interpjax": json.dumps(header)})
    return path


@needs_stories
def test_old_files_load_and_bad_files_are_refused_by_name(stories, tmp_path):
    m = stories
    v = st.actadd(m, " dog", " girl", layer=2)
    old_meta = {k: v.meta[k] for k in v.meta if k != "fingerprint"}
    old = old_layout_file(tmp_path / "old.safetensors", {"vector": v.vector},
                          {"format": "interpjax.steering/1", "site": "resid_pre", "layer": 2, "method": "actadd",
                           **old_meta})
    with pytest.warns(UserWarning, match="records no weight fingerprint"):
        back = st.SteeringVector.load(old, model=m)
    assert np.array_equal(back.vector, v.vector) and (back.site, back.layer, back.method) == ("resid_pre", 2, "actadd")
    assert back.meta == {**old_meta, "fingerprint": model_fingerprint(m)}  # verified on the rest, now recorded
    assert st.SteeringVector.load(old).meta == old_meta
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("error")  # converting = load with model= + save: no warning after
        resaved = st.SteeringVector.load(back.save(tmp_path / "new.safetensors"), model=m)
    assert resaved.meta == back.meta
    # a 63-element vector for a 64-wide model
    old_layout_file(tmp_path / "short.safetensors", {"vector": np.ones(63)},
                    {"format": "interpjax.steering/1", "site": "resid_pre", "layer": 2, "method": "mean_diff",
                     **old_meta})
    with pytest.raises(ValueError, match=r"short.safetensors: tensor 'vector' has shape \(63,\); .*d_model=64"):
        st.SteeringVector.load(tmp_path / "short.safetensors")
    bare = st.SteeringVector(np.ones(63, np.float32), "resid_pre", 2, "mean_diff").save(tmp_path / "bare.safetensors")
    with pytest.raises(ValueError, match="has width 63; the model's d_model is 64"):
        st.SteeringVector.load(bare, model=m)
    with pytest.raises(ValueError, match="width 63"):
        st.SteeringVector(np.ones(63, np.float32), "resid_pre", 2, "mean_diff").check(m)
    # a file without its tensor: ValueError naming the file and the tensor
    old_layout_file(tmp_path / "empty.safetensors", {"other": np.ones(64)},
                    {"format": "interpjax.steering/1", "site": "resid_pre", "layer": 2, "method": "actadd"})
    with pytest.raises(ValueError, match=r"empty.safetensors: missing tensor 'vector'"):
        st.SteeringVector.load(tmp_path / "empty.safetensors")
    old_layout_file(tmp_path / "probe.safetensors", {"vector": v.vector}, {"format": "interpjax.reading/1"})
    with pytest.raises(ValueError, match=r"probe.safetensors: format 'interpjax.reading/1', expected "
                                         r"'interpjax.steering/1' \(an older interpjax file\)"):
        st.SteeringVector.load(tmp_path / "probe.safetensors")


@needs_stories
def test_bad_input_is_refused_before_compute(stories, tmp_path):
    m = stories
    with pytest.raises(ValueError, match="positive contrast set is empty"):
        st.from_contrast(m, [], ["a"], layer=1)
    with pytest.raises(ValueError, match="paired: 2 positive vs 1 negative"):
        st.from_contrast(m, ["a b", "c d"], ["e f"], layer=1)
    with pytest.raises(ValueError, match="empty or non-text"):
        st.from_contrast(m, ["a", "  "], ["e", "f"], layer=1)
    with pytest.raises(ValueError, match="tokenizes to nothing"):
        st.actadd(m, "", " sad", layer=1)
    with pytest.raises(ValueError, match="tokenize identically"):
        st.actadd(m, " happy", " happy", layer=1)
    with pytest.raises(ValueError, match=r"layer \[9\] out of range: valid layers are 0..4"):
        st.actadd(m, " happy", " sad", layer=9)
    with pytest.raises(ValueError, match="cannot hold a steering/reading vector; valid sites"):
        st.from_contrast(m, ["a"], ["b"], layer=1, site="pattern")
    with pytest.raises(ValueError, match="method='svm'"):
        st.from_contrast(m, ["a"], ["b"], layer=1, method="svm")
    v = st.actadd(m, " happy", " sad", layer=1)
    with pytest.raises(ValueError, match="pass seq_len"):
        v.intervention(1.0)
    with pytest.raises(ValueError, match="does not fit in seq_len=2"):
        v.intervention(1.0, seq_len=2)
    (tmp_path / "junk.safetensors").write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{not json")
    with pytest.raises(ValueError, match="not a readable interpjax artifact"):
        st.SteeringVector.load(tmp_path / "junk.safetensors")


@pytest.fixture
def no_compute(monkeypatch):
    """Fail the test if the model would run: bad input must be refused before compute."""

    def refuse(*a, **k):
        raise AssertionError("compute started before the input was refused")

    monkeypatch.setattr(M, "run_jit", refuse)


VALID = "; valid layers are 0..2"
NOT_INT_LAYERS = [  # (layer, message): int() would silently have read layer 1 (or 2)
    (1.7, r"layer must be integers; got \[1\.7\] \(float\)" + VALID),
    (True, r"layer must be integers; got \[True\] \(bool\)" + VALID),
    ([1, 2.5], r"layers must be integers; got \[2\.5\] \(float\)" + VALID),
    (np.array([1.0]), r"layers must be integers; got \[(np\.float64\()?1\.0\)?\] \(float64\)" + VALID),
]


@pytest.mark.parametrize("layer, msg", NOT_INT_LAYERS)
def test_float_and_bool_layers_are_refused_not_rounded(tiny_model, no_compute, layer, msg):
    """Layers go through core.inputs.check_layers: 1.7 / True / 2.5 were cast with int() before
    (reading layer 1 / 2 silently); now a ValueError naming the value and the valid layers, before
    any compute (no_compute would turn a run into an AssertionError)."""
    m, _ = tiny_model("llama")  # 3 layers
    with pytest.raises(ValueError, match=msg):
        st.activations_at(m, ["a b"], "resid_pre", layer)
    if np.ndim(layer) == 0:
        with pytest.raises(ValueError, match=msg):
            st.from_contrast(m, ["a"], ["b"], layer=layer)
        with pytest.raises(ValueError, match=msg):
            st.actadd(replace(m, tokenizer=object()), " a", " b", layer=layer)
        with pytest.raises(ValueError, match=r"layer must be an int, got (True|1\.7)"):
            st.SteeringVector(np.ones(m.cfg.d_model, np.float32), "resid_pre", layer, "mean_diff")
    else:
        with pytest.raises(ValueError, match=r"layer must be one int"):
            st.from_contrast(m, ["a"], ["b"], layer=layer)


def test_vector_positions_and_starts_must_be_integers():
    """A [P, D] vector laid over the sequence: float positions / starts were used as indices
    (IndexError after the checks) or truncated; now ValueErrors naming them."""
    v = st.SteeringVector(np.ones((2, 8), np.float32), "resid_pre", 1, "actadd")
    with pytest.raises(ValueError, match=r"positions must be integer positions, got dtype float64 \(\[0\.5, 1\.5\]\)"):
        v.intervention(1.0, seq_len=4, positions=[0.5, 1.5])
    with pytest.raises(ValueError, match=r"start must be integer positions, got dtype float64 \(\[1\.5\]\)"):
        v.intervention(1.0, seq_len=4, start=1.5)
    with pytest.raises(ValueError, match=r"positions \[-1, 0\] out of range 0..3"):
        v.intervention(1.0, seq_len=4, positions=[-1, 0])
    with pytest.raises(ValueError, match=r"seq_len must be an integer >= 1, got 4\.0"):
        v.intervention(1.0, seq_len=4.0)
    iv = v.intervention(2.0, seq_len=4, positions=np.array([1, 3], np.int64))
    assert np.asarray(iv.positions).tolist() == [1, 3] and np.asarray(iv.vector)[[1, 3]].tolist() == [[1.0] * 8] * 2


def test_a_saved_float_layer_is_refused(tmp_path):
    path = old_layout_file(tmp_path / "f.safetensors", {"vector": np.ones(8)},
                           {"format": "interpjax.steering/1", "site": "resid_pre", "layer": 1.7, "method": "mean_diff"})
    with pytest.raises(ValueError, match=r"f.safetensors: metadata field 'layer' must be an integer, got 1\.7"):
        st.SteeringVector.load(path)


@needs_stories
def test_per_row_steering_in_one_generate_call(stories):
    """Coefficients x prompts side by side in one compiled loop equal each row steered alone."""
    from interpjax.generate import stack_rows

    m = stories
    v = st.actadd(m, " dog", " girl", layer=3)
    tokens, mask = m.to_tokens(["Once upon a time, there was a", "Tom went to the"] * 3)
    coeffs = [0.0, 0.0, 4.0, 4.0, 16.0, 16.0]
    T = tokens.shape[1] + 10
    starts = (mask == 0).sum(1)
    rows = [v.intervention(c, seq_len=T, start=int(s)) for c, s in zip(coeffs, starts)]
    out = generate(m.cfg, m.params, tokens, 10, stack_rows(rows), attention_mask=mask, per_row=True).tokens
    for b in (1, 4):
        alone = greedy(m.cfg, m.params, tokens[b:b + 1], 10, rows[b], attention_mask=mask[b:b + 1])
        assert out[b].tolist() == alone[0].tolist()
    assert out[0].tolist() == greedy(m.cfg, m.params, tokens[:1], 10, attention_mask=mask[:1])[0].tolist()
