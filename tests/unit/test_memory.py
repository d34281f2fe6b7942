"""The process gives freed heap memory back (issue 17: the RSS after a rollout stayed at its high-water mark)."""


def test_free_heap_memory_goes_back_to_the_system() -> None:
    """After a burst of medium-sized allocations (bodies, buffers: glibc's heap, not Python's arenas) is freed,
    the RSS stays at its high-water mark until the heap is trimmed."""
    from vkprovider.process import return_free_memory

    def rss_mb() -> float:
        with open("/proc/self/statm") as fh:
            return int(fh.read().split()[1]) * 4096 / 2**20

    keep = []
    burst = []
    for i in range(200_000):
        (keep if i % 50 == 0 else burst).append(bytes(1000 + i % 7))  # a few survivors pin the heap's top
    del burst
    before = rss_mb()
    assert return_free_memory() is True
    after = rss_mb()
    assert before - after > 50, (before, after)
    assert len(keep) == 4000
