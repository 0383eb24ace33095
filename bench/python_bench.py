#!/usr/bin/env python3
"""Sleep and wake from Python, as users meet them: cumem's three APIs (and
vLLM's own CuMemAllocator where vLLM is installed) on one model-shaped
workload, each in its own process, timed around the call with
torch.cuda.synchronize() on both sides.

    PYTHONPATH=build/pylib python3 bench/python_bench.py [--weights-gib 16]
        [--kv-gib 32] [--cycles 3] [--apis a,b,...] [--json FILE] [--verbose]

The workload: Llama-3-8B-shaped bf16 weights (226 tensors scaled to
--weights-gib, random, from seeded generators) allocated in the API's
weights context and offloaded; a KV cache (--kv-gib, 32 blocks) in a context
without backup, discarded; a pass over the weights outside every pool (float
copies, as a checksum or a forward pass makes) so that PyTorch's own cache
holds blocks too; 4 GiB of host-to-device copies right after loading (the
"load work", timed: prepare-ahead pins meanwhile). Then --cycles sleep/wake
cycles. The weights are verified bit for bit at the end (generated again).

Printed per API: first sleep, later sleeps (median), wake (median), with
GB/s beside the pinned link measured in the same run; GiB freed by the
sleep (cudaMemGetInfo); what is left on the GPU and whose it is; for
retention off, how long after the wake the host memory (RSS) is back to
within 1% of the backup; for prepare-ahead, when the backup was pinned and
what the load work cost meanwhile. A short table comes last, with each
adapter against the native API (issue 9: within 5%).

APIs (--apis, comma-separated; default all that can run):
  vllm           vLLM's own CuMemAllocator (only if vLLM is importable)
  cumem-vllm     cumem.CuMemAllocator
  cumem-vllm-ahead  the same with prepare_ahead = ("weights",)
  tms-retained   cumem.torch_memory_saver, enable_cpu_backup for the weights,
                 retain_cpu_backup = True
  tms            the same with torch_memory_saver's default (not retained)
  tms-ahead      tms with prepare_ahead = True
  native         cumem.pool / cumem.sleep / cumem.wake
  native-ahead   cumem.pool("weights", prepare_ahead=True)
"""

import argparse
import contextlib
import json
import os
import statistics
import subprocess
import sys
import time

GiB = 1 << 30
MiB = 1 << 20
GRAN = 2 * MiB

# Llama-3-8B: per layer q, k, v, o, gate, up, down; then embedding and head.
LAYERS, HIDDEN, KV_DIM, FFN, VOCAB = 32, 4096, 1024, 14336, 128256
LAYER_SHAPES = [HIDDEN * HIDDEN, KV_DIM * HIDDEN, KV_DIM * HIDDEN, HIDDEN * HIDDEN,
                FFN * HIDDEN, FFN * HIDDEN, HIDDEN * FFN]
KV_BLOCKS = 32

APIS = ["vllm", "cumem-vllm", "cumem-vllm-ahead", "tms-retained", "tms", "tms-ahead", "native", "native-ahead"]


def weight_numels(total_bytes):
    full = 2 * VOCAB * HIDDEN + LAYERS * sum(LAYER_SHAPES)
    scale = total_bytes / (2 * full)
    numels = [VOCAB * HIDDEN]
    for _ in range(LAYERS):
        numels += LAYER_SHAPES
    numels.append(VOCAB * HIDDEN)
    return [max(1, int(n * scale)) for n in numels]


def rss_bytes():
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def log(msg):
    print(f"[python_bench] {msg}", file=sys.stderr, flush=True)


# ---- the child: one API ------------------------------------------------------


class Api:
    """What the benchmark needs of an API. `cumem_tag` is the cumem tag of
    the weights (None where the API is not cumem's)."""

    retained = True
    ahead = False
    cumem_tag = None

    def weights(self):
        raise NotImplementedError

    def kv(self):
        raise NotImplementedError

    def sleep(self):
        raise NotImplementedError

    def wake(self):
        raise NotImplementedError


class VllmApi(Api):
    def __init__(self, cls, ahead=False):
        self.a = cls.get_instance()
        if cls.__module__.startswith("cumem"):
            self.cumem_tag = "weights"
            self.a.prepare_ahead = ("weights",) if ahead else False  # not the environment's
            self.ahead = ahead

    def weights(self):
        return self.a.use_memory_pool(tag="weights")

    def kv(self):
        return self.a.use_memory_pool(tag="kv_cache")

    def sleep(self):
        self.a.sleep(offload_tags=("weights",))

    def wake(self):
        self.a.wake_up()


class TmsApi(Api):
    cumem_tag = "tms+cpu:weights"

    def __init__(self, retained, ahead=False):
        from cumem import torch_memory_saver

        self.t = torch_memory_saver
        self.t.retain_cpu_backup = retained
        self.t.prepare_ahead = True if ahead else False
        self.retained, self.ahead = retained, ahead

    def weights(self):
        return self.t.region("weights", enable_cpu_backup=True)

    def kv(self):
        return self.t.region("kv")

    def sleep(self):
        self.t.pause()

    def wake(self):
        self.t.resume()


class NativeApi(Api):
    cumem_tag = "weights"

    def __init__(self, ahead=False):
        import cumem

        self.c = cumem
        self.ahead = ahead

    def weights(self):
        return self.c.pool("weights", prepare_ahead=True if self.ahead else False)

    def kv(self):
        return self.c.pool("kv")

    def sleep(self):
        self.c.sleep(["weights", "kv"], offload_tags="weights")

    def wake(self):
        self.c.wake()


def make_api(name):
    if name == "vllm":
        from vllm.device_allocator.cumem import CuMemAllocator

        return VllmApi(CuMemAllocator)
    if name.startswith("cumem-vllm"):
        from cumem import CuMemAllocator

        return VllmApi(CuMemAllocator, ahead=name.endswith("ahead"))
    if name == "tms-retained":
        return TmsApi(retained=True)
    if name in ("tms", "tms-ahead"):
        return TmsApi(retained=False, ahead=name == "tms-ahead")
    if name in ("native", "native-ahead"):
        return NativeApi(ahead=name == "native-ahead")
    raise SystemExit(f"unknown API {name}")


def cumem_stats(tag=None):
    if "cumem" not in sys.modules:
        return None
    import cumem

    try:
        return cumem.stats(tag)
    except cumem.CumemError:
        return None


def gpu_breakdown(torch):
    """What is on the GPU now, and whose it is."""
    free, total = torch.cuda.mem_get_info()
    reserved = torch.cuda.memory_reserved()
    st = cumem_stats()
    d = {
        "gpu_used_gib": (total - free) / GiB,
        "torch_reserved_gib": reserved / GiB,
        "torch_allocated_gib": torch.cuda.memory_allocated() / GiB,
    }
    if st is not None:
        import cumem

        d["cumem_mapped_gib"] = st["bytes_mapped"] / GiB
        d["cumem_allocated_gib"] = st["bytes_allocated"] / GiB
        # PyTorch counts cumem's segments (asleep or not) as reserved: what
        # it reserves beyond them is its own default pool, made outside
        # every cumem pool (temporaries), cached until torch's empty_cache.
        d["torch_outside_cumem_gib"] = (reserved - st["bytes_allocated"]) / GiB
        d["cumem_mapped_by_tag_gib"] = {t: s["bytes_mapped"] / GiB for t, s in cumem.stats_by_tag().items()
                                        if s["bytes_mapped"]}
    return d


def wait_for(cond, limit):
    t0 = time.perf_counter()
    while time.perf_counter() - t0 < limit:
        if cond():
            return time.perf_counter() - t0
        time.sleep(0.001)
    return None


def run_child(name, args):
    import torch

    torch.cuda.init()
    torch.cuda.synchronize()
    api = make_api(name)
    numels = weight_numels(int(args.weights_gib * GiB))
    moved = sum((2 * n + GRAN - 1) // GRAN * GRAN for n in numels)

    def gen(i):
        return torch.Generator(device="cuda").manual_seed(1000 + i)

    log(f"{name}: loading {moved / GiB:.2f} GiB of weights")
    weights = []
    t_load = time.perf_counter()
    with api.weights():
        for i, n in enumerate(numels):
            weights.append(torch.randn(n, dtype=torch.bfloat16, device="cuda", generator=gen(i)))
    torch.cuda.synchronize()
    loaded = time.perf_counter()  # the weights' context exited: prepare-ahead starts now
    res = {"api": name, "weights_bytes": moved, "load_s": loaded - t_load, "retained": api.retained,
           "ahead": api.ahead}

    # Load work right after loading: host-to-device copies, as the next
    # shard (or model) would make; prepare-ahead pins meanwhile.
    src = torch.empty(256 * MiB, dtype=torch.uint8).fill_(7)
    dst = torch.empty(256 * MiB, dtype=torch.uint8, device="cuda")
    t0 = time.perf_counter()
    for _ in range(16):
        dst.copy_(src)
    torch.cuda.synchronize()
    res["load_work_s"] = time.perf_counter() - t0
    del src, dst

    kv_block = int(args.kv_gib * GiB) // KV_BLOCKS
    with api.kv():
        kv = [torch.empty(kv_block, dtype=torch.uint8, device="cuda") for _ in range(KV_BLOCKS)]
    # Outside every pool: float copies of the weights (a checksum, a forward
    # pass), freed into PyTorch's own cache.
    if not args.no_temporaries:
        for w in weights:
            w.float().sum()
    torch.cuda.synchronize()

    if api.ahead and api.cumem_tag:
        backup = cumem_stats(api.cumem_tag)["bytes_allocated"]  # what the sleep copies
        ready = wait_for(lambda: cumem_stats(api.cumem_tag)["bytes_host_pinned"] >= backup, 300)
        res["ahead_ready_s"] = None if ready is None else time.perf_counter() - loaded
        log(f"{name}: backup pinned in the background {res['ahead_ready_s']} s after loading")

    sleeps, wakes, freed, rss_back = [], [], [], []
    for c in range(args.cycles):
        held = (cumem_stats(api.cumem_tag) or {}).get("bytes_host_held", 0) if api.cumem_tag else 0
        rss_base = rss_bytes() - held  # without any backup
        torch.cuda.synchronize()
        free0 = torch.cuda.mem_get_info()[0]
        if c == 0:
            res["before_sleep"] = gpu_breakdown(torch)
        t0 = time.perf_counter()
        api.sleep()
        torch.cuda.synchronize()
        sleeps.append(time.perf_counter() - t0)
        freed.append((torch.cuda.mem_get_info()[0] - free0) / GiB)
        if c == 0:
            res["after_sleep"] = gpu_breakdown(torch)
        t0 = time.perf_counter()
        api.wake()
        torch.cuda.synchronize()
        woke = time.perf_counter()
        wakes.append(woke - t0)
        if not api.retained:
            target = rss_base + moved // 100
            rss_at = rss_bytes()
            back = wait_for(lambda: rss_bytes() <= target, 10)
            rss_back.append({"held_at_return_gib": max(0, rss_at - rss_base) / GiB,
                             "within_1pct_after_s": None if back is None else time.perf_counter() - woke})
        log(f"{name}: cycle {c}: sleep {sleeps[-1]:.3f} s, wake {wakes[-1]:.3f} s, freed {freed[-1]:.2f} GiB")
    res.update(sleeps=sleeps, wakes=wakes, freed_gib=freed, rss_back=rss_back)

    # Every weight, bit for bit (bf16 compared as int16).
    bad = 0
    for i, (w, n) in enumerate(zip(weights, numels)):
        ref = torch.randn(n, dtype=torch.bfloat16, device="cuda", generator=gen(i))
        bad += not torch.equal(w.view(torch.int16), ref.view(torch.int16))
        del ref
    res["verified"] = bad == 0
    res["bad_tensors"] = bad
    del kv
    return res


def run_link():
    """The pinned host link in this run: best of 3 passes of 2 GiB in 256 MiB
    copies, each way (pinned torch tensors)."""
    import torch

    n, piece = 2 * GiB, 256 * MiB
    host = torch.empty(n, dtype=torch.uint8, pin_memory=True)
    dev = torch.empty(n, dtype=torch.uint8, device="cuda")
    out = {}
    for direction in ("d2h", "h2d"):
        best = None
        for p in range(4):  # the first warms up
            torch.cuda.synchronize()
            t0 = time.perf_counter()
            for off in range(0, n, piece):
                if direction == "d2h":
                    host[off:off + piece].copy_(dev[off:off + piece], non_blocking=True)
                else:
                    dev[off:off + piece].copy_(host[off:off + piece], non_blocking=True)
            torch.cuda.synchronize()
            t = time.perf_counter() - t0
            if p and (best is None or t < best):
                best = t
        out[direction] = n / best / 1e9
    return out


# ---- the parent ----------------------------------------------------------------


def spawn(kind, args):
    """Run one child (`link` or an API) in its own process; its last stdout
    line is its JSON result."""
    cmd = [sys.executable, os.path.abspath(__file__), "--child", kind, "--weights-gib", str(args.weights_gib),
           "--kv-gib", str(args.kv_gib), "--cycles", str(args.cycles)]
    if args.no_temporaries:
        cmd.append("--no-temporaries")
    env = dict(os.environ)
    env.pop("CUMEM_PREPARE_AHEAD", None)  # each API row says whether it prepares ahead
    if args.verbose:
        env["CUMEM_VERBOSE"] = "1"
    p = subprocess.run(cmd, env=env, stdout=subprocess.PIPE, text=True)
    lines = [line for line in p.stdout.splitlines() if line.startswith("RESULT ")]
    if p.returncode or not lines:
        return {"api": kind, "error": f"exit {p.returncode}"}
    return json.loads(lines[-1][len("RESULT "):])


def gbps(nbytes, s):
    return nbytes / s / 1e9 if s else float("nan")


def fmt_s(nbytes, s):
    return f"{s:.3f} s ({gbps(nbytes, s):.1f} GB/s)"


def vllm_importable():
    try:
        import importlib.util

        return importlib.util.find_spec("vllm") is not None
    except (ImportError, ValueError):
        return False


def report(link, results):
    print(f"\nlink (pinned torch copies, 256 MiB): device->host {link['d2h']:.1f} GB/s, "
          f"host->device {link['h2d']:.1f} GB/s")
    native = next((r for r in results if r.get("api") == "native" and "error" not in r), None)
    for r in results:
        print(f"\n== {r['api']}")
        if "error" in r:
            print(f"  FAILED: {r['error']}")
            continue
        b = r["weights_bytes"]
        later = r["sleeps"][1:] or r["sleeps"]
        print(f"  first sleep {fmt_s(b, r['sleeps'][0])}; later sleeps (median) {fmt_s(b, statistics.median(later))}"
              f"; wake (median) {fmt_s(b, statistics.median(r['wakes']))}")
        print(f"  every sleep: {', '.join(f'{s:.3f}' for s in r['sleeps'])} s; every wake: "
              f"{', '.join(f'{s:.3f}' for s in r['wakes'])} s; GiB freed: "
              f"{', '.join(f'{g:.2f}' for g in r['freed_gib'])}")
        print(f"  loading {r['load_s']:.2f} s; load work (4 GiB of copies right after) {r['load_work_s']:.3f} s")
        if r.get("ahead"):
            print(f"  prepare-ahead: backup pinned {r.get('ahead_ready_s')} s after the weights were loaded")
        for k in ("before_sleep", "after_sleep"):
            if k in r:
                print(f"  on the GPU {k.replace('_', ' ')}: " + ", ".join(
                    f"{key} {v:.2f}" if isinstance(v, float) else f"{key} {v}" for key, v in r[k].items()))
        for i, rb in enumerate(r.get("rss_back", [])):
            after = rb["within_1pct_after_s"]
            print(f"  retention off, cycle {i}: host memory held when wake returned {rb['held_at_return_gib']:.2f} GiB"
                  f", within 1% of the backup {'never (10 s)' if after is None else f'{after * 1e3:.0f} ms'} after")
        verdict = "every weight bit-exact" if r["verified"] else f"FAILED, {r['bad_tensors']} tensors differ"
        print(f"  verified: {verdict}")

    print("\n| API | first sleep | later sleeps | wake | GiB freed | later sleep / native | wake / native | "
          "RSS back after wake | verified |")
    print("|---|---|---|---|---|---|---|---|---|")
    for r in results:
        if "error" in r:
            print(f"| {r['api']} | failed: {r['error']} | | | | | | | |")
            continue
        b = r["weights_bytes"]
        later = statistics.median(r["sleeps"][1:] or r["sleeps"])
        wake = statistics.median(r["wakes"])
        rel_s = rel_w = "–"
        if native:
            rel_s = f"{100 * later / statistics.median(native['sleeps'][1:] or native['sleeps']):.0f}%"
            rel_w = f"{100 * wake / statistics.median(native['wakes']):.0f}%"
        backs = [x["within_1pct_after_s"] for x in r.get("rss_back", [])]
        back = ("–" if not backs else "never" if None in backs else f"≤ {1e3 * max(backs):.0f} ms")
        print(f"| {r['api']} | {fmt_s(b, r['sleeps'][0])} | {fmt_s(b, later)} | {fmt_s(b, wake)} "
              f"| {min(r['freed_gib']):.2f} | {rel_s} | {rel_w} | {back} | {'yes' if r['verified'] else 'NO'} |")


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--weights-gib", type=float, default=16.0)
    ap.add_argument("--kv-gib", type=float, default=32.0)
    ap.add_argument("--cycles", type=int, default=3)
    ap.add_argument("--apis", default=None, help="comma-separated (default: all that can run)")
    ap.add_argument("--json", default=None, help="also write the results to this file")
    ap.add_argument("--verbose", action="store_true", help="CUMEM_VERBOSE=1 in the children (where time goes)")
    ap.add_argument("--no-temporaries", action="store_true", help="no float copies outside the pools")
    ap.add_argument("--child", default=None, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.cycles < 1:
        ap.error("--cycles must be >= 1")

    if args.child:
        res = run_link() if args.child == "link" else run_child(args.child, args)
        print("RESULT " + json.dumps(res), flush=True)
        return

    apis = args.apis.split(",") if args.apis else [a for a in APIS if a != "vllm" or vllm_importable()]
    log(f"weights {args.weights_gib} GiB, KV cache {args.kv_gib} GiB, {args.cycles} cycles; APIs: {', '.join(apis)}")
    link = spawn("link", args)
    if "error" in link:
        sys.exit(f"link measurement failed: {link['error']}")
    results = [spawn(api, args) for api in apis]
    report(link, results)
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"link": link, "results": results, "args": vars(args)}, f, indent=1)
    if any("error" in r or not r["verified"] for r in results):
        sys.exit(1)


if __name__ == "__main__":
    with contextlib.suppress(KeyboardInterrupt):
        main()
