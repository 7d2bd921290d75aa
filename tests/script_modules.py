"""The repository's scripts (``scripts/<purpose>/<name>.py``) loaded as modules, for the tests that
share their code (the coverage matrix's model lists, the scene checksums' line formats, ...)."""
from __future__ import annotations

import importlib.util
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def load_script(name: str):
    """Load ``scripts/<purpose>/<name>.py`` (exactly one such file) as a module."""
    path, = (ROOT / "scripts").glob(f"*/{name}.py")
    spec = importlib.util.spec_from_file_location(f"_script_{name}", path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod
