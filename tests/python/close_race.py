"""close() racing other threads' calls (issue 13, items 2 and 3), as a
script: the old code crashed the interpreter here, so the tests run it in a
child process (python -c "import close_race; close_race.run(...)").

  1. A long offloading sleep runs in a thread: close() raises
     CumemError(EBUSY) until it is done (or, if the sleep had not begun,
     close() succeeds and the sleep gets ValueError); nothing is lost.
  2. Two workers allocate, sleep, wake and free until close() succeeds;
     each then gets ValueError ("closed"), never a crash.
Prints "OK busy=<refusals in 1> refused=<refusals in 2>" on success."""

import threading
import time

import cumem

MiB = 1 << 20


def close_while_a_sleep_runs(backend, big):
    inst = cumem.Instance(backend=backend)
    p = inst.alloc(big, tag="big")
    inst.memset(p, 7, big)
    inside, result = threading.Event(), {}

    def sleeper():
        inside.set()
        try:
            inst.sleep(offload_tags="big")
            result["ok"] = True
        except Exception as e:  # noqa: BLE001 (reported below)
            result["error"] = e

    t = threading.Thread(target=sleeper)
    t.start()
    inside.wait()
    time.sleep(0.01)  # the sleep is running, the GIL released
    busy, closed = 0, False
    while t.is_alive():
        try:
            inst.close()
            closed = True
            break
        except cumem.CumemError as e:
            assert e.code == cumem._C.EBUSY, e
            busy += 1
            time.sleep(0.001)
    t.join()
    if closed:  # only possible if the sleep had not begun: it is refused
        assert isinstance(result.get("error"), ValueError), result
        return busy
    assert result.get("ok"), result
    inst.wake()
    assert inst.copy_to_host(p + big // 2, 16) == bytes([7]) * 16
    inst.close()
    return busy


def close_while_workers_cycle(backend, size):
    inst = cumem.Instance(backend=backend)
    errors, closed = [], []

    def worker(i):
        tag = "t%d" % i
        while True:
            try:
                p = inst.alloc(size, tag=tag)
                inst.sleep([tag], [tag])
                inst.wake([tag])
                inst.stats(tag)
                inst.free(p)
                time.sleep(0.002)  # moments with no call in flight
            except ValueError as e:
                closed.append(str(e))
                return
            except Exception as e:  # noqa: BLE001
                errors.append(repr(e))
                return

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(2)]
    for t in threads:
        t.start()
    time.sleep(0.2)
    refused, deadline = 0, time.time() + 120
    while True:
        try:
            inst.close()
            break
        except cumem.CumemError as e:
            assert e.code == cumem._C.EBUSY, e
            assert time.time() < deadline, "close() refused for two minutes"
            refused += 1
            time.sleep(0.0002)
    for t in threads:
        t.join()
    assert not errors, errors
    assert len(closed) == 2 and all("closed" in c for c in closed), closed
    return refused


def run(backend, big, size):
    busy = 0
    for _ in range(5):  # until close() was tried while the sleep ran
        busy += close_while_a_sleep_runs(backend, big)
        if busy:
            break
    assert busy > 0, "close() was never attempted while the sleep ran"
    refused = close_while_workers_cycle(backend, size)
    print("OK busy=%d refused=%d" % (busy, refused))
