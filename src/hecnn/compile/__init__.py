"""Compiler: a trained PyTorch model → an HE plan (fold, level, pick 128-bit parameters)."""

from hecnn.compile.compiler import compile_bundled, compile_model
from hecnn.compile.ir import Plan
from hecnn.compile.serialize import dumps_plan, load_plan, loads_plan, save_plan

__all__ = [
    "Plan",
    "compile_bundled",
    "compile_model",
    "dumps_plan",
    "load_plan",
    "loads_plan",
    "save_plan",
]
