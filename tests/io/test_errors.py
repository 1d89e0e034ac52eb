"""Bad input gets a clear ValueError (naming the valid choices) before any compute."""

from __future__ import annotations

import json
import re
import shutil

import jax.numpy as jnp
import numpy as np
import pytest

import interpjax
from interpjax import Add, Patch, Scale


@pytest.fixture(scope="module")
def llama(tiny_model):
    return tiny_model("llama")[0]


T = np.zeros((2, 6), np.int32)


@pytest.mark.parametrize(
    "iv, match",
    [
        (Add("resid_bogus", layer=0, vector=jnp.zeros(32)), "unknown site 'resid_bogus'; valid sites: embed, resid_pre"),
        (Add("resid_pre", layer=3, vector=jnp.zeros(32)), r"layer \[?3\]? out of range: valid layers are 0..2"),
        (Add("resid_pre", layer=-1, vector=jnp.zeros(32)), "out of range: valid layers are 0..2"),
        (Add("resid_pre", layer=None, vector=jnp.zeros(32)), "needs a layer"),
        (Add("final", layer=0, vector=jnp.zeros(32)), "outside the layer stack"),
        (Add("z", layer=0, vector=jnp.zeros(8), heads=jnp.array([4])), r"heads \[4\] out of range: valid heads are 0..3"),
        (Add("k", layer=0, vector=jnp.zeros(8), heads=jnp.array([2])), "valid heads are 0..1"),
        (Add("resid_pre", layer=0, vector=jnp.zeros(32), heads=jnp.array([0])), "has no head axis"),
        (Add("resid_pre", layer=0, vector=jnp.zeros(32), positions=jnp.array([6])), "valid positions are -6..5"),
        (Add("resid_pre", layer=0, vector=jnp.zeros(31)), r"shape \(31,\); it must match a trailing part"),
        (Add("resid_pre", layer=0, vector=jnp.zeros((3, 6, 32))), "trailing part of the site shape"),
        (Patch("resid_pre", layer=0, value=jnp.zeros((2, 5, 32))), r"one of \[\(32,\), \(6, 32\), \(2, 6, 32\)\]"),
        (Add("resid_pre", layer=0, vector=jnp.zeros(32, jnp.float16)), "dtype float16 but the model computes in float32"),
        (Add("resid_pre", layer=0, vector=jnp.zeros(32), coeff=jnp.ones(3)), "coeff must be a scalar"),
        (Scale("mlp_post", layer=0, factor=2.0, neurons=jnp.array([48])), "valid neurons are 0..47"),
        (interpjax.Ablate("resid_pre", layer=0, kind="mean"), "needs source"),
        (interpjax.Ablate("resid_pre", layer=0, kind="median"), "valid kinds"),
        (interpjax.Project("resid_pre", layer=0, direction=jnp.zeros(8)), r"expected \(32,\)"),
    ],
)
def test_bad_interventions(llama, iv, match):
    with pytest.raises(ValueError, match=match):
        llama(T, interventions=iv)


def test_bad_tokens(llama):
    with pytest.raises(ValueError, match=r"outside the vocabulary 0..100"):
        llama(np.array([[1, 2, 101]]))
    with pytest.raises(ValueError, match="exceeds the model context n_ctx=64"):
        llama(np.zeros((1, 65), np.int32))
    with pytest.raises(ValueError, match="integer ids"):
        llama(np.zeros((1, 4), np.float32))
    with pytest.raises(ValueError, match=r"\[batch, seq\]"):
        llama(np.zeros(4, np.int32))
    with pytest.raises(ValueError, match="attention_mask has shape"):
        llama(T, attention_mask=np.ones((2, 5)))


def test_bad_cache_requests(llama):
    with pytest.raises(ValueError, match="unknown site"):
        llama.run_with_cache(T, sites=["resid"])
    with pytest.raises(ValueError, match=r"layers \[5\] out of range: valid layers are 0..2"):
        llama.run_with_cache(T, sites=["resid_pre"], layers=[5])


def test_unknown_intervention_type(llama):
    with pytest.raises(TypeError, match="not an intervention"):
        llama(T, interventions=[lambda x: x])


def test_missing_and_truncated_checkpoints(tiny_checkpoint, tmp_path):
    folder, _ = tiny_checkpoint("llama")
    with pytest.raises(FileNotFoundError, match="no checkpoint folder"):
        interpjax.load(tmp_path / "nowhere")
    empty = tmp_path / "empty"
    empty.mkdir()
    shutil.copy(folder / "config.json", empty / "config.json")
    with pytest.raises(FileNotFoundError, match="no weights"):
        interpjax.load(empty)
    trunc = tmp_path / "trunc"
    shutil.copytree(folder, trunc)
    data = (trunc / "model.safetensors").read_bytes()
    (trunc / "model.safetensors").write_bytes(data[: len(data) - 100])
    with pytest.raises(ValueError, match="truncated safetensors"):
        interpjax.load(trunc)


def test_sharded_checkpoint_and_missing_shard(tiny_checkpoint, tmp_path):
    from interpjax.io.loading import read_safetensors, write_safetensors

    folder, _ = tiny_checkpoint("llama")
    sharded = tmp_path / "sharded"
    sharded.mkdir()
    shutil.copy(folder / "config.json", sharded / "config.json")
    tensors = read_safetensors(folder / "model.safetensors")
    names = sorted(tensors)
    half = len(names) // 2
    shards = {"model-00001-of-00002.safetensors": names[:half], "model-00002-of-00002.safetensors": names[half:]}
    for fname, keys in shards.items():
        write_safetensors({k: np.asarray(tensors[k]) for k in keys}, sharded / fname)
    index = {"metadata": {}, "weight_map": {k: f for f, ks in shards.items() for k in ks}}
    (sharded / "model.safetensors.index.json").write_text(json.dumps(index))
    a, b = interpjax.load(folder), interpjax.load(sharded)
    t = np.arange(6)[None] % 101
    assert np.array_equal(np.asarray(a(t)), np.asarray(b(t)))
    (sharded / "model-00002-of-00002.safetensors").unlink()
    with pytest.raises(FileNotFoundError, match="missing shard files"):
        interpjax.load(sharded)


def test_missing_weight_named(tiny_checkpoint, tmp_path):
    from interpjax.io.loading import read_safetensors, write_safetensors

    folder, _ = tiny_checkpoint("llama")
    bad = tmp_path / "bad"
    shutil.copytree(folder, bad)
    tensors = {k: np.asarray(v) for k, v in read_safetensors(folder / "model.safetensors").items()
               if "layers.1.mlp.up_proj" not in k}
    write_safetensors(tensors, bad / "model.safetensors")
    with pytest.raises(ValueError, match="missing weight 'layers.1.mlp.up_proj.weight'"):
        interpjax.load(bad)


def copy_with_config(folder, dest, **changes):
    """A copy of a checkpoint folder whose config.json has ``changes`` applied."""
    shutil.copytree(folder, dest)
    cfg = json.loads((dest / "config.json").read_text())
    cfg.update(changes)
    (dest / "config.json").write_text(json.dumps(cfg))
    return dest


def test_shapes_disagree_with_config(tiny_checkpoint, tmp_path):
    folder, _ = tiny_checkpoint("gpt2")
    bad = copy_with_config(folder, tmp_path / "bad", vocab_size=120)
    with pytest.raises(ValueError, match=r"embed/tok: shape \(101, 32\), config needs \(120, 32\)"):
        interpjax.load(bad)


def test_pickle_refused_unless_opted_in(tiny_checkpoint, tmp_path):
    import torch

    folder, hf = tiny_checkpoint("gpt2")
    pk = tmp_path / "pickled"
    pk.mkdir()
    shutil.copy(folder / "config.json", pk / "config.json")
    torch.save(hf.state_dict(), pk / "pytorch_model.bin")
    with pytest.raises(ValueError, match="allow_pickle=True"):
        interpjax.load(pk)
    m = interpjax.load(pk, allow_pickle=True)
    t = np.arange(6)[None]
    ref = interpjax.load(folder)
    assert np.array_equal(np.asarray(m(t)), np.asarray(ref(t)))


def test_unsupported_architecture_and_fields(tiny_checkpoint, tmp_path):
    folder, _ = tiny_checkpoint("llama")

    def with_config(name, **changes):
        return copy_with_config(folder, tmp_path / name, **changes)

    supported = ", ".join(interpjax.io.convert.SUPPORTED)
    assert supported.startswith("bert, ") and "gpt2, gpt_neo" in supported
    with pytest.raises(ValueError, match=f"unsupported architecture 't5'; supported model types: {supported}$"):
        interpjax.io.convert.config_from_hf({"model_type": "t5"})
    with pytest.raises(ValueError, match="rope type 'yarn' is not supported"):
        interpjax.load(with_config("yarn", rope_parameters={"rope_type": "yarn", "rope_theta": 1e4, "factor": 2.0}))
    with pytest.raises(ValueError, match="config field pretraining_tp=2 is not supported"):
        interpjax.load(with_config("tp", pretraining_tp=2))
    with pytest.raises(ValueError, match="activation 'gelu_10' is not supported"):
        interpjax.io.convert.config_from_hf({**json.loads((folder / "config.json").read_text()), "hidden_act": "gelu_10"})
    d = json.loads((folder / "config.json").read_text())
    with pytest.raises(ValueError, match="config field 'qk_layernorm'"):
        interpjax.io.convert.config_from_hf({**d, "qk_layernorm": True})


def test_bad_dtype_and_generation_args(tiny_checkpoint, llama):
    folder, _ = tiny_checkpoint("llama")
    with pytest.raises(ValueError, match=r"dtype 'float64' not supported; choose one of \['float32', 'bfloat16', 'float16'\]"):
        interpjax.load(folder, dtype="float64")
    from interpjax.generate import greedy

    with pytest.raises(ValueError, match="exceeds n_ctx=64"):
        greedy(llama.cfg, llama.params, np.zeros((1, 60), np.int32), 10)


# ---------------------------------------------------------------------------------------------
# corrupt files name the file and the entry; paths stay inside the checkpoint; non-finite weights


def _raw_safetensors(path, header, data: bytes = b""):
    """Write a safetensors file with a hand-made (possibly corrupt) header."""
    raw = header if isinstance(header, bytes) else json.dumps(header).encode()
    path.write_bytes(len(raw).to_bytes(8, "little") + raw + data)
    return path


@pytest.mark.parametrize("header, data, match", [
    (b'{"w\xff\xfe": 1}', b"", r"corrupt safetensors header, not UTF-8 JSON"),
    (b"[1, 2]", b"", r"a list, not an object \(expected a JSON object of tensors\)"),
    ({"w": {"shape": [2], "data_offsets": [0, 8]}}, bytes(8), r"tensor 'w': header entry lacks \['dtype'\]"),
    ({"w": {"dtype": "F32", "shape": [3], "data_offsets": [0, 8]}}, bytes(8),
     r"tensor 'w': data_offsets \[0, 8\] span 8 bytes but shape \(3,\) of F32 needs 12"),
    ({"w": {"dtype": "F32", "shape": [-2], "data_offsets": [0, 8]}}, bytes(8), r"tensor 'w': shape \[-2\] is not a list"),
    ({"w": {"dtype": "F32", "shape": [2], "data_offsets": [8, 0]}}, bytes(8), r"tensor 'w': data_offsets \[8, 0\]"),
    ({"w": {"dtype": "Q4", "shape": [2], "data_offsets": [0, 8]}}, bytes(8), r"tensor 'w': unsupported dtype 'Q4'; supported"),
    ({"w": "F32"}, b"", r"tensor 'w': header entry must be an object"),
])
def test_corrupt_safetensors_header_names_file_and_tensor(tiny_checkpoint, tmp_path, header, data, match):
    from interpjax.io.loading import read_safetensors

    f = _raw_safetensors(tmp_path / "bad.safetensors", header, data)
    with pytest.raises(ValueError, match=match) as e:
        read_safetensors(f)
    assert str(f) in str(e.value)
    folder, _ = tiny_checkpoint("llama")
    ckpt = tmp_path / "ckpt"
    ckpt.mkdir()
    shutil.copy(folder / "config.json", ckpt / "config.json")
    shutil.copy(f, ckpt / "model.safetensors")
    with pytest.raises(ValueError, match=match) as e:
        interpjax.load(ckpt)
    assert "model.safetensors" in str(e.value)


def test_one_layer_of_another_shape_names_tensor_and_file(tiny_checkpoint, tmp_path):
    from interpjax.io.loading import read_safetensors, write_safetensors

    folder, _ = tiny_checkpoint("llama")
    bad = tmp_path / "bad"
    shutil.copytree(folder, bad)
    tensors = {k: np.asarray(v) for k, v in read_safetensors(folder / "model.safetensors").items()}
    name = "model.layers.1.mlp.up_proj.weight"
    tensors[name] = np.zeros((tensors[name].shape[0] - 1, tensors[name].shape[1]), tensors[name].dtype)
    write_safetensors(tensors, bad / "model.safetensors")
    with pytest.raises(ValueError, match=rf"model.safetensors: tensor '{name}' has shape \(47, 32\) but "
                                         r"'model.layers.0.mlp.up_proj.weight' \(in model.safetensors\) has \(48, 32\)"):
        interpjax.load(bad)


def _sharded(folder, dest, index_text=None, shard_of=None):
    """A sharded copy of a checkpoint: every tensor in one shard file, with the given index text."""
    dest.mkdir()
    shutil.copy(folder / "config.json", dest / "config.json")
    shutil.copy(folder / "model.safetensors", dest / "model-00001-of-00001.safetensors")
    if index_text is None:
        from interpjax.io.loading import read_safetensors

        names = sorted(read_safetensors(folder / "model.safetensors"))
        index_text = json.dumps({"weight_map": {n: (shard_of or {}).get(n, "model-00001-of-00001.safetensors")
                                                for n in names}})
    (dest / "model.safetensors.index.json").write_text(index_text)
    return dest


@pytest.mark.parametrize("text, match", [
    ('{"weight_map": {"a": ', r"corrupt checkpoint index, not UTF-8 JSON"),
    ('{"metadata": {}}', r"needs a non-empty 'weight_map' of tensor name -> shard file; found \['metadata'\]"),
    ('[]', r"needs a non-empty 'weight_map'"),
    ('{"weight_map": {"a": 3}}', r"weight_map\['a'\] = 3 is not a shard file name"),
])
def test_corrupt_index_names_the_index(tiny_checkpoint, tmp_path, text, match):
    folder, _ = tiny_checkpoint("llama")
    ckpt = _sharded(folder, tmp_path / "ckpt", text)
    with pytest.raises(ValueError, match=match) as e:
        interpjax.load(ckpt)
    assert str(ckpt / "model.safetensors.index.json") in str(e.value)


@pytest.mark.parametrize("shard", ["../outside.safetensors", "../../../../etc/hostname", "sub/../../outside.safetensors"])
def test_shard_paths_stay_inside_the_checkpoint(tiny_checkpoint, tmp_path, shard):
    """A valid weights file outside the folder is not read even though the index points at it."""
    folder, _ = tiny_checkpoint("llama")
    shutil.copy(folder / "model.safetensors", tmp_path / "outside.safetensors")
    name = "model.embed_tokens.weight"
    ckpt = _sharded(folder, tmp_path / "ckpt", shard_of={name: shard})
    with pytest.raises(ValueError, match=rf"weight_map\['{name}'\] = '{re.escape(shard)}' points outside the "
                                         r"checkpoint folder"):
        interpjax.load(ckpt)
    ok = _sharded(folder, tmp_path / "ok")  # the same layout with the shard inside loads
    t = np.arange(6)[None]
    assert np.array_equal(np.asarray(interpjax.load(ok)(t)), np.asarray(interpjax.load(folder)(t)))


def test_index_must_agree_with_shards(tiny_checkpoint, tmp_path):
    folder, _ = tiny_checkpoint("llama")
    ckpt = _sharded(folder, tmp_path / "ckpt", json.dumps({"weight_map": {"model.norm.weight": "model-00001-of-00001.safetensors",
                                                                          "not.there": "model-00001-of-00001.safetensors"}}))
    with pytest.raises(ValueError, match=r"shards lack tensors the index places in them, e.g. \[\('not.there'"):
        interpjax.load(ckpt)


def test_empty_path_is_not_the_current_directory(tiny_checkpoint, monkeypatch):
    folder, _ = tiny_checkpoint("llama")
    monkeypatch.chdir(folder)  # a loadable checkpoint sits in the current directory
    with pytest.raises(ValueError, match=r"empty checkpoint path ''"):
        interpjax.load("")
    with pytest.raises(ValueError, match=r"empty checkpoint path ' '"):
        interpjax.load(" ")
    with pytest.raises(TypeError, match="got NoneType"):
        interpjax.load(None)
    assert interpjax.load(".").cfg.n_layers == 3  # '.' still means it, explicitly


def test_nonfinite_weights_refused_unless_allowed(tiny_checkpoint, tmp_path):
    from interpjax.io.loading import read_safetensors, write_safetensors

    folder, _ = tiny_checkpoint("llama")
    bad = tmp_path / "bad"
    shutil.copytree(folder, bad)
    tensors = {k: np.array(v) for k, v in read_safetensors(folder / "model.safetensors").items()}
    tensors["model.layers.1.mlp.up_proj.weight"][3, :2] = np.nan
    tensors["model.embed_tokens.weight"][5, 0] = np.inf
    write_safetensors(tensors, bad / "model.safetensors")
    with pytest.raises(ValueError, match=r"weights hold NaN or inf: embed/tok: 1 values; layers/mlp/up \(layers \[1\]\): "
                                         r"2 values; .*allow_nonfinite=True") as e:
        interpjax.load(bad)
    assert str(bad) in str(e.value)
    m = interpjax.load(bad, allow_nonfinite=True)
    assert np.isnan(np.asarray(m.params["layers"]["mlp"]["up"][1])).sum() == 2
