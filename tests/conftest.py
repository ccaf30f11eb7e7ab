"""Shared fixtures."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch


@pytest.fixture
def one_thread():
    """Tiny shapes: one intra-op thread is faster and steadier on a small shared machine."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture
def site(tmp_path, monkeypatch):
    """A folder on sys.path where a test installs throwaway distributions (package + dist-info) with entry points;
    the modules imported from it are forgotten afterwards."""
    from harness.spec.protocol_plugins import PLUGINS_OFF

    monkeypatch.delenv(PLUGINS_OFF, raising=False)
    root = tmp_path / "site"
    root.mkdir()
    monkeypatch.syspath_prepend(str(root))
    yield root
    for name, mod in list(sys.modules.items()):
        if Path(getattr(mod, "__file__", None) or "/").resolve().is_relative_to(root.resolve()):
            del sys.modules[name]
