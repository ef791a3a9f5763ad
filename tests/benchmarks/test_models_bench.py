"""The per-model benchmark's plumbing on a small insecure ring: encrypted results checked
against the plaintext model, a SEAL op-count estimate, the table and the summary line.
No timing is asserted."""

import numpy as np
import pytest
from rich.console import Console

from hecnn.benchmarks.models import bench_row, format_table, summary_line
from hecnn.benchmarks.seal_ops import node_op_counts, plan_op_counts
from hecnn.compile import compile_bundled

pytest.importorskip("seal")


@pytest.mark.parametrize("server_process", [True, False])
def test_cryptonets_row_agrees_with_plaintext_and_has_a_seal_estimate(server_process):
    """Both ways of running the server's side — a process of its own (the benchmark's) and
    the client's process — give the plaintext model's labels."""
    row = bench_row(
        "cryptonets_mnist",
        batch=64,
        insecure_ring_for_tests=1 << 12,
        seal_reps=1,
        log=lambda _msg: None,
        server_process=server_process,
    )
    assert row.status == "ok" and row.batch == 64 and row.n == 1 << 12
    assert row.agreement == 100.0 and row.max_error < 5e-2
    assert row.plain_accuracy > 90  # the committed weights are trained
    assert row.server_s > 0 and row.peak_rss > 0 and row.estimate > 0
    assert row.seal is not None and row.seal.seconds > 0 and row.seal_ratio > 0
    assert row.seal.by_kind["mac"] > 0 and row.seal.by_kind["square"] > 0
    console = Console(record=True, width=200)
    console.print(format_table([row]))
    text = console.export_text()
    assert "cryptonets_mnist" in text and "100.00" in text
    assert summary_line([row]).startswith("cryptonets_mnist_ms=")


def test_op_counts_follow_the_plan():
    plan = compile_bundled(
        "ishiyama_mnist_poly_element_kd", batch=64, insecure_ring_for_tests=1 << 12
    )
    per_node = node_op_counts(plan)
    total = plan_op_counts(plan)
    macs = sum(v for (op, _), v in total.items() if op == "mac")
    comps = {n.name: n.components for n in plan.nodes}
    expect = sum(
        n.macs * comps[n.inputs[0]] / 2 for n in plan.nodes if hasattr(n, "weights") and n.inputs
    )
    assert np.isclose(macs, expect)
    relins = sum(v for (op, _), v in total.items() if op == "relin")
    assert relins == sum(plan.relinearizations().values())
    assert set(per_node) == {n.name for n in plan.nodes}


def test_server_process_refuses_a_secret_key():
    """The benchmark's server process loads its keys as evaluation keys: handed a secret key
    instead, it refuses before running anything."""
    from hecnn.benchmarks.models import _serve_in_child
    from hecnn.ckks.context import CkksContext
    from hecnn.ckks.keys import KeyGenerator
    from hecnn.ckks.serialize import dumps
    from hecnn.compile.serialize import dumps_plan
    from hecnn.errors import HecnnError

    plan = compile_bundled(
        "ishiyama_mnist_poly_element_kd", batch=64, insecure_ring_for_tests=1 << 12
    )
    sk = KeyGenerator(CkksContext(plan.params)).secret_key()
    with pytest.raises(HecnnError, match="secret"):
        _serve_in_child(dumps_plan(plan), dumps(sk), "unused.npy", 1.0, 2**30, 60.0, {}, "t")
