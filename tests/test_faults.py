"""Fault injection: a real SIGKILL during a sweep, an activation collection, training (a language
model and a tuned lens) and an artifact save, each followed by a resume or load that is
bit-identical to an uninterrupted run and leaves no litter (no temporary file or folder beside the
target or in the checkpoint folder); and a resume whose inputs changed in a way the user can see is
refused, naming what changed, before any compute and without touching the folder.

Every kill is a real ``SIGKILL`` of a subprocess, injected at a fixed point, so no test depends on
timing except the artifact save (caught while a large temporary is being written). Each resumable
run is killed twice: inside the commit of a checkpoint or file (its temporary written, not renamed
into place), then the resumed run between two commits; a third run finishes and is compared with
an uninterrupted one."""

from __future__ import annotations

import dataclasses
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import interpjax.sweep as sw
from interpjax import Add, Model
from interpjax.io import artifacts as ART
from interpjax.io.activations import ActivationDataset, collect
from interpjax.sweep import program as PG
from interpjax.testing import tiny_config
from interpjax.train import TrainConfig, Trainer, init_params

from conftest import REPO

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE / "sweep"))
from sweep_worker import logit_diff, make_model, patch_grid, tokens  # noqa: E402

# The subprocess scripts below import this module (for the shared setups) from HERE, and kill
# themselves at a chosen point. Orbax commits a checkpoint (a sweep chunk, a training step) by
# renaming its finished temporary folder; KILL_IN_COMMIT patches that rename to die first.
KILL_IN_COMMIT = """
import os, signal, sys
from orbax.checkpoint._src.path import async_path
_rename = async_path.rename
def kill_in_commit_of(step):
    async def rename(src, dst):
        if dst.name == str(step):
            os.kill(os.getpid(), signal.SIGKILL)
        return await _rename(src, dst)
    async_path.rename = rename
"""


def run_script(code: str, *args, timeout: int = 600) -> subprocess.CompletedProcess:
    """Run ``code`` in a fresh CPU Python with argv[1] = this folder, then ``args``."""
    return subprocess.run([sys.executable, "-c", code, str(HERE), *map(str, args)], capture_output=True, text=True,
                          timeout=timeout, cwd=REPO, env={**os.environ, "JAX_PLATFORMS": "cpu"})


def ok(proc: subprocess.CompletedProcess) -> subprocess.CompletedProcess:
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc


def killed(proc: subprocess.CompletedProcess) -> None:
    assert proc.returncode == -signal.SIGKILL, (proc.returncode, proc.stderr[-3000:])


def temporaries(folder: Path) -> list:
    """Every file or folder under ``folder`` whose name marks it as temporary."""
    return sorted(str(p.relative_to(folder)) for p in folder.rglob("*") if "tmp" in p.name.lower())


def listing(folder: Path) -> list:
    return sorted(p.name for p in folder.iterdir())


def quick_params(cfg, seed: int = 0):
    """Params shaped as ``init_params(cfg)`` from numpy's generator (an eager ``init_params`` takes
    seconds to compile in every fresh process)."""
    shapes = jax.eval_shape(lambda: init_params(cfg, jax.random.PRNGKey(0)))
    rng = np.random.default_rng(seed)

    def one(path, a):
        name = jax.tree_util.keystr(path)
        if "scale" in name:
            return jnp.ones(a.shape, a.dtype)
        if "bias" in name or name.endswith("['b']"):
            return jnp.zeros(a.shape, a.dtype)
        return jnp.asarray(0.02 * rng.standard_normal(a.shape), a.dtype)

    return jax.tree_util.tree_map_with_path(one, shapes)


def tree_bytes(folder: Path) -> dict:
    """relative path -> bytes of every file under ``folder``."""
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


# =============================================================================================
# sweep: SIGKILL and resume

SWEEP_KILL = KILL_IN_COMMIT + """
sys.path.insert(0, sys.argv[1])
directory, out, log, how = sys.argv[2:6]
import numpy as np
from test_faults import sweep_resumable
if how.startswith("commit="):  # die once chunk N's temporary folder is complete, before its rename
    kill_in_commit_of(int(how[7:]))

def on_chunk(i, values):
    with open(log, "a") as f:
        f.write(f"{i}\\n")
    if how == f"after={i}":  # die once chunk N is saved and reported
        os.kill(os.getpid(), signal.SIGKILL)

np.save(out, sweep_resumable(directory, on_chunk))
"""


def sweep_resumable(directory, on_chunk):
    """The resumable sweep of the SIGKILL tests: 3 layers x 8 positions of patching in chunks of 2."""
    cfg, params = make_model("rotary")
    clean, corrupt = tokens(cfg, seed=1), tokens(cfg, seed=2)
    grid = patch_grid(cfg, params, clean)
    return sw.sweep((cfg, params), corrupt, grid, logit_diff, chunk_size=2, position_buckets=2,
                    checkpoint_dir=directory, progress=False, on_chunk=on_chunk)


@pytest.fixture(scope="module")
def sweep_reference(tmp_path_factory):
    """(values, number of chunks, folder) of the sweep run once without a kill."""
    d = tmp_path_factory.mktemp("sweep_ref")
    ok(run_script(SWEEP_KILL, d / "ckpt", d / "out.npy", d / "log", "live"))
    return np.load(d / "out.npy"), len((d / "log").read_text().split()), d / "ckpt"


def _finished_chunks(ckpt: Path) -> list:
    return sorted(int(d.name) for d in (ckpt / "chunks").iterdir() if d.name.isdigit())


def _logged(log: Path) -> list:
    done = [int(x) for x in log.read_text().split()]
    log.unlink()
    return done


@pytest.mark.slow
def test_sweep_resume_after_sigkill_recomputes_nothing_is_bit_identical_and_leaves_no_litter(sweep_reference,
                                                                                            tmp_path):
    ref, n_chunks, ref_dir = sweep_reference
    assert n_chunks > 5
    ckpt, out, log = tmp_path / "ckpt", tmp_path / "out.npy", tmp_path / "log"
    killed(run_script(SWEEP_KILL, ckpt, out, log, "commit=3"))  # inside chunk 3's commit
    assert _finished_chunks(ckpt) == [0, 1, 2] and not out.exists()
    assert temporaries(ckpt), "the kill did not land inside a chunk's commit"
    assert _logged(log) == [0, 1, 2]  # a chunk is reported only after it was saved
    killed(run_script(SWEEP_KILL, ckpt, out, log, "after=4"))  # the resume, killed between two chunks
    assert _finished_chunks(ckpt) == [0, 1, 2, 3, 4] and not out.exists()
    assert _logged(log) == [3, 4], "a finished chunk was recomputed"
    ok(run_script(SWEEP_KILL, ckpt, out, log, "live"))  # the second resume finishes
    assert _logged(log) == list(range(5, n_chunks)), "a finished chunk was recomputed"
    np.testing.assert_array_equal(np.load(out), ref)
    assert np.load(out).tobytes() == ref.tobytes()  # bit-identical (also -0.0 and NaN payloads)
    # no litter: the same entries as the uninterrupted run, and nothing temporary anywhere
    assert temporaries(ckpt) == []
    assert listing(ckpt) == listing(ref_dir) == ["chunks", "manifest.json"]
    assert listing(ckpt / "chunks") == listing(ref_dir / "chunks") == sorted(str(i) for i in range(n_chunks))
    assert (ckpt / "manifest.json").read_bytes() == (ref_dir / "manifest.json").read_bytes()


# ---------------------------------------------------------------------------------------------
# sweep: a resume with other inputs is refused


@pytest.fixture(scope="module")
def rot():
    return make_model("rotary")


def _vec(shape, seed=0):
    return jnp.asarray(np.random.default_rng(seed).normal(size=shape), jnp.float32)


@pytest.fixture(scope="module")
def done_sweep(rot, tmp_path_factory):
    """A finished resumable sweep: (its folder, its keyword arguments, its values)."""
    cfg, params = rot
    clean, corrupt = tokens(cfg, seed=1), tokens(cfg, seed=2)
    kw = dict(model=rot, tokens=corrupt, grid=patch_grid(cfg, params, clean), metric=logit_diff,
              position_buckets=2)
    d = tmp_path_factory.mktemp("sweep_done")
    done = []
    values = sw.sweep(kw["model"], kw["tokens"], kw["grid"], kw["metric"], checkpoint_dir=d, progress=False,
                      position_buckets=2, on_chunk=lambda i, v: done.append(i))
    assert done
    return d, kw, values


def _sweep_kw(done_sweep, **change):
    _, kw, _ = done_sweep
    kw = {**kw, **change}
    return (kw.pop("model"), kw.pop("tokens"), kw.pop("grid"), kw.pop("metric")), kw


def test_sweep_identical_resume_restores_everything_and_computes_nothing(done_sweep):
    d, _, values = done_sweep
    args, kw = _sweep_kw(done_sweep)
    again, before = [], dict(PG.TRACES)
    np.testing.assert_array_equal(sw.sweep(*args, checkpoint_dir=d, progress=False,
                                           on_chunk=lambda i, v: again.append(i), **kw), values)
    assert again == [] and PG.TRACES == before  # everything restored, nothing recomputed or compiled


def _other_config(rot):
    cfg, params = rot
    return dataclasses.replace(cfg, norm_eps=1e-3), params


SWEEP_CHANGES = {  # name -> (what the user changed, as sweep keyword arguments; the part named)
    "other tokens": (lambda r: dict(tokens=tokens(r[0], seed=5)), "tokens"),
    "one token": (lambda r: dict(tokens=(tokens(r[0], seed=2) + np.eye(2, 8, 7, dtype=np.int32)) % r[0].vocab_size),
                   "tokens"),
    "attention mask": (lambda r: dict(attention_mask=np.array([[0] + [1] * 7, [1] * 8])), "tokens"),
    "base intervention": (lambda r: dict(interventions=[Add("resid_pre", layer=0, vector=_vec(32), coeff=0.5)]),
                          "interventions"),
    "other grid": (lambda r: dict(grid=patch_grid(*r, tokens(r[0], seed=3))), "grid"),
    "other site": (lambda r: dict(grid=patch_grid(*r, tokens(r[0], seed=1), site="resid_post")), "grid"),
    "other weights": (lambda r: dict(model=(r[0], jax.tree.map(lambda a: a * 1.01, r[1]))), "model"),
    "other config": (lambda r: dict(model=_other_config(r)), "model"),
    "other metric": (lambda r: dict(metric=lambda out: out.logits(-1, 2).mean()), "metric"),
    "position buckets": (lambda r: dict(position_buckets=3), "options"),
    "no shortcuts": (lambda r: dict(shortcuts=False), "options"),
}


@pytest.mark.parametrize("change", list(SWEEP_CHANGES))
def test_sweep_resume_with_changed_inputs_is_refused_before_compute(rot, done_sweep, change):
    d, _, _ = done_sweep
    make, part = SWEEP_CHANGES[change]
    args, kw = _sweep_kw(done_sweep, **make(rot))
    files, before = tree_bytes(d), dict(PG.TRACES)
    with pytest.raises(ValueError, match=rf"holds a different sweep \(changed: {part}\); refusing to resume"):
        sw.sweep(*args, checkpoint_dir=d, progress=False, **kw)
    assert PG.TRACES == before and tree_bytes(d) == files  # refused before compute, folder untouched


_OFFSET = 0.0  # read by _offset_metric: a module global the metric reaches


def _offset_metric(out):
    return logit_diff(out) + _OFFSET


def _helper(out):
    return logit_diff(out)


def test_sweep_resume_refuses_a_metric_whose_globals_or_helpers_changed(rot, tmp_path, monkeypatch):
    """The stored fingerprint covers what the metric reaches: a module global it reads, or a helper
    it calls, changed between two runs on one checkpoint dir is refused before compute (not the
    stale result)."""
    cfg, params = rot
    toks = tokens(cfg, seed=7)
    grid = sw.product(layer=np.arange(3), coeff=np.array([0.5, 1.0], np.float32)).build(
        lambda a: Add("resid_pre", layer=a.layer, vector=_vec(32, 13), coeff=a.coeff))
    kw = dict(progress=False)
    module = sys.modules[__name__]
    ref = sw.sweep(rot, toks, grid, _offset_metric, checkpoint_dir=tmp_path / "a", **kw)
    np.testing.assert_array_equal(sw.sweep(rot, toks, grid, _offset_metric, checkpoint_dir=tmp_path / "a", **kw), ref)
    monkeypatch.setattr(module, "_OFFSET", 17.9)
    before = dict(PG.TRACES)
    with pytest.raises(ValueError, match=r"holds a different sweep \(changed: metric\)"):
        sw.sweep(rot, toks, grid, _offset_metric, checkpoint_dir=tmp_path / "a", **kw)
    assert PG.TRACES == before
    fresh = sw.sweep(rot, toks, grid, _offset_metric, checkpoint_dir=tmp_path / "b", **kw)
    np.testing.assert_allclose(fresh, ref + 17.9, rtol=1e-6)
    # a helper the metric calls, changed behind the same name
    call_helper = lambda out: _helper(out)  # noqa: E731
    sw.sweep(rot, toks, grid, call_helper, checkpoint_dir=tmp_path / "c", **kw)
    monkeypatch.setattr(module, "_helper", lambda out: -logit_diff(out))
    with pytest.raises(ValueError, match=r"changed: metric"):
        sw.sweep(rot, toks, grid, call_helper, checkpoint_dir=tmp_path / "c", **kw)


# =============================================================================================
# activation collection: SIGKILL and resume

ACTS_KILL = """
import os, signal, sys
sys.path.insert(0, sys.argv[1])
out, how = sys.argv[2], sys.argv[3]
from test_faults import acts_collect

# every file of a collection (chunks, manifest) is committed by os.replace of a finished temporary;
# die at this process's n-th commit after cutting its temporary to half its size (a kill mid-write)
n_commit, commits, _replace = int(how), [0], os.replace
def replace(src, dst, *a, **k):
    commits[0] += 1
    if commits[0] == n_commit:
        os.truncate(src, os.path.getsize(src) // 2)
        os.kill(os.getpid(), signal.SIGKILL)
    return _replace(src, dst, *a, **k)
os.replace = replace
acts_collect(out)
"""



def acts_model():
    cfg = tiny_config(vocab_size=64, d_model=32, n_layers=3, n_ctx=16)
    return Model(cfg, quick_params(cfg))


def acts_seqs(n=13, seed=0):
    rng = np.random.default_rng(seed)
    return [rng.integers(0, 64, int(rng.choice([3, 6, 11]))) for _ in range(n)]


ACTS_KW = dict(sites=["resid_post", "embed"], layers=[2, 0], batch_size=4, chunk_examples=5)


def acts_collect(out, model=None, seqs=None, **change):
    """The collection of the SIGKILL tests (3 chunks), with keyword arguments ``change``d."""
    model = acts_model() if model is None else model
    seqs = acts_seqs() if seqs is None else seqs
    return collect(model, seqs, out_dir=out, **{**ACTS_KW, "meta": {"y": np.arange(13) * 0.5}, **change})


@pytest.fixture(scope="module")
def acts_reference(tmp_path_factory):
    d = tmp_path_factory.mktemp("acts_ref") / "acts"
    ok(run_script(ACTS_KILL, d, 0))
    return d


@pytest.mark.slow
def test_activation_collection_resume_after_sigkill_is_bit_identical_and_leaves_no_litter(acts_reference, tmp_path):
    out = tmp_path / "acts"
    # commits of a fresh run: 1 manifest, 2 chunk 0, 3 manifest, 4 chunk 1, ...: die writing chunk 1
    killed(run_script(ACTS_KILL, out, 4))
    assert temporaries(out), "the kill did not land inside a commit"
    with pytest.raises(ValueError, match=r"incomplete \(1 of 3 chunks\)"):
        ActivationDataset(out)
    first = (out / "chunk_00000.safetensors").read_bytes()
    # the resume's commits: 1 manifest, 2 chunk 1, 3 manifest: die writing the manifest after chunk 1
    killed(run_script(ACTS_KILL, out, 3))
    assert temporaries(out) and (out / "chunk_00001.safetensors").exists()
    with pytest.raises(ValueError, match=r"incomplete \(1 of 3 chunks\)"):  # chunk 1 is not listed yet
        ActivationDataset(out)
    ok(run_script(ACTS_KILL, out, 0))  # the second resume finishes
    assert (out / "chunk_00000.safetensors").read_bytes() == first
    # every file byte for byte as an uninterrupted collection, and nothing else (no litter)
    assert temporaries(out) == []
    assert listing(out) == listing(acts_reference) == [
        "chunk_00000.safetensors", "chunk_00001.safetensors", "chunk_00002.safetensors", "manifest.json"]
    assert tree_bytes(out) == tree_bytes(acts_reference)
    ds = ActivationDataset(out)
    assert ds.manifest["complete"] and ds.n_examples == 13


# ---------------------------------------------------------------------------------------------
# activation collection: a resume with other inputs is refused


@pytest.fixture(scope="module")
def done_acts(tmp_path_factory):
    model = acts_model()
    d = tmp_path_factory.mktemp("acts_done") / "acts"
    acts_collect(d, model)
    return d, model


def _other_weights(model):
    return dataclasses.replace(model, params={**model.params, "final_norm": {
        k: v + 1 for k, v in model.params["final_norm"].items()}})


def _one_token_changed():
    seqs = acts_seqs()
    seqs[4] = seqs[4].copy()
    seqs[4][0] = (seqs[4][0] + 1) % 64
    return seqs


ACTS_CHANGES = {  # name -> (model -> (model, seqs, keyword arguments) of the changed collect; the keys named)
    "other tokens": (lambda m: (m, acts_seqs(seed=1), {}), "fingerprint"),
    "one token": (lambda m: (m, _one_token_changed(), {}), "fingerprint"),
    "one example fewer": (lambda m: (m, acts_seqs()[:12], dict(meta={"y": np.arange(12) * 0.5})),
                          "fingerprint, n_inputs"),
    "other layers": (lambda m: (m, None, dict(layers=[1])), "layers"),
    "other sites": (lambda m: (m, None, dict(sites=["resid_post", "mlp_out"])), "feature_shapes, sites"),
    "other positions": (lambda m: (m, None, dict(positions="all")), "fingerprint, positions"),
    "other dtype": (lambda m: (m, None, dict(dtype="bfloat16")), "dtype"),
    "other meta values": (lambda m: (m, None, dict(meta={"y": np.arange(13) * 0.25})), "fingerprint"),
    "other meta key": (lambda m: (m, None, dict(meta={"z": np.arange(13) * 0.5})), "fingerprint, meta_keys"),
    "other weights": (lambda m: (_other_weights(m), None, {}), "model_fingerprint"),
    "other batch size": (lambda m: (m, None, dict(batch_size=3)), "batch_size, fingerprint"),
    "other chunk size": (lambda m: (m, None, dict(chunk_examples=6)), "chunk_examples, fingerprint"),
}


@pytest.mark.parametrize("change", list(ACTS_CHANGES))
def test_activation_resume_with_changed_inputs_is_refused(done_acts, change):
    d, model = done_acts
    make, part = ACTS_CHANGES[change]
    m, seqs, kw = make(model)
    files = tree_bytes(d)
    with pytest.raises(ValueError, match=rf"already holds a different activation collection \(differs in: {part}\)"):
        acts_collect(d, m, seqs, **kw)
    assert tree_bytes(d) == files  # untouched


def test_activation_collection_refuses_a_folder_of_other_files(tmp_path):
    (tmp_path / "b").mkdir()
    (tmp_path / "b" / "notes.txt").write_text("mine")
    with pytest.raises(ValueError, match="not empty and holds no activation manifest"):
        acts_collect(tmp_path / "b")
    assert listing(tmp_path / "b") == ["notes.txt"]
    with pytest.raises(FileNotFoundError):
        ActivationDataset(tmp_path / "b")


def test_activation_manifest_records_the_one_model_fingerprint(done_acts):
    d, model = done_acts
    manifest = json.loads((d / "manifest.json").read_text())
    assert manifest["model_fingerprint"] == ART.model_fingerprint(model)
    assert manifest["model_fingerprint"] != ART.model_fingerprint(_other_weights(model))


# =============================================================================================
# training: SIGKILL and resume (a language model and a tuned lens)

TRAIN_CFG = tiny_config(vocab_size=16, d_model=32, n_layers=2, n_ctx=16)
TRAIN_TC = TrainConfig(lr=3e-3, log_every=1, ckpt_every=3)
TRAIN_STEPS = 10


def train_batch(step, B=4, T=12):
    """A learnable stream: each row counts upward mod 16 from a random start."""
    rng = np.random.default_rng(step)
    start = rng.integers(0, 16, (B, 1))
    return {"tokens": (start + np.arange(T)) % 16}


TRAIN_KILL = KILL_IN_COMMIT + """
sys.path.insert(0, sys.argv[1])
workdir, how = sys.argv[2], sys.argv[3]
from test_faults import TRAIN_CFG, TRAIN_STEPS, TRAIN_TC, Trainer, quick_params, train_batch
if how.startswith("commit="):  # die once step N's checkpoint folder is written, before its rename
    kill_in_commit_of(int(how[7:]))

def batches(step):
    if how == f"step={step}":  # die asking for step N's batch, between two checkpoints
        os.kill(os.getpid(), signal.SIGKILL)
    return train_batch(step)

Trainer(TRAIN_CFG, TRAIN_TC, workdir, params=quick_params(TRAIN_CFG)).train(batches, TRAIN_STEPS, progress=False)
"""

LENS_CFG = tiny_config(vocab_size=32, n_ctx=16)
LENS_TC = TrainConfig(lr=1e-2, weight_decay=0.0, total_steps=8, log_every=1, ckpt_every=3)
LENS_STEPS = 8


def lens_model():
    return Model(LENS_CFG, quick_params(LENS_CFG))


def lens_batch(step):
    return np.random.default_rng(step).integers(0, 32, (4, 12))


LENS_KILL = KILL_IN_COMMIT + """
sys.path.insert(0, sys.argv[1])
workdir, how = sys.argv[2], sys.argv[3]
import numpy as np
from interpjax.methods import lens as LZ
from test_faults import LENS_STEPS, LENS_TC, lens_batch, lens_model
if how.startswith("commit="):
    kill_in_commit_of(int(how[7:]))

def batches(step):
    if how == f"step={step}":
        os.kill(os.getpid(), signal.SIGKILL)
    return lens_batch(step)

trainer = LZ.TunedLensTrainer(lens_model(), LENS_TC, workdir)
trainer.train(batches, LENS_STEPS, progress=False)
np.savez(workdir + ".npz", **{k: np.asarray(v) for k, v in trainer.arrays.items()})
"""


@pytest.fixture(scope="module")
def train_reference(tmp_path_factory):
    d = tmp_path_factory.mktemp("train_ref") / "r"
    ok(run_script(TRAIN_KILL, d, "live"))
    return d


@pytest.fixture(scope="module")
def lens_reference(tmp_path_factory):
    d = tmp_path_factory.mktemp("lens_ref") / "r"
    ok(run_script(LENS_KILL, d, "live"))
    return d


def _metrics(workdir: Path) -> list:
    return [json.loads(x) for x in (workdir / "metrics.jsonl").read_text().splitlines()]


def _same_files_no_litter(k: Path, r: Path):
    """The workdir and its checkpoint steps match the uninterrupted run's; nothing temporary
    anywhere (orbax's files inside a step are named by random hashes and their number varies, so
    they are not compared)."""
    files = lambda d: sorted(p.name for p in d.iterdir()) + sorted(p.name for p in (d / "ckpt").iterdir())
    assert temporaries(k) == []
    assert files(k) == files(r)


def _kill_twice(script: str, k: Path):
    """Kill a run inside the commit of step 6's checkpoint (checkpoints every 3 steps: it resumes
    at 3), kill its resume after step 7 (it resumes at 6), and let the second resume finish."""
    killed(run_script(script, k, "commit=6"))
    assert temporaries(k / "ckpt"), "the kill did not land inside a checkpoint's commit"
    assert [x["step"] for x in _metrics(k)][-1] >= 6
    killed(run_script(script, k, "step=7"))  # 7 steps done, asking for the 8th's batch
    assert [x["step"] for x in _metrics(k)][-1] == 7 and temporaries(k) == []
    ok(run_script(script, k, "live"))


@pytest.mark.slow
def test_training_resume_after_sigkill_is_bit_identical_and_leaves_no_litter(train_reference, tmp_path):
    """A real SIGKILL mid-run (twice): the restarted run loses no steps, logs each once, and ends
    with the uninterrupted run's params and optimizer state, bit for bit."""
    k, r = tmp_path / "k", train_reference
    _kill_twice(TRAIN_KILL, k)
    mk, mr = _metrics(k), _metrics(r)
    assert [x["step"] for x in mk] == list(range(1, TRAIN_STEPS + 1))
    assert mk == mr  # every logged loss and metric bit-identical
    pk, pr = (Trainer(TRAIN_CFG, TRAIN_TC, d, params=quick_params(TRAIN_CFG)) for d in (k, r))
    assert pk.step == pr.step == TRAIN_STEPS
    la, lb = jax.tree.leaves((pk.params, pk.opt_state)), jax.tree.leaves((pr.params, pr.opt_state))
    assert len(la) == len(lb)
    for a, b in zip(la, lb):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    _same_files_no_litter(k, r)
    assert (k / "run.json").read_bytes() == (r / "run.json").read_bytes()


@pytest.mark.slow
def test_lens_resume_after_sigkill_is_bit_identical_and_leaves_no_litter(lens_reference, tmp_path):
    """A real SIGKILL of the tuned-lens trainer mid-run (twice): the restarted run ends bit-identical
    to an uninterrupted one, logs every step once, and leaves the same files (no litter)."""
    k, r = tmp_path / "k", lens_reference
    _kill_twice(LENS_KILL, k)
    ak, ar = np.load(f"{k}.npz"), np.load(f"{r}.npz")
    assert sorted(ak.files) == sorted(ar.files) == ["bias", "weight"]
    for name in ("weight", "bias"):
        np.testing.assert_array_equal(ak[name], ar[name])
    mk = _metrics(k)
    assert [x["step"] for x in mk] == list(range(1, LENS_STEPS + 1)) and mk == _metrics(r)
    _same_files_no_litter(k, r)


# ---------------------------------------------------------------------------------------------
# training: a resume with another model or TrainConfig is refused
#
# Not refused (documented in the README's Guarantees): train() with another batch_fn (other data,
# batch size or length) continues the saved run; the data stream is the caller's, not recorded.


@pytest.fixture(scope="module")
def done_training(tmp_path_factory):
    d = tmp_path_factory.mktemp("train_done") / "w"
    Trainer(TRAIN_CFG, TRAIN_TC, d, params=quick_params(TRAIN_CFG)).train(train_batch, 3, progress=False)
    return d


TRAIN_CHANGES = {  # name -> (config, TrainConfig) of the resume; the message part naming the change
    "lr": ((TRAIN_CFG, dataclasses.replace(TRAIN_TC, lr=1e-2)), r"train.lr: 0.003 -> 0.01"),
    "seed": ((TRAIN_CFG, dataclasses.replace(TRAIN_TC, seed=1)), r"train.seed: 0 -> 1"),
    "optimizer": ((TRAIN_CFG, dataclasses.replace(TRAIN_TC, optimizer="sgd")), r"train.optimizer: 'adamw' -> 'sgd'"),
    "grad accumulation": ((TRAIN_CFG, dataclasses.replace(TRAIN_TC, grad_accum=2)), r"train.grad_accum: 1 -> 2"),
    "schedule": ((TRAIN_CFG, dataclasses.replace(TRAIN_TC, schedule="cosine")), r"train.schedule: 'constant'"),
    "context length": ((dataclasses.replace(TRAIN_CFG, n_ctx=32), TRAIN_TC), r"model\)"),
    "width": ((tiny_config(vocab_size=16, d_model=64, n_layers=2, n_ctx=16), TRAIN_TC), r"model; trainable shapes\)"),
}


@pytest.mark.parametrize("change", list(TRAIN_CHANGES))
def test_training_resume_with_another_model_or_train_config_is_refused(done_training, change):
    (cfg, tc), part = TRAIN_CHANGES[change]
    files = tree_bytes(done_training)
    with pytest.raises(ValueError, match=rf"holds a run with a different model or TrainConfig \([^)]*{part}"):
        Trainer(cfg, tc, done_training, params=quick_params(cfg))
    assert tree_bytes(done_training) == files  # untouched


def test_lens_resume_for_another_model_or_train_config_is_refused(tmp_path):
    from interpjax.methods import lens as LZ

    model = lens_model()
    LZ.TunedLensTrainer(model, LENS_TC, tmp_path / "w").train(lens_batch, 2, progress=False)
    files = tree_bytes(tmp_path / "w")
    other = Model(model.cfg, jax.tree.map(lambda a: a * 1.01, model.params))
    with pytest.raises(ValueError, match=r"different model or TrainConfig \(lens"):
        LZ.TunedLensTrainer(other, LENS_TC, tmp_path / "w")
    with pytest.raises(ValueError, match=r"different model or TrainConfig \(train.lr: 0.01 -> 0.5"):
        LZ.TunedLensTrainer(model, dataclasses.replace(LENS_TC, lr=0.5), tmp_path / "w")
    assert tree_bytes(tmp_path / "w") == files


# =============================================================================================
# artifact save: SIGKILL mid-write

SAVER = """
import sys
import numpy as np
from interpjax.io.artifacts import save_artifact
path, n = sys.argv[1], int(sys.argv[2])
x = np.arange(n, dtype=np.float32)
i = 0
while True:
    save_artifact(path, {"x": x + i}, {"i": i}, format="test.big", version=1)
    if i == 0:
        print("saved", flush=True)
    i += 1
"""


def test_sigkill_in_the_middle_of_a_large_save_leaves_a_valid_file_and_no_litter(tmp_path):
    """A process saving 64 MiB over and over is SIGKILLed while a temporary is being written: the
    target is still a complete earlier save, and the next load removes the dead save's temporary."""
    path = tmp_path / "big.safetensors"
    n = 16 * 2**20
    killed_mid_save = False
    for _ in range(5):
        proc = subprocess.Popen([sys.executable, "-c", SAVER, str(path), str(n)], stdout=subprocess.PIPE, text=True,
                                env={**os.environ, "JAX_PLATFORMS": "cpu"}, cwd=REPO)
        try:
            assert proc.stdout.readline().strip() == "saved"
            deadline = time.time() + 60
            while time.time() < deadline:
                tmps = [p for p in tmp_path.iterdir() if p.name.endswith(".tmp")]
                if tmps and tmps[0].exists() and tmps[0].stat().st_size > 2**20:
                    break
                time.sleep(0.001)
            os.kill(proc.pid, signal.SIGKILL)
        finally:
            proc.kill()
            proc.wait()
        litter = [p for p in tmp_path.iterdir() if p.name.endswith(".tmp")]
        if litter:
            assert all(f".{proc.pid}-" in p.name for p in litter)
            killed_mid_save = True
            break
    assert killed_mid_save, "never caught the saver mid-write"
    art = ART.load_artifact(path, format="test.big")  # the target was always a complete file
    assert np.array_equal(art.arrays["x"], np.arange(n, dtype=np.float32) + art.meta["i"])
    assert listing(tmp_path) == ["big.safetensors"]  # and the load removed the dead save's temporary


def test_training_resume_from_other_starting_weights_is_refused(done_training):
    """Other initial weights of the same shapes used to resume the saved run silently."""
    other = jax.tree.map(lambda a: np.asarray(a) + np.float32(0.5), quick_params(TRAIN_CFG))
    before = listing(done_training)
    with pytest.raises(ValueError, match=r"starting weights: fingerprint [0-9a-f]{16} -> [0-9a-f]{16}"):
        Trainer(TRAIN_CFG, TRAIN_TC, done_training, params=other)
    assert listing(done_training) == before
    Trainer(TRAIN_CFG, TRAIN_TC, done_training, params=quick_params(TRAIN_CFG))  # the same weights resume
