"""Ratios, targets, and the outputs: results.json, results.md, results.png."""

from __future__ import annotations

import json
import math
import re
from pathlib import Path

from . import bandwidth

SMALL = (1_000, 10_000)

ORDER = ["numpy", "shmpool_zero_copy", "shmpool_copy", "mp_pool", "process_pool_executor", "joblib",
         "grpc", "go_shmpool_buffer", "go_shmpool", "go_grpc", "shmpool_serve_python", "shmpool_kernel"]


def _ordered(methods: dict) -> list[dict]:
    keys = [k for k in ORDER if k in methods] + [k for k in methods if k not in ORDER]
    return [methods[k] for k in keys]


def _t(methods, key, n, field="median_s"):
    s = methods.get(key, {}).get("sizes", {}).get(str(n), {})
    v = s.get(field)
    return v if isinstance(v, (int, float)) and math.isfinite(v) else None


# -- derived numbers and targets ----------------------------------------------------------

def add_derived(doc: dict) -> None:
    methods = doc["methods"]
    bw = (doc.get("bandwidth") or {}).get("gb_s")
    doc["floor"] = {}
    for n in doc["sizes"]:
        base = _t(methods, "numpy", n)
        floor = bandwidth.floor_seconds(n, bw) if bw else None
        if floor:
            doc["floor"][str(n)] = {"floor_s": floor, "elements_per_s": n / floor,
                                    "gb_per_s": 8 * n / floor / 1e9}
        for m in methods.values():
            s = m["sizes"].get(str(n))
            if not s or "median_s" not in s:
                continue
            if base:
                s["ratio_vs_numpy"] = s["median_s"] / base          # time / numpy's time
                s["speedup_vs_numpy"] = base / s["median_s"]
            if floor:
                s["ratio_vs_floor"] = s["median_s"] / floor
    doc["targets"] = targets(doc)


def _target(tid, text, measured, met, detail=""):
    return {"id": tid, "target": text, "measured": measured, "met": met, "detail": detail}


def _missing(doc, pairs) -> str:
    """Why a target could not be evaluated."""
    why = []
    for key, n in pairs:
        m = doc["methods"].get(key)
        if m is None:
            why.append(f"{key}: not run")
            continue
        s = m["sizes"].get(str(n), {})
        if n not in doc["sizes"]:
            why.append(f"n={n:,} not in this run (--quick or --max-size)")
        elif not m.get("available") and m.get("reason"):
            why.append(f"{m['label']}: {m['reason']}")
        elif "median_s" not in s:
            why.append(f"{m['label']} at n={n:,}: {s.get('error') or s.get('skipped') or 'no timing'}")
    return "; ".join(dict.fromkeys(why)) or "not measured"


def targets(doc: dict) -> list[dict]:
    M = doc["methods"]
    out = []
    # 1,000 floats
    sh, np_, mp, gr = (_t(M, k, 1000) for k in ("shmpool_copy", "numpy", "mp_pool", "grpc"))
    zc = _t(M, "shmpool_zero_copy", 1000)
    zc_note = f"; zero-copy path p50 {fmt_t(zc)}" if zc else ""
    if sh and np_:
        r = sh / np_
        out.append(_target("n1e3_vs_numpy", "1,000 floats: shmpool p50 round trip <= 2.5x in-process numpy",
                           f"{r:.2f}x (shmpool {fmt_t(sh)} vs numpy {fmt_t(np_)})", r <= 2.5,
                           "shmpool = Pool.detect on an ordinary ndarray (copy-in)" + zc_note))
    else:
        out.append(_target("n1e3_vs_numpy", "1,000 floats: shmpool p50 round trip <= 2.5x in-process numpy",
                           "not measured", None, _missing(doc, [("shmpool_copy", 1000), ("numpy", 1000)])))
    if sh and mp:
        r = mp / sh
        out.append(_target("n1e3_vs_mp", "1,000 floats: shmpool >= 4x faster than multiprocessing.Pool",
                           f"{r:.1f}x faster (mp.Pool {fmt_t(mp)} vs shmpool {fmt_t(sh)})", r >= 4.0))
    else:
        out.append(_target("n1e3_vs_mp", "1,000 floats: shmpool >= 4x faster than multiprocessing.Pool",
                           "not measured", None, _missing(doc, [("shmpool_copy", 1000), ("mp_pool", 1000)])))
    if sh and gr:
        r = gr / sh
        out.append(_target("n1e3_vs_grpc", "1,000 floats: shmpool >= 8x faster than gRPC",
                           f"{r:.1f}x faster (gRPC {fmt_t(gr)} vs shmpool {fmt_t(sh)})", r >= 8.0))
    else:
        out.append(_target("n1e3_vs_grpc", "1,000 floats: shmpool >= 8x faster than gRPC",
                           "not measured", None, _missing(doc, [("shmpool_copy", 1000), ("grpc", 1000)])))
    # 10^7 floats
    n = 10**7
    zc, cp, np_ = (_t(M, k, n) for k in ("shmpool_zero_copy", "shmpool_copy", "numpy"))
    floor = (doc.get("floor") or {}).get(str(n), {}).get("floor_s")
    if zc and np_:
        r = np_ / zc
        out.append(_target("n1e7_zero_copy_vs_numpy", "10^7 floats, zero-copy: >= 3x faster than in-process numpy",
                           f"{r:.2f}x faster (shmpool {fmt_t(zc)} vs numpy {fmt_t(np_)})", r >= 3.0))
    else:
        out.append(_target("n1e7_zero_copy_vs_numpy", "10^7 floats, zero-copy: >= 3x faster than in-process numpy",
                           "not measured", None, _missing(doc, [("shmpool_zero_copy", n), ("numpy", n)])))
    if zc and floor:
        r = zc / floor
        out.append(_target("n1e7_zero_copy_vs_floor", "10^7 floats, zero-copy: within 2x of the two-pass bandwidth floor",
                           f"{r:.2f}x the floor (shmpool {fmt_t(zc)} vs floor {fmt_t(floor)} at "
                           f"{doc['bandwidth']['gb_s']:.1f} GB/s)", r <= 2.0))
    else:
        out.append(_target("n1e7_zero_copy_vs_floor", "10^7 floats, zero-copy: within 2x of the two-pass bandwidth floor",
                           "not measured", None,
                           _missing(doc, [("shmpool_zero_copy", n)]) if not zc else "bandwidth not measured"))
    if cp and np_:
        r = np_ / cp
        out.append(_target("n1e7_copy_vs_numpy", "10^7 floats, copy-in: >= 1.5x faster than in-process numpy",
                           f"{r:.2f}x faster (shmpool {fmt_t(cp)} vs numpy {fmt_t(np_)})", r >= 1.5))
    else:
        out.append(_target("n1e7_copy_vs_numpy", "10^7 floats, copy-in: >= 1.5x faster than in-process numpy",
                           "not measured", None, _missing(doc, [("shmpool_copy", n), ("numpy", n)])))
    # Go
    gs, gg = _t(M, "go_shmpool", 1000), _t(M, "go_grpc", 1000)
    gb = _t(M, "go_shmpool_buffer", 1000)
    if gs and gg:
        r = gg / gs
        out.append(_target("go_n1e3_vs_grpc", "Go host, 1,000 floats: >= 20x lower round trip than Go -> gRPC -> Python",
                           f"{r:.1f}x lower (Go gRPC {fmt_t(gg)} vs Go shmpool {fmt_t(gs)})", r >= 20.0,
                           "Go shmpool = client.Detect (copy-in)"
                           + (f"; DetectBuffer (zero-copy) p50 {fmt_t(gb)}, {gg / gb:.1f}x lower" if gb else "")))
    else:
        out.append(_target("go_n1e3_vs_grpc", "Go host, 1,000 floats: >= 20x lower round trip than Go -> gRPC -> Python",
                           "not measured", None, _missing(doc, [("go_shmpool", 1000), ("go_grpc", 1000)])))
    return out


def targets_text(doc: dict) -> str:
    lines = ["Targets:"]
    for t in doc.get("targets", []):
        lines.append(f"  [{verdict(t['met'])}] {t['target']}: {t['measured']}"
                     + (f" ({t['detail']})" if t.get("detail") and t["met"] is None else ""))
    return "\n".join(lines)


def verdict(met) -> str:
    return "MET" if met is True else "NOT MET" if met is False else "NOT MEASURED"


# -- formatting ---------------------------------------------------------------------------

def fmt_t(s) -> str:
    if s is None:
        return "-"
    if s < 1e-3:
        return f"{s * 1e6:.1f} µs"
    if s < 1:
        return f"{s * 1e3:.2f} ms"
    return f"{s:.2f} s"


def fmt_cache(text: str) -> str:
    """'266240K' (sysfs) -> '260 MiB'."""
    if text and text.endswith("K") and text[:-1].isdigit():
        k = int(text[:-1])
        return f"{k // 1024} MiB" if k >= 1024 else f"{k} KiB"
    return text or "?"


def fmt_rate(e) -> str:
    for unit, f in (("G", 1e9), ("M", 1e6), ("k", 1e3)):
        if e >= f:
            return f"{e / f:.2f} {unit}"
    return f"{e:.0f}"


def fmt_ratio(s: dict, key: str = "") -> str:
    r = s.get("ratio_vs_numpy")
    if r is None:
        return "-"
    if key == "numpy":
        return "1 (reference)"
    if r < 1:
        return f"{r:.2f} ({1 / r:.1f}x faster)"
    return f"{r:.2f} ({r:.1f}x slower)"


def _status(s: dict) -> str:
    if s.get("correct") is True:
        return "ok"
    if s.get("correct") is False:
        return "FAILED"
    return "-"


def _pool_cost(pool_s: float, kernel_s: float) -> str:
    d = pool_s - kernel_s
    if abs(d) <= 0.05 * kernel_s:
        return (f"`pool.detect` measured alone ({fmt_t(pool_s)}) is within 5 % of this: the pool's own "
                f"cost (requests, wake-ups, combining the statistics) is lost in the noise; the time is "
                f"the kernel's.")
    return (f"`pool.detect` measured alone ({fmt_t(pool_s)}) adds {fmt_t(d)} to this: the pool's own cost "
            f"(requests, wake-ups, combining the statistics)." if d > 0 else
            f"`pool.detect` measured alone ({fmt_t(pool_s)}) was {fmt_t(-d)} faster than this (noise "
            f"between the two measurements); the time is the kernel's.")


def _cell(text) -> str:
    """One line of Markdown, safe inside a table cell."""
    return " ".join(str(text).split()).replace("|", "\\|")


def _why(m: dict, s: dict) -> str:
    return _cell(s.get("error") or s.get("skipped") or (m.get("reason") if not m.get("available") else "")
                 or "not run")


def markdown(doc: dict) -> str:
    meta, bw, M = doc["meta"], doc.get("bandwidth") or {}, doc["methods"]
    v = meta["versions"]
    L = []
    L.append("# shmpool benchmark: every way to run the classic detector")
    L.append("")
    if meta.get("interrupted"):
        L.append("**This run was interrupted: the results below are partial.**")
        L.append("")
    L.append(f"- **Date (UTC):** {meta['date']} · **mode:** {meta['mode']} · **run time:** "
             f"{meta.get('duration_s', 0):.0f} s · **command:** "
             f"`{' '.join(['python -m benchmarks.run', *meta['argv'][1:]])}`")
    L.append(f"- **Machine:** {meta['cpu_model']}, {meta['cores']} cores usable "
             f"(os.cpu_count() = {meta['cpu_count']}), L3 {fmt_cache(meta['l3_cache'])}, "
             f"{meta['ram_total_gb']:.1f} GB RAM ({meta['ram_available_gb']:.1f} GB available at start), "
             f"/dev/shm {meta['dev_shm_free_gb']:.1f} GB free; {meta['platform']}")
    if meta.get("loadavg_start"):
        la0, la1 = meta["loadavg_start"], meta.get("loadavg_end") or meta["loadavg_start"]
        L.append(f"- **Load average** (1/5/15 min) at start {la0[0]:.2f} / {la0[1]:.2f} / {la0[2]:.2f}, at end "
                 f"{la1[0]:.2f} / {la1[1]:.2f} / {la1[2]:.2f} (on {meta['cores']} cores; other processes' "
                 f"load inflates every row, small calls most)")
    L.append(f"- **Software:** Python {v['python']}, numpy {v['numpy']}, grpcio {v.get('grpc')}, "
             f"joblib {v.get('joblib')}, shmpool {v.get('shmpool')} (commit {meta.get('git_commit') or '?'}"
             + (f" plus uncommitted changes to {', '.join(meta['git_uncommitted'][:6])}"
                + (" ..." if len(meta["git_uncommitted"]) > 6 else "") if meta.get("git_uncommitted") else "")
             + ")"
             + (f", {meta['go_version']}" if meta.get("go_version") else ""))
    L.append(f"- **Workers:** {doc['settings']['workers']} (= cores) for every pool and server. Every method "
             f"gets the same array per size (standard normal, seeded, 3 planted outliers).")
    sched = ", ".join(f"10^{int(math.log10(int(n)))}: {s['warmup']} warm-up + {s['rounds']} rounds x "
                      f"{s['calls']} (budget {s['budget_s']:.0f} s)"
                      for n, s in doc["settings"]["schedule"].items())
    L.append(f"- **Timing:** warm pools and servers; each method's answer is checked against numpy's "
             f"before it is timed; then warm-up calls, then rounds in which the methods take turns "
             f"(order rotating) timing each call alone (perf_counter_ns, gc off). Medians over all timed "
             f"calls. Calls per size: {sched}; a method stops its rounds at a size once its timed calls "
             f"there have used the budget. "
             f"**vs numpy** = time / numpy's time in this run (below 1 is faster).")
    L.append("")

    L.append("## Targets")
    L.append("")
    L.append("| target | measured | result |")
    L.append("|---|---|---|")
    for t in doc.get("targets", []):
        meas = _cell(t["measured"] + (f" — {t['detail']}" if t.get("detail") else ""))
        L.append(f"| {t['target']} | {meas} | **{verdict(t['met'])}** |")
    L.append("")

    small = [n for n in doc["sizes"] if n in SMALL]
    large = [n for n in doc["sizes"] if n not in SMALL]
    if small:
        L.append("## Latency per call, small arrays")
        L.append("")
        L.append("| n | method | p50 | p99 | vs numpy (p50) | calls | check |")
        L.append("|---:|---|---:|---:|---:|---:|---|")
        for n in small:
            for m in _ordered(M):
                s = m["sizes"].get(str(n), {})
                if "median_s" in s:
                    L.append(f"| {n:,} | {m['label']} | {fmt_t(s['p50_s'])} | {fmt_t(s['p99_s'])} | "
                             f"{fmt_ratio(s, m['key'])} | {s['calls']} | {_status(s)} |")
                else:
                    L.append(f"| {n:,} | {m['label']} | - | - | - | - | {_status(s)}: {_why(m, s)} |")
        L.append("")
    if large:
        L.append("## Throughput, large arrays")
        L.append("")
        L.append("| n | method | median per call | elements/s | GB/s of input | vs numpy | calls | check |")
        L.append("|---:|---|---:|---:|---:|---:|---:|---|")
        for n in large:
            f = doc.get("floor", {}).get(str(n))
            if f:
                L.append(f"| {n:,} | *two-pass bandwidth floor* | *{fmt_t(f['floor_s'])}* | "
                         f"*{fmt_rate(f['elements_per_s'])}* | *{f['gb_per_s']:.2f}* | "
                         f"*{f['floor_s'] / _t(M, 'numpy', n):.3f}* | | |" if _t(M, "numpy", n) else
                         f"| {n:,} | *two-pass bandwidth floor* | *{fmt_t(f['floor_s'])}* | "
                         f"*{fmt_rate(f['elements_per_s'])}* | *{f['gb_per_s']:.2f}* | - | | |")
            for m in _ordered(M):
                s = m["sizes"].get(str(n), {})
                if "median_s" in s:
                    note = f" ({_cell(s['note'])})" if s.get("note") else ""
                    L.append(f"| {n:,} | {m['label']} | {fmt_t(s['median_s'])} | {fmt_rate(s['elements_per_s'])} | "
                             f"{s['gb_per_s']:.2f} | {fmt_ratio(s, m['key'])} | {s['calls']} | {_status(s)}{note} |")
                else:
                    L.append(f"| {n:,} | {m['label']} | - | - | - | - | - | {_status(s)}: {_why(m, s)} |")
        L.append("")

    L.append("## Physical floor")
    L.append("")
    if bw.get("gb_s"):
        ks = ", ".join(f"{k}: best {v['best_gb_s']:.1f}, median {v['median_gb_s']:.1f} GB/s"
                       for k, v in bw.get("kernels", {}).items())
        L.append(f"Measured multi-core read bandwidth: **{bw['gb_s']:.1f} GB/s** ({ks}).")
        L.append("")
        L.append(f"Method: {bw['method']} The classic detector must read its input at least twice (the "
                 f"mean and std need the whole array before any value can be flagged), so no method can "
                 f"beat the floor on data that does not stay in cache; inputs that fit in the last-level "
                 f"cache ({fmt_cache(meta['l3_cache'])}, shared with other tenants on a VM) can be read faster "
                 f"on the second pass.")
    else:
        L.append(f"Bandwidth measurement failed: {bw.get('error')}")
    L.append("")

    hs = doc.get("hotspots") or {}
    if hs:
        L.append("## Where shmpool's time goes")
        L.append("")
        if "error" in hs:
            L.append(f"Profiling failed: {hs['error']}")
        if "n1000_profile" in hs:
            sh = _t(M, "shmpool_copy", 1000)
            npr = _t(M, "numpy", 1000) or hs["n1000_numpy_s"]
            ker = _t(M, "shmpool_kernel", 1000) or hs["n1000_kernel_s"]
            L.append(f"**1,000 floats** (p50s of the rounds above, all under the same conditions): numpy "
                     f"one-liner {fmt_t(npr)}; shmpool's kernel in-process (what the worker computes) "
                     f"{fmt_t(ker)}; the pool round trip {fmt_t(sh)}, so about "
                     + (f"{fmt_t(sh - ker)} of each call is the transport and the bookkeeping around the "
                        f"kernel." if sh else "? (not measured).")
                     + f" Measured alone after the rounds: numpy {fmt_t(hs['n1000_numpy_s'])}, kernel "
                     f"{fmt_t(hs['n1000_kernel_s'])}, copying the input {fmt_t(hs['n1000_copy_s'])}.")
            L.append("")
            p = hs["n1000_profile"]
            L.append(f"Host-side cProfile over {p['calls']:,} calls ({p['note']}):")
            L.append("")
            L.append("| function | calls per detect | own time per detect | cumulative per detect |")
            L.append("|---|---:|---:|---:|")
            for r in p["top"][:10]:
                L.append(f"| `{r['function']}` | {r['calls_per_detect']:.2f} | "
                         f"{r['tottime_us_per_detect']:.2f} µs | {r['cumtime_us_per_detect']:.2f} µs |")
            L.append("")
        go_ping = doc.get("go_ping_ns")
        gs, sp = _t(M, "go_shmpool", 1000), _t(M, "shmpool_serve_python", 1000)
        if gs or sp:
            import statistics
            gp = statistics.median(go_ping) / 1e9 if go_ping else None
            pp = hs.get("serve_ping_python_s")
            L.append(f"**The `shmpool serve` path, 1,000 floats.** A request from another process crosses two "
                     f"hops: host -> server thread (SEQPACKET), then server thread -> worker (the pool's own "
                     f"socket pair), and back. PING round trip (server thread only, no worker): from Go "
                     f"{fmt_t(gp)}, from the Python client {fmt_t(pp)}. DETECT round trip: Go adapter "
                     f"`Detect` {fmt_t(gs)}, `DetectBuffer` {fmt_t(_t(M, 'go_shmpool_buffer', 1000))}, Python "
                     f"client via serve {fmt_t(sp)}, versus in-process `Pool.detect` (one hop) "
                     f"{fmt_t(_t(M, 'shmpool_copy', 1000))} and the kernel alone "
                     f"{fmt_t(hs.get('n1000_kernel_s'))}.")
            L.append("")
        if "big" in hs:
            b = hs["big"]
            n = b["n"]
            floor = doc.get("floor", {}).get(str(n), {}).get("floor_s")
            zc_run = _t(M, "shmpool_zero_copy", n)
            L.append(f"**{n:,} floats, zero-copy.** Measured above (methods taking turns): {fmt_t(zc_run)}; "
                     f"measured again alone after the rounds: {fmt_t(b['zero_copy_detect_s'])}"
                     + (f"; the two-pass floor: {fmt_t(floor)}." if floor else "."))
            L.append("")
            L.append(f"- One worker's share (half the array) on one core, alone, in this process: pass 1 "
                     f"`chunk_stats` {fmt_t(b['worker_stats_half_s'])}, pass 2 `chunk_threshold` "
                     f"{fmt_t(b['worker_threshold_half_s'])}, together {fmt_t(b['worker_kernel_half_s'])} "
                     f"(the whole kernel on one core: {fmt_t(b['kernel_full_1core_s'])}).")
            pk = doc.get("parallel_kernel") or {}
            if pk.get("n") == n:
                L.append(f"- The same two passes on {pk['processes']} processes at once over one shared "
                         f"array, with a barrier between the passes and no IPC at all (what the workers "
                         f"compute, without the pool): pass 1 {fmt_t(pk['pass1_s'])}, pass 2 "
                         f"{fmt_t(pk['pass2_s'])}, together **{fmt_t(pk['total_s'])}**"
                         + (f" = {pk['total_s'] / floor:.2f}x the floor" if floor else "")
                         + ". " + _pool_cost(b["zero_copy_detect_s"], pk["total_s"]))
            L.append(f"- The copy-in path adds about {fmt_t(b['copy_in_s'])}: np.copyto of the input into "
                     f"shared memory, on the calling thread.")
            L.append("")
            L.append("| host-side function (cProfile, zero-copy detect) | calls per detect | own time per detect |")
            L.append("|---|---:|---:|")
            for r in b["host_profile_top"]:
                L.append(f"| `{r['function']}` | {r['calls_per_detect']:.1f} | {r['tottime_ms_per_detect']:.2f} ms |")
            L.append("")

    L.append("## Methods")
    L.append("")
    for m in _ordered(M):
        extra = "" if m.get("available") else f" — **unavailable: {_cell(m.get('reason'))}**"
        L.append(f"- **{m['label']}** (`{m['key']}`): {m['how']}{extra}")
    if doc.get("size_skips"):
        L.append("")
        for n, why in doc["size_skips"].items():
            L.append(f"- n={int(n):,} skipped: {why}")
    errs = M.get("go_shmpool", {}).get("go_errors")
    if errs:
        L.append("")
        L.append("Go program errors: " + _cell("; ".join(errs)))
    if doc.get("leftover_segments"):
        L.append("")
        L.append(f"WARNING: segments left in /dev/shm after the run: {doc['leftover_segments']}")
    L.append("")
    L.append("Raw per-call latencies: `results.json`. Plot: `results.png`.")
    L.append("")
    return "\n".join(L)


def plot(doc: dict, path: Path) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    M = doc["methods"]
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(15, 6.5))
    styles = {"python": "-", "go": "--", "diagnostic": ":"}
    colors = {"numpy": "black", "shmpool_zero_copy": "tab:orange", "shmpool_copy": "tab:green",
              "mp_pool": "tab:red", "process_pool_executor": "tab:purple", "joblib": "tab:brown",
              "grpc": "tab:pink", "go_shmpool_buffer": "tab:orange", "go_shmpool": "tab:green",
              "go_grpc": "tab:pink", "shmpool_kernel": "tab:olive", "shmpool_serve_python": "tab:cyan"}
    for m in _ordered(M):
        pts = sorted((int(n), s["median_s"], s.get("ratio_vs_numpy")) for n, s in m["sizes"].items()
                     if "median_s" in s)
        if not pts:
            continue
        ns = [p[0] for p in pts]
        ls = styles.get(m["group"], "-")
        lw = 2.5 if m["key"].startswith("shmpool_") and m["group"] == "python" else 1.5
        c = colors.get(m["key"])
        ax1.plot(ns, [p[1] for p in pts], ls, color=c, marker="o", ms=4, lw=lw, label=m["label"])
        rs = [(p[0], p[2]) for p in pts if p[2]]
        if rs:
            ax2.plot([r[0] for r in rs], [r[1] for r in rs], ls, color=c, marker="o", ms=4, lw=lw,
                     label=m["label"])
    fl = sorted((int(n), f["floor_s"]) for n, f in (doc.get("floor") or {}).items())
    if fl:
        ax1.plot([f[0] for f in fl], [f[1] for f in fl], "-.", color="gray", lw=1.5,
                 label=f"two-pass floor ({doc['bandwidth']['gb_s']:.1f} GB/s)")
    ax1.set_xscale("log")
    ax1.set_yscale("log")
    ax1.set_xlabel("array size n (float64 values)")
    ax1.set_ylabel("time per call, median (s)")
    ax1.set_title("time per detection")
    ax1.grid(True, which="both", alpha=0.3)
    ax1.legend(fontsize=7.5, loc="upper left")
    ax2.set_xscale("log")
    ax2.set_yscale("log")
    ax2.axhline(1.0, color="k", lw=1)
    ax2.set_xlabel("array size n (float64 values)")
    ax2.set_ylabel("time / in-process numpy time (below 1 = faster)")
    ax2.set_title("relative to in-process numpy (same run)")
    ax2.grid(True, which="both", alpha=0.3)
    meta = doc["meta"]
    fig.suptitle(f"shmpool benchmark — {meta['cpu_model']}, {meta['cores']} cores, Python "
                 f"{meta['versions']['python']}, numpy {meta['versions']['numpy']}, {meta['date']}",
                 fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def write_all(doc: dict, out_dir: Path) -> list[Path]:
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = []
    p = out_dir / "results.json"
    text = json.dumps(doc, indent=1, default=str)
    # one line per list of numbers (the raw latencies), not one line per number
    text = re.sub(r"\[\s*(-?[\d.eE+-]+(?:,\s*-?[\d.eE+-]+)*)\s*\]",
                  lambda m: "[" + re.sub(r"\s+", "", m.group(1)) + "]", text)
    p.write_text(text + "\n")
    paths.append(p)
    p = out_dir / "results.md"
    p.write_text(markdown(doc))
    paths.append(p)
    p = out_dir / "results.png"
    try:
        plot(doc, p)
        paths.append(p)
    except Exception as e:  # noqa: BLE001 - the table and JSON still stand
        doc.setdefault("errors", []).append(f"plot failed: {type(e).__name__}: {e}")
    return paths
