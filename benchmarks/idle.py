"""Idle CPU: what a `shmpool serve` and a Python Pool cost while nobody calls them.

A fresh ``shmpool serve --workers 2`` and a fresh ``Pool(workers=2)`` each
answer one call (1,000 floats; the server's from a Python Client that stays
connected, so its worker keeps a connection and mapped segments), then
both are left alone for the measurement window.  The CPU time (user +
system, psutil ``cpu_times``) of every one of their processes is read at the
start and at the end of the window: the server, its zygote and its workers;
the pool's workers and the zygote that forked them.  Reported as % of one
core over the window.  The driver process (the pool's host, asleep in
``time.sleep``) is reported beside them, for information.
"""

from __future__ import annotations

import os
import time

import numpy as np
import psutil

from . import go_bench


def _schedstat_ns(pid: int) -> int | None:
    """On-CPU time of all the process's threads in ns (/proc/PID/task/*/schedstat), finer than
    cpu_times' clock ticks."""
    total, seen = 0, False
    try:
        tids = os.listdir(f"/proc/{pid}/task")
    except OSError:
        return None
    for tid in tids:
        try:
            with open(f"/proc/{pid}/task/{tid}/schedstat") as f:
                total += int(f.read().split()[0])
                seen = True
        except (OSError, ValueError, IndexError):
            pass
    return total if seen else None


def _cpu(procs: dict[int, psutil.Process]) -> dict[int, tuple]:
    """pid -> (user + system s from cpu_times, schedstat ns or None, voluntary + involuntary
    context switches)."""
    out = {}
    for pid, p in procs.items():
        try:
            t = p.cpu_times()
            c = p.num_ctx_switches()
            out[pid] = (t.user + t.system, _schedstat_ns(pid), c.voluntary + c.involuntary)
        except psutil.Error:
            pass
    return out


def _tree(pid: int) -> dict[int, psutil.Process]:
    try:
        root = psutil.Process(pid)
    except psutil.Error:
        return {}
    procs = {pid: root}
    try:
        for c in root.children(recursive=True):
            procs[c.pid] = c
    except psutil.Error:
        pass
    return procs


def _role(p: psutil.Process, zygotes: set[int]) -> str:
    """Workers are forked by a zygote (and so share its command line)."""
    try:
        if p.ppid() in zygotes:
            return "worker"
        cmd = " ".join(p.cmdline())
    except psutil.Error:
        return "?"
    if "shmpool._backend.zygote" in cmd:
        return "zygote"
    if " serve " in f" {cmd} ":
        return "server"
    return "?"


def _safe_ppid(p: psutil.Process) -> int | None:
    try:
        return p.ppid()
    except psutil.Error:
        return None


def measure(tmpdir: str, seconds: float, workers: int = 2) -> dict:
    from shmpool import Pool
    from shmpool._backend.launch import zygote_pid
    from shmpool.client import Client

    x = np.random.default_rng(7).standard_normal(1000)
    serve = go_bench.Serve(tmpdir, workers, detectors=["classic"], name="idle")
    pool = client = None
    try:
        serve.start()
        if not serve.available:
            return {"error": f"`shmpool serve` did not start: {serve.reason}", "seconds": seconds}
        client = Client(serve.socket, timeout=60.0)
        client.detect(x)
        pool = Pool(workers=workers)
        pool.detect(x)
        server_procs = _tree(serve.server.pid)
        zpid = zygote_pid()
        pool_procs = {pid: psutil.Process(pid) for pid in pool.worker_pids()}
        if zpid is not None:
            pool_procs[zpid] = psutil.Process(zpid)
        me = psutil.Process(os.getpid())
        time.sleep(0.5)                                   # let the calls' after-effects settle
        t0 = time.monotonic()
        c0 = {"server": _cpu(server_procs), "pool": _cpu(pool_procs), "host": _cpu({me.pid: me})}
        time.sleep(seconds)
        c1 = {"server": _cpu(server_procs), "pool": _cpu(pool_procs), "host": _cpu({me.pid: me})}
        wall = time.monotonic() - t0
        out = {"seconds": wall, "workers": workers,
               "method": ("psutil cpu_times (user + system; clock-tick resolution, 10 ms per process) "
                          "delta over the window, summed over the processes; schedstat: the threads' "
                          "on-CPU ns from /proc/PID/task/*/schedstat; wakeups: context switches")}
        zygotes = {zpid} if zpid is not None else set()
        zygotes |= {pid for pid, p in server_procs.items() if pid != serve.server.pid
                    and _safe_ppid(p) == serve.server.pid}
        for side, procs in (("server", server_procs), ("pool", pool_procs), ("host", {me.pid: me})):
            rows = []
            for pid, p in procs.items():
                role = "driver (pool's host)" if side == "host" else _role(p, zygotes)
                if pid in c0[side] and pid in c1[side]:
                    (a0, s0, w0), (a1, s1, w1) = c0[side][pid], c1[side][pid]
                    rows.append({"pid": pid, "role": role, "cpu_s": a1 - a0,
                                 "schedstat_s": ((s1 - s0) / 1e9 if s0 is not None and s1 is not None
                                                 else None),
                                 "wakeups": w1 - w0})
                else:
                    rows.append({"pid": pid, "role": role, "cpu_s": None, "note": "exited during the window"})
            total = sum(r["cpu_s"] or 0.0 for r in rows)
            sched = [r.get("schedstat_s") for r in rows]
            out[side] = {"cpu_s": total, "percent_of_core": 100.0 * total / wall,
                         "schedstat_s": sum(sched) if all(v is not None for v in sched) else None,
                         "wakeups": sum(r.get("wakeups") or 0 for r in rows),
                         "exited": sum(1 for r in rows if r["cpu_s"] is None), "processes": rows}
            if out[side]["schedstat_s"] is not None:
                out[side]["schedstat_percent_of_core"] = 100.0 * out[side]["schedstat_s"] / wall
        return out
    except Exception as e:  # noqa: BLE001 - reported, not fatal
        return {"error": f"{type(e).__name__}: {e}", "seconds": seconds}
    finally:
        if client is not None:
            client.close()
        if pool is not None:
            pool.close()
        serve.stop()
