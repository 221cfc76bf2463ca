"""What the soak measures: one row per process per sample.

For every watched process (the host, the zygotes, every worker, the server)
``read_process`` takes, from /proc: RSS and its anonymous, file and shmem
parts, threads, open fds and how many of them are shmpool segments, and the
distinct shmpool segments mapped; ``shm_usage`` adds the number and bytes of
the ``/dev/shm`` segments the process owns (names ``shmpool-<pid>-``).

``Watch`` names the processes by role, not pid: ``host``, ``host/zygote``,
``pool/w1``, ``server``, ``server/zygote``, ``server/w0``...  The worker that
replaces a killed one takes over its role (a new epoch of it); worker 0 of
every group is the witness, never killed.
"""

from __future__ import annotations

import gc
import os
import re
from collections import defaultdict
from collections.abc import Callable

import psutil

from .allocator import trim_heap

SHM_DIR = "/dev/shm"
SHM_PREFIX = "/dev/shm/shmpool-"
ZYGOTE = "shmpool-zygote"
WORKER = "shmpool-worker"

SAMPLE_FIELDS = ["t", "calls", "role", "pid", "rss", "rss_anon", "rss_file", "rss_shmem",
                 "fds", "shm_fds", "threads", "mappings", "segments", "segment_bytes",
                 "held_segments", "held_bytes", "held_sockets"]
HELD = ("held_segments", "held_bytes", "held_sockets")

_STATUS_KEYS = {b"VmRSS:": "rss", b"RssAnon:": "rss_anon", b"RssFile:": "rss_file",
                b"RssShmem:": "rss_shmem", b"Threads:": "threads"}


def _status(pid: int) -> dict:
    """RSS and its parts in bytes, and the thread count, from /proc/<pid>/status."""
    out = {}
    with open(f"/proc/{pid}/status", "rb") as f:
        for line in f:
            parts = line.split()
            key = _STATUS_KEYS.get(parts[0]) if parts else None
            if key == "threads":
                out[key] = int(parts[1])
            elif key is not None:
                out[key] = int(parts[1]) * 1024
    return out


def _fds(pid: int) -> tuple[int, int]:
    """(open fds, those open on a shmpool segment) of *pid*.  Python's mmap
    keeps a dup of its fd for as long as the mapping lives, the native cache
    does not: the segment fds are counted apart so that fds other than
    segments can be judged on their own."""
    fd_dir = f"/proc/{pid}/fd"
    names = os.listdir(fd_dir)
    shm = 0
    for name in names:
        try:
            if os.readlink(f"{fd_dir}/{name}").startswith(SHM_PREFIX):
                shm += 1
        except OSError:             # closed since the listing
            pass
    return len(names), shm


def _mappings(pid: int) -> int:
    """Distinct shmpool segments mapped into *pid* (unlinked ones included)."""
    names = set()
    with open(f"/proc/{pid}/maps", "rb") as f:
        for line in f:
            i = line.find(b"/dev/shm/shmpool-")
            if i >= 0:
                names.add(line[i:].split()[0])
    return len(names)


def read_process(pid: int) -> dict | None:
    """One process's numbers, or None if it is gone."""
    try:
        row = _status(pid)
        row["fds"], row["shm_fds"] = _fds(pid)
        row["mappings"] = _mappings(pid)
    except (FileNotFoundError, ProcessLookupError, PermissionError):
        return None
    if "rss_anon" not in row:           # a zombie: no memory left to read
        return None
    return row


def shm_usage() -> dict[int, tuple[int, int]]:
    """owner pid -> (segments, bytes) of the shmpool segments in /dev/shm."""
    usage: dict[int, list[int]] = defaultdict(lambda: [0, 0])
    try:
        entries = os.scandir(SHM_DIR)
    except FileNotFoundError:
        return {}
    with entries:
        for e in entries:
            m = re.match(r"shmpool-(\d+)-", e.name)
            if m is None:
                continue
            try:
                size = e.stat(follow_symlinks=False).st_size
            except FileNotFoundError:
                continue
            u = usage[int(m.group(1))]
            u[0] += 1
            u[1] += size
    return {pid: (u[0], u[1]) for pid, u in usage.items()}


def segments_of(pid: int) -> list[str]:
    """The /dev/shm entries named for *pid* (its segments and owner file)."""
    try:
        return [n for n in os.listdir(SHM_DIR) if n.startswith(f"shmpool-{pid}-")]
    except FileNotFoundError:
        return []


def process_name(pid: int) -> str:
    """/proc/<pid>/comm ('shmpool-zygote', 'shmpool-worker1', ...), '' if gone."""
    try:
        with open(f"/proc/{pid}/comm") as f:
            name = f.read().strip()
    except OSError:
        return ""
    if name.startswith("python"):       # not renamed yet: tell a zygote by its command line
        try:
            with open(f"/proc/{pid}/cmdline", "rb") as f:
                if b"shmpool._backend.zygote" in f.read():
                    return ZYGOTE
        except OSError:
            pass
    return name


def live_children(pid: int) -> list[int]:
    """Pids of *pid*'s children that are not zombies."""
    try:
        kids = psutil.Process(pid).children()
    except psutil.NoSuchProcess:
        return []
    out = []
    for k in kids:
        try:
            if k.status() != psutil.STATUS_ZOMBIE:
                out.append(k.pid)
        except psutil.NoSuchProcess:
            pass
    return out


def zygotes_and_workers(pid: int) -> tuple[list[int], list[int]]:
    """(zygotes, workers) started by *pid*: its children named shmpool-zygote,
    and the workers among their children and its own (start methods
    "forkserver"; "spawn" and "fork")."""
    zygotes, workers = [], []
    for child in live_children(pid):
        name = process_name(child)
        if name == ZYGOTE:
            zygotes.append(child)
            workers += [g for g in live_children(child) if process_name(g).startswith(WORKER)]
        elif name.startswith(WORKER):
            workers.append(child)
    return zygotes, workers


class Roles:
    """Stable names for a group of replaceable processes: a new pid takes the
    lowest-numbered role whose process is gone."""

    def __init__(self, prefix: str):
        self.prefix = prefix
        self.pids: list[int | None] = []

    def assign(self, live) -> dict[int, str]:
        live = set(live)
        self.pids = [p if p in live else None for p in self.pids]
        for pid in sorted(live - set(self.pids)):
            if None in self.pids:
                self.pids[self.pids.index(None)] = pid
            else:
                self.pids.append(pid)
        return {pid: f"{self.prefix}/w{i}" for i, pid in enumerate(self.pids) if pid is not None}

    def witness(self) -> int | None:
        return self.pids[0] if self.pids else None


class Watch:
    """The processes of a soak, by role.

    *groups*: name -> a function giving the live worker pids of that group
    (``pool.worker_pids``); *server*: a function giving the server's pid
    (None when there is none or it has exited).  The server's workers are
    found as its zygote's children."""

    def __init__(self, groups: dict[str, Callable[[], list[int]]],
                 server: Callable[[], int | None] = lambda: None):
        self.groups = dict(groups)
        self.server = server
        self.roles = {name: Roles(name) for name in [*self.groups, "server"]}

    def server_workers(self) -> list[int]:
        pid = self.server()
        return [] if pid is None else zygotes_and_workers(pid)[1]

    def processes(self) -> dict[int, str]:
        """pid -> role of every watched process (assigns the worker roles)."""
        me = os.getpid()
        found = {me: "host"}
        for name, pids in self.groups.items():
            found.update(self.roles[name].assign(pids()))
        for z in zygotes_and_workers(me)[0]:
            found.setdefault(z, "host/zygote")
        server = self.server()
        if server is not None:
            found[server] = "server"
            zygotes, workers = zygotes_and_workers(server)
            for z in zygotes:
                found[z] = "server/zygote"
            found.update(self.roles["server"].assign(workers))
        return found

    def killable(self) -> list[int]:
        """Live workers other than the witnesses."""
        groups = [(name, pids()) for name, pids in self.groups.items()]
        if self.server() is not None:
            groups.append(("server", self.server_workers()))
        return [pid for name, live in groups for pid in live
                if pid != self.roles[name].witness()]


def take_sample(watch: Watch, calls: int, t: float,
                held: dict[int, dict] | None = None) -> list[dict]:
    """One row per watched process (call it with the load parked).  The host
    first collects its garbage and trims its heap, so that what is left is
    memory in use.  *held*: pid -> the segments, their bytes and the sockets
    that are held by design (Load.held: the host's lanes and staging caches,
    a server worker's Client connections), recorded in that pid's row."""
    gc.collect()
    trim_heap()
    usage = shm_usage()
    rows = []
    for pid, role in sorted(watch.processes().items(), key=lambda kv: kv[1]):
        row = read_process(pid)
        if row is None:
            continue
        segs, nbytes = usage.get(pid, (0, 0))
        row.update(t=round(t, 3), calls=calls, role=role, pid=pid, segments=segs,
                   segment_bytes=nbytes)
        mine = (held or {}).get(pid, {})
        row.update({k: mine.get(k, 0) for k in HELD})
        rows.append(row)
    return rows
