"""``Result``: the frozen-dataclass base that method results share.

A subclass is a frozen dataclass (plain or ``flax.struct``) that sets ``FORMAT`` (and ``VERSION``)
and gets, without further code:

- ``.save(path)``: array fields (numpy / jax arrays, or dicts of them) become tensors, every other
  field JSON metadata, through ``io.artifacts.save_artifact`` (one safetensors file, atomic);
- ``Cls.load(path, model=None)``: the inverse; with ``model`` (a ``Model`` or ``(cfg, params)``)
  an artifact made on another model is refused;
- ``.to_dict()``: every field as JSON-safe values (arrays as nested lists, NaN/inf as None);
- ``.plot(path)``: a ``NotImplementedError`` unless the subclass draws something.

A field named ``model`` holding an identity dict (``io.artifacts.model_identity``) is recorded as
the artifact's model identity and checked on load. Subclasses whose layout differs override the
hooks ``artifact_tensors`` / ``artifact_meta`` / ``artifact_identity`` / ``from_artifact`` /
``check``, and ``legacy_artifact`` to read files of an older format.

    @dataclass(frozen=True)
    class KnockoutResult(Result):
        FORMAT = "interpjax.knockout"
        effect_LH: np.ndarray
        metric: str
        model: dict | None = None
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar

import jax
import numpy as np

from ..io.artifacts import Artifact, ArtifactError, as_identity, check_model, load_artifact, save_artifact


def is_array(v) -> bool:
    return isinstance(v, (np.ndarray, jax.Array))


def _is_array_tree(v) -> bool:
    """A non-empty dict (nested allowed) whose leaves are all arrays, with dot-free string keys."""
    if not isinstance(v, dict) or not v:
        return False
    return all(isinstance(k, str) and k and "." not in k and (is_array(x) or _is_array_tree(x)) for k, x in v.items())


def _flatten(prefix: str, tree: dict, out: dict) -> None:
    for k, v in tree.items():
        if isinstance(v, dict):
            _flatten(f"{prefix}.{k}", v, out)
        else:
            out[f"{prefix}.{k}"] = v


def jsonable(v, strict: bool = True):
    """``v`` as JSON values: dataclasses as dicts, tuples as lists, numpy / jax values as Python
    numbers or nested lists; with ``strict`` non-finite floats become None (plain JSON has no NaN)."""
    if dataclasses.is_dataclass(v) and not isinstance(v, type):
        return {f.name: jsonable(getattr(v, f.name), strict) for f in dataclasses.fields(v)}
    if isinstance(v, dict):
        return {str(k): jsonable(x, strict) for k, x in v.items()}
    if isinstance(v, (list, tuple)):
        return [jsonable(x, strict) for x in v]
    if is_array(v) or isinstance(v, np.generic):
        return jsonable(np.asarray(v).tolist(), strict)
    if isinstance(v, float) and strict and not math.isfinite(v):
        return None
    if v is None or isinstance(v, (bool, int, float, str)):
        return v
    if isinstance(v, Path):
        return str(v)
    raise TypeError(f"{type(v).__name__} value {v!r} has no JSON form")


def _type_name(f: dataclasses.Field) -> str:
    return f.type if isinstance(f.type, str) else getattr(f.type, "__name__", str(f.type))


@dataclass(frozen=True)
class Result:
    """Base of method results: ``.save``, ``.load``, ``.to_dict``, ``.plot`` (see the module doc)."""

    FORMAT: ClassVar[str] = ""
    VERSION: ClassVar[int] = 1

    # -- hooks ----------------------------------------------------------------------------------

    def artifact_tensors(self) -> dict:
        """{tensor name: array}: array fields by name, dicts of arrays as ``field.key[.key]``."""
        out = {}
        for f in dataclasses.fields(self):
            v = getattr(self, f.name)
            if is_array(v):
                out[f.name] = v
            elif _is_array_tree(v):
                _flatten(f.name, v, out)
        return out

    def artifact_meta(self) -> dict:
        """Every field that is not a tensor (nor the ``model`` identity) as JSON values."""
        out = {}
        for f in dataclasses.fields(self):
            v = getattr(self, f.name)
            if is_array(v) or _is_array_tree(v) or (f.name == "model" and isinstance(v, dict)):
                continue
            try:
                out[f.name] = jsonable(v, strict=False)
            except TypeError as e:
                raise ValueError(f"{type(self).__name__}.{f.name} cannot be saved: {e}") from None
        return out

    def artifact_identity(self) -> dict | None:
        """The identity of the model this result was made on (a ``model`` field holding a dict), or None."""
        v = getattr(self, "model", None)
        return v if isinstance(v, dict) else None

    @classmethod
    def from_artifact(cls, art: Artifact):
        """Rebuild the result from a loaded artifact (raise ``ArtifactError`` for a missing entry)."""
        kw = {}
        for f in dataclasses.fields(cls):
            if not f.init:
                continue
            name = f.name
            nested = {k[len(name) + 1:]: v for k, v in art.arrays.items() if k.startswith(name + ".")}
            if name in art.arrays:
                kw[name] = art.arrays[name]
            elif nested:
                tree: dict = {}
                for key, v in nested.items():
                    *head, last = key.split(".")
                    node = tree
                    for h in head:
                        node = node.setdefault(h, {})
                    node[last] = v
                kw[name] = tree
            elif name == "model" and art.model is not None:
                kw[name] = art.model
            elif name in art.meta:
                v = art.meta[name]
                kw[name] = tuple(v) if isinstance(v, list) and _type_name(f).startswith("tuple") else v
            elif f.default is not dataclasses.MISSING or f.default_factory is not dataclasses.MISSING:
                continue
            else:
                kind = "tensor" if any(t in _type_name(f) for t in ("ndarray", "Array")) else "metadata field"
                raise ArtifactError(f"missing {kind} {name!r} of {cls.__name__} (tensors: {sorted(art.arrays)}; "
                                    f"metadata: {sorted(art.meta)})")
        return cls(**kw)

    @classmethod
    def legacy_artifact(cls, header_meta: dict):
        """Convert the header metadata of a file in an older format: ``(meta, identity, version,
        tensor renames)``, or None if it is not one (see ``io.artifacts.load_artifact``)."""
        return None

    def with_identity(self, identity: dict):
        """A copy recording ``identity`` as its model (used to add the fingerprint older files lack)."""
        if any(f.name == "model" for f in dataclasses.fields(self)):
            return dataclasses.replace(self, model=identity)
        return self

    def check(self, model, what: str) -> None:
        """Refuse this result for ``model`` if it was made on another (identity and fingerprint)."""
        check_model(self.artifact_identity(), model, what)

    # -- the contract ---------------------------------------------------------------------------

    @classmethod
    def _format(cls) -> str:
        if not cls.FORMAT:
            raise TypeError(f"{cls.__name__} sets no FORMAT: Result subclasses that save need one")
        return cls.FORMAT

    def save(self, path) -> Path:
        """Write the result to one safetensors file (tensors + JSON metadata), atomically."""
        return save_artifact(path, self.artifact_tensors(), self.artifact_meta(), format=self._format(),
                             version=self.VERSION, model=self.artifact_identity())

    @classmethod
    def load(cls, path, model=None):
        """Read a saved result; with ``model`` (a ``Model`` or ``(cfg, params)``), refuse one made on
        another model."""
        what = f"{cls.__name__} {Path(path).name}"
        art = load_artifact(path, format=cls._format(), version=cls.VERSION, legacy=cls.legacy_artifact, what=what)
        try:
            obj = cls.from_artifact(art)
        except ArtifactError as e:
            raise ValueError(f"{art.path}: {e}") from None
        if model is not None:
            obj.check(model, what)
            ident = obj.artifact_identity()
            if ident and "fingerprint" not in ident:  # an older file, now verified on the rest: record it
                obj = obj.with_identity({**ident, "fingerprint": as_identity(model)["fingerprint"]})
        return obj

    def to_dict(self) -> dict:
        """Every field as JSON-safe values (arrays as nested lists, NaN / inf as None)."""
        return {f.name: jsonable(getattr(self, f.name)) for f in dataclasses.fields(self)}

    def plot(self, path) -> Path:
        """Draw the result to ``path``; results without a fitting picture raise NotImplementedError."""
        raise NotImplementedError(f"{type(self).__name__} has no plot; use .to_dict() (or .save()) for its values")
