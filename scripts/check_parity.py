"""Print the parity table for the README: max |logit diff| vs transformers per family variant,
fp32 and bf16, on tiny random models (B=2, T=12) and on the real stories260K checkpoint if present.

    python scripts/check_parity.py [--models-dir ../shared/models]
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

import numpy as np
import torch

import interpjax
from interpjax.testing import TINY, save_random_hf_model


def diffs(folder, hf, toks):
    with torch.no_grad():
        ref = hf(torch.tensor(toks)).logits.numpy()
    d32 = np.abs(np.asarray(interpjax.load(folder)(toks)) - ref).max()
    b16 = np.asarray(interpjax.load(folder, dtype="bfloat16")(toks)).astype(np.float32)
    return d32, np.abs(b16 - ref).max(), np.abs(ref).max()


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--models-dir", default=str(Path(__file__).resolve().parents[2] / "shared" / "models"))
    args = ap.parse_args()
    print("| variant | family | fp32 max abs diff | bf16 max abs diff | max abs logit |")
    print("|---|---|---|---|---|")
    toks = np.random.default_rng(0).integers(0, 101, (2, 12))
    for name in TINY:
        with tempfile.TemporaryDirectory() as d:
            hf = save_random_hf_model(name, d)
            fam = interpjax.load(d).cfg.family
            a, b, s = diffs(d, hf, toks)
            print(f"| {name} (tiny random) | {fam} | {a:.1e} | {b:.1e} | {s:.1f} |")
    stories = Path(args.models_dir) / "llama2c-stories260k"
    if (stories / "config.json").exists():
        from transformers import AutoModelForCausalLM

        hf = AutoModelForCausalLM.from_pretrained(str(stories)).eval()
        m = interpjax.load(stories)
        t, _ = m.to_tokens("Once upon a time, there was a little girl named Lily. She loved to play outside")
        a, b, s = diffs(stories, hf, t)
        print(f"| llama2c-stories260k (real) | llama | {a:.1e} | {b:.1e} | {s:.1f} |")


if __name__ == "__main__":
    main()
