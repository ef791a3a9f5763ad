"""Compiler: a trained PyTorch model → an HE plan (fold, level, pick 128-bit parameters)."""

from hecnn.compile.compiler import compile_model
from hecnn.compile.ir import Plan

__all__ = ["Plan", "compile_model"]
