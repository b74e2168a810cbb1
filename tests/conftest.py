"""Shared test helpers.

Every folder of the course has its own ``train.py``, so scripts are loaded by path under a
unique module name (``<folder>_<stem>``) instead of being imported as packages.
"""
import importlib.util
import os
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]

# Tests never draw windows and never reach a model hub.
os.environ.setdefault("SDL_VIDEODRIVER", "dummy")
os.environ.setdefault("MPLBACKEND", "Agg")
os.environ.setdefault("HF_HUB_OFFLINE", "1")


def load_script(folder: str, stem: str = "train"):
    """Import ``<folder>/<stem>.py`` as module ``<folder>_<stem>`` (cached in sys.modules)."""
    name = f"{folder}_{stem}"
    if name in sys.modules:
        return sys.modules[name]
    path = REPO / folder / f"{stem}.py"
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    # Scripts import their sibling train.py as ``train``; make the folder importable for that.
    sys.path.insert(0, str(path.parent))
    try:
        spec.loader.exec_module(module)
    finally:
        sys.path.remove(str(path.parent))
    return module


@pytest.fixture
def repo() -> Path:
    return REPO
