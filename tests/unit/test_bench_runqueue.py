"""bench's run-queue wait: how long a component was ready to run but waited for a CPU, reported next to its cores
and kept out of the CPU sums (cores_all, the control plane's floor)."""

from __future__ import annotations

import os
import threading

from bench.cores import RUNQ, cores_used
from bench.procstat import runqueue_wait_s, thread_waits_s


def test_wait_is_reported_apart_and_kept_out_of_the_cpu_sums() -> None:
    before = {"kube-apiserver": 10.0, "vkprovider": 5.0, RUNQ + "kube-apiserver": 1.0, RUNQ + "vkprovider": 2.0}
    after = {"kube-apiserver": 30.0, "vkprovider": 11.0, RUNQ + "kube-apiserver": 9.0, RUNQ + "vkprovider": 14.0}
    used = cores_used(before, after, 10.0)
    assert used["cores_kube-apiserver"] == 2.0 and used["cores_vkprovider"] == 0.6
    assert used["cores_all"] == 2.6  # CPU only: waiting is not using
    assert used["control_plane_cpu_s"] == 20.0 and used["cores_control_plane"] == 2.0
    assert used["runq_wait_kube-apiserver"] == 0.8 and used["runq_wait_vkprovider"] == 1.2
    assert not any(k.startswith("cores_runq") for k in used)


def test_sums_the_wait_of_every_thread_of_a_live_process() -> None:
    stop = threading.Event()
    helper = threading.Thread(target=stop.wait)
    helper.start()
    try:
        first = thread_waits_s(os.getpid())
        total = runqueue_wait_s(os.getpid())
        second = thread_waits_s(os.getpid())
    finally:
        stop.set()
        helper.join()
    assert threading.get_native_id() in first and helper.native_id in first  # every live thread, not only the main
    assert total >= first[threading.get_native_id()] + first[helper.native_id]
    assert all(second[tid] >= first[tid] for tid in first.keys() & second.keys())  # each thread's wait only grows


def test_a_thread_that_ended_is_no_negative_wait() -> None:
    before = {"vkprovider": 5.0, RUNQ + "vkprovider": 3.0}
    after = {"vkprovider": 6.0, RUNQ + "vkprovider": 2.5}  # a thread with 0.5 s+ of wait ended in between
    assert cores_used(before, after, 10.0)["runq_wait_vkprovider"] == 0.0


def test_pinning_a_process_moves_every_one_of_its_threads() -> None:
    import os
    import threading

    from bench.cores import pin_threads

    allowed = os.sched_getaffinity(0)
    stop = threading.Event()
    worker = threading.Thread(target=stop.wait)
    worker.start()
    try:
        one = {min(allowed)}
        pin_threads(os.getpid(), one)
        assert worker.native_id is not None
        assert os.sched_getaffinity(worker.native_id) == one and os.sched_getaffinity(0) == one
    finally:
        pin_threads(os.getpid(), allowed)
        stop.set()
        worker.join()
    assert os.sched_getaffinity(0) == allowed
