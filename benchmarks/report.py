"""Ratios, targets, and the outputs: results.json, results.md, results.png."""

from __future__ import annotations

import json
import math
import re
import statistics
from pathlib import Path

from . import bandwidth

SMALL = (1_000, 10_000)

ORDER = ["numpy", "shmpool_zero_copy", "shmpool_copy", "mp_pool", "process_pool_executor", "joblib",
         "grpc", "ray", "plugin_split", "plugin_whole", "embed_nogil", "embed_gil", "go_shmpool",
         "go_shmpool_buffer", "go_numpy_detector", "go_grpc", "shmpool_serve_python", "shmpool_kernel"]

# every row its own colour and marker; the groups differ in line style
STYLE = {
    "numpy": ("black", "o"),
    "shmpool_zero_copy": ("#e6194b", "o"),
    "shmpool_copy": ("#3cb44b", "s"),
    "mp_pool": ("#4363d8", "^"),
    "process_pool_executor": ("#911eb4", "v"),
    "joblib": ("#9a6324", "<"),
    "grpc": ("#f032e6", ">"),
    "ray": ("#808000", "p"),
    "plugin_split": ("#469990", "h"),
    "plugin_whole": ("#000075", "H"),
    "shmpool_kernel": ("#a9a9a9", "x"),
    "shmpool_serve_python": ("#42d4f4", "+"),
    "go_shmpool": ("#f58231", "D"),
    "go_shmpool_buffer": ("#800000", "d"),
    "go_numpy_detector": ("#c8a000", "P"),
    "go_grpc": ("#ff8fa3", "X"),
    "embed_nogil": ("#7570b3", "*"),
    "embed_gil": ("#b07aa1", "8"),
}
EXTRA_COLOURS = ["#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b"]
LINESTYLE = {"python": "-", "plugin": "-", "diagnostic": ":", "go": "--", "embed": "-."}
FLOOR_STYLE = ("dimgray", (0, (6, 2, 1, 2, 1, 2)))

N_CONC = 1000
IDLE_LIMIT_PCT = 1.0


def _ordered(methods: dict) -> list[dict]:
    keys = [k for k in ORDER if k in methods] + [k for k in methods if k not in ORDER]
    return [methods[k] for k in keys]


def _t(methods, key, n, field="median_s"):
    s = methods.get(key, {}).get("sizes", {}).get(str(n), {})
    v = s.get(field)
    return v if isinstance(v, (int, float)) and math.isfinite(v) else None


def _label(doc, key) -> str:
    return doc["methods"].get(key, {}).get("label", key)


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
    doc["ratios"] = ratios(doc)


def _target(tid, bullet, text, measured, met, detail=""):
    return {"id": tid, "bullet": bullet, "target": text, "measured": measured, "met": met, "detail": detail}


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


def _ratio_target(doc, tid, bullet, text, num, den, n, limit, field="p50_s", extra=""):
    """A target 'num's time at n is at most limit x den's'."""
    M = doc["methods"]
    a, b = _t(M, num, n, field), _t(M, den, n, field)
    what = "p50" if field == "p50_s" else "median"
    if a and b:
        r = a / b
        return _target(tid, bullet, text, f"{r:.2f}x ({_label(doc, num)} {what} {fmt_t(a)} vs "
                       f"{_label(doc, den)} {fmt_t(b)})", r <= limit, extra)
    return _target(tid, bullet, text, "not measured", None, _missing(doc, [(num, n), (den, n)]))


def conc_rate(doc, key: str, goroutines: int):
    c = doc.get("concurrency") or {}
    row = (c.get("runs") or {}).get(key, {}).get(str(goroutines)) or {}
    v = row.get("calls_per_s")
    return v if isinstance(v, (int, float)) and v > 0 else None


def _conc_missing(doc, keys) -> str:
    c = doc.get("concurrency")
    if not c:
        return "; ".join(dict.fromkeys(_label(doc, k) + ": " + (doc["methods"].get(k, {}).get("reason") or
                                                                 "not run") for k in keys))
    errs = list(c.get("errors") or [])
    for k in keys:
        for row in (c.get("runs") or {}).get(k, {}).values():
            errs.extend(row.get("errors") or [])
    return "; ".join(dict.fromkeys(errs)) or "not measured"


def targets(doc: dict) -> list[dict]:
    M = doc["methods"]
    out = []
    # 1. Go Detect vs the embed, 1,000 floats
    gil = _t(M, "embed_gil", 1000, "p50_s")
    gs = _t(M, "go_shmpool", 1000, "p50_s")
    extra = []
    if gs and gil:
        extra.append(f"vs the GIL-taking embed ({fmt_t(gil)}): {gs / gil:.2f}x")
    if gs:
        extra.append(f"Go Detect p99 {fmt_t(_t(M, 'go_shmpool', 1000, 'p99_s'))}")
    t = _ratio_target(doc, "go_1e3_vs_embed", 1,
                      "Go Detect, 1,000 floats: p50 at most 1.5x the cgo embed's (aim 1.0x)",
                      "go_shmpool", "embed_nogil", 1000, 1.5, extra="; ".join(extra))
    if t["met"] is True:
        r = gs / _t(M, "embed_nogil", 1000, "p50_s")
        aim = "aim 1.0x " + ("reached" if r <= 1.0 else "not reached")
        t["detail"] = (aim + "; " + t["detail"]).rstrip("; ")
    out.append(t)
    # 2. Go with the numpy module:function detector vs the embed
    out.append(_ratio_target(doc, "go_numpy_1e3_vs_embed", 2,
                             "Go with a module:function numpy detector in the workers, 1,000 floats: p50 at "
                             "most 2x the embed's", "go_numpy_detector", "embed_nogil", 1000, 2.0,
                             extra=_gil_note(doc, "go_numpy_detector", 1000, "p50_s")))
    out.append(_ratio_target(doc, "go_numpy_1e6_vs_embed", 2,
                             "Go with a module:function numpy detector in the workers, 10^6 floats: "
                             "median at "
                             "most 1.1x the embed's", "go_numpy_detector", "embed_nogil", 10**6, 1.1,
                             field="median_s", extra=_gil_note(doc, "go_numpy_detector", 10**6, "median_s")))
    # 3. Go Detect at 10^7 vs the Python pool's copy-in
    gb = _t(M, "go_shmpool_buffer", 10**7)
    out.append(_ratio_target(doc, "go_1e7_vs_pool_copy", 3,
                             "Go Detect (copy-in, split over the workers), 10^7 floats: within 1.2x of "
                             "Python Pool.detect copy-in", "go_shmpool", "shmpool_copy", 10**7, 1.2,
                             field="median_s",
                             extra=(f"Go DetectBuffer (zero-copy) {fmt_t(gb)}" if gb else "")))
    # 4. the Python pool at 1,000 floats vs numpy in process
    out.append(_ratio_target(doc, "pool_copy_1e3_vs_numpy", 4,
                             "Python Pool.detect (copy-in), 1,000 floats: p50 at most 2.0x in-process numpy",
                             "shmpool_copy", "numpy", 1000, 2.0))
    out.append(_ratio_target(doc, "pool_zero_1e3_vs_numpy", 4,
                             "Python Pool.detect (zero-copy), 1,000 floats: p50 at most 1.8x in-process "
                             "numpy",
                             "shmpool_zero_copy", "numpy", 1000, 1.8))
    # 5. one Go Client shared by goroutines
    workers = (doc.get("go_info") or {}).get("workers") or doc["settings"]["workers"]
    cores = doc["meta"]["cores"]
    setup = f"{workers} workers on {cores} cores" + ("" if workers == 2 and cores == 2 else
                                                      " (the target is stated for 2 on 2)")
    g1, g4 = conc_rate(doc, "go_shmpool", 1), conc_rate(doc, "go_shmpool", 4)
    e1, e4 = conc_rate(doc, "embed_gil", 1), conc_rate(doc, "embed_gil", 4)
    text = "One Go Client, 2 workers on 2 cores, 1,000 floats: 4 goroutines at least 1.5x the calls/s of 1"
    if g1 and g4:
        out.append(_target("go_4g_vs_1g", 5, text, f"{g4 / g1:.2f}x ({fmt_rate(g4)} calls/s with 4 "
                           f"goroutines vs {fmt_rate(g1)} with 1)", g4 / g1 >= 1.5, setup))
    else:
        out.append(_target("go_4g_vs_1g", 5, text, "not measured", None, _conc_missing(doc, ["go_shmpool"])))
    text = ("One Go Client, 4 goroutines, 1,000 floats: at least the calls/s of the GIL-taking embed "
            "at 4 goroutines")
    if g4 and e4:
        out.append(_target("go_4g_vs_embed_gil", 5, text, f"{g4 / e4:.2f}x ({fmt_rate(g4)} calls/s vs the "
                           f"embed's {fmt_rate(e4)})", g4 >= e4,
                           setup + (f"; the embed with 1 goroutine: {fmt_rate(e1)} calls/s" if e1 else "")))
    else:
        out.append(_target("go_4g_vs_embed_gil", 5, text, "not measured", None,
                           _conc_missing(doc, ["go_shmpool", "embed_gil"])))
    # 6. zero-copy at 10^7 vs the bandwidth floor
    n = 10**7
    zc = _t(M, "shmpool_zero_copy", n)
    floor = (doc.get("floor") or {}).get(str(n), {}).get("floor_s")
    text = ("10^7 floats, zero-copy (Pool.detect on pool.empty() data): at most 2x the two-pass "
            "bandwidth floor")
    if zc and floor:
        r = zc / floor
        gbr = f"; Go DetectBuffer {gb / floor:.2f}x the floor ({fmt_t(gb)})" if gb else ""
        out.append(_target("zero_copy_1e7_vs_floor", 6, text, f"{r:.2f}x the floor (zero-copy {fmt_t(zc)} vs "
                           f"floor {fmt_t(floor)} at {doc['bandwidth']['gb_s']:.1f} GB/s)", r <= 2.0,
                           gbr.lstrip("; ")))
    else:
        out.append(_target("zero_copy_1e7_vs_floor", 6, text, "not measured", None,
                           _missing(doc, [("shmpool_zero_copy", n)]) if not zc else "bandwidth not measured"))
    # 7. idle
    idle = doc.get("idle") or {}
    secs = idle.get("seconds")
    text = (f"Idle (one call each, then {secs:.0f} s alone): `shmpool serve --workers 2` and Pool(workers=2) "
            f"near 0% CPU, at most {IDLE_LIMIT_PCT:g}% of a core each" if secs else
            f"Idle 10 s: server and pool near 0% CPU, at most {IDLE_LIMIT_PCT:g}% of a core each")
    if idle.get("server") and idle.get("pool"):
        sp, pp = idle["server"]["percent_of_core"], idle["pool"]["percent_of_core"]
        note = "; --quick: a shorter window than the 10 s of the target" if idle.get("quick") else ""
        out.append(_target("idle_cpu", 7, text, f"server {sp:.2f}%, pool {pp:.2f}% of one core over "
                           f"{secs:.1f} s", sp <= IDLE_LIMIT_PCT and pp <= IDLE_LIMIT_PCT,
                           f"server + zygote + workers {idle['server']['cpu_s'] * 1e3:.0f} ms, pool "
                           f"workers + "
                           f"zygote {idle['pool']['cpu_s'] * 1e3:.0f} ms of CPU (psutil cpu_times, 10 ms "
                           f"ticks){_sched(idle)}{note}"))
    else:
        out.append(_target("idle_cpu", 7, text, "not measured", None, idle.get("error") or "not run"))
    return out


def _gil_note(doc, key, n, field) -> str:
    M = doc["methods"]
    a, g = _t(M, key, n, field), _t(M, "embed_gil", n, field)
    return f"vs the GIL-taking embed ({fmt_t(g)}): {a / g:.2f}x" if a and g else ""


def _sched(idle) -> str:
    s, p = idle["server"].get("schedstat_s"), idle["pool"].get("schedstat_s")
    if s is None or p is None:
        return ""
    return (f"; on-CPU by schedstat: server {s * 1e3:.2f} ms, pool {p * 1e3:.2f} ms; "
            f"wakeups {idle['server'].get('wakeups')} and {idle['pool'].get('wakeups')}")


def ratios(doc: dict) -> list[dict]:
    """Plain comparisons, no targets."""
    M = doc["methods"]
    rows = []

    def add(text, a_key, b_key, n, field="median_s", faster=True):
        a, b = _t(M, a_key, n, field), _t(M, b_key, n, field)
        if a and b:
            r = b / a
            rows.append({"comparison": text, "n": n, "a": a_key, "b": b_key, "a_s": a, "b_s": b,
                         "ratio": r, "text": (f"{r:.2f}x {'faster' if r >= 1 else 'slower'}" if faster else
                                              f"{a / b:.2f}x")})

    add("Pool.detect copy-in vs multiprocessing.Pool", "shmpool_copy", "mp_pool", 1000, "p50_s")
    add("Pool.detect copy-in vs gRPC (Python client)", "shmpool_copy", "grpc", 1000, "p50_s")
    add("Go Detect vs Go -> gRPC -> Python", "go_shmpool", "go_grpc", 1000, "p50_s")
    add("Go DetectBuffer vs the cgo embed (no GIL)", "go_shmpool_buffer", "embed_nogil", 1000, "p50_s")
    add("Go Detect vs the Python Client via serve", "go_shmpool", "shmpool_serve_python", 1000, "p50_s")
    add("embed without GIL handling vs with the GIL per call", "embed_nogil", "embed_gil", 1000, "p50_s")
    big = max((n for n in doc["sizes"] if n >= 10**6), default=None)
    for n in sorted({10**7, big} - {None}):
        if n not in doc["sizes"]:
            continue
        add("plug-in SplitDetector split over the workers vs the same detector whole on one worker",
            "plugin_split", "plugin_whole", n)
        add("Pool.detect zero-copy vs numpy in process", "shmpool_zero_copy", "numpy", n)
        add("Pool.detect copy-in vs numpy in process", "shmpool_copy", "numpy", n)
        add("Go DetectBuffer vs Pool.detect zero-copy", "go_shmpool_buffer", "shmpool_zero_copy", n)
        add("Go Detect (split) vs the cgo embed (numpy, one core)", "go_shmpool", "embed_nogil", n)
    return rows


def targets_text(doc: dict) -> str:
    meta = doc.get("meta") or {}
    lines = [f"Targets (commit {meta.get('git_commit') or '?'}):"]
    for t in doc.get("targets", []):
        lines.append(f"  {t.get('bullet', '')}. [{verdict(t['met'])}] {t['target']}: {t['measured']}"
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
    said = f"`pool.detect`, in turns with these trials, took {fmt_t(pool_s)}"
    if abs(d) <= 0.05 * kernel_s:
        return (f"{said}: within 5 % of this, so the pool's own cost (its messages, the combine, "
                f"gathering the indices) is lost in the noise; the time is the kernel's.")
    return (f"{said}: {fmt_t(d)} more, the pool's own cost (its messages, the combine, gathering "
            f"the indices)." if d > 0 else
            f"{said}: {fmt_t(-d)} less (noise); the time is the kernel's.")


def _cell(text) -> str:
    """One line of Markdown, safe inside a table cell."""
    return " ".join(str(text).split()).replace("|", "\\|")


def _why(m: dict, s: dict) -> str:
    return _cell(s.get("error") or s.get("skipped") or (m.get("reason") if not m.get("available") else "")
                 or "not run")


def _commit_line(meta) -> str:
    c = meta.get("git_commit") or "?"
    dirty = meta.get("git_uncommitted") or []
    if not dirty:
        return f"`{c}`"
    shown = ", ".join(dirty[:8]) + (f" and {len(dirty) - 8} more" if len(dirty) > 8 else "")
    return f"`{c}` (uncommitted changes at the start of the run: {shown})"


def markdown(doc: dict) -> str:
    meta, bw, M = doc["meta"], doc.get("bandwidth") or {}, doc["methods"]
    v = meta["versions"]
    L = []
    L.append("# shmpool benchmark: LAYOUT v2 against its targets")
    L.append("")
    if meta.get("interrupted"):
        L.append("**This run was interrupted: the results below are partial.**")
        L.append("")
    L.append(f"- **Commit:** {_commit_line(meta)}")
    L.append(f"- **Date (UTC):** {meta['date']} · **mode:** {meta['mode']} · **run time:** "
             f"{meta.get('duration_s', 0):.0f} s · **command:** "
             f"`{' '.join(['python -m benchmarks.run', *meta['argv'][1:]])}`")
    L.append(f"- **Machine:** {meta['cpu_model']}, {meta['cores']} cores usable "
             f"(os.cpu_count() = {meta['cpu_count']}), L3 {fmt_cache(meta['l3_cache'])}, "
             f"{meta['ram_total_gb']:.1f} GB RAM ({meta['ram_available_gb']:.1f} GB available at start), "
             f"/dev/shm {meta['dev_shm_free_gb']:.1f} GB free; {meta['platform']}")
    if meta.get("loadavg_start"):
        la0, la1 = meta["loadavg_start"], meta.get("loadavg_end") or meta["loadavg_start"]
        L.append(f"- **Load average** (1/5/15 min) at start {la0[0]:.2f} / {la0[1]:.2f} / {la0[2]:.2f}, "
                 f"at end "
                 f"{la1[0]:.2f} / {la1[1]:.2f} / {la1[2]:.2f} (on {meta['cores']} cores; other processes' "
                 f"load inflates every row, small calls most)")
    L.append(f"- **Software:** Python {v['python']}, numpy {v['numpy']}, grpcio {v.get('grpc')}, "
             f"joblib {v.get('joblib')}, ray {v.get('ray')}, shmpool {v.get('shmpool')}"
             + (f", {meta['go_version']}" if meta.get("go_version") else "")
             + (f"; the embed: {meta['embed_versions']}" if meta.get("embed_versions") else ""))
    L.append(f"- **Workers:** {doc['settings']['workers']} (= cores) for every pool and server. Every method "
             f"gets the same array per size (standard normal, seeded, 3 planted outliers).")
    sched = ", ".join(f"10^{int(math.log10(int(n)))}: {s['warmup']} warm-up + {s['rounds']} rounds x "
                      f"{s['calls']} (budget {s['budget_s']:g} s)"
                      for n, s in doc["settings"]["schedule"].items())
    L.append(f"- **Timing:** warm pools and servers; each method's answer is checked against numpy's "
             f"before it is timed; then warm-up calls, then rounds in which the methods take turns "
             f"(order rotating) timing each call alone (Python: perf_counter_ns, gc off; Go: time.Now). "
             f"Medians over all timed calls. Calls per size: {sched}; a method stops its rounds at a size "
             f"once its timed calls there have used the budget. The Go program and the embed program run "
             f"after the Python methods, taking turns in {doc['settings'].get('passes', 1)} pass(es) per "
             f"size. **vs numpy** = time / numpy's time in this run (below 1 is faster).")
    L.append("")

    L.append("## Targets")
    L.append("")
    L.append("| # | target | measured | result |")
    L.append("|---:|---|---|---|")
    for t in doc.get("targets", []):
        meas = _cell(t["measured"] + (f" — {t['detail']}" if t.get("detail") else ""))
        L.append(f"| {t.get('bullet', '')} | {_cell(t['target'])} | {meas} | **{verdict(t['met'])}** |")
    L.append("")
    if doc.get("ratios"):
        L.append("Other comparisons from the same run (no targets):")
        L.append("")
        L.append("| n | comparison | times | ratio |")
        L.append("|---:|---|---|---|")
        for r in doc["ratios"]:
            L.append(f"| {r['n']:,} | {r['comparison']} | {fmt_t(r['a_s'])} vs {fmt_t(r['b_s'])} | "
                     f"{r['text']} |")
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
                npt = _t(M, "numpy", n)
                L.append(f"| {n:,} | *two-pass bandwidth floor* | *{fmt_t(f['floor_s'])}* | "
                         f"*{fmt_rate(f['elements_per_s'])}* | *{f['gb_per_s']:.2f}* | "
                         + (f"*{f['floor_s'] / npt:.3f}*" if npt else "-") + " | | |")
            for m in _ordered(M):
                s = m["sizes"].get(str(n), {})
                if "median_s" in s:
                    note = f" ({_cell(s['note'])})" if s.get("note") else ""
                    L.append(f"| {n:,} | {m['label']} | {fmt_t(s['median_s'])} | "
                             f"{fmt_rate(s['elements_per_s'])} | "
                             f"{s['gb_per_s']:.2f} | {fmt_ratio(s, m['key'])} | {s['calls']} | "
                             f"{_status(s)}{note} |")
                else:
                    L.append(f"| {n:,} | {m['label']} | - | - | - | - | - | {_status(s)}: {_why(m, s)} |")
        L.append("")

    L.extend(_concurrency_md(doc))
    L.extend(_plugin_md(doc))
    L.extend(_embed_md(doc))
    L.extend(_idle_md(doc))

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
                 f"cache ({fmt_cache(meta['l3_cache'])}, shared with other tenants on a VM) can be read "
                 f"faster "
                 f"on the second pass.")
    else:
        L.append(f"Bandwidth measurement failed: {bw.get('error')}")
    L.append("")

    L.extend(_hotspots_md(doc))

    L.append("## Methods")
    L.append("")
    for m in _ordered(M):
        extra = "" if m.get("available") else f" — **unavailable: {_cell(m.get('reason'))}**"
        L.append(f"- **{m['label']}** (`{m['key']}`): {m['how']}{extra}")
    if doc.get("size_skips"):
        L.append("")
        for n, why in doc["size_skips"].items():
            L.append(f"- n={int(n):,} skipped: {why}")
    errs = doc.get("program_errors")
    if errs:
        L.append("")
        L.append("Errors reported by the Go programs: " + _cell("; ".join(dict.fromkeys(errs))))
    if doc.get("errors"):
        L.append("")
        L.append("Errors: " + _cell("; ".join(doc["errors"])))
    if doc.get("leftover_segments"):
        L.append("")
        L.append(f"WARNING: segments left in /dev/shm after the run: {doc['leftover_segments']}")
    L.append("")
    L.append("Raw per-call latencies: `results.json`. Plot: `results.png`.")
    L.append("")
    return "\n".join(L)


def _concurrency_md(doc) -> list[str]:
    c = doc.get("concurrency")
    if not c:
        return []
    L = [f"## Calls per second at {c['n']:,} floats, goroutines sharing one caller", ""]
    L.append(f"One Go `*shmpool.Client` shared by the goroutines, each calling `Detect` in a loop; and the "
             f"GIL-taking embed called from as many goroutines (the GIL serializes them). "
             f"{c['passes']} pass(es) x {c['rounds_per_pass']} round(s) x {c['seconds_per_round']:g} s per "
             f"goroutine count, the counts alternating; every answer compared with numpy's. The server runs "
             f"{(doc.get('go_info') or {}).get('workers') or doc['settings']['workers']} workers.")
    L.append("")
    L.append("| caller | goroutines | calls | seconds | calls/s | vs 1 goroutine |")
    L.append("|---|---:|---:|---:|---:|---:|")
    for key, rows in c.get("runs", {}).items():
        one = (rows.get("1") or {}).get("calls_per_s")
        for g in sorted(rows, key=int):
            r = rows[g]
            rate = r.get("calls_per_s")
            rel = f"{rate / one:.2f}x" if rate and one else "-"
            err = f" ({_cell('; '.join(r['errors']))})" if r.get("errors") else ""
            L.append(f"| {_label(doc, key)} | {g} | {r['calls']:,} | {r['seconds']:.1f} | "
                     f"{fmt_rate(rate) if rate else '-'}{err} | {rel} |")
    if c.get("errors"):
        L.append("")
        L.append("Errors: " + _cell("; ".join(c["errors"])))
    L.append("")
    return L


def _plugin_md(doc) -> list[str]:
    M = doc["methods"]
    if "plugin_split" not in M:
        return []
    L = ["## A user's own detector (shmpool issue 12)", ""]
    L.append("`benchmarks/detectors.py:ZScoreSplit`, a `shmpool.detectors.SplitDetector` written for this "
             "benchmark: `|x - mean| > 3 * std` from its own per-chunk summary `(n, mean, M2, min, max)`, "
             "merged in `combine`, with an early exit when min and max lie within the cut-off. The same "
             "detector as a plain function (`zscore_whole`, its `detect()` of the whole array) runs whole on "
             "one worker. Both from one `Pool(workers=cores, detector=[...], threshold=3.0)` on pool.empty() "
             "data; before timing, each answer is checked against numpy's for the same rule, and the split "
             "answer must equal the whole one.")
    L.append("")
    L.append("| n | split over the workers | whole, one worker | split speed-up | check |")
    L.append("|---:|---:|---:|---:|---|")
    for n in doc["sizes"]:
        a, b = _t(M, "plugin_split", n), _t(M, "plugin_whole", n)
        sa = M["plugin_split"]["sizes"].get(str(n), {})
        sb = M.get("plugin_whole", {}).get("sizes", {}).get(str(n), {})
        ok = _status(sa) + " / " + _status(sb)
        if not a or not b:
            ok += ": " + _cell(_why(M["plugin_split"], sa) if not a else _why(M["plugin_whole"], sb))
        L.append(f"| {n:,} | {fmt_t(a)} | {fmt_t(b)} | {f'{b / a:.2f}x' if a and b else '-'} | {ok} |")
    L.append("")
    return L


def _embed_md(doc) -> list[str]:
    M = doc["methods"]
    meta = doc["meta"]
    if "embed_nogil" not in M:
        return []
    L = ["## The anchor: CPython embedded in Go (cgo)", ""]
    m = M["embed_nogil"]
    if not m.get("available") and not any("median_s" in s for s in m["sizes"].values()):
        L.append(f"Not measured: {_cell(m.get('reason'))}")
        L.append("")
        return L
    L.append("`benchmarks/go/embed` (cgo, beside the Go program in its module): CPython initialised in the "
             "Go process, numpy's one-liner called in process on the Go `[]float64` wrapped as a read-only "
             "ndarray without a copy (`PyArray_New` on the slice's memory), the indices copied into a new "
             "Go `[]int`; every reference released per call, and a call fails if anything still holds the "
             "wrapped input afterwards.")
    if meta.get("embed_malloc_tuned") is not None:
        L.append("")
        L.append("glibc's malloc in the embed process: " + (
            "`mallopt(M_MMAP_THRESHOLD, 32 MiB)`, `mallopt(M_TRIM_THRESHOLD, 64 MiB)` before CPython starts: "
            "the ceilings glibc's dynamic thresholds reach by themselves in a long-running process such as "
            "the Python driver. A fresh process starts at 128 KiB and hands numpy's temporaries back to the "
            "kernel after every call, faulting them in again on the next (on this VM that made the "
            "embed about "
            "1.35x slower at 10^6 with no GIL handling, and 1.7x with the GIL per call), which would flatter "
            "every ratio to the embed." if meta["embed_malloc_tuned"] else "the defaults (mallopt failed)."))
    if meta.get("embed_build"):
        L.append("")
        L.append(f"Built with {_cell(_flags(meta['embed_build']))}.")
    L.append("")
    L.append("| n | no GIL handling (p50 / median) | GIL per call | numpy in the Python driver |")
    L.append("|---:|---:|---:|---:|")
    for n in doc["sizes"]:
        f = "p50_s" if n in SMALL else "median_s"
        L.append(f"| {n:,} | {fmt_t(_t(M, 'embed_nogil', n, f))} | {fmt_t(_t(M, 'embed_gil', n, f))} | "
                 f"{fmt_t(_t(M, 'numpy', n, f))} |")
    L.append("")
    leak = (doc.get("concurrency") or {}).get("leak") or []
    if leak:
        L.append("Memory per call (after 1,000 warm-up calls; Python's `sys.getallocatedblocks()`, the "
                 "process's "
                 "RSS read after `debug.FreeOSMemory()` before, halfway and after, Go's live heap; the "
                 "leak test "
                 "is the second half, once allocators have settled):")
        L.append("")
        L.append("| variant | n | calls | Python blocks, change | RSS, first half | RSS, second half | "
                 "per call, second half | Go heap, change |")
        L.append("|---|---:|---:|---:|---:|---:|---:|---:|")
        for r in leak:
            if r.get("error"):
                L.append(f"| {r['method']} | {r['n']:,} | {r['calls']:,} | {_cell(r['error'])} | | | | |")
                continue
            h1 = r["rss_mid"] - r["rss_before"]
            h2 = r["rss_after"] - r["rss_mid"]
            L.append(f"| {r['method']} | {r['n']:,} | {r['calls']:,} | "
                     f"{r['blocks_after'] - r['blocks_before']:+d} | "
                     f"{_bytes(h1)} | {_bytes(h2)} | {h2 / max(1, r['calls'] // 2):.2f} B | "
                     f"{_bytes(r['go_heap_after'] - r['go_heap_before'])} |")
        L.append("")
    return L


def _flags(flags: dict) -> str:
    return (f"`CGO_CFLAGS={flags.get('CGO_CFLAGS', '')}` `CGO_LDFLAGS={flags.get('CGO_LDFLAGS', '')}` "
            f"({flags.get('source', '?')})")


def _bytes(b) -> str:
    sign = "-" if b < 0 else "+"
    b = abs(b)
    for unit, f in (("MiB", 1 << 20), ("KiB", 1 << 10)):
        if b >= f:
            return f"{sign}{b / f:.1f} {unit}"
    return f"{sign}{b} B"


def _idle_md(doc) -> list[str]:
    idle = doc.get("idle")
    if not idle:
        return []
    L = ["## Idle CPU", ""]
    if idle.get("error"):
        L.append(f"Not measured: {_cell(idle['error'])}")
        L.append("")
        return L
    L.append(f"A fresh `shmpool serve --workers {idle['workers']}` (its Python Client kept connected after "
             f"one call) and a fresh `Pool(workers={idle['workers']})` (after one call), both left alone for "
             f"**{idle['seconds']:.1f} s**"
             + (" (--quick: shorter than the target's 10 s)" if idle.get("quick") else "")
             + f". {idle.get('method', '')}.")
    L.append("")
    L.append("| process | pid | CPU (cpu_times) | on-CPU (schedstat) | wakeups |")
    L.append("|---|---:|---:|---:|---:|")
    for side in ("server", "pool", "host"):
        part = idle.get(side) or {}
        for p in part.get("processes", []):
            cpu = "-" if p.get("cpu_s") is None else f"{p['cpu_s'] * 1e3:.0f} ms"
            sch = "-" if p.get("schedstat_s") is None else f"{p['schedstat_s'] * 1e3:.3f} ms"
            L.append(f"| {side}: {p['role']} | {p['pid']} | {cpu} | {sch} | {p.get('wakeups', '-')} |")
        if part:
            pct = part["percent_of_core"]
            sp = part.get("schedstat_percent_of_core")
            L.append(f"| **{side}, all** | | **{part['cpu_s'] * 1e3:.0f} ms = {pct:.2f}% of a core** | "
                     + (f"{part['schedstat_s'] * 1e3:.3f} ms = {sp:.4f}%" if sp is not None else "-")
                     + f" | {part.get('wakeups', '-')} |")
    L.append("")
    return L


def _hotspots_md(doc) -> list[str]:
    M = doc["methods"]
    hs = doc.get("hotspots") or {}
    L = []
    if not hs:
        return L
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
        gp = statistics.median(go_ping) / 1e9 if go_ping else None
        pp = hs.get("serve_ping_python_s")
        L.append(f"**The `shmpool serve` path, 1,000 floats.** After `connect`, the server hands the "
                 f"connection "
                 f"to a worker and a host talks to that worker directly: one SEQPACKET round trip per call. "
                 f"PING round trip (the worker answers, no detector): from Go {fmt_t(gp)}, from the Python "
                 f"client {fmt_t(pp)}. DETECT round trip: Go `Detect` {fmt_t(gs)}, `DetectBuffer` "
                 f"{fmt_t(_t(M, 'go_shmpool_buffer', 1000))}, the numpy module:function row "
                 f"{fmt_t(_t(M, 'go_numpy_detector', 1000))}, the Python client {fmt_t(sp)}; in-process "
                 f"`Pool.detect` {fmt_t(_t(M, 'shmpool_copy', 1000))}; the kernel alone "
                 f"{fmt_t(hs.get('n1000_kernel_s'))}; the cgo embed {fmt_t(_t(M, 'embed_nogil', 1000))}.")
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
                 f"`chunk_stats` {fmt_t(b['worker_stats_half_s'])}, pass 2 `flag` "
                 f"{fmt_t(b['worker_threshold_half_s'])}, together {fmt_t(b['worker_kernel_half_s'])} "
                 f"(the whole kernel on one core: {fmt_t(b['kernel_full_1core_s'])}).")
        pk = doc.get("parallel_kernel") or {}
        if pk.get("n") == n:
            L.append(f"- The same two passes on {pk['processes']} processes at once over one shared "
                     f"array, each pass started and collected through a pipe per process and nothing "
                     f"else (what the workers compute, without the pool): pass 1 "
                     f"{fmt_t(pk['pass1_s'])}, pass 2 {fmt_t(pk['pass2_s'])}, together "
                     f"**{fmt_t(pk['total_s'])}**"
                     + (f" = {pk['total_s'] / floor:.2f}x the floor" if floor else "")
                     + (". " + _pool_cost(pk["pool_detect_s"], pk["total_s"]) if "pool_detect_s" in pk
                        else "."))
        L.append(f"- The copy-in path adds about {fmt_t(b['copy_in_s'])}: np.copyto of the input into "
                 f"shared memory, on the calling thread.")
        L.append("")
        L.append("| host-side function (cProfile, zero-copy detect) | calls per detect | own time per "
                 "detect |")
        L.append("|---|---:|---:|")
        for r in b["host_profile_top"]:
            L.append(f"| `{r['function']}` | {r['calls_per_detect']:.1f} | "
                     f"{r['tottime_ms_per_detect']:.2f} ms |")
        L.append("")
    return L


def _style(m: dict, i: int) -> dict:
    """Each row its colour and marker; every other row's markers hollow (and a little larger), so
    rows with the same values (multiprocessing.Pool and ProcessPoolExecutor, say) both show."""
    colour, marker = STYLE.get(m["key"], (EXTRA_COLOURS[i % len(EXTRA_COLOURS)], "o"))
    hollow = i % 2 == 1 and marker not in "+x"
    return {"color": colour, "marker": marker, "linestyle": LINESTYLE.get(m["group"], "-"),
            "lw": 2.4 if m["key"] in ("shmpool_copy", "shmpool_zero_copy", "go_shmpool", "embed_nogil")
            else 1.5,
            "ms": (8.5 if hollow else 7) if marker in "*+xXP" else (7 if hollow else 5.5),
            "markeredgewidth": 1.4, "markerfacecolor": "none" if hollow else colour, "alpha": 0.9}


def plot(doc: dict, path: Path) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    M = doc["methods"]
    meta = doc["meta"]
    fig = plt.figure(figsize=(16, 19), layout="constrained")
    gs = fig.add_gridspec(3, 2, height_ratios=[1.25, 1.0, 0.8])
    ax1 = fig.add_subplot(gs[0, :])
    ax2 = fig.add_subplot(gs[1, :])
    ax3 = fig.add_subplot(gs[2, 0])
    ax4 = fig.add_subplot(gs[2, 1])
    legend_kw = {"fontsize": 8, "loc": "upper left", "bbox_to_anchor": (1.01, 1.0), "borderaxespad": 0.0}

    for i, m in enumerate(_ordered(M)):
        i = ORDER.index(m["key"]) if m["key"] in ORDER else i
        pts = sorted((int(n), s["median_s"], s.get("ratio_vs_numpy")) for n, s in m["sizes"].items()
                     if "median_s" in s)
        if not pts:
            continue
        st = _style(m, i)
        ax1.plot([p[0] for p in pts], [p[1] for p in pts], label=m["label"], **st)
        rs = [(p[0], p[2]) for p in pts if p[2]]
        if rs and m["key"] != "numpy":
            ax2.plot([r[0] for r in rs], [r[1] for r in rs], label=m["label"], **st)
    fl = sorted((int(n), f["floor_s"]) for n, f in (doc.get("floor") or {}).items())
    if fl:
        ax1.plot([f[0] for f in fl], [f[1] for f in fl], color=FLOOR_STYLE[0], linestyle=FLOOR_STYLE[1],
                 lw=2.0, label=f"two-pass bandwidth floor ({doc['bandwidth']['gb_s']:.1f} GB/s)")
    for ax in (ax1, ax2):
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_xlabel("array size n (float64 values)")
        ax.grid(True, which="both", alpha=0.3)
    ax1.set_ylabel("time per call, median (s)")
    ax1.set_title("time per detection (solid: Python; dashed: Go host; dash-dot: cgo embed; dotted: "
                  "diagnostics)")
    ax1.legend(title="row", **legend_kw)
    ax2.axhline(1.0, color="black", lw=1.2, label="numpy in-process (= 1)")
    ax2.set_ylabel("time / in-process numpy time (below 1 = faster)")
    ax2.set_title("relative to in-process numpy (same run)")
    ax2.legend(title="row", **legend_kw)

    # calls/s with goroutines sharing one caller
    c = doc.get("concurrency") or {}
    runs = c.get("runs") or {}
    gor = [str(g) for g in c.get("goroutines", [1, 4])]
    keys = [k for k in ("go_shmpool", "embed_gil") if k in runs]
    width = 0.8 / max(1, len(gor))
    hatches = ["", "//", "xx", ".."]
    from matplotlib.patches import Patch
    handles = []
    for j, g in enumerate(gor):
        vals = [(runs[k].get(g) or {}).get("calls_per_s") or 0.0 for k in keys]
        xs = [i + (j - (len(gor) - 1) / 2) * width for i in range(len(keys))]
        bars = ax3.bar(xs, vals, width, color=[STYLE[k][0] for k in keys], edgecolor="black",
                       hatch=hatches[j % len(hatches)])
        for b, v in zip(bars, vals):
            if v:
                ax3.annotate(f"{v / 1e3:.1f}k", (b.get_x() + b.get_width() / 2, v), ha="center",
                             va="bottom", fontsize=8)
        handles.append(Patch(facecolor="white", edgecolor="black", hatch=hatches[j % len(hatches)],
                             label=f"{g} goroutine{'s' if g != '1' else ''}"))
    handles += [Patch(facecolor=STYLE[k][0], edgecolor="black", label=_label(doc, k)) for k in keys]
    if keys:
        ax3.set_xticks(range(len(keys)), [_label(doc, k).replace(" (", "\n(") for k in keys], fontsize=8)
        ax3.legend(handles=handles, **legend_kw)
    else:
        ax3.text(0.5, 0.5, "not measured", ha="center", va="center", transform=ax3.transAxes)
        ax3.plot([], [], " ", label="not measured (--no-go or no Go toolchain)")
        ax3.legend(**legend_kw)
    ax3.set_ylabel("calls/s")
    ax3.set_title(f"calls/s at {c.get('n', N_CONC):,} floats, goroutines sharing one caller", fontsize=10)
    ax3.grid(True, axis="y", alpha=0.3)

    # idle CPU
    idle = doc.get("idle") or {}
    parts = [(s, idle[s]) for s in ("server", "pool") if idle.get(s)]
    if parts:
        colours = {"server": "#4363d8", "pool": "#3cb44b"}
        for i, (side, part) in enumerate(parts):
            ax4.bar([i], [part["percent_of_core"]], 0.6, color=colours[side], edgecolor="black",
                    label=f"{side}: {part['percent_of_core']:.2f}% ({part['cpu_s'] * 1e3:.0f} ms CPU)")
            ax4.annotate(f"{part['percent_of_core']:.2f}%", (i, part["percent_of_core"]), ha="center",
                         va="bottom", fontsize=9, xytext=(0, 3), textcoords="offset points")
        ax4.set_xticks(range(len(parts)), [f"shmpool serve\n--workers {idle['workers']}" if s == "server" else
                                           f"Pool(workers={idle['workers']})" for s, _ in parts], fontsize=8)
        ax4.axhline(IDLE_LIMIT_PCT, color="red", linestyle="--", lw=1.2, label=f"target: {IDLE_LIMIT_PCT:g}%")
        ax4.set_ylim(0, max(IDLE_LIMIT_PCT * 1.5, *(p["percent_of_core"] * 1.2 for _, p in parts)))
    else:
        ax4.text(0.5, 0.5, "not measured", ha="center", va="center", transform=ax4.transAxes)
        ax4.plot([], [], " ", label=f"not measured: {idle.get('error', 'not run')}"[:60])
    ax4.set_ylabel("% of one core")
    ax4.set_title(f"idle CPU over {idle.get('seconds', 0):.1f} s (all processes of each)", fontsize=10)
    ax4.legend(**legend_kw)
    ax4.grid(True, axis="y", alpha=0.3)

    fig.suptitle(f"shmpool benchmark at commit {meta.get('git_commit') or '?'} — {meta['cpu_model']}, "
                 f"{meta['cores']} cores, Python {meta['versions']['python']}, numpy "
                 f"{meta['versions']['numpy']}, {meta['date']}, {meta['mode']} run, load "
                 f"{meta['loadavg_start'][0]:.2f} at start", fontsize=11)
    fig.savefig(path, dpi=100)
    plt.close(fig)


def write_all(doc: dict, out_dir: Path) -> list[Path]:
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = []
    png = out_dir / "results.png"
    try:
        plot(doc, png)
    except Exception as e:  # noqa: BLE001 - the table and JSON still stand
        doc.setdefault("errors", []).append(f"plot failed: {type(e).__name__}: {e}")
        png = None
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
    if png is not None:
        paths.append(png)
    return paths
