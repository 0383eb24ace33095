"""Skipping unchanged copy chunks at sleep, through the Python API, on the
host backend: the instance option and the per-tag one, stats()["bytes_skipped"],
and bit-exact content after every wake (no GPU, no PyTorch)."""

import os

import pytest
from conftest import pattern

import cumem

MiB = 1 << 20


def cycle(inst, offload):
    inst.sleep(offload_tags=offload)
    skipped = {t: inst.stats(t)["bytes_skipped"] for t in inst.tags()}
    inst.wake()
    return skipped


def test_option_skips_unchanged_and_copies_what_changed():
    inst = cumem.Instance(backend="host", skip_unchanged=True, copy_chunk=MiB)
    try:
        p = inst.alloc(4 * MiB, tag="w")
        data = bytearray(pattern(4 * MiB, seed=5))
        inst.copy_to_device(p, bytes(data))
        assert cycle(inst, "w")["w"] == 0  # first sleep: nothing to compare with
        assert cycle(inst, "w")["w"] == 4 * MiB  # unchanged: nothing copied
        assert inst.copy_to_host(p, len(data)) == data
        data[3 * MiB] ^= 0xFF  # one byte, at the start of the last chunk
        inst.copy_to_device(p + 3 * MiB, bytes(data[3 * MiB : 3 * MiB + 1]))
        assert cycle(inst, "w")["w"] == 3 * MiB
        assert inst.copy_to_host(p, len(data)) == data
        assert inst.stats()["bytes_skipped"] == 0  # only while asleep
        inst.free(p)
    finally:
        inst.close()


@pytest.mark.parametrize("instance_option", [False, True])
def test_tag_option_overrides_the_instance(instance_option):
    inst = cumem.Instance(backend="host", skip_unchanged=instance_option, copy_chunk=MiB)
    try:
        inst.set_tag_options("tagged", skip_unchanged=not instance_option)
        assert inst.tag_options("tagged")["skip_unchanged"] == int(not instance_option)
        a = inst.alloc(2 * MiB, tag="tagged")
        b = inst.alloc(2 * MiB, tag="plain")
        inst.copy_to_device(a, pattern(2 * MiB, seed=1))
        inst.copy_to_device(b, pattern(2 * MiB, seed=2))
        cycle(inst, ["tagged", "plain"])
        skipped = cycle(inst, ["tagged", "plain"])
        assert skipped["tagged"] == (0 if instance_option else 2 * MiB)
        assert skipped["plain"] == (2 * MiB if instance_option else 0)
        inst.set_tag_options("tagged", skip_unchanged=-1)  # follow the instance again
        # Its backup was written without fingerprints: the first sleep that
        # skips records them, the next one can skip.
        after = [cycle(inst, ["tagged", "plain"])["tagged"] for _ in range(2)]
        assert after == ([0, 2 * MiB] if instance_option else [0, 0])
        assert inst.copy_to_host(a, 2 * MiB) == pattern(2 * MiB, seed=1)
        assert inst.copy_to_host(b, 2 * MiB) == pattern(2 * MiB, seed=2)
    finally:
        inst.close()


def test_environment_sets_the_instance_option(monkeypatch):
    monkeypatch.setenv("CUMEM_SKIP_UNCHANGED", "1")
    inst = cumem.Instance(backend="host", copy_chunk=MiB)
    try:
        p = inst.alloc(2 * MiB, tag="w")
        inst.copy_to_device(p, pattern(2 * MiB, seed=3))
        cycle(inst, "w")
        assert cycle(inst, "w")["w"] == 2 * MiB
    finally:
        inst.close()
    assert os.environ["CUMEM_SKIP_UNCHANGED"] == "1"
