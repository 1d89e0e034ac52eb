"""The README's Python example runs as written (on the real checkpoint)."""

from __future__ import annotations

import re

from conftest import REPO, STORIES, needs_stories


@needs_stories
def test_readme_example_runs(monkeypatch):
    src = (REPO / "README.md").read_text()
    code = re.findall(r"```python\n(.*?)```", src, re.S)[0]
    code = code.replace('"../shared/models/llama2c-stories260k"', repr(str(STORIES)))
    scope = {}
    exec(compile(code, "README.md", "exec"), scope)
    assert scope["cache"]["resid_pre"].shape == (2, 1, 14, 64)
    assert scope["cache"]["pattern", 3].shape == (1, 8, 14, 14)
    assert scope["grid"].shape == (5, 16)
