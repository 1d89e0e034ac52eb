#!/usr/bin/env python
"""The PyTorch side of ``bench.py sweeps``: the standard workloads W0-W3 run by a peer library,
each idiom at its fastest idiomatic form, timed by WORKLOADS.md's protocol.

    python benchmarks/bench_peers.py --make-weights [--cache DIR]
    python benchmarks/bench_peers.py --lib {hf,tl3,tl4,nnsight,pyvene} --workload {W0,W1,W2,W3} --out R.json

Runs standalone in the peer's own venv (torch CPU + the library; no jax, no interpinterpjax): it
needs only numpy, torch, the library and ``bench_common.py`` beside it. Every library loads the
one safetensors file that ``--make-weights`` writes (GPT-2 small shape, torch.manual_seed(0)).

Idioms (WORKLOADS.md "Peer idioms to time"):
  hf       transformers forward pre-hooks: one forward per variant, and variants stacked in the batch
  tl3      TransformerLens 3.x HookedTransformer: run_with_hooks per variant, stacked batch,
           start_at_layer from a cache (prefix reuse); W2 also patching.get_act_patch_resid_pre
  tl4      TransformerLens 4.x TransformerBridge: run_with_hooks per variant and stacked
  nnsight  one trace per variant, and the variants of a layer batched as invokes of one trace
  pyvene   AdditionIntervention / VanillaIntervention on block_input (one layer per model)

Output JSON: per idiom the metric grid (``result``), warm-up (first-call) seconds, timed seconds
(median, min, all), peak RSS increase and the plain forward time of the same library measured in
the same process (for forward-pass equivalents). Peak memory = the largest increase of this
process's RSS over its value just before a timed sweep, sampled every 5 ms (see
``bench_common.PeakRSS``; torch's CPU allocator bypasses tracemalloc).
"""

from __future__ import annotations

import argparse
import os
import sys
import time
import warnings
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
import bench_common as bcm  # noqa: E402

LIBS = ("hf", "tl3", "tl4", "nnsight", "pyvene")

# ---------------------------------------------------------------------------------------------
# weights


def weights_dir(cache) -> Path:
    return Path(cache) / bcm.WEIGHTS_DIRNAME


def abs_sum(named_params) -> float:
    """float64 sum of |p| over unique parameters (tied ones once), WORKLOADS.md's weight check."""
    seen, total = set(), 0.0
    for _, p in named_params:
        if id(p) in seen:
            continue
        seen.add(id(p))
        total += float(p.detach().double().abs().sum())
    return total


def check_weights(model, bc) -> float:
    s = abs_sum(model.named_parameters())
    if abs(s - bc.WEIGHT_ABS_SUM) > 1e-3:
        raise ValueError(f"weights differ from the benchmark's: sum|p| = {s:.4f}, expected {bc.WEIGHT_ABS_SUM} "
                         "(torch / transformers init order changed?)")
    return s


def make_weights(bc, cache) -> Path:
    """Build GPT2LMHeadModel(GPT2Config()) right after torch.manual_seed(0), check WEIGHT_ABS_SUM, save
    with HF names (config.json + model.safetensors) into ``cache``; atomic (temp dir, then rename)."""
    import tempfile

    import torch
    import transformers

    out = weights_dir(cache)
    if (out / "model.safetensors").is_file():
        return out
    torch.manual_seed(bc.WEIGHT_SEED)
    model = transformers.GPT2LMHeadModel(transformers.GPT2Config())
    s = check_weights(model, bc)
    Path(cache).mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=".weights-", dir=cache))
    model.save_pretrained(tmp, safe_serialization=True)
    os.replace(tmp, out)
    print(f"wrote {out} (sum|p| = {s:.4f}, torch {torch.__version__}, transformers {transformers.__version__})")
    return out


def load_hf(bc, wdir, attn_implementation=None):
    import transformers

    if not (Path(wdir) / "model.safetensors").is_file():
        raise ValueError(f"no weights in {wdir}; run: python benchmarks/bench_peers.py --make-weights --cache DIR")
    kw = {"attn_implementation": attn_implementation} if attn_implementation else {}
    model = transformers.GPT2LMHeadModel.from_pretrained(wdir, **kw).eval().float()
    check_weights(model, bc)
    return model


# ---------------------------------------------------------------------------------------------
# the workload context: inputs as torch tensors, the (possibly reduced) grid, the metric


class Ctx:
    def __init__(self, bc, quick: bool):
        import torch

        inp = bcm.workload_inputs(bc)
        self.bc = bc
        self.clean = torch.from_numpy(inp["clean"])
        self.corrupted = torch.from_numpy(inp["corrupted"])
        self.cache_tokens = torch.from_numpy(inp["cache_tokens"])
        self.v = torch.from_numpy(inp["steer"])
        coefs, layers, positions = inp["coefs"], list(bc.LAYERS), list(range(bc.T))
        if quick:  # a corner of the grid, for smoke runs
            coefs, layers, positions = coefs[:2], [0, bc.N_LAYERS - 1], [0, bc.T - 1]
        self.coefs = torch.from_numpy(np.ascontiguousarray(coefs))
        self.layers, self.positions = layers, positions
        self.B = bc.B

    def metric(self, logits):
        """mean_b logits[b, -1, A] - logits[b, -1, B] (float), for [B, T, V] or [B, 1, V] logits."""
        return float((logits[:, -1, self.bc.TOKEN_A] - logits[:, -1, self.bc.TOKEN_B]).mean())

    def metric_groups(self, logits, n):
        """The metric of each of ``n`` stacked groups of B rows: [n] floats."""
        d = logits[:, -1, self.bc.TOKEN_A] - logits[:, -1, self.bc.TOKEN_B]
        return d.reshape(n, self.B).mean(1).double().numpy()

    def coef_rows(self, n_rep=None):
        """[n_coef * B, 1, 1]: coefficient of each row when the coefficients are stacked in the batch."""
        return self.coefs.repeat_interleave(self.B)[:, None, None]

    def stacked_patch(self, x, clean_l):
        """x [P*B, T, D] (P copies of the corrupted residual); row group i gets clean_l[:, p_i] at p_i."""
        P = len(self.positions)
        rows = np.arange(P * self.B)
        pos = np.repeat(self.positions, self.B)
        x[rows, pos] = clean_l.repeat(P, 1, 1)[rows, pos]
        return x


def fingerprint(acts):
    """W3 agreement without shipping 113 MB: per (site, layer, b, t) the L2 norm, and the full vector
    at (b=0, t=-1). ``acts`` is {site: [L tensors [B, T, D]]}."""
    norms = np.stack([np.stack([a.double().norm(dim=-1).numpy() for a in acts[s]]) for s in W3_SITES])
    last = np.stack([np.stack([a[0, -1].double().numpy() for a in acts[s]]) for s in W3_SITES])
    return {"norms": norms, "last": last}


W3_SITES = ("resid_pre", "attn_out", "mlp_out")

# ---------------------------------------------------------------------------------------------
# transformers (plain forward hooks)


def hf_idioms(ctx, model, workload):
    h = model.transformer.h

    def fwd(ids, **kw):
        return model(ids, use_cache=False, **kw).logits

    def clean_resid(ids):
        """resid_pre of every layer (inputs of the blocks) from one forward."""
        cache = {}
        hooks = [h[l].register_forward_pre_hook(lambda m, a, l=l: cache.__setitem__(l, a[0])) for l in range(len(h))]
        try:
            fwd(ids, logits_to_keep=1)
        finally:
            for k in hooks:
                k.remove()
        return cache

    def with_pre_hook(layer, fn, ids):
        hk = h[layer].register_forward_pre_hook(lambda m, a: (fn(a[0]),) + a[1:])
        try:
            return fwd(ids, logits_to_keep=1)
        finally:
            hk.remove()

    if workload == "W1":
        def per_variant(first_only=False):
            out = np.zeros((len(ctx.layers), len(ctx.coefs)))
            for i, l in enumerate(ctx.layers):
                for j, c in enumerate(ctx.coefs):
                    d = c * ctx.v
                    out[i, j] = ctx.metric(with_pre_hook(l, lambda x: x + d, ctx.clean))
                    if first_only:
                        return out
            return out

        def stacked(first_only=False):
            ids = ctx.clean.repeat(len(ctx.coefs), 1)
            d = ctx.coef_rows() * ctx.v
            out = np.zeros((len(ctx.layers), len(ctx.coefs)))
            for i, l in enumerate(ctx.layers):
                out[i] = ctx.metric_groups(with_pre_hook(l, lambda x: x + d, ids), len(ctx.coefs))
                if first_only:
                    break
            return out

        return {"hooks per variant": (per_variant, lambda: per_variant(True)),
                "hooks, variants stacked in batch": (stacked, lambda: stacked(True))}

    if workload == "W2":
        def per_variant(first_only=False):
            clean = clean_resid(ctx.clean)
            out = np.zeros((len(ctx.layers), len(ctx.positions)))
            for i, l in enumerate(ctx.layers):
                for j, p in enumerate(ctx.positions):
                    def patch(x, p=p, l=l):
                        x = x.clone()
                        x[:, p] = clean[l][:, p]
                        return x
                    out[i, j] = ctx.metric(with_pre_hook(l, patch, ctx.corrupted))
                    if first_only:
                        return out
            return out

        def stacked(first_only=False):
            clean = clean_resid(ctx.clean)
            ids = ctx.corrupted.repeat(len(ctx.positions), 1)
            out = np.zeros((len(ctx.layers), len(ctx.positions)))
            for i, l in enumerate(ctx.layers):
                logits = with_pre_hook(l, lambda x, l=l: ctx.stacked_patch(x.clone(), clean[l]), ids)
                out[i] = ctx.metric_groups(logits, len(ctx.positions))
                if first_only:
                    break
            return out

        return {"hooks per variant": (per_variant, lambda: per_variant(True)),
                "hooks, variants stacked in batch": (stacked, lambda: stacked(True))}

    if workload == "W3":
        def cache_run():
            acts = {s: [None] * len(h) for s in W3_SITES}
            hooks = []
            for l, blk in enumerate(h):
                hooks.append(blk.register_forward_pre_hook(lambda m, a, l=l: acts["resid_pre"].__setitem__(l, a[0])))
                hooks.append(blk.attn.register_forward_hook(lambda m, a, o, l=l: acts["attn_out"].__setitem__(l, o[0])))
                hooks.append(blk.mlp.register_forward_hook(lambda m, a, o, l=l: acts["mlp_out"].__setitem__(l, o)))
            try:
                # the final logits are not asked for: logits_to_keep=1 keeps the unembedding to one position
                fwd(ctx.cache_tokens, logits_to_keep=1)
            finally:
                for k in hooks:
                    k.remove()
            return acts

        return {"forward hooks": (cache_run, None)}
    raise ValueError(workload)


def hf_forward(ctx, model):
    return lambda ids: model(ids, use_cache=False).logits


# ---------------------------------------------------------------------------------------------
# TransformerLens 3.x HookedTransformer


def load_tl3(bc, hf):
    from transformer_lens import HookedTransformer, HookedTransformerConfig
    from transformer_lens.pretrained.weight_conversions.gpt2 import convert_gpt2_weights

    cfg = HookedTransformerConfig(
        n_layers=bc.N_LAYERS, d_model=bc.D_MODEL, n_ctx=bc.N_CTX, d_head=bc.D_HEAD, n_heads=bc.N_HEADS,
        d_mlp=bc.D_MLP, d_vocab=bc.D_VOCAB, act_fn="gelu_new", normalization_type="LN", eps=bc.LN_EPS,
        positional_embedding_type="standard", default_prepend_bos=False, original_architecture="GPT2LMHeadModel",
        device="cpu", dtype=__import__("torch").float32)
    model = HookedTransformer(cfg)
    # no folding / centering: the same weights, the same numbers as transformers
    model.load_and_process_state_dict(convert_gpt2_weights(hf, cfg), fold_ln=False, center_writing_weights=False,
                                      center_unembed=False, fold_value_biases=False)
    return model.eval()


def tl_idioms(ctx, model, workload, legacy: bool):
    """run_with_hooks idioms shared by TL 3.x HookedTransformer and the 4.x TransformerBridge (same hook
    names); start_at_layer and the patching module for 3.x (``legacy``)."""
    name = "blocks.{}.hook_resid_pre".format
    nL = len(ctx.layers)

    def clean_resid(ids):
        _, cache = model.run_with_cache(ids, names_filter=lambda n: n.endswith("hook_resid_pre"),
                                        **({"return_type": None} if legacy else {}))
        return cache

    if workload == "W1":
        def per_variant(first_only=False):
            out = np.zeros((nL, len(ctx.coefs)))
            for i, l in enumerate(ctx.layers):
                for j, c in enumerate(ctx.coefs):
                    d = c * ctx.v
                    logits = model.run_with_hooks(ctx.clean, fwd_hooks=[(name(l), lambda x, hook, d=d: x + d)])
                    out[i, j] = ctx.metric(logits)
                    if first_only:
                        return out
            return out

        def stacked(first_only=False):
            ids = ctx.clean.repeat(len(ctx.coefs), 1)
            d = ctx.coef_rows() * ctx.v
            out = np.zeros((nL, len(ctx.coefs)))
            for i, l in enumerate(ctx.layers):
                logits = model.run_with_hooks(ids, fwd_hooks=[(name(l), lambda x, hook: x + d)])
                out[i] = ctx.metric_groups(logits, len(ctx.coefs))
                if first_only:
                    break
            return out

        def prefix(first_only=False):
            cache = clean_resid(ctx.clean)
            d = ctx.coef_rows() * ctx.v
            out = np.zeros((nL, len(ctx.coefs)))
            for i, l in enumerate(ctx.layers):
                x = cache[name(l)].repeat(len(ctx.coefs), 1, 1) + d
                out[i] = ctx.metric_groups(model(x, start_at_layer=l), len(ctx.coefs))
                if first_only:
                    break
            return out

        idioms = {"run_with_hooks per variant": (per_variant, lambda: per_variant(True)),
                  "run_with_hooks, variants stacked": (stacked, lambda: stacked(True))}
        if legacy:
            idioms["start_at_layer from cache, stacked"] = (prefix, lambda: prefix(True))
        return idioms

    if workload == "W2":
        def per_variant(first_only=False):
            clean = clean_resid(ctx.clean)
            out = np.zeros((nL, len(ctx.positions)))
            for i, l in enumerate(ctx.layers):
                for j, p in enumerate(ctx.positions):
                    def patch(x, hook, p=p, l=l):
                        x[:, p] = clean[name(l)][:, p]
                        return x
                    out[i, j] = ctx.metric(model.run_with_hooks(ctx.corrupted, fwd_hooks=[(name(l), patch)]))
                    if first_only:
                        return out
            return out

        def stacked(first_only=False):
            clean = clean_resid(ctx.clean)
            ids = ctx.corrupted.repeat(len(ctx.positions), 1)
            out = np.zeros((nL, len(ctx.positions)))
            for i, l in enumerate(ctx.layers):
                hook = (name(l), lambda x, hook, l=l: ctx.stacked_patch(x, clean[name(l)]))
                out[i] = ctx.metric_groups(model.run_with_hooks(ids, fwd_hooks=[hook]), len(ctx.positions))
                if first_only:
                    break
            return out

        def prefix(first_only=False):
            clean, corr = clean_resid(ctx.clean), clean_resid(ctx.corrupted)
            out = np.zeros((nL, len(ctx.positions)))
            for i, l in enumerate(ctx.layers):
                x = ctx.stacked_patch(corr[name(l)].repeat(len(ctx.positions), 1, 1), clean[name(l)])
                out[i] = ctx.metric_groups(model(x, start_at_layer=l), len(ctx.positions))
                if first_only:
                    break
            return out

        def tl_patching():
            from transformer_lens import patching

            clean = clean_resid(ctx.clean)
            bc = ctx.bc

            def metric(logits):
                return (logits[:, -1, bc.TOKEN_A] - logits[:, -1, bc.TOKEN_B]).mean()

            return patching.get_act_patch_resid_pre(model, ctx.corrupted, clean, metric).double().numpy()

        idioms = {"run_with_hooks per variant": (per_variant, lambda: per_variant(True)),
                  "run_with_hooks, variants stacked": (stacked, lambda: stacked(True))}
        if legacy:
            idioms["start_at_layer from cache, stacked"] = (prefix, lambda: prefix(True))
            if ctx.layers == list(ctx.bc.LAYERS) and ctx.positions == list(range(ctx.bc.T)):
                idioms["patching.get_act_patch_resid_pre"] = (tl_patching, lambda: per_variant(True))
        return idioms

    if workload == "W3":
        wanted = {f"blocks.{l}.hook_{s}" for l in range(ctx.bc.N_LAYERS) for s in W3_SITES}

        def cache_run():
            _, cache = model.run_with_cache(ctx.cache_tokens, names_filter=lambda n: n in wanted,
                                            **({"return_type": None} if legacy else {}))
            return {s: [cache[f"blocks.{l}.hook_{s}"] for l in range(ctx.bc.N_LAYERS)] for s in W3_SITES}

        return {"run_with_cache(names_filter)": (cache_run, None)}
    raise ValueError(workload)


# ---------------------------------------------------------------------------------------------
# TransformerLens 4.x TransformerBridge


def load_tl4(bc, hf, wdir):
    from transformer_lens.model_bridge import TransformerBridge

    # the bridge wraps the already-loaded HF model (it switches attention to "eager" for its hooks)
    return TransformerBridge.boot_transformers(str(wdir), hf_model=hf, device="cpu",
                                               tokenizer=id_tokenizer(bc.D_VOCAB, Path(wdir).parent))


# ---------------------------------------------------------------------------------------------
# nnsight


def id_tokenizer(vocab: int, cache):
    """A tokenizer whose tokens are the ids themselves ("t0".."t{vocab-1}"), saved once under ``cache``
    (some libraries reload their tokenizer by path): libraries that insist on a tokenizer get one, and
    nothing is ever encoded with it (the workloads pass token ids)."""
    import tempfile

    from transformers import AutoTokenizer

    folder = Path(cache) / f"id-tokenizer-{vocab}"
    if not (folder / "tokenizer.json").is_file():
        from tokenizers import Tokenizer, models
        from transformers import PreTrainedTokenizerFast

        tk = Tokenizer(models.WordLevel({f"t{i}": i for i in range(vocab)}, unk_token="t0"))
        tok = PreTrainedTokenizerFast(tokenizer_object=tk, pad_token="t0", eos_token="t0", bos_token="t0")
        tmp = Path(tempfile.mkdtemp(prefix=".tok-", dir=cache))
        tok.save_pretrained(tmp)
        os.replace(tmp, folder)
    return AutoTokenizer.from_pretrained(str(folder))


def nnsight_idioms(ctx, nn_model, workload):
    import torch

    h = nn_model.transformer.h
    kw = {"use_cache": False, "logits_to_keep": 1}

    # nnsight runs the trace body alongside the model: touch modules in execution order, with plain loops
    def clean_resid(ids):
        saved = []
        with nn_model.trace(ids, **kw):
            for l in range(ctx.bc.N_LAYERS):
                saved.append(h[l].input.save())
        return [torch.as_tensor(s) for s in saved]

    if workload == "W1":
        def per_variant(first_only=False):
            out = np.zeros((len(ctx.layers), len(ctx.coefs)))
            for i, l in enumerate(ctx.layers):
                for j, c in enumerate(ctx.coefs):
                    with nn_model.trace(ctx.clean, **kw):
                        h[l].input = h[l].input + c * ctx.v
                        logits = nn_model.lm_head.output.save()
                    out[i, j] = ctx.metric(logits)
                    if first_only:
                        return out
            return out

        def invokes(first_only=False):
            out = np.zeros((len(ctx.layers), len(ctx.coefs)))
            for i, l in enumerate(ctx.layers):
                saved = []
                with nn_model.trace() as tracer:
                    for c in ctx.coefs:
                        with tracer.invoke(ctx.clean, **kw):
                            h[l].input = h[l].input + c * ctx.v
                            saved.append(nn_model.lm_head.output.save())
                out[i] = [ctx.metric(s) for s in saved]
                if first_only:
                    break
            return out

        return {"trace per variant": (per_variant, lambda: per_variant(True)),
                "invokes per layer, one trace": (invokes, lambda: invokes(True))}

    if workload == "W2":
        def per_variant(first_only=False):
            clean = clean_resid(ctx.clean)
            out = np.zeros((len(ctx.layers), len(ctx.positions)))
            for i, l in enumerate(ctx.layers):
                for j, p in enumerate(ctx.positions):
                    with nn_model.trace(ctx.corrupted, **kw):
                        h[l].input[:, p] = clean[l][:, p]
                        logits = nn_model.lm_head.output.save()
                    out[i, j] = ctx.metric(logits)
                    if first_only:
                        return out
            return out

        def invokes(first_only=False):
            clean = clean_resid(ctx.clean)
            out = np.zeros((len(ctx.layers), len(ctx.positions)))
            for i, l in enumerate(ctx.layers):
                saved = []
                with nn_model.trace() as tracer:
                    for p in ctx.positions:
                        with tracer.invoke(ctx.corrupted, **kw):
                            h[l].input[:, p] = clean[l][:, p]
                            saved.append(nn_model.lm_head.output.save())
                out[i] = [ctx.metric(s) for s in saved]
                if first_only:
                    break
            return out

        return {"trace per variant": (per_variant, lambda: per_variant(True)),
                "invokes per layer, one trace": (invokes, lambda: invokes(True))}

    if workload == "W3":
        def cache_run():
            saved = {s: [] for s in W3_SITES}
            with nn_model.trace(ctx.cache_tokens, **kw):
                for l in range(ctx.bc.N_LAYERS):
                    saved["resid_pre"].append(h[l].input.save())
                    saved["attn_out"].append(h[l].attn.output[0].save())
                    saved["mlp_out"].append(h[l].mlp.output.save())
            return {s: [torch.as_tensor(a) for a in v] for s, v in saved.items()}

        return {"trace with .save()": (cache_run, None)}
    raise ValueError(workload)


# ---------------------------------------------------------------------------------------------
# pyvene


def pyvene_idioms(ctx, hf, workload):
    import pyvene as pv
    import torch

    # unit_locations={"base": [per intervention: [per batch row: [positions]]]}
    T = ctx.bc.T
    all_pos = [list(range(T))]

    def base(ids):
        # the base input is passed to the wrapped model: only the last position's logits are computed
        return {"input_ids": ids, "use_cache": False, "logits_to_keep": 1}

    def per_layer_model(layer, kind):
        cfg = pv.IntervenableConfig([{"layer": layer, "component": "block_input", "unit": "pos",
                                      "intervention_type": kind}])
        m = pv.IntervenableModel(cfg, model=hf)
        m.disable_model_gradients()
        return m

    if workload == "W1":
        models = {l: per_layer_model(l, pv.AdditionIntervention) for l in ctx.layers}

        def per_variant(first_only=False):
            out = np.zeros((len(ctx.layers), len(ctx.coefs)))
            for i, l in enumerate(ctx.layers):
                for j, c in enumerate(ctx.coefs):
                    src = (c * ctx.v)[None, None].expand(ctx.B, T, -1)
                    _, cf = models[l](base(ctx.clean), unit_locations={"base": [all_pos * ctx.B]},
                                      source_representations=src)
                    out[i, j] = ctx.metric(cf.logits)
                    if first_only:
                        return out
            return out

        def stacked(first_only=False):
            n = len(ctx.coefs)
            ids = ctx.clean.repeat(n, 1)
            src = (ctx.coef_rows() * ctx.v).expand(n * ctx.B, T, -1)
            out = np.zeros((len(ctx.layers), n))
            for i, l in enumerate(ctx.layers):
                _, cf = models[l](base(ids), unit_locations={"base": [all_pos * (n * ctx.B)]},
                                  source_representations=src)
                out[i] = ctx.metric_groups(cf.logits, n)
                if first_only:
                    break
            return out

        return {"per variant": (per_variant, lambda: per_variant(True)),
                "variants stacked in batch": (stacked, lambda: stacked(True))}

    if workload == "W2":
        models = {l: per_layer_model(l, pv.VanillaIntervention) for l in ctx.layers}

        def clean_resid():
            cache = {}
            hooks = [hf.transformer.h[l].register_forward_pre_hook(lambda m, a, l=l: cache.__setitem__(l, a[0]))
                     for l in ctx.layers]
            try:
                hf(ctx.clean)
            finally:
                for k in hooks:
                    k.remove()
            return cache

        def per_variant(first_only=False):
            # the clean activations come from one cached clean run (source_representations), not a
            # source forward per variant -- pyvene's fastest form
            clean = clean_resid()
            out = np.zeros((len(ctx.layers), len(ctx.positions)))
            for i, l in enumerate(ctx.layers):
                for j, p in enumerate(ctx.positions):
                    _, cf = models[l](base(ctx.corrupted), unit_locations={"base": [[[p]] * ctx.B]},
                                      source_representations=clean[l][:, p:p + 1])
                    out[i, j] = ctx.metric(cf.logits)
                    if first_only:
                        return out
            return out

        def stacked(first_only=False):
            clean = clean_resid()
            P = len(ctx.positions)
            ids = ctx.corrupted.repeat(P, 1)
            locs = [[p] for p in ctx.positions for _ in range(ctx.B)]
            out = np.zeros((len(ctx.layers), P))
            for i, l in enumerate(ctx.layers):
                pos = torch.tensor(np.repeat(ctx.positions, ctx.B))
                src = clean[l].repeat(P, 1, 1)[torch.arange(P * ctx.B), pos][:, None]
                _, cf = models[l](base(ids), unit_locations={"base": [locs]},
                                  source_representations=src)
                out[i] = ctx.metric_groups(cf.logits, P)
                if first_only:
                    break
            return out

        return {"per variant": (per_variant, lambda: per_variant(True)),
                "variants stacked in batch": (stacked, lambda: stacked(True))}

    if workload == "W3":
        L = ctx.bc.N_LAYERS
        comps = {"resid_pre": "block_input", "attn_out": "attention_output", "mlp_out": "mlp_output"}
        reps = [{"layer": l, "component": comps[s], "intervention_type": pv.CollectIntervention}
                for s in W3_SITES for l in range(L)]
        m = pv.IntervenableModel(pv.IntervenableConfig(reps), model=hf)
        m.disable_model_gradients()
        locs = [list(range(ctx.bc.T_CACHE))] * ctx.B

        def cache_run():
            (_, collected), _ = m(base(ctx.cache_tokens), unit_locations={"base": [locs] * len(reps)})
            acts = [torch.stack(list(a)) if isinstance(a, (list, tuple)) else a for a in collected]
            want = (ctx.B, ctx.bc.T_CACHE, ctx.bc.D_MODEL)
            bad = {tuple(a.shape) for a in acts if tuple(a.shape) != want}
            if bad:  # seen with pyvene 0.1.8 + transformers 5.24: [8, 128, 6] slices instead of [8, 128, 768]
                raise ValueError(f"pyvene CollectIntervention returned activations of shapes {sorted(bad)}, "
                                 f"expected {want}; not timed")
            return {s: acts[k * L:(k + 1) * L] for k, s in enumerate(W3_SITES)}

        return {"CollectIntervention": (cache_run, None)}
    raise ValueError(workload)


# ---------------------------------------------------------------------------------------------
# driver


def build(lib, bc, wdir):
    """(model object for the idioms, plain forward fn ids -> logits, version string)."""
    import torch

    hf = load_hf(bc, wdir)
    if lib == "hf":
        import transformers

        return hf, hf_forward(None, hf), f"transformers {transformers.__version__}"
    if lib == "tl3":
        import transformer_lens

        from importlib.metadata import version

        tl = load_tl3(bc, hf)
        del hf
        _ = transformer_lens
        return tl, (lambda ids: tl(ids)), f"transformer-lens {version('transformer-lens')}"
    if lib == "tl4":
        from importlib.metadata import version

        br = load_tl4(bc, hf, wdir)
        return br, (lambda ids: br(ids)), f"transformer-lens {version('transformer-lens')} (TransformerBridge)"
    if lib == "nnsight":
        from importlib.metadata import version

        from nnsight.modeling.transformers import TransformersModel

        # batching invokes needs nnsight's transformers wrapper, which needs a tokenizer (for padding); the
        # random model has none, so a word-level stand-in over the ids (inputs are always token ids)
        nn_model = TransformersModel(hf, task="text-generation", tokenizer=id_tokenizer(bc.D_VOCAB, Path(wdir).parent))

        def plain(ids):
            with nn_model.trace(ids, use_cache=False):
                out = nn_model.lm_head.output.save()
            return torch.as_tensor(out)

        return nn_model, plain, f"nnsight {version('nnsight')}"
    if lib == "pyvene":
        from importlib.metadata import version

        return hf, hf_forward(None, hf), f"pyvene {version('pyvene')} (plain forward: the wrapped transformers model)"
    raise ValueError(f"unknown --lib {lib!r}; valid: {LIBS}")


def idioms_for(lib, ctx, model, workload):
    if lib == "hf":
        return hf_idioms(ctx, model, workload)
    if lib in ("tl3", "tl4"):
        return tl_idioms(ctx, model, workload, legacy=lib == "tl3")
    if lib == "nnsight":
        return nnsight_idioms(ctx, model, workload)
    if lib == "pyvene":
        return pyvene_idioms(ctx, model, workload)
    raise ValueError(f"unknown --lib {lib!r}; valid: {LIBS}")


# the idiom of each library that does the least work for W1/W2 (prefix reuse for TL 3.x, batched
# variants elsewhere); ``--fastest-only`` times just these when time is short
FASTEST = {"hf": "hooks, variants stacked in batch", "tl3": "start_at_layer from cache, stacked",
           "tl4": "run_with_hooks, variants stacked", "nnsight": "invokes per layer, one trace",
           "pyvene": "variants stacked in batch"}


def is_per_variant(idiom: str) -> bool:
    """Idioms that run one forward per variant (192 / 384 per sweep)."""
    return "per variant" in idiom or "get_act_patch" in idiom


def time_forward(fwd, ids, repeats: int = 5) -> dict:
    fwd(ids)
    ts = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fwd(ids)
        ts.append(time.perf_counter() - t0)
    return bcm.summarize(ts)


def run(args) -> dict:
    import torch

    bc = bcm.load_bench_config(args.bench_config)
    torch.set_num_threads(args.threads)
    wdir = Path(args.weights) if args.weights else weights_dir(args.cache)
    ctx = Ctx(bc, args.quick)
    t0 = time.perf_counter()
    rss0 = bcm.rss_bytes()
    with torch.inference_mode():
        model, plain, version = build(args.lib, bc, wdir)
    load_s = time.perf_counter() - t0
    result = {"lib": args.lib, "workload": args.workload, "version": version, "torch": torch.__version__,
              "threads": torch.get_num_threads(), "quick": args.quick, "load_s": load_s,
              "model_rss_bytes": bcm.rss_bytes() - rss0, "load_average_start": bcm.load_average(),
              "cpu": bcm.cpu_model(), "idioms": {}}
    with torch.inference_mode():
        if args.workload == "W0":
            for T in (bc.T, bc.T_CACHE):
                ids = torch.from_numpy(bc.tokens(bc.B, T, bc.TOKEN_SEED))
                r = bcm.time_protocol(lambda: plain(ids), repeats=max(args.repeats, 5))
                logits = r.pop("result")
                r["logits_last"] = logits[:, -1, :8].double().numpy()  # agreement fingerprint
                result["idioms"][f"plain forward B{bc.B} T{T}"] = r
        else:
            seq = bc.T_CACHE if args.workload == "W3" else bc.T
            ids = torch.from_numpy(bc.tokens(bc.B, seq, bc.TOKEN_SEED))
            result["plain_forward"] = time_forward(plain, ids)
            result["plain_forward"]["shape"] = [bc.B, seq]
            idioms = idioms_for(args.lib, ctx, model, args.workload)
            if args.idioms:
                unknown = [k for k in args.idioms if k not in idioms]
                if unknown:
                    raise ValueError(f"unknown idiom(s) {unknown} for {args.lib} {args.workload}; valid: {list(idioms)}")
                idioms = {k: v for k, v in idioms.items() if k in args.idioms}
            if args.no_per_variant:
                idioms = {k: v for k, v in idioms.items() if not is_per_variant(k)}
            if args.fastest_only and args.workload in ("W1", "W2"):
                idioms = {k: v for k, v in idioms.items() if k == FASTEST[args.lib]}
            for name, (fn, warm) in idioms.items():
                print(f"[{args.lib} {args.workload}] {name} ...", file=sys.stderr, flush=True)
                try:
                    r = bcm.time_protocol(fn, warm, repeats=args.repeats)
                except Exception as err:  # one idiom failing must not lose the others' results
                    result["idioms"][name] = {"error": f"{type(err).__name__}: {err}"}
                    print(f"    FAILED: {err}", file=sys.stderr, flush=True)
                    continue
                out = r.pop("result")
                r["result"] = fingerprint(out) if args.workload == "W3" else np.asarray(out)
                r["forward_equivalents"] = r["median_s"] / result["plain_forward"]["median_s"]
                result["idioms"][name] = r
                print(f"    median {r['median_s']:.3f} s, min {r['min_s']:.3f} s, warm-up {r['warmup_s']:.3f} s, "
                      f"peak RSS +{r['peak_rss_increase_bytes'] / 2**20:.0f} MiB", file=sys.stderr, flush=True)
    result["load_average_end"] = bcm.load_average()
    return result


def build_parser():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--make-weights", action="store_true", help="build and save the benchmark weights, then exit")
    p.add_argument("--lib", choices=LIBS)
    p.add_argument("--workload", choices=bcm.WORKLOADS)
    p.add_argument("--idioms", nargs="+", metavar="NAME", help="run only these idioms (default: all of the library's)")
    p.add_argument("--out", help="results JSON (written atomically)")
    p.add_argument("--cache", default=str(bcm.default_cache_dir()), help="weights cache (default %(default)s)")
    p.add_argument("--weights", help="weights folder (default: CACHE/" + bcm.WEIGHTS_DIRNAME + ")")
    p.add_argument("--bench-config", help="path of bench_config.py (default: ../shared/bench/ beside the repo)")
    p.add_argument("--repeats", type=int, default=3, help="timed full sweeps per idiom (default 3)")
    p.add_argument("--threads", type=int, default=2, help="torch intra-op threads (default 2)")
    p.add_argument("--quick", action="store_true", help="a 2x2 corner of each grid, for smoke runs")
    p.add_argument("--no-per-variant", action="store_true", help="skip the one-forward-per-variant idioms")
    p.add_argument("--fastest-only", action="store_true", help="W1/W2: time only each library's fastest idiom")
    return p


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    if args.repeats < 1 or args.threads < 1:
        raise SystemExit("--repeats and --threads must be >= 1")
    warnings.filterwarnings("ignore")
    os.environ.setdefault("TQDM_DISABLE", "1")
    if args.make_weights:
        make_weights(bcm.load_bench_config(args.bench_config), args.cache)
        return 0
    if not (args.lib and args.workload and args.out):
        raise SystemExit("--lib, --workload and --out are required (or --make-weights)")
    result = run(args)
    result["argv"] = sys.argv
    bcm.write_json_atomic(args.out, result)
    print(f"wrote {args.out}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
