"""The one artifact format and the one model fingerprint: round trips (every dtype, standard
safetensors readers), refusals (format, version, missing tensor, corrupt header, other model named by
both fingerprints), atomic writes that leave no litter (after a SIGKILL: ``tests/test_faults.py``), and
the Result base."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from dataclasses import dataclass

import jax
import jax.numpy as jnp
import ml_dtypes
import numpy as np
import pytest

import interpjax
from interpjax.io import artifacts as A
from interpjax.methods.result import Result


def listing(folder):
    return sorted(p.name for p in folder.iterdir())


def dead_pid() -> int:
    p = subprocess.Popen([sys.executable, "-c", "pass"])
    p.wait()
    return p.pid


def test_round_trip_keeps_dtypes_and_reads_with_safetensors(tmp_path):
    arrays = {"f32": np.arange(6, dtype=np.float32).reshape(2, 3), "bf16": np.array([1.5, -2.0], ml_dtypes.bfloat16),
              "i64": np.array([2**40, -3]), "b": np.array([True, False]), "scalar": np.float32(3.25),
              "jax": jnp.ones((2, 2), jnp.float16)}
    meta = {"label": "happy", "layers": [1, 2], "nested": {"x": None}}
    path = A.save_artifact(tmp_path / "a.safetensors", arrays, meta, format="test.thing", version=3)
    art = A.load_artifact(path, format="test.thing", version=3)
    assert (art.format, art.version, art.meta, art.model) == ("test.thing", 3, meta, None)
    for k, v in arrays.items():
        got = art.arrays[k]
        assert got.dtype == np.asarray(v).dtype and np.array_equal(got, np.asarray(v)), k
    from safetensors import safe_open  # a standard reader sees the same tensors and our metadata

    with safe_open(str(path), "np") as f:
        assert json.loads(f.metadata()[A.META_KEY])["format"] == "test.thing"
        assert np.array_equal(f.get_tensor("f32"), arrays["f32"]) and np.array_equal(f.get_tensor("i64"), arrays["i64"])
    assert listing(tmp_path) == ["a.safetensors"]


def test_refusals_name_the_file_and_the_entry(tmp_path):
    path = A.save_artifact(tmp_path / "a.safetensors", {"x": np.zeros(3, np.float32)}, {}, format="fmt.a", version=2)
    with pytest.raises(ValueError, match=r"a.safetensors: format 'fmt.a', expected 'fmt.b'"):
        A.load_artifact(path, format="fmt.b")
    with pytest.raises(ValueError, match=r"version 2 is newer than this interpjax reads \(up to 1\)"):
        A.load_artifact(path, format="fmt.a", version=1)
    with pytest.raises(ValueError, match=r"a.safetensors: missing tensor 'vector' \(the file holds \['x'\]\)"):
        A.load_artifact(path, format="fmt.a", tensors=("x", "vector"))
    with pytest.raises(FileNotFoundError, match="no artifact file at .*nothere"):
        A.load_artifact(tmp_path / "nothere", format="fmt.a")
    with pytest.raises(ValueError, match="is a folder"):
        A.load_artifact(tmp_path, format="fmt.a")
    bad = tmp_path / "bad.safetensors"
    for raw, why in ((b"\x08\x00\x00\x00\x00\x00\x00\x00\xff\xfe\xfd\xfc    ", "corrupt safetensors header"),
                     (b"\x02\x00\x00\x00\x00\x00\x00\x00[]", "a list, not an object"),
                     (b"\x02\x00\x00\x00\x00\x00\x00\x00{}", "not an interpjax artifact"),
                     (b"\x40\x00\x00\x00\x00\x00\x00\x00{}", "truncated")):
        bad.write_bytes(raw)
        with pytest.raises(ValueError, match=f"bad.safetensors.*{why}"):
            A.load_artifact(bad, format="fmt.a")
    # a tensor entry without dtype: a ValueError naming the file, not a KeyError
    head = json.dumps({"x": {"shape": [1], "data_offsets": [0, 4]}, "__metadata__": {
        A.META_KEY: json.dumps({"format": "fmt.a", "version": 1, "model": None, "meta": {}})}}).encode()
    bad.write_bytes(len(head).to_bytes(8, "little") + head + b"\0" * 4)
    with pytest.raises(ValueError, match="bad.safetensors"):
        A.load_artifact(bad, format="fmt.a")
    with pytest.raises(ValueError, match="dtype complex64"):
        A.save_artifact(tmp_path / "c.safetensors", {"z": np.zeros(2, np.complex64)}, {}, format="f", version=1)
    with pytest.raises(ValueError, match="not JSON-serialisable"):
        A.save_artifact(tmp_path / "c.safetensors", {}, {"f": object()}, format="f", version=1)
    with pytest.raises(ValueError, match="version must be a positive integer"):
        A.save_artifact(tmp_path / "c.safetensors", {}, {}, format="f", version=0)
    assert not (tmp_path / "c.safetensors").exists() and not [p for p in listing(tmp_path) if p.endswith(".tmp")]


def test_fingerprint_is_stable_equal_across_loads_and_sees_every_weight(tiny_checkpoint):
    folder, _ = tiny_checkpoint("llama")
    a, b = interpjax.load(folder), interpjax.load(folder)
    fp = A.model_fingerprint(a)
    assert len(fp) == 16 and int(fp, 16) >= 0
    assert A.model_fingerprint(a) == fp == A.model_fingerprint(b)  # stable; same weights loaded twice
    assert A.model_fingerprint(a.cfg, a.params) == A.model_fingerprint((a.cfg, a.params)) == fp
    np_params = jax.tree.map(np.asarray, a.params)  # host copies (not cached) give the same answer
    assert A.model_fingerprint(a.cfg, np_params) == fp
    seen = {fp}
    for name, edit in (("one element nudged", lambda p: p["layers"]["mlp"]["up"].at[1, 2, 3].add(1e-3)),
                       ("two elements swapped", lambda p: p["layers"]["mlp"]["up"].at[1, 2, :2].set(
                           p["layers"]["mlp"]["up"][1, 2, 1::-1])),
                       ("a sign flipped on a zero", lambda p: p["layers"]["mlp"]["up"].at[0, 0, 0].set(
                           -p["layers"]["mlp"]["up"][0, 0, 0]))):
        other = jax.tree.map(lambda x: x, a.params)
        other["layers"]["mlp"]["up"] = edit(other)
        if name.startswith("a sign") and float(a.params["layers"]["mlp"]["up"][0, 0, 0]) == 0.0:
            continue
        f = A.model_fingerprint(a.cfg, other)
        assert f not in seen, name
        seen.add(f)
    assert A.model_fingerprint(a.cfg, jax.tree.map(lambda x: x.astype(jnp.bfloat16), a.params)) not in seen
    assert A.model_fingerprint(a.params) != fp  # bare params: the weights without the config
    with pytest.raises(ValueError, match="hold no arrays"):
        A.model_fingerprint({})


def test_other_weights_under_the_same_name_are_refused_naming_both_fingerprints(tiny_model, tmp_path):
    from dataclasses import replace

    m, _ = tiny_model("llama")
    path = A.save_artifact(tmp_path / "v.safetensors", {"x": np.zeros(3, np.float32)}, {}, format="f", version=1,
                           model=m)
    art = A.load_artifact(path, format="f", model=m)
    assert art.model == A.model_identity(m) and art.model["fingerprint"] == A.model_fingerprint(m)
    renamed = replace(m, name="elsewhere/copy-of-llama")  # same weights in another folder: accepted
    A.load_artifact(path, format="f", model=renamed)
    other = replace(m, params={**m.params, "embed": {**m.params["embed"], "tok": m.params["embed"]["tok"] * 1.01}})
    fp_saved, fp_other = A.model_fingerprint(m), A.model_fingerprint(other)
    with pytest.raises(ValueError, match=rf"same name, other weights.*fingerprint: saved '{fp_saved}', model has "
                                         rf"'{fp_other}'"):
        A.load_artifact(path, format="f", model=other)
    gpt2, _ = tiny_model("gpt2")
    with pytest.raises(ValueError, match=r"made for another model \(model: saved .*family: saved 'llama'"):
        A.load_artifact(path, format="f", model=gpt2)


def test_failed_save_keeps_the_old_file_and_stale_temporaries_are_cleaned(tmp_path):
    path = A.save_artifact(tmp_path / "v.safetensors", {"x": np.ones(4, np.float32)}, {"n": 1}, format="f", version=1)
    with pytest.raises(ValueError):
        A.save_artifact(path, {"x": np.ones(4, np.float32)}, {"n": float("nan"), "bad": {1, 2}}, format="f", version=1)
    assert A.load_artifact(path, format="f").meta == {"n": 1} and listing(tmp_path) == ["v.safetensors"]
    stale = [tmp_path / f".v.safetensors.{dead_pid()}-abcd.tmp", tmp_path / ".v.safetensors.tmp"]
    live = tmp_path / f".v.safetensors.{os.getppid()}-abcd.tmp"  # a live process's save in progress: kept
    other = tmp_path / f".w.safetensors.{dead_pid()}-abcd.tmp"  # another target's: not ours to touch
    for p in stale + [live, other]:
        p.write_bytes(b"partial")
    A.load_artifact(path, format="f")
    assert listing(tmp_path) == sorted([live.name, other.name, "v.safetensors"])
    stale[0].write_bytes(b"partial")
    A.save_artifact(path, {"x": np.zeros(4, np.float32)}, {"n": 2}, format="f", version=1)
    assert listing(tmp_path) == sorted([live.name, other.name, "v.safetensors"])
    A.atomic_write_text(tmp_path / "w.safetensors", "text")  # every atomic writer cleans its own target's
    assert listing(tmp_path) == sorted([live.name, "v.safetensors", "w.safetensors"])


# ---------------------------------------------------------------------------------------------
# the Result base


@dataclass(frozen=True)
class Toy(Result):
    FORMAT = "test.toy"
    VERSION = 2
    scores_LN: np.ndarray
    weights: dict
    layers: tuple
    label: str
    extra: np.ndarray | None = None
    stats: dict = None
    model: dict | None = None


def test_result_save_load_to_dict_and_plot(tmp_path, tiny_model):
    m, _ = tiny_model("llama")
    r = Toy(np.arange(6, dtype=np.float32).reshape(2, 3), {"w": jnp.ones((2, 2)), "inner": {"b": np.zeros(2)}},
            (1, 2), "toy", stats={"nan": float("nan"), "n": 3}, model=A.model_identity(m))
    path = r.save(tmp_path / "toy.safetensors")
    back = Toy.load(path, model=m)
    assert np.array_equal(back.scores_LN, r.scores_LN) and back.layers == (1, 2) and back.extra is None
    assert np.array_equal(back.weights["w"], np.ones((2, 2))) and np.array_equal(back.weights["inner"]["b"], np.zeros(2))
    assert back.model == r.model and back.label == "toy" and np.isnan(back.stats["nan"])
    d = r.to_dict()
    json.dumps(d, allow_nan=False)  # JSON-safe
    assert d["scores_LN"] == [[0, 1, 2], [3, 4, 5]] and d["stats"] == {"nan": None, "n": 3} and d["layers"] == [1, 2]
    with pytest.raises(NotImplementedError, match="Toy has no plot"):
        r.plot(tmp_path / "toy.png")
    other = jax.tree.map(lambda x: x, m.params)
    other["final_norm"] = jax.tree.map(lambda x: x + 1, other["final_norm"])
    with pytest.raises(ValueError, match="Toy toy.safetensors was made for another model.*fingerprint"):
        Toy.load(path, model=(m.cfg, other))
    # a file without one of its tensors: ValueError naming the file and the tensor
    art = A.load_artifact(path, format="test.toy")
    A.save_artifact(tmp_path / "cut.safetensors", {k: v for k, v in art.arrays.items() if k != "scores_LN"}, art.meta,
                    format="test.toy", version=2)
    with pytest.raises(ValueError, match=r"cut.safetensors: missing tensor 'scores_LN' of Toy"):
        Toy.load(tmp_path / "cut.safetensors")
    with pytest.raises(ValueError, match=r"format 'test.toy', expected 'test.other'"):
        type("Other", (Toy,), {"FORMAT": "test.other"}).load(path)
    with pytest.raises(TypeError, match="sets no FORMAT"):
        dataclass(frozen=True)(type("NoFormat", (Result,), {"__annotations__": {}}))().save(tmp_path / "x")


# ---------------------------------------------------------------------------------------------
# the tuned lens: one safetensors file now; the older orbax folder still loads


def old_lens_fingerprint(cfg, params) -> str:
    """The fingerprint the orbax-era lens.json recorded (config, final norm, 16 embedding rows)."""
    import hashlib

    h = hashlib.sha256(json.dumps(cfg.to_dict(), sort_keys=True, default=str).encode())
    for leaf in jax.tree.leaves(params.get("final_norm", {})) + [params["embed"]["tok"][:16]]:
        h.update(np.asarray(leaf, np.float32).tobytes())
    return h.hexdigest()[:16]


def write_old_lens_folder(folder, weight, bias, cfg, params, name):
    import orbax.checkpoint as ocp

    folder.mkdir()
    with ocp.StandardCheckpointer() as ckptr:
        ckptr.save(folder.resolve() / "arrays", {"weight": np.asarray(weight), "bias": np.asarray(bias)})
    (folder / "lens.json").write_text(json.dumps({"kind": "tuned_lens", "model": name, "d_model": cfg.d_model,
                                                  "n_layers": cfg.n_layers, "vocab_size": cfg.vocab_size,
                                                  "fingerprint": old_lens_fingerprint(cfg, params)}))


def test_tuned_lens_is_one_artifact_and_old_orbax_folders_still_load(tiny_model, tmp_path):
    from dataclasses import replace

    from interpjax.methods import lens as LZ

    m, _ = tiny_model("llama")
    L, D = m.cfg.n_layers, m.cfg.d_model
    rng = np.random.default_rng(0)
    weight, bias = rng.normal(size=(L, D, D)).astype(np.float32) * 0.01, rng.normal(size=(L, D)).astype(np.float32)
    lens = LZ.init_tuned_lens(m.cfg, m.params, "tiny-llama").replace(weight_LDD=jnp.asarray(weight),
                                                                     bias_LD=jnp.asarray(bias))
    assert lens.meta.fingerprint == A.model_fingerprint(m)
    path = LZ.save_tuned_lens(lens, tmp_path / "lens.safetensors")
    assert path.is_file() and listing(tmp_path) == ["lens.safetensors"]
    back = LZ.TunedLens.load(path, model=m)
    assert back.meta == lens.meta and np.array_equal(np.asarray(back.weight_LDD), weight)
    assert LZ.load_tuned_lens(path, m.cfg, m.params).meta == lens.meta
    other = replace(m, params={**m.params, "final_norm": jax.tree.map(lambda x: x * 2, m.params["final_norm"])})
    with pytest.raises(ValueError, match=rf"fingerprint={lens.meta.fingerprint}.*fingerprint="
                                         rf"{A.model_fingerprint(other)} \(fingerprint differs\)"):
        LZ.load_tuned_lens(path, other.cfg, other.params)
    # the orbax folder of the older layout: checked with the fingerprint it recorded, returned with today's
    old = tmp_path / "old_lens"
    write_old_lens_folder(old, weight, bias, m.cfg, m.params, "tiny-llama")
    got = LZ.load_tuned_lens(old, m.cfg, m.params)
    assert got.meta == lens.meta and np.array_equal(np.asarray(got.bias_LD), bias)
    tokens = np.arange(1, 9)[None]
    assert np.array_equal(np.asarray(LZ.tuned_lens(got, m.cfg, m.params, tokens)),
                          np.asarray(LZ.tuned_lens(back, m.cfg, m.params, tokens)))
    with pytest.raises(ValueError, match="fingerprint differs"):
        LZ.load_tuned_lens(old, other.cfg, other.params)
    # saving onto the old folder replaces it by the one file (converting); any other folder is refused
    LZ.save_tuned_lens(got, old)
    assert old.is_file() and LZ.TunedLens.load(old, model=m).meta == lens.meta
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "notes.txt").write_text("keep")
    with pytest.raises(ValueError, match="not an older tuned lens"):
        LZ.save_tuned_lens(lens, tmp_path / "mine")
    assert (tmp_path / "mine" / "notes.txt").read_text() == "keep"
    with pytest.raises(ValueError, match="not a saved tuned lens"):
        LZ.load_tuned_lens(tmp_path / "mine", m.cfg, m.params)
    art = A.load_artifact(path, format=LZ.TunedLens.FORMAT)
    A.save_artifact(tmp_path / "cut.safetensors", {"weight_LDD": art.arrays["weight_LDD"]}, art.meta,
                    format=LZ.TunedLens.FORMAT, version=1, model=art.model)
    with pytest.raises(ValueError, match=r"cut.safetensors: missing tensor 'bias_LD'"):
        LZ.TunedLens.load(tmp_path / "cut.safetensors")
