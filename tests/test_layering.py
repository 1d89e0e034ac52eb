"""The layering promises of docs/architecture.md, checked on the source tree."""

from __future__ import annotations

import ast

from conftest import REPO

PKG = REPO / "interpjax"


def _modules():
    """(dotted module name, is package __init__, parsed tree) for every library file."""
    for path in sorted(PKG.rglob("*.py")):
        rel = path.relative_to(REPO).with_suffix("")
        parts = list(rel.parts)
        init = parts[-1] == "__init__"
        if init:
            parts = parts[:-1]
        yield ".".join(parts), init, ast.parse(path.read_text(), str(path)), path


def _subpackage(mod: str) -> str:
    """The folder a module lives in (``interpjax.core.model`` -> ``interpjax.core``)."""
    return mod.rsplit(".", 1)[0] if mod.count(".") >= 2 else mod


def _absolute(mod: str, init: bool, node: ast.ImportFrom) -> str:
    if not node.level:
        return node.module or ""
    base = mod.split(".") if init else mod.split(".")[:-1]
    base = base[: len(base) - (node.level - 1)]
    return ".".join(base + ([node.module] if node.module else []))


def test_no_module_outside_core_uses_another_modules_underscore_names():
    known = {m for m, _, _, _ in _modules()}
    bad = []
    for mod, init, tree, path in _modules():
        aliases = {}
        for node in ast.walk(tree):
            if isinstance(node, ast.ImportFrom):
                src = _absolute(mod, init, node)
                if not src.startswith("interpjax"):
                    continue
                for a in node.names:
                    if f"{src}.{a.name}" in known:
                        aliases[a.asname or a.name] = f"{src}.{a.name}"
                    elif a.name.startswith("_") and not a.name.startswith("__") and src != mod:
                        if not (mod.startswith("interpjax.core") and src.startswith("interpjax.core")):
                            bad.append(f"{path.name}: from {src} import {a.name}")
        for node in ast.walk(tree):
            if (isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name) and node.value.id in aliases
                    and node.attr.startswith("_") and not node.attr.startswith("__")):
                target = aliases[node.value.id]
                if target != mod and not (mod.startswith("interpjax.core") and target.startswith("interpjax.core")):
                    bad.append(f"{path.name}:{node.lineno}: {node.value.id}.{node.attr}")
    assert not bad, "underscore names used across modules:\n" + "\n".join(bad)


def test_library_never_imports_experiments_or_benchmarks_and_never_sets_the_matplotlib_backend():
    bad = []
    for mod, init, tree, path in _modules():
        for node in ast.walk(tree):
            names = []
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and not node.level:
                names = [node.module or ""]
            bad += [f"{path.name}: imports {n}" for n in names if n.split(".")[0] in ("experiments", "benchmarks")]
            if (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.func.attr == "use"
                    and isinstance(node.func.value, ast.Name) and node.func.value.id == "matplotlib"):
                bad.append(f"{path.name}:{node.lineno}: matplotlib.use")
    assert not bad, "\n".join(bad)


def test_the_layout_matches_the_readme():
    for folder in ("core", "io", "io/convert", "sweep", "train", "methods", "worlds"):
        assert (PKG / folder / "__init__.py").exists(), folder
    assert (PKG / "methods" / "README.md").exists()
    readme = (REPO / "README.md").read_text()
    for folder in ("core/", "io/", "sweep/", "train/", "methods/", "worlds/", "benchmarks/"):
        assert folder in readme, folder
