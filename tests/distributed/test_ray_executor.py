"""Jobs on a real Ray cluster (a head and two worker nodes on loopback, see conftest): many
batches and one split batch give exactly the single-process runtime's ciphertexts, which
decrypt to the plaintext model's logits; a worker killed mid-job is retried by Ray with the
same result, or the job fails loudly when retries are not allowed."""

from __future__ import annotations

import threading
import time

import numpy as np
import pytest
from _rayhelpers import plaintext, running_tasks

from hecnn.distributed import RayExecutor
from hecnn.errors import DistributedError, ParameterError, SerializationError
from hecnn.runtime import decrypt_outputs, run

#: max abs logit error of the encrypted model against the plaintext one at N=2^12
TOL = 5e-2


@pytest.fixture(scope="module")
def reference(job):
    """The single-process runtime's outputs for every batch."""
    _, plan, _, _, evk, batches = job
    return [run(plan, ct, evk) for _, ct in batches]


def _same(a, b) -> None:
    assert a.data.shape == b.data.shape
    assert np.array_equal(a.data, b.data)
    assert a.scale == b.scale


def _check_plaintext(job, x, out) -> None:
    model, _, ctx, sk, _, _ = job
    got = decrypt_outputs(ctx, sk, out, len(x))
    ref = plaintext(model, x)
    assert np.abs(got - ref).max() < TOL
    assert np.mean(got.argmax(1) == ref.argmax(1)) == 1.0


def test_four_batches_equal_the_single_process_runtime(cluster, job, reference):
    address, _ = cluster
    _, plan, _, _, evk, batches = job
    ex = RayExecutor(plan, address)
    outs = ex.run_many([ct for _, ct in batches], evk)
    assert len(outs) == 4
    for out, ref, (x, _) in zip(outs, reference, batches, strict=True):
        _same(out, ref)
        _check_plaintext(job, x, out)
    stats = ex.last
    assert len(stats.tasks) == 4
    assert len({t.pid for t in stats.tasks}) == 2  # both worker nodes took batches
    # plan and keys were put once; each task carried only its own ciphertexts
    assert stats.shared_bytes > 0
    assert all(t.bytes_in == stats.tasks[0].bytes_in for t in stats.tasks)


def test_uploaded_bytes_are_forwarded_as_they_are(cluster, job, reference):
    from hecnn.ckks import serialize

    address, _ = cluster
    _, plan, _, _, evk, batches = job
    ex = RayExecutor(plan, address)
    outs = ex.run_many([serialize.dumps(ct) for _, ct in batches[:2]], evk)
    for out, ref in zip(outs, reference[:2], strict=True):
        _same(out, ref)


def test_keys_are_put_once_per_key_set(cluster, job):
    address, _ = cluster
    _, plan, _, _, evk, _ = job
    ex = RayExecutor(plan, address)
    assert ex.keys_ref(evk)[0] == ex.keys_ref(evk)[0]


def test_a_secret_key_never_goes_to_the_cluster(cluster, job):
    address, _ = cluster
    _, plan, _, sk, _, batches = job
    ex = RayExecutor(plan, address)
    with pytest.raises(SerializationError, match="only evaluation keys"):
        ex.run_many([batches[0][1]], sk)


def test_foreign_ciphertexts_are_refused_before_any_task(cluster, job):
    address, _ = cluster
    _, plan, _, _, evk, batches = job
    ex = RayExecutor(plan, address)
    ct = batches[0][1]
    with pytest.raises(Exception, match="expects"):
        ex.run_many([ct[:5]], evk)
    with pytest.raises(ParameterError):
        RayExecutor(plan, address, retries=-1)


def test_layer_split_equals_the_unsplit_runtime_bit_for_bit(cluster, job, reference):
    address, _ = cluster
    _, plan, _, _, evk, batches = job
    ex = RayExecutor(plan, address)
    seen = []
    out = ex.run_split(batches[0][1], evk, slices=3, progress=lambda *a: seen.append(a))
    _same(out, reference[0])
    _check_plaintext(job, batches[0][0], out)
    assert len(ex.last.tasks) == ex.split_schedule(3).tasks > len(plan.nodes)
    assert seen[-1][1:] == (len(plan.nodes), len(plan.nodes))


def test_split_chosen_from_memory_runs_a_plan_too_big_for_one_worker(cluster, job, reference):
    address, _ = cluster
    _, plan, _, _, evk, batches = job
    # no worker holds the whole batch; the classifier (it reads all 144 features, one level
    # higher where the activation before it defers its rescale) cannot be cut below 1/5
    budget = plan.memory_estimate(streaming=False) // 5
    ex = RayExecutor(plan, address, worker_memory=budget)
    assert ex.needs_split()
    sched = ex.split_schedule()
    assert sched.fits and sched.tasks > len(plan.nodes) - 1
    _same(ex.run(batches[1][1], evk), reference[1])


def _kill_first(nodes, name: str, killed: list, stop: threading.Event) -> None:
    """Kill (SIGKILL) the first worker process seen running task ``name``."""
    while not stop.is_set():
        for proc in running_tasks(nodes, name):
            proc.kill()
            killed.append(proc.pid)
            return
        time.sleep(0.02)


def _with_killer(nodes, fn):
    killed: list[int] = []
    stop = threading.Event()
    t = threading.Thread(target=_kill_first, args=(nodes, "run_batch", killed, stop))
    t.start()
    try:
        return fn(), killed
    finally:
        stop.set()
        t.join()


def test_a_worker_killed_mid_job_is_retried_with_identical_results(cluster, job, reference):
    address, nodes = cluster
    _, plan, _, _, evk, batches = job
    ex = RayExecutor(plan, address, retries=3)
    outs, killed = _with_killer(nodes, lambda: ex.run_many([ct for _, ct in batches], evk))
    assert killed, "no worker was running a batch to kill"
    assert all(t.pid not in killed for t in ex.last.tasks)  # the killed attempt left no result
    for out, ref in zip(outs, reference, strict=True):
        _same(out, ref)


def test_without_retries_a_killed_worker_fails_the_job_loudly(cluster, job):
    address, nodes = cluster
    _, plan, _, _, evk, batches = job
    ex = RayExecutor(plan, address, retries=0)
    with pytest.raises(DistributedError, match=r"batch \d of 2 failed on the cluster after 0"):
        _with_killer(nodes, lambda: ex.run_many([ct for _, ct in batches[:2]], evk))
