"""The native API (cumem.pool / sleep / wake / stats) on a GPU with PyTorch."""

import pytest
from conftest import GiB, capture, free_gpu_bytes, release_torch_cache, requires_cuda, take_gpu_memory_leaving

pytestmark = requires_cuda

MiB = 1 << 20
W, K = "native-weights", "native-kv"


@pytest.fixture
def cm():
    import cumem

    assert cumem.backend() == "cuda"
    yield cumem
    known = set(cumem.tags())
    mine = [t for t in known if t.startswith("native-")]
    if mine:
        cumem.wake(mine)
    release_torch_cache()


def test_sleep_wake_keeps_pointers_and_frees_memory(cm):
    import torch

    with cm.pool(W):
        w = torch.randn(64 * MiB, device="cuda")
    with cm.pool(K):
        kv = torch.full((128 * MiB,), 3.0, device="cuda")
    expected = w.cpu()
    pw, pkv = w.data_ptr(), kv.data_ptr()
    assert cm.query(pw)["tag"] == W and cm.query(pkv)["tag"] == K

    before = free_gpu_bytes()
    cm.sleep([W, K], offload_tags=[W])
    assert free_gpu_bytes() - before >= 0.95 * (w.nbytes + kv.nbytes)
    s = cm.stats_by_tag()
    assert s[W]["bytes_backed_up"] == s[W]["bytes_allocated"] and s[K]["bytes_backed_up"] == 0
    cm.wake([W, K])
    assert w.data_ptr() == pw and kv.data_ptr() == pkv
    assert torch.equal(w.cpu(), expected)
    kv.fill_(1.0)
    assert kv.sum().item() == kv.numel()


def test_prepared_backup_makes_the_first_sleep_copy_only(cm):
    import torch

    with cm.pool(W):
        w = torch.randn(64 * MiB, device="cuda")
    expected = w.cpu()
    cm.prepare_backup(W)
    assert cm.stats(W)["bytes_host_held"] >= w.nbytes
    cm.sleep(W, W)
    cm.wake(W, retain_backup=False)
    assert torch.equal(w.cpu(), expected)
    cm.drain()  # the backup goes back in the background, after wake returns
    assert cm.stats(W)["bytes_host_held"] == 0


def test_cuda_graph_replays_after_wake(cm):
    import torch

    with cm.pool(W):
        w = torch.randn(1024, 1024, device="cuda")
        x = torch.randn(1024, 1024, device="cuda")
    g, y = capture(lambda: x @ w)
    g.replay()
    ref = y.clone()
    cm.sleep(W, W)
    cm.wake(W)
    y.zero_()
    g.replay()
    torch.cuda.synchronize()
    assert torch.equal(y, ref)


def test_tags_sleep_and_wake_independently(cm):
    import torch

    with cm.pool("native-a"):
        a = torch.full((1 << 20,), 1.0, device="cuda")
    with cm.pool("native-b"):
        b = torch.full((1 << 20,), 2.0, device="cuda")
    cm.sleep("native-a", "native-a")
    assert b.sum().item() == 2 * b.numel()
    cm.sleep("native-b", "native-b")
    cm.wake("native-b")
    assert b.sum().item() == 2 * b.numel()
    assert cm.stats("native-a")["bytes_asleep"] > 0
    cm.wake("native-a")
    assert a.sum().item() == a.numel()


def test_free_while_asleep(cm):
    import torch

    with cm.pool("native-scratch"):
        t = torch.ones(64 * MiB, device="cuda")
    live = cm.stats("native-scratch")["allocations"]
    cm.sleep("native-scratch")
    del t
    cm.empty_cache()  # PyTorch gives the block back: cumem frees it asleep
    assert cm.stats("native-scratch")["allocations"] == live - 1


def test_out_of_memory_wake_raises_and_loses_nothing(cm):
    import torch

    with cm.pool(W):
        w = torch.randint(0, 255, (GiB,), dtype=torch.uint8, device="cuda")
    expected = w.cpu()
    cm.sleep(W, W)
    hog = take_gpu_memory_leaving(w.nbytes // 2)
    with pytest.raises(cm.CumemOutOfMemoryError) as e:
        cm.wake(W)
    assert isinstance(e.value, RuntimeError) and e.value.code == cm._C.ENOMEM
    s = cm.stats(W)
    assert s["bytes_asleep"] == s["bytes_allocated"] == s["bytes_backed_up"]
    del hog
    release_torch_cache()
    cm.wake(W)
    assert torch.equal(w.cpu(), expected)


def test_skip_unchanged_copies_only_changed_chunks_and_restores_them(cm):
    import torch

    T = "native-skip"
    cm.default().set_tag_options(T, skip_unchanged=True)
    with cm.pool(T):
        w = torch.randn(48 * MiB, device="cuda")  # 192 MiB: several 64 MiB copy chunks
    expected = w.cpu()
    cm.sleep(T, T)  # the first sleep records the fingerprints
    cm.wake(T)
    cm.sleep(T, T)
    s = cm.stats(T)
    assert s["bytes_backed_up"] >= w.nbytes and s["bytes_skipped"] == s["bytes_backed_up"]
    cm.wake(T)
    assert torch.equal(w.cpu(), expected)
    w[7] += 1.0  # first chunk
    w[-1] = -7.0  # last chunk
    expected[7] += 1.0
    expected[-1] = -7.0
    cm.sleep(T, T)
    s = cm.stats(T)
    assert 0 < s["bytes_skipped"] < s["bytes_backed_up"]
    cm.wake(T)
    assert torch.equal(w.cpu(), expected)
