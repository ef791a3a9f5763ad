"""Benchmark implementations behind ``hecnn bench …`` and the scripts in ``benchmarks/``.

Each benchmark prints a table and a final summary line; speed claims live here and in
``docs/benchmarks.md``, never in tests.
"""
