"""Resume: fingerprints of everything a sweep's result depends on, and the folder of finished
chunks (a manifest plus one atomically written orbax checkpoint per chunk).

The metric's fingerprint covers what it can reach, not only its own bytecode: its closure and
defaults, every module global it names (values, recursively for the functions it calls, and the
attributes it reads of user modules), bound ``self`` objects and ``functools.partial`` arguments.
Library code (the standard library, installed packages, interpjax) is identified by name. What a
metric computes at call time from outside Python state (files, environment variables read inside
the metric, clocks) cannot be seen: pass such values in as globals or closure values, or use a new
``checkpoint_dir``.
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import json
import os
import sys
import types
from pathlib import Path

import jax
import numpy as np

from .grid import is_ref

__all__ = ["MetricKey", "Store", "digest", "grid_digest"]

_LIBRARY_TOPS = {"builtins", "interpjax", "jax", "jaxlib", "numpy", "flax", "optax", "orbax", "scipy", "torch",
                 "transformers", "tqdm", "matplotlib"}
_MAX_DEPTH = 12


def _is_library(module_name) -> bool:
    if not module_name:
        return True
    top = str(module_name).split(".")[0]
    if top in _LIBRARY_TOPS or top in getattr(sys, "stdlib_module_names", ()):
        return True
    mod = sys.modules.get(top)
    f = getattr(mod, "__file__", None) or ""
    return "site-packages" in f or "dist-packages" in f


def _code_names(code, out=None) -> list:
    """Every name a code object (and the code nested in it) loads: globals and attributes."""
    out = [] if out is None else out
    out.extend(code.co_names)
    for c in code.co_consts:
        if isinstance(c, types.CodeType):
            _code_names(c, out)
    return out


class _Hasher:
    def __init__(self):
        self.h = hashlib.sha256()
        self.seen = set()

    def tag(self, s):
        self.h.update(str(s).encode())

    def update(self, obj, depth=0):
        h = self.h
        if depth > _MAX_DEPTH:
            self.tag(f"<deep {type(obj).__qualname__}>")
            return
        if obj is None or isinstance(obj, (bool, int, float, complex, str, bytes)):
            self.tag(f"{type(obj).__name__}:{obj!r}")
            return
        if isinstance(obj, (np.ndarray, jax.Array, np.generic)):
            a = np.asarray(obj)
            self.tag((a.dtype.str, a.shape))
            h.update(np.ascontiguousarray(a).tobytes())
            return
        if isinstance(obj, types.ModuleType):
            self.tag(f"module:{obj.__name__}")
            return
        if isinstance(obj, type):
            self.tag(f"type:{obj.__module__}.{obj.__qualname__}")
            return
        if isinstance(obj, (list, tuple)):
            self.tag("(")
            for o in obj:
                self.update(o, depth + 1)
            self.tag(")")
            return
        if isinstance(obj, dict):
            self.tag("{")
            for k in sorted(obj, key=str):
                self.tag(k)
                self.update(obj[k], depth + 1)
            self.tag("}")
            return
        if isinstance(obj, (set, frozenset)):
            self.tag(sorted(repr(o) for o in obj))
            return
        if isinstance(obj, types.CodeType):
            self.code(obj, depth)
            return
        if id(obj) in self.seen:  # recursion (a function calling itself, cyclic objects)
            self.tag(f"<seen {type(obj).__qualname__}>")
            return
        self.seen.add(id(obj))
        if isinstance(obj, functools.partial):
            self.tag("partial")
            self.update((obj.func, obj.args, obj.keywords), depth + 1)
        elif isinstance(obj, types.MethodType):
            self.tag("method")
            self.update(obj.__func__, depth + 1)
            self.update(obj.__self__, depth + 1)
        elif isinstance(obj, types.FunctionType):
            self.function(obj, depth)
        elif dataclasses.is_dataclass(obj):
            self.tag(f"dataclass:{type(obj).__module__}.{type(obj).__qualname__}")
            for f in dataclasses.fields(obj):
                self.tag(f.name)
                self.update(getattr(obj, f.name, None), depth + 1)
        elif hasattr(obj, "__array__"):
            self.update(np.asarray(obj), depth + 1)
        elif callable(obj) and hasattr(obj, "__wrapped__"):  # jax.jit, functools.wraps
            self.tag(f"wrapped:{type(obj).__qualname__}")
            self.update(obj.__wrapped__, depth + 1)
        else:
            r = repr(obj)
            cls = type(obj)
            if " at 0x" not in r:  # a repr that describes the value
                self.tag(f"{cls.__module__}.{cls.__qualname__}:{r}")
            elif not _is_library(cls.__module__) and hasattr(obj, "__dict__"):
                self.tag(f"object:{cls.__module__}.{cls.__qualname__}")
                self.update(vars(obj), depth + 1)
                self.update({k: v for k, v in vars(cls).items() if isinstance(v, types.FunctionType)}, depth + 1)
            else:
                self.tag(f"opaque:{cls.__module__}.{cls.__qualname__}")

    def code(self, code, depth):
        self.h.update(code.co_code)
        self.tag(code.co_names)
        for c in code.co_consts:
            self.update(c, depth + 1)

    def function(self, fn, depth):
        mod = getattr(fn, "__module__", None)
        if _is_library(mod):  # library code: its behaviour is its version's
            self.tag(f"libfn:{mod}.{fn.__qualname__}")
            return
        self.code(fn.__code__, depth)
        for c in fn.__closure__ or ():
            try:
                self.update(c.cell_contents, depth + 1)
            except ValueError:
                self.tag("<empty cell>")
        self.update(fn.__defaults__, depth + 1)
        self.update(fn.__kwdefaults__, depth + 1)
        # the globals it names, and the attributes it reads of user modules it names
        g = fn.__globals__
        names = sorted(set(_code_names(fn.__code__)))
        for name in names:
            if name not in g:
                continue
            v = g[name]
            self.tag(f"global:{name}")
            self.update(v, depth + 1)
            if isinstance(v, types.ModuleType) and not _is_library(v.__name__):
                for attr in names:
                    if attr != name and hasattr(v, attr):
                        self.tag(f"attr:{name}.{attr}")
                        self.update(getattr(v, attr), depth + 1)


def digest(*objs) -> str:
    """sha256 over values: arrays by bytes, containers recursively, functions by what they reach."""
    hs = _Hasher()
    for o in objs:
        hs.update(o)
    return hs.h.hexdigest()


def grid_digest(grid) -> str:
    leaves, treedef = jax.tree.flatten(grid.template, is_leaf=is_ref)
    parts = [str(treedef), grid.names, grid.shape, [str(a.ticks) for a in grid.axes]]
    for l in leaves:
        parts.append((l.axes, l.data) if is_ref(l) else l)
    return digest(*parts)


class MetricKey:
    """A metric function that compares equal to any other with the same fingerprint (bytecode,
    closure, defaults, reachable globals): the compiled-program cache key, so a fresh lambda with
    unchanged code and closure reuses the compiled chunk program."""

    def __init__(self, fn):
        self.fn = fn
        try:
            self.key = ("fingerprint", digest(fn))
        except Exception:  # noqa: BLE001 - unhashable state: fall back to the object itself
            self.key = ("object", id(fn))

    def __call__(self, out):
        return self.fn(out)

    def __eq__(self, other):
        return isinstance(other, MetricKey) and self.key == other.key

    def __hash__(self):
        return hash(self.key)


class Store:
    """Finished chunks of one sweep in a folder: manifest.json (what sweep, which plan) and one
    orbax checkpoint per chunk, each written atomically (orbax renames a finished temp folder)."""

    def __init__(self, directory, fingerprint: dict, sizes: dict):
        import orbax.checkpoint as ocp

        self.dir = Path(directory).resolve()
        self.dir.mkdir(parents=True, exist_ok=True)
        path = self.dir / "manifest.json"
        meta = {"format": 1, "fingerprint": fingerprint, "chunk_sizes": [[k[0], k[1], v] for k, v in sizes.items()]}
        if path.exists():
            old = json.loads(path.read_text())
            changed = [k for k in fingerprint if old.get("fingerprint", {}).get(k) != fingerprint[k]]
            if changed:
                raise ValueError(f"{self.dir} holds a different sweep (changed: {', '.join(changed)}); refusing to "
                                 f"resume into it. Use a new checkpoint_dir, or the same model, tokens, grid, "
                                 f"metric and options to resume.")
            self.sizes = {(a, b): c for a, b, c in old["chunk_sizes"]}
        else:
            if jax.process_index() == 0:
                tmp = path.with_name(path.name + ".tmp")
                tmp.write_text(json.dumps(meta, indent=1))
                os.replace(tmp, path)
            self.sizes = dict(sizes)
        self.mngr = ocp.CheckpointManager(self.dir / "chunks",
                                          options=ocp.CheckpointManagerOptions(create=True, enable_async_checkpointing=False))

    def done(self) -> set:
        return set(self.mngr.all_steps())

    def load(self, i):
        import orbax.checkpoint as ocp

        out = self.mngr.restore(i, args=ocp.args.StandardRestore())
        return [np.asarray(out[k]) for k in sorted(out, key=lambda k: int(k[1:]))]

    def save(self, i, leaves):
        import orbax.checkpoint as ocp

        self.mngr.save(i, args=ocp.args.StandardSave({f"v{j}": np.asarray(l) for j, l in enumerate(leaves)}),
                       force=True)
        self.mngr.wait_until_finished()
