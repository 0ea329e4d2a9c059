"""Layers point one way: rag_store <- agent <- eval. Each package is imported in a fresh
interpreter and the modules it pulled in are checked."""

from __future__ import annotations

import json
import pkgutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


def modules_of(package: str) -> list[str]:
    found = [package]
    for info in pkgutil.iter_modules([str(ROOT / package)]):
        found.append(f"{package}.{info.name}")
    return sorted(found)


def loaded_after_import(module: str) -> set[str]:
    """Top-level packages of this project loaded by ``import module`` in a fresh interpreter."""
    code = (
        "import importlib, json, sys\n"
        f"importlib.import_module({module!r})\n"
        "print(json.dumps(sorted({m.split('.')[0] for m in sys.modules})))\n"
    )
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT,
                         env={"PYTHONPATH": str(ROOT), "PATH": "/usr/bin:/bin", "HF_HUB_OFFLINE": "1"}, timeout=300)
    assert run.returncode == 0, run.stderr
    return set(json.loads(run.stdout.strip().splitlines()[-1])) & {"rag_store", "agent", "eval", "prompts"}


@pytest.mark.parametrize("module", modules_of("rag_store"))
def test_rag_store_imports_nothing_above_it(module):
    assert loaded_after_import(module) <= {"rag_store"}


@pytest.mark.parametrize("module", modules_of("agent"))
def test_agent_does_not_import_eval_at_module_level(module):
    assert "eval" not in loaded_after_import(module)


def test_the_error_tree_is_split_by_layer_and_re_exported_flat():
    import agent
    import agent.errors
    import rag_store.errors

    assert not any(name.startswith("Model") for name in rag_store.errors.__all__)
    classes = [n for n in agent.errors.__all__ if isinstance(getattr(agent.errors, n), type)]
    assert len(classes) >= 18
    for name in classes:
        assert getattr(agent, name) is getattr(agent.errors, name), name
    assert issubclass(agent.ModelTimeout, rag_store.errors.GeoagentError)
    assert agent.ImageError is rag_store.errors.ImageError
