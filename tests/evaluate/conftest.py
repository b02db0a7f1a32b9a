"""Registers tests/evaluate/reference.py as the module ``eval_reference`` (tests/ is not a package)."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

if "eval_reference" not in sys.modules:
    _spec = importlib.util.spec_from_file_location("eval_reference", Path(__file__).with_name("reference.py"))
    _module = importlib.util.module_from_spec(_spec)
    sys.modules["eval_reference"] = _module
    _spec.loader.exec_module(_module)
