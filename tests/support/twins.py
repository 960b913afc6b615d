"""The modules written in C (``mcpproxy.native.C_MODULES``) and their Python twins, for tests
that compare the two."""

from __future__ import annotations

import importlib
import importlib.machinery
import importlib.util
from pathlib import Path
from types import ModuleType

import pytest

_ROOT = Path(__file__).resolve().parent.parent.parent


def c_module(name: str) -> ModuleType:
    """``mcpproxy.<name>`` as built from C; the calling test is skipped where it is not built
    (pure Python)."""
    module = importlib.import_module(f"mcpproxy.{name}")
    if not (module.__file__ or "").endswith(tuple(importlib.machinery.EXTENSION_SUFFIXES)):
        pytest.skip("the C module is not built (pure Python)")
    return module


def python_twin(name: str) -> ModuleType:
    """``mcpproxy/<name>.py``, the Python twin, loaded beside its C build."""
    spec = importlib.util.spec_from_file_location(f"{name}_twin", _ROOT / "mcpproxy" / f"{name}.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module
