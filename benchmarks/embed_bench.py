"""The anchor of the Go rows: build and run benchmarks/go/embed (CPython embedded with cgo).

benchmarks/go/embed/main.go (a second program in the benchmarks/go module)
initialises CPython inside a Go program, wraps a Go []float64 as a read-only
numpy array without copying it, and calls numpy's one-liner in process,
copying the indices into a new Go []int.  It is built
here against this interpreter: compiler flags from ``python3.X-config
--embed`` next to the interpreter (else sysconfig), numpy's headers from
``numpy.get_include()``.  Where the headers, libpython or a C compiler are
missing, the embed rows are unavailable and the report says why.
"""

from __future__ import annotations

import os
import shlex
import shutil
import subprocess
import sys
import sysconfig

from .go_bench import go_build, run_program

METHODS = [
    ("embed_nogil", "Go: cgo-embedded CPython numpy (no GIL handling)",
     "benchmarks/go/embed: CPython initialised in the Go process; the []float64 wrapped as a read-only "
     "ndarray without a copy (PyArray_New on the slice's memory), numpy's one-liner called in process, "
     "the indices copied into a new []int; the calling goroutine is locked to the thread that holds "
     "the GIL (single goroutine only); glibc's malloc thresholds set to the ceilings a long-running "
     "process reaches by itself (mallopt M_MMAP_THRESHOLD 32 MiB, M_TRIM_THRESHOLD 64 MiB), so numpy's "
     "temporaries are not returned to the kernel and faulted in again on every call"),
    ("embed_gil", "Go: cgo-embedded CPython numpy (GIL per call)",
     "the same, with PyGILState_Ensure/Release around every call (goroutine-safe), called from a "
     "goroutine other than the one that initialised CPython: each call creates and drops a Python "
     "thread state for its OS thread"),
]


def build_flags() -> tuple[dict | None, str]:
    """({CGO_CFLAGS, CGO_LDFLAGS, source}, "") or (None, why not)."""
    v = sysconfig.get_config_var
    include = v("INCLUDEPY") or ""
    if not include or not os.path.exists(os.path.join(include, "Python.h")):
        return None, f"Python.h not found (INCLUDEPY={include!r}): install the Python development headers"
    try:
        import numpy
        np_include = numpy.get_include()
    except Exception as e:  # noqa: BLE001
        return None, f"numpy's C headers: {e}"
    if not os.path.exists(os.path.join(np_include, "numpy", "arrayobject.h")):
        return None, f"numpy/arrayobject.h not found under {np_include}"
    ver = v("VERSION") or f"{sys.version_info[0]}.{sys.version_info[1]}"
    config = os.path.join(v("BINDIR") or "", f"python{ver}-config")
    cflags = ldflags = None
    source = ""
    if os.access(config, os.X_OK):
        try:
            c = subprocess.run([config, "--includes"], capture_output=True, text=True, timeout=30)
            ld = subprocess.run([config, "--embed", "--ldflags"], capture_output=True, text=True, timeout=30)
            if c.returncode == 0 and ld.returncode == 0:
                cflags, ldflags = c.stdout.split(), ld.stdout.split()
                source = f"{config} --includes / --embed --ldflags"
        except (OSError, subprocess.TimeoutExpired):
            pass
    libdir = v("LIBDIR") or ""
    if cflags is None:
        cflags = [f"-I{include}"]
        ldflags = [f"-L{libdir}", f"-lpython{v('LDVERSION') or ver}", *(v("LIBS") or "").split(),
                   *(v("SYSLIBS") or "").split()]
        source = "sysconfig (no python-config found)"
    libs = [f for f in ldflags if f.startswith("-lpython")]
    if not libs:
        return None, f"no -lpython in the link flags ({' '.join(ldflags)})"
    lib = libs[0][2:]
    dirs = [f[2:] for f in ldflags if f.startswith("-L")] + [libdir, v("LIBPL") or ""]
    if not any(os.path.exists(os.path.join(d, f"lib{lib}{ext}")) for d in dirs if d for ext in (".so", ".a")):
        return None, (f"lib{lib}.so / .a not found in {[d for d in dirs if d]}: this Python has no "
                      "libpython to embed")
    if not any(f.startswith("-Wl,-rpath") for f in ldflags) and libdir:
        ldflags.append(f"-Wl,-rpath,{libdir}")
    return {"CGO_CFLAGS": " ".join([*cflags, f"-I{np_include}", "-O2"]),
            "CGO_LDFLAGS": " ".join(ldflags), "source": source}, ""


class EmbedRunner:
    def __init__(self, tmpdir: str):
        self.tmpdir = tmpdir
        self.available = False
        self.reason = "not built"
        self.binary = os.path.join(tmpdir, "benchembed")
        self.flags: dict = {}
        self.versions = ""
        self.malloc_tuned = None

    def build(self, timeout: float) -> bool:
        go = shutil.which("go")
        if go is None:
            self.reason = "the Go toolchain (go) is not on PATH"
            return False
        if shutil.which(os.environ.get("CC", "gcc")) is None and shutil.which("cc") is None:
            self.reason = "no C compiler (gcc or cc) for cgo"
            return False
        flags, why = build_flags()
        if flags is None:
            self.reason = why
            return False
        self.flags = flags
        env = dict(os.environ, CGO_ENABLED="1", CGO_CFLAGS=flags["CGO_CFLAGS"],
                   CGO_LDFLAGS=flags["CGO_LDFLAGS"])
        self.reason = go_build(go, "./embed", self.binary, "go build of benchmarks/go/embed (cgo)", timeout,
                               env=env)
        self.available = not self.reason
        return self.available

    def run(self, plan: dict, tag: str, timeout: float) -> tuple[dict | None, list[str]]:
        plan = dict(plan, tune_malloc=True, python_executable=sys.executable,
                    python_path=[p for p in sys.path if isinstance(p, str) and p],
                    methods=plan.get("methods") or [k for k, _, _ in METHODS],
                    concurrency_method="embed_gil")
        env = {k: v for k, v in os.environ.items() if not k.startswith("PYTHON")}
        out, errors = run_program([self.binary], plan, self.tmpdir, f"embed-{tag}", timeout,
                                  "the cgo embed program", env=env)
        if out is not None and out.get("versions"):
            self.versions = out["versions"]
            self.malloc_tuned = bool(out.get("malloc_tuned"))
        return out, errors


def describe_flags(flags: dict) -> str:
    return (f"CGO_CFLAGS={shlex.quote(flags.get('CGO_CFLAGS', ''))} "
            f"CGO_LDFLAGS={shlex.quote(flags.get('CGO_LDFLAGS', ''))} (from {flags.get('source', '?')})")
