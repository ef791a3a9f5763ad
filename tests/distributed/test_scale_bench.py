"""``hecnn bench scale`` end to end on the test cluster, at a tiny insecure ring: the table, the
bit-identity checks and the summary line."""

from __future__ import annotations

import re

from hecnn.benchmarks.scale import run_scale


def test_bench_scale_prints_its_table_and_summary_line(cluster, capsys):
    address, _ = cluster
    lines: list[str] = []
    res = run_scale(
        "cryptonets_mnist",
        batches=2,
        workers=2,
        batch=32,
        address=address,
        split_memory=8 << 20,
        insecure_ring_for_tests=1 << 10,
        log=lines.append,
    )
    out = capsys.readouterr().out
    assert "1 worker s" in out and "2 workers s" in out  # the table
    assert res.identical and res.agreement >= 90.0
    assert any("layer split for 8.0 MiB per task" in x for x in lines)
    assert any("equal to the whole-batch task: True" in x for x in lines)
    assert re.fullmatch(r"batches=2 workers=2 agreement=\d+\.\d\d speedup=\d+\.\d\d", lines[-1]), (
        lines[-1]
    )
