"""Probes: planted signals recovered, shuffled controls at chance, all-layers fits equal per-layer fits,
ridge CV equal to a plain numpy reference, directions and neuron cosines, save/load, bad input."""

from __future__ import annotations

import json

import jax
import numpy as np
import pytest

from interpjax.methods import probes as P
from interpjax.methods.result import Result
from interpjax.testing import tiny_config

N, D = 600, 12


def unit(v):
    return v / np.linalg.norm(v)


@pytest.fixture(scope="module")
def data():
    """Features, a planted linear map, planted class directions and a train/test split."""
    rng = np.random.default_rng(0)
    X = rng.normal(size=(N, D)).astype(np.float32) * 3.0 + 1.0
    W = rng.normal(size=(D, 3))
    y = X @ W + 0.01 * rng.normal(size=(N, 3)) + 5.0
    u = unit(rng.normal(size=D))
    labels = (X @ u - (np.ones(D) @ u) > 0).astype(np.int32)  # threshold at the feature mean
    tr, te = P.split(N, 0.25, seed=1)
    return dict(X=X, W=W, y=y.astype(np.float32), u=u, labels=labels, tr=tr, te=te, rng=rng)


def test_split_is_a_seeded_partition():
    tr, te = P.split(100, 0.2, seed=3)
    assert len(te) == 20 and len(tr) == 80
    assert np.array_equal(np.sort(np.concatenate([tr, te])), np.arange(100))
    tr2, te2 = P.split(100, 0.2, seed=3)
    assert np.array_equal(te, te2) and not np.array_equal(te, P.split(100, 0.2, seed=4)[1])


def test_ridge_recovers_planted_map_and_scores_zero_on_shuffled(data):
    X, y, tr, te = data["X"], data["y"], data["tr"], data["te"]
    probe = P.fit_ridge(X[tr], y[tr])
    assert probe.kind == "ridge" and probe.n_targets == 3 and probe.d_in == D and probe.n_layers is None
    assert float(P.score(probe, X[te], y[te])) > 0.99
    pred = np.asarray(P.predict(probe, X[te]), np.float64)
    assert pred.shape == (len(te), 3)
    want = 1 - ((pred - y[te]) ** 2).sum(0) / ((y[te] - y[te].mean(0)) ** 2).sum(0)
    np.testing.assert_allclose(np.asarray(P.score(probe, X[te], y[te], per_target=True)), want, atol=1e-5)
    ys = P.shuffled_control(y, seed=0)
    assert sorted(map(tuple, ys.tolist())) == sorted(map(tuple, y.tolist()))
    control = P.fit_ridge(X[tr], ys[tr])
    assert float(P.score(control, X[te], ys[te])) < 0.05
    one = P.fit_ridge(X[tr], y[tr, 0])  # [N] targets -> [N] predictions
    assert one.squeeze and P.predict(one, X[te]).shape == (len(te),)


@pytest.mark.parametrize("n,d", [(80, 20), (40, 60)])  # primal (Gram) and dual (kernel) forms
def test_ridge_cv_and_solution_match_numpy_reference(n, d):
    """The vmapped eigendecomposition CV equals a plain numpy loop over folds x alphas."""
    rng = np.random.default_rng(5)
    X = rng.normal(size=(n, d)).astype(np.float32)  # few examples: a strong ridge wins
    y = (X @ rng.normal(size=d) + 2.0 * rng.normal(size=n)).astype(np.float32)
    alphas = np.logspace(-2, 3, 6)
    probe = P.fit_ridge(X, y, alphas=alphas, folds=4, seed=7)

    def solve(Xa, ya, a):
        mx, my = Xa.mean(0), ya.mean(0)
        w = np.linalg.solve((Xa - mx).T @ (Xa - mx) + a * np.eye(Xa.shape[1]), (Xa - mx).T @ (ya - my))
        return w, my - mx @ w

    X64, y64 = X.astype(np.float64), y.astype(np.float64)
    fold = np.random.default_rng(7).permutation(n) % 4
    cv = np.zeros(len(alphas))
    for f in range(4):
        tr, te = fold != f, fold == f
        for i, a in enumerate(alphas):
            w, b = solve(X64[tr], y64[tr], a)
            cv[i] += np.sum((X64[te] @ w + b - y64[te]) ** 2) / n
    np.testing.assert_allclose(np.asarray(probe.cv_mse), cv, rtol=1e-4)
    best = alphas[cv <= cv.min() * (1 + P.CV_RTOL)].max()
    assert float(probe.alpha) == pytest.approx(best, rel=1e-6) and best not in (alphas[0], alphas[-1])
    w, b = solve(X64, y64, best)
    np.testing.assert_allclose(np.asarray(probe.params["w"])[:, 0], w, atol=1e-4)
    np.testing.assert_allclose(np.asarray(probe.params["b"])[0], b, atol=1e-4)


def test_ridge_dual_form_when_features_outnumber_examples():
    rng = np.random.default_rng(2)
    X = rng.normal(size=(40, 90)).astype(np.float32)
    y = X @ rng.normal(size=(90, 2)) + 1.0
    probe = P.fit_ridge(X, y, alphas=[0.5], folds=2)
    Xc, yc = X - X.mean(0), y - y.mean(0)
    w = np.linalg.solve(Xc.T.astype(np.float64) @ Xc + 0.5 * np.eye(90), Xc.T @ yc)
    np.testing.assert_allclose(np.asarray(probe.params["w"]), w, atol=1e-4)


@pytest.fixture(scope="module")
def layered(data):
    """Three layers, each with its own planted signal (layer 2 is a scaled copy of layer 0)."""
    rng = np.random.default_rng(11)
    X0 = data["X"]
    X1 = rng.normal(size=(N, D)).astype(np.float32)
    XL = np.stack([X0, X1, 2.5 * X0])
    labels = np.stack([data["labels"], (X1 @ unit(rng.normal(size=D)) > 0).astype(np.int32)], 1)  # [N, 2]
    return XL, labels


def test_all_layers_fit_equals_per_layer_fit(data, layered):
    XL, labels = layered
    y = data["y"]
    ridge = P.fit_ridge(XL, y)
    logit = P.fit_logistic(XL, labels, 2, steps=300)
    mlp = P.fit_mlp(XL, labels, n_classes=2, hidden=32, steps=300, lr=3e-3, batch_size=128, seed=4)
    for probe in (ridge, logit, mlp):
        assert probe.n_layers == 3
        assert all(a.shape[0] == 3 for a in jax.tree.leaves(probe.params))
    assert ridge.alpha.shape == (3,) and P.score(ridge, XL, y).shape == (3,)
    assert P.predict(logit, XL).shape == (3, N, 2, 2)
    for layer in range(3):
        one = P.fit_ridge(XL[layer], y)
        for k in one.params:
            np.testing.assert_allclose(np.asarray(one.params[k]), np.asarray(ridge.params[k][layer]), atol=1e-5)
        assert float(one.alpha) == float(ridge.alpha[layer])
        one = P.fit_logistic(XL[layer], labels, 2, steps=300)
        for k in one.params:
            np.testing.assert_allclose(np.asarray(one.params[k]), np.asarray(logit.params[k][layer]), atol=1e-5)
        one = P.fit_mlp(XL[layer], labels, n_classes=2, hidden=32, steps=300, lr=3e-3, batch_size=128, seed=4)
        for k in one.params:
            np.testing.assert_allclose(np.asarray(one.params[k]), np.asarray(mlp.params[k][layer]), atol=1e-5)
        np.testing.assert_allclose(np.asarray(P.score(mlp.at_layer(layer), XL[layer], labels)),
                                   np.asarray(P.score(mlp, XL, labels))[layer], atol=1e-6)
    chunked = P.fit_logistic(XL, labels, 2, steps=300, layer_chunk=2)
    for k in logit.params:
        np.testing.assert_allclose(np.asarray(chunked.params[k]), np.asarray(logit.params[k]), atol=1e-5)


def test_logistic_reaches_high_accuracy_and_chance_on_shuffled(data):
    X, labels, tr, te = data["X"], data["labels"], data["tr"], data["te"]
    probe = P.fit_logistic(X[tr], labels[tr], 2, steps=500)
    assert probe.params["w"].shape == (D, 1, 2) and P.predict(probe, X[te]).shape == (len(te), 2)
    assert float(P.score(probe, X[te], labels[te])) > 0.96
    ls = P.shuffled_control(labels, seed=1)
    control = P.fit_logistic(X[tr], ls[tr], 2, steps=500)
    assert abs(float(P.score(control, X[te], ls[te])) - 0.5) < 0.1
    # the probe reads the planted direction
    assert float(np.dot(P.probe_direction(probe), data["u"])) > 0.99


def test_multi_target_multiclass_logistic_and_class_directions(data):
    """S = 4 targets x 3 classes (like Othello squares x states): each target's class is the argmax
    of three planted scores."""
    X, tr, te = data["X"], data["tr"], data["te"]
    rng = np.random.default_rng(3)
    dirs = rng.normal(size=(4, 3, D))
    labels = np.argmax(np.einsum("nd,scd->nsc", X - 1.0, dirs), -1).astype(np.int32)  # [N, 4]
    probe = P.fit_logistic(X[tr], labels[tr], 3, steps=800, lr=3e-2)
    assert probe.params["w"].shape == (D, 4, 3) and probe.n_targets == 4
    assert P.predict(probe, X[te]).shape == (len(te), 4, 3)
    assert float(P.score(probe, X[te], labels[te])) > 0.9
    per = np.asarray(P.score(probe, X[te], labels[te], per_target=True))
    want = (np.asarray(P.predict(probe, X[te])).argmax(-1) == labels[te]).mean(0)
    assert per.shape == (4,) and np.allclose(per, want) and np.isclose(per.mean(), float(P.score(probe, X[te], labels[te])))
    # class 2 of target 1 versus the mean of its classes
    want = unit(dirs[1, 2] - dirs[1].mean(0))
    assert float(np.dot(P.probe_direction(probe, output=1, cls=2), want)) > 0.95


def test_mlp_probe_accuracy_control_and_beats_linear_on_xor(data):
    X, labels, tr, te = data["X"], data["labels"], data["tr"], data["te"]
    probe = P.fit_mlp(X[tr], labels[tr], n_classes=2, hidden=64, steps=500, lr=3e-3)
    assert float(P.score(probe, X[te], labels[te])) > 0.95
    ls = P.shuffled_control(labels, seed=2)
    control = P.fit_mlp(X[tr], ls[tr], n_classes=2, hidden=64, steps=500, lr=3e-3)
    assert abs(float(P.score(control, X[te], ls[te])) - 0.5) < 0.12
    xor = ((X[:, 0] > 1.0) ^ (X[:, 1] > 1.0)).astype(np.int32)
    linear = P.fit_logistic(X[tr], xor[tr], 2, steps=500)
    mlp = P.fit_mlp(X[tr], xor[tr], n_classes=2, hidden=64, steps=1000, lr=3e-3)
    acc_linear, acc_mlp = float(P.score(linear, X[te], xor[te])), float(P.score(mlp, X[te], xor[te]))
    assert acc_linear < 0.65 and acc_mlp > 0.9, (acc_linear, acc_mlp)


def test_mlp_regression_fits_a_nonlinear_target(data):
    X, tr, te = data["X"], data["tr"], data["te"]
    y = np.stack([np.abs(X[:, 0] - 1.0), X[:, 1] * 2.0 + 100.0], 1)  # nonlinear + large offset
    probe = P.fit_mlp(X[tr], y[tr], task="regression", hidden=64, steps=1000, lr=3e-3)
    ridge = P.fit_ridge(X[tr], y[tr])
    assert P.predict(probe, X[te]).shape == (len(te), 2)
    assert float(P.score(probe, X[te], y[te])) > 0.9 > float(P.score(ridge, X[te], y[te]))


def test_ridge_direction_recovers_planted_direction(data):
    X = data["X"]
    y = X @ data["u"] * 2.0 + 0.01 * data["rng"].normal(size=N)
    probe = P.fit_ridge(X, y)
    assert float(np.dot(P.probe_direction(probe), data["u"])) > 0.99
    layered_probe = P.fit_ridge(np.stack([X, X]), y)
    assert float(np.dot(P.probe_direction(layered_probe, layer=1), data["u"])) > 0.99


def test_neuron_cosines_find_planted_neurons():
    cfg = tiny_config()  # gated MLP: up, gate [L, D, F], down [L, F, D]
    rng = np.random.default_rng(0)
    L, Dm, F = cfg.n_layers, cfg.d_model, cfg.d_mlp
    mlp = {"up": rng.normal(size=(L, Dm, F)), "gate": rng.normal(size=(L, Dm, F)), "down": rng.normal(size=(L, F, Dm))}
    params = {"layers": {"mlp": mlp}}
    d = unit(rng.normal(size=Dm)).astype(np.float32)
    mlp["up"][1][:, 7] = 3.0 * d
    mlp["gate"][1][:, 5] = d
    mlp["down"][1][11] = -0.5 * d
    cos = P.neuron_cosines(cfg, params, d, layer=1)
    assert set(cos) == {"read", "gate", "write"} and cos["read"].shape == (cfg.d_mlp,)
    idx, val = P.top_neurons(cos["read"], 3)
    assert idx[0] == 7 and val[0] == pytest.approx(1.0, abs=1e-5) and np.all(np.diff(np.abs(val)) <= 0)
    assert P.top_neurons(cos["gate"], 1)[0][0] == 5
    idx, val = P.top_neurons(cos["write"], 1)
    assert idx[0] == 11 and val[0] == pytest.approx(-1.0, abs=1e-5)
    other = P.neuron_cosines(cfg, params, d, layer=0)
    assert float(np.max(np.abs(other["read"]))) < 0.9
    with pytest.raises(ValueError, match=r"layer \[2\] out of range: valid layers are 0..1"):
        P.neuron_cosines(cfg, params, d, layer=2)
    with pytest.raises(ValueError, match=r"layer must be integers; got \[1.7\]"):  # was cast to layer 1
        P.neuron_cosines(cfg, params, d, layer=1.7)
    with pytest.raises(ValueError, match="direction must have shape"):
        P.neuron_cosines(cfg, params, d[:5], layer=0)


@pytest.mark.parametrize("kind", ["ridge", "logistic", "mlp"])
def test_save_load_round_trip(tmp_path, data, layered, kind):
    XL, labels = layered
    if kind == "ridge":
        probe = P.fit_ridge(XL, data["y"])
    elif kind == "logistic":
        probe = P.fit_logistic(XL[0], labels[:, 0], 2, steps=50)
    else:
        probe = P.fit_mlp(XL, data["y"][:, 0], task="regression", hidden=8, steps=50)
    path = tmp_path / f"{kind}.safetensors"
    P.save_probe(probe, path)
    assert [p.name for p in tmp_path.iterdir()] == [path.name]  # no temp file left behind
    back = P.load_probe(path)
    for field in ("kind", "task", "n_classes", "n_targets", "d_in", "n_layers", "squeeze", "alphas"):
        assert getattr(back, field) == getattr(probe, field), field
    X = XL if probe.n_layers else XL[0]
    assert np.array_equal(np.asarray(P.predict(back, X)), np.asarray(P.predict(probe, X)))
    if kind == "ridge":
        assert np.array_equal(np.asarray(back.alpha), np.asarray(probe.alpha))


def test_load_refuses_files_that_are_not_probes(tmp_path):
    from interpjax.io.loading import write_safetensors

    write_safetensors({"w": np.zeros(3, np.float32)}, tmp_path / "x.safetensors")
    with pytest.raises(ValueError, match="x.safetensors: not an interpjax artifact.*expected format 'interpjax.probe'"):
        P.load_probe(tmp_path / "x.safetensors")
    with pytest.raises(FileNotFoundError):
        P.load_probe(tmp_path / "missing.safetensors")


def test_old_probe_files_load_and_incomplete_ones_are_refused_by_name(tmp_path, layered, data):
    """Files written by the pre-artifact ``save_probe`` (JSON under 'interpjax_probe') still load."""
    from safetensors.numpy import save_file

    XL, _ = layered
    probe = P.fit_ridge(XL, data["y"])
    meta = {"format": "interpjax.probe/1", "kind": "ridge", "task": "regression", "n_classes": None,
            "n_targets": probe.n_targets, "d_in": probe.d_in, "n_layers": probe.n_layers, "squeeze": probe.squeeze,
            "alphas": list(probe.alphas)}
    tensors = {"params.w": np.asarray(probe.params["w"]), "params.b": np.asarray(probe.params["b"]),
               "alpha": np.asarray(probe.alpha), "cv_mse": np.asarray(probe.cv_mse)}
    save_file(tensors, str(tmp_path / "old.safetensors"), metadata={"interpjax_probe": json.dumps(meta)})
    back = P.load_probe(tmp_path / "old.safetensors")
    assert (back.kind, back.alphas, back.n_layers) == ("ridge", probe.alphas, probe.n_layers)
    assert np.array_equal(np.asarray(P.predict(back, XL)), np.asarray(P.predict(probe, XL)))
    assert np.array_equal(np.asarray(back.alpha), np.asarray(probe.alpha))
    assert isinstance(back, Result) and P.Probe.load(back.save(tmp_path / "new.safetensors")).kind == "ridge"
    del tensors["params.b"]
    save_file(tensors, str(tmp_path / "cut.safetensors"), metadata={"interpjax_probe": json.dumps(meta)})
    with pytest.raises(ValueError, match=r"cut.safetensors: missing tensor 'params.b' of a ridge probe"):
        P.load_probe(tmp_path / "cut.safetensors")
    save_file({"params.w": tensors["params.w"]}, str(tmp_path / "mlp.safetensors"),
              metadata={"interpjax_probe": json.dumps({**meta, "kind": "svm"})})
    with pytest.raises(ValueError, match=r"mlp.safetensors: unknown probe kind 'svm'; valid kinds"):
        P.load_probe(tmp_path / "mlp.safetensors")


def test_bad_inputs_raise_before_compute(data):
    X, y, labels = data["X"], data["y"], data["labels"]
    bad = X.copy()
    bad[3, 2] = np.nan
    cases = [
        (lambda: P.fit_ridge(X, y[:-1]), "600 examples but y has 599"),
        (lambda: P.fit_logistic(X, labels[:10], 2), "600 examples but labels has 10"),
        (lambda: P.fit_ridge(bad, y), "X contains NaN"),
        (lambda: P.fit_ridge(X, np.where(np.arange(N)[:, None] == 4, np.inf, y)), "y contains NaN or inf"),
        (lambda: P.fit_logistic(X, labels.astype(float) * np.nan, 2), "labels contains NaN"),
        (lambda: P.fit_logistic(X, labels + 1, 2), r"outside \[0, n_classes=2\)"),
        (lambda: P.fit_logistic(X, labels - 1, 2), r"\[-1\] outside"),
        (lambda: P.fit_mlp(X, labels, n_classes=2, task="ranking"), "unknown task 'ranking'"),
        (lambda: P.fit_ridge(X[0], y[:1]), r"must be \[N, D\] .* or \[L, N, D\]"),
        (lambda: P.fit_ridge(X[None, None], y), r"must be \[N, D\]"),
        (lambda: P.fit_ridge(X, y[:, :, None]), r"y must be \[N\] or \[N, K\]"),
        (lambda: P.fit_logistic(X, labels[:, None, None], 2), r"labels must be \[N\] or \[N, S\]"),
        (lambda: P.fit_ridge(X[:3], y[:3]), "fewer than folds=5"),
        (lambda: P.fit_logistic(X, labels.astype(np.float32), 2), "integer class ids"),
        (lambda: P.fit_logistic(X, labels, 1), "n_classes must be an integer >= 2"),
        (lambda: P.fit_mlp(X, labels), "n_classes must be an integer >= 2"),
        (lambda: P.fit_logistic(X, labels, 2, batch_size=N + 1), "exceeds the number of examples"),
        (lambda: P.fit_ridge(X, y, alphas=[1.0, -1.0]), "alphas must be"),
        (lambda: P.split(10, 1.5), "test_frac"),
    ]
    for fn, msg in cases:
        with pytest.raises(ValueError, match=msg):
            fn()


def test_bad_probe_use_raises(data, layered):
    XL, labels = layered
    ridge = P.fit_ridge(XL[0], data["y"])  # the same programs as other tests: compiled once
    layered_probe = P.fit_ridge(XL, data["y"])
    logit3 = P.fit_logistic(XL[0], labels[:, 0] + labels[:, 1], 3, steps=50)
    mlp = P.fit_mlp(XL[0], labels[:, 0], n_classes=2, hidden=32, steps=300, lr=3e-3, batch_size=128, seed=4)
    cases = [
        (lambda: P.predict(ridge, XL), "one-layer probe takes X"),
        (lambda: P.predict(layered_probe, XL[0]), "has 3 layers"),
        (lambda: P.predict(ridge, XL[0][:, :5]), "d_in=12"),
        (lambda: P.score(ridge, XL[0], data["y"][:, :2]), "y has 2 outputs; the probe predicts 3"),
        (lambda: P.score(logit3, XL[0], labels[:, 0] + 5), "outside"),
        (lambda: P.probe_direction(mlp), "needs a linear probe"),
        (lambda: P.probe_direction(logit3), "pass cls="),
        (lambda: P.probe_direction(layered_probe), "pass layer="),
        (lambda: P.probe_direction(ridge, layer=0), "do not pass layer"),
        (lambda: P.probe_direction(ridge, output=3), "output 3 out of range"),
        (lambda: layered_probe.at_layer(3), "layer 3 out of range"),
        (lambda: P.top_neurons(np.zeros(4), 5), "k must be an integer in 1..4"),
    ]
    for fn, msg in cases:
        with pytest.raises(ValueError, match=msg):
            fn()


def test_ridge_program_runs_one_unbatched_eigh():
    """The compiled all-layers ridge program holds a single eigh call on one [M, M] matrix (inside a
    loop): a batched CPU eigh waits on XLA's thread pool, and two of them at once could deadlock it."""
    X, Y, fold = np.zeros((3, 50, 8), np.float32), np.zeros((50, 2), np.float32), np.arange(50) % 5
    hlo = P._ridge_layers.lower(X, Y, fold, 5, np.ones(4, np.float32)).compile().as_text()
    calls = [line for line in hlo.splitlines() if "custom-call(" in line and "syevd" in line]
    assert len(calls) == 1, calls
    assert 'num_batch_dims="0"' in calls[0] and "f32[8,8]" in calls[0], calls[0]


def test_all_layers_ridge_repeated_calls_finish_and_agree():
    """Regression: the second all-layers fit in a process used to hang (batched eighs deadlocking the
    CPU thread pool). Several fits in a row must finish, give identical results, and equal per-layer fits."""
    import threading

    rng = np.random.default_rng(21)
    X = rng.normal(size=(7, 1000, 48)).astype(np.float32)
    y = (X[3] @ rng.normal(size=(48, 2)) + 0.5 * rng.normal(size=(1000, 2))).astype(np.float32)
    fits = []

    def run():
        for _ in range(4):
            fits.append(jax.block_until_ready(P.fit_ridge(X, y)))

    worker = threading.Thread(target=run, daemon=True)
    worker.start()
    worker.join(timeout=120)
    assert not worker.is_alive() and len(fits) == 4, f"fit_ridge hung: {len(fits)} of 4 fits finished in 120 s"
    for fit in fits[1:]:
        for k in fit.params:
            assert np.array_equal(np.asarray(fit.params[k]), np.asarray(fits[0].params[k]))
    one = P.fit_ridge(X[3], y)
    for k in one.params:
        np.testing.assert_allclose(np.asarray(one.params[k]), np.asarray(fits[0].params[k][3]), atol=1e-5)
    assert float(one.alpha) == float(fits[0].alpha[3])
    assert float(P.score(one, X[3], y)) > 0.9
