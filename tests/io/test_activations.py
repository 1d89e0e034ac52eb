"""Activation datasets: chunked collection equals run_with_cache, position rules, metadata, reload,
resume after an interruption, refusal of a different collection, bad requests."""

from __future__ import annotations

import json

import numpy as np
import pytest

import interpjax.io.activations as A
from interpjax import Model
from interpjax.io.activations import ActivationDataset, collect

SITES = ["resid_post", "embed", "mlp_post"]
LAYERS = [2, 0]


@pytest.fixture(scope="module")
def gpt2(tiny_model):
    return tiny_model("gpt2")[0]


def make_seqs(n=13, seed=0):
    rng = np.random.default_rng(seed)
    return [rng.integers(0, 101, int(rng.choice([3, 6, 11]))) for _ in range(n)]


def reference(model, seq, sites=SITES, layers=LAYERS):
    """run_with_cache on the one unpadded sequence."""
    _, cache = model.run_with_cache(np.asarray(seq)[None], sites=sites, layers=layers)
    return {s: np.asarray(cache[s]) for s in sites}


@pytest.fixture(scope="module")
def seqs():
    return make_seqs()


@pytest.fixture(scope="module")
def refs(gpt2, seqs):
    return [reference(gpt2, s) for s in seqs]


def test_chunked_collection_equals_run_with_cache(gpt2, seqs, refs, tmp_path):
    y = np.arange(len(seqs)) * 1.5
    ds = collect(gpt2, seqs, sites=SITES, layers=LAYERS, out_dir=tmp_path / "acts", batch_size=4,
                 chunk_examples=5, meta={"y": y, "pair": np.stack([np.arange(13), -np.arange(13)], 1)})
    assert len(ds.manifest["chunks"]) == 3 and ds.manifest["complete"]
    assert sorted(p.name for p in (tmp_path / "acts").iterdir()) == [
        "chunk_00000.safetensors", "chunk_00001.safetensors", "chunk_00002.safetensors", "manifest.json"]
    assert ds.n_examples == 13 and ds.sites == tuple(SITES) and ds.layers == tuple(LAYERS)
    resid, embed, mlp = ds.load("resid_post"), ds.load("embed"), ds.load("mlp_post")
    assert resid.shape == (2, 13, 32) and embed.shape == (13, 32) and mlp.shape == (2, 13, gpt2.cfg.d_mlp)
    for i, ref in enumerate(refs):  # last real token of each example
        np.testing.assert_allclose(resid[:, i], ref["resid_post"][:, 0, -1], atol=1e-5)
        np.testing.assert_allclose(mlp[:, i], ref["mlp_post"][:, 0, -1], atol=1e-5)
        np.testing.assert_allclose(embed[i], ref["embed"][0, -1], atol=1e-5)
    assert np.array_equal(ds.load("resid_post", layer=0), resid[1])
    chunks = list(ds.iter_chunks("resid_post"))
    assert [c.shape for c in chunks] == [(2, 5, 32), (2, 5, 32), (2, 3, 32)]
    # reload from disk
    again = ActivationDataset(tmp_path / "acts")
    assert np.array_equal(again.load("resid_post"), resid)
    assert np.array_equal(again.meta("y"), y) and again.meta("pair").shape == (13, 2)
    assert np.array_equal(again.example_ids, np.arange(13))
    assert np.array_equal(again.token_positions, [len(s) - 1 for s in seqs])
    manifest = json.loads((tmp_path / "acts" / "manifest.json").read_text())
    assert manifest["cfg"]["d_model"] == 32 and manifest["positions"] == "last" and manifest["dtype"] == "float32"
    assert [c["n_examples"] for c in manifest["chunks"]] == [5, 5, 3]


def test_position_rules_all_array_and_callable(gpt2, seqs, refs, tmp_path):
    ds = collect(gpt2, seqs, sites=["resid_post"], layers=LAYERS, positions="all", out_dir=tmp_path / "all",
                 batch_size=4, chunk_examples=5)
    ids, pos, acts = ds.example_ids, ds.token_positions, ds.load("resid_post")
    assert ds.n_examples == sum(len(s) for s in seqs) == acts.shape[1]
    assert np.array_equal(ids, np.repeat(np.arange(13), [len(s) for s in seqs]))
    assert np.array_equal(pos, np.concatenate([np.arange(len(s)) for s in seqs]))
    for r in range(0, len(ids), 5):
        np.testing.assert_allclose(acts[:, r], refs[ids[r]]["resid_post"][:, 0, pos[r]], atol=1e-5)

    # two positions per example, in each example's own token coordinates (negative from its end)
    want = np.stack([np.zeros(13, int), -np.ones(13, int) * 2], 1)
    ds = collect(gpt2, seqs, sites=["resid_post"], layers=LAYERS, positions=want, out_dir=tmp_path / "arr",
                 batch_size=4, chunk_examples=5)
    assert np.array_equal(ds.token_positions, np.stack([np.zeros(13), [len(s) - 2 for s in seqs]], 1).reshape(-1))
    acts = ds.load("resid_post")
    for r, (i, p) in enumerate(zip(ds.example_ids, ds.token_positions)):
        np.testing.assert_allclose(acts[:, r], refs[i]["resid_post"][:, 0, p], atol=1e-5)

    # a callable sees the left-padded batch and returns padded indices: here the second real token
    def second_token(tokens_BT, mask_BT):
        return np.argmax(mask_BT, axis=1) + 1

    ds = collect(gpt2, seqs, sites=["resid_post"], layers=LAYERS, positions=second_token, out_dir=tmp_path / "fn",
                 batch_size=4, chunk_examples=5)
    assert np.array_equal(ds.token_positions, np.ones(13)) and ds.manifest["positions"] == "callable:" + \
        second_token.__qualname__
    for i, row in enumerate(ds.load("resid_post", layer=2)):
        np.testing.assert_allclose(row, refs[i]["resid_post"][0, 0, 1], atol=1e-5)


def test_resume_after_interruption(gpt2, seqs, tmp_path, monkeypatch):
    kw = dict(sites=["resid_post"], layers=LAYERS, batch_size=4, chunk_examples=5)
    full = collect(gpt2, seqs, out_dir=tmp_path / "full", **kw).load("resid_post")
    real_write = A.write_safetensors
    calls = []

    def dies_on_second_chunk(tensors, path):
        calls.append(path)
        if len(calls) == 2:
            raise RuntimeError("killed")
        real_write(tensors, path)

    monkeypatch.setattr(A, "write_safetensors", dies_on_second_chunk)
    with pytest.raises(RuntimeError, match="killed"):
        collect(gpt2, seqs, out_dir=tmp_path / "part", **kw)
    monkeypatch.setattr(A, "write_safetensors", real_write)
    with pytest.raises(ValueError, match=r"incomplete \(1 of 3 chunks\)"):
        ActivationDataset(tmp_path / "part")
    assert ActivationDataset(tmp_path / "part", allow_incomplete=True).n_examples == 5
    first = (tmp_path / "part" / "chunk_00000.safetensors").stat().st_mtime_ns
    ds = collect(gpt2, seqs, out_dir=tmp_path / "part", **kw)  # resumes at chunk 1
    assert (tmp_path / "part" / "chunk_00000.safetensors").stat().st_mtime_ns == first
    assert ds.manifest["complete"] and np.array_equal(ds.load("resid_post"), full)
    # a complete identical collection is returned as is
    assert np.array_equal(collect(gpt2, seqs, out_dir=tmp_path / "part", **kw).load("resid_post"), full)


def test_bad_requests_raise_before_compute(gpt2, seqs, tmp_path):
    out = tmp_path / "never"
    cases = [
        (dict(sites=["resid"]), "unknown or uncollectable site 'resid'; valid sites: embed, resid_pre"),
        (dict(sites=["pattern"]), "attention sites"),
        (dict(sites=["resid_post"], layers=[3]), r"layers \[3\] out of range: valid layers are 0..2"),
        (dict(sites=["resid_post"], layers=[]), "layers is empty"),
        (dict(sites=["resid_post"], positions="first"), "unknown positions rule 'first'"),
        (dict(sites=["resid_post"], positions=np.zeros(5, int)), "with N=13 examples"),
        (dict(sites=["resid_post"], positions=np.full(13, 3)),
         r"example \d+: positions \[3\] out of range for 3 tokens: valid positions are -3..2"),
        (dict(sites=["resid_post"], positions=lambda t, m: np.zeros(len(t), int)), "padding position"),
        (dict(sites=["resid_post"], meta={"y": np.arange(4)}), "one entry per example"),
        (dict(sites=["resid_post"], meta={"name": np.array(["a"] * 13)}), "must be numeric"),
        (dict(sites=["resid_post"], dtype="int8"), "dtype 'int8' not supported"),
        (dict(sites=["resid_post"], batch_size=0), "batch_size must be a positive integer"),
    ]
    for kw, msg in cases:
        with pytest.raises(ValueError, match=msg):
            collect(gpt2, seqs, out_dir=out, **kw)
    with pytest.raises(ValueError, match=r"example 0: token ids \[500\] outside the vocabulary 0..100"):
        collect(gpt2, [np.array([1, 2, 500])], sites=["resid_post"], out_dir=out)
    with pytest.raises(ValueError, match="no real tokens"):
        collect(gpt2, (np.ones((2, 4), int), np.array([[1, 1, 1, 1], [0, 0, 0, 0]])), sites=["embed"], out_dir=out)
    with pytest.raises(ValueError, match="has no tokenizer"):
        collect(gpt2, ["some text"], sites=["embed"], out_dir=out)
    assert not out.exists()  # nothing was written
    ds = collect(gpt2, seqs[:3], sites=["resid_post", "final"], layers=[1], out_dir=tmp_path / "ok")
    with pytest.raises(ValueError, match="site 'mlp_out' was not collected; collected sites: resid_post, final"):
        ds.load("mlp_out")
    with pytest.raises(ValueError, match=r"layer 2 was not collected; collected layers: \[1\]"):
        ds.load("resid_post", layer=2)
    with pytest.raises(ValueError, match="no layer axis"):
        ds.load("final", layer=1)
    for layer in (True, 1.0):  # equal to 1, but not a layer number: was read as layer 1
        with pytest.raises(ValueError, match=rf"layer {layer!r} was not collected; collected layers: \[1\]"):
            ds.load("resid_post", layer=layer)
    assert ds.load("resid_post", layer=np.int64(1)).shape == (3, gpt2.cfg.d_model)


def test_ids_masks_and_layers_checked_before_the_cast(gpt2, seqs, tmp_path, monkeypatch):
    """core.inputs checks on the caller's values: int64 ids >= 2**32 used to be cast to int32 before
    the vocabulary check (4294967301 became the valid id 5), mask values other than 0/1 were read
    as real tokens (> 0) or padding, layers 1.7 / True became layer 1, batch_size=True became 1.
    Each is a ValueError naming the value, raised before compute and before anything is written."""
    from interpjax.core import model as M

    def refuse(*a, **k):
        raise AssertionError("compute started before the input was refused")

    monkeypatch.setattr(M, "run_jit", refuse)
    out = tmp_path / "never"
    big = 2**32 + 5
    wrapped = np.array([[1, 2, 3], [4, big, 6]], np.int64)
    msg = rf"example 1: token ids \[{big}\] outside the vocabulary 0..100"
    for data in ([np.array([1, 2]), wrapped[1]], wrapped, (wrapped, np.ones((2, 3), np.int64)),
                 [(wrapped[:1], np.ones((1, 3))), (wrapped[1:], np.ones((1, 3)))]):
        with pytest.raises(ValueError, match=msg):
            collect(gpt2, data, sites=["embed"], out_dir=out)
    for bad in (2.0, 0.5, -1.0):
        mask = np.ones((2, 3))
        mask[0, 0] = bad
        with pytest.raises(ValueError, match=rf"attention_mask must hold only 0 \(padding\) and 1 \(real token\); "
                                             rf"got values \[{bad}\]"):
            collect(gpt2, (np.array([[1, 2, 3], [4, 5, 6]]), mask), sites=["embed"], out_dir=out)
    with pytest.raises(ValueError, match=r"example 0: tokens must be integer ids, got dtype float64"):
        collect(gpt2, [np.array([1.0, 2.5])], sites=["embed"], out_dir=out)
    with pytest.raises(ValueError, match=r"example 0: sequence length 65 exceeds the model context n_ctx=64"):
        collect(gpt2, [np.ones(65, np.int32)], sites=["embed"], out_dir=out)
    for layers, shown in (([1.7], r"\[1\.7\] \(float\)"), (True, r"\[True\] \(bool\)"),
                          (np.array([0.0, 1.0]), r"\[(np\.float64\()?0\.0\)?, (np\.float64\()?1\.0\)?\] \(float64\)")):
        with pytest.raises(ValueError, match=rf"layers must be integers; got {shown}; valid layers are 0..2"):
            collect(gpt2, seqs, sites=["resid_post"], layers=layers, out_dir=out)
    with pytest.raises(ValueError, match=r"layers \[1, 1\] contain duplicates"):
        collect(gpt2, seqs, sites=["resid_post"], layers=[1, 1], out_dir=out)
    for v in (True, 2.0):
        with pytest.raises(ValueError, match=rf"batch_size must be a positive integer; got {v!r}"):
            collect(gpt2, seqs, sites=["embed"], batch_size=v, out_dir=out)
    with pytest.raises(ValueError, match=r"indices from the positions callable \[99\] out of range for 16 tokens"):
        collect(gpt2, seqs, sites=["embed"], positions=lambda t, m: np.full(len(t), 99), out_dir=out)
    assert not out.exists()


class CharTokenizer:
    """A stand-in tokenizer: one id per character, no special tokens."""

    bos_token_id = None
    eos_token_id = None
    pad_token_id = 0

    def __call__(self, text, add_special_tokens=True):
        return {"input_ids": [1 + ord(c) % 97 for c in text]}


def test_texts_padded_arrays_and_bfloat16(gpt2, tmp_path):
    model = Model(cfg=gpt2.cfg, params=gpt2.params, tokenizer=CharTokenizer(), name="chars")
    texts = ["hello world", "ab", "probing", "a much longer text"]
    ds = collect(model, texts, sites=["resid_post"], layers=[1], out_dir=tmp_path / "t", batch_size=2,
                 dtype="bfloat16")
    acts = ds.load("resid_post", layer=1)
    assert str(acts.dtype) == "bfloat16" and ds.manifest["input_kind"] == "texts"
    for i, text in enumerate(texts):
        tokens, _ = model.to_tokens([text])
        ref = reference(model, tokens[0], ["resid_post"], [1])["resid_post"][0, 0, -1]
        np.testing.assert_allclose(acts[i].astype(np.float32), ref, rtol=2**-7, atol=1e-5)
    # the same examples as a right-padded (tokens, mask) pair give the same rows
    tokens = np.zeros((4, 18), np.int32)
    mask = np.zeros((4, 18), np.int32)
    for i, text in enumerate(texts):
        ids = CharTokenizer()(text)["input_ids"]
        tokens[i, :len(ids)], mask[i, :len(ids)] = ids, 1
    same = collect(model, (tokens, mask), sites=["resid_post"], layers=[1], out_dir=tmp_path / "p", batch_size=2,
                   dtype="bfloat16")
    assert np.array_equal(same.load("resid_post"), ds.load("resid_post"))
    batches = [(tokens[:3], mask[:3]), (tokens[3:], mask[3:])]  # a list of token batches
    again = collect(model, batches, sites=["resid_post"], layers=[1], out_dir=tmp_path / "b", batch_size=2,
                    dtype="bfloat16")
    assert again.manifest["input_kind"] == "token batches"
    assert np.array_equal(again.load("resid_post"), ds.load("resid_post"))


def test_units_keep_only_the_chosen_neurons_and_depth_stops_at_the_deepest_layer(gpt2, seqs, refs, tmp_path,
                                                                                   monkeypatch):
    units = np.array([5, 0, gpt2.cfg.d_mlp - 1])
    ds = collect(gpt2, seqs, sites=["mlp_post"], layers=[0], positions="all", units=units,
                 out_dir=tmp_path / "u", batch_size=4, chunk_examples=5)
    got = ds.load("mlp_post", layer=0)
    assert got.shape == (sum(len(s) for s in seqs), 3) and ds.manifest["units"] == units.tolist()
    r = 0
    for s, ref in zip(seqs, refs):  # layer 0 is LAYERS[1] in the reference
        np.testing.assert_allclose(got[r:r + len(s)], ref["mlp_post"][1, 0][:, units], atol=1e-5)
        r += len(s)
    # the scan runs layer 0 only: a failure planted in layer 1's weights cannot reach the records
    import jax

    poisoned = dict(gpt2.params, layers=jax.tree.map(lambda v: v.at[1:].set(float("nan")), gpt2.params["layers"]))
    bad = Model(cfg=gpt2.cfg, params=poisoned, tokenizer=gpt2.tokenizer, name="poisoned")
    assert not np.isfinite(np.asarray(bad.run_with_cache(np.asarray(seqs[0])[None], sites=["mlp_post"],
                                                        layers=[1])[1]["mlp_post"])).all()
    again = collect(bad, seqs, sites=["mlp_post"], layers=[0], positions="all", units=units,
                    out_dir=tmp_path / "u2", batch_size=4, chunk_examples=5)
    assert np.isfinite(again.load("mlp_post", layer=0)).all()
    for wrong, why in (([3, 3], "duplicates"), ([gpt2.cfg.d_mlp], "outside"), ([], "non-empty"),
                       ([0.5], "integer")):
        with pytest.raises(ValueError, match=why):
            collect(gpt2, seqs, sites=["mlp_post"], layers=[0], units=np.array(wrong), out_dir=tmp_path / "bad")
    with pytest.raises(ValueError, match="outside site 'resid_post'"):  # d_model 32 < d_mlp
        collect(gpt2, seqs, sites=["resid_post"], layers=[0], units=np.array([100]), out_dir=tmp_path / "bad")
    assert not (tmp_path / "bad").exists()
