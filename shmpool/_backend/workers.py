"""A supervised set of workers: start, hand over connections, replace.

    supervisor (Pool or server)                       worker i
    ---------------------------                       --------
    Workers.start(i) ── launch.py ──────────────────> worker.main(ctrl)
                     <── READY (pid, fd limit) ──────
    Workers.give(i, fd) ── CONN + fd (SCM_RIGHTS) ──> serves that connection
                     <── CLOSED (tag) ───────────────  when it ends
    Workers.stop(i) ── SIGKILL through its pidfd; ctrl closed

Both the Pool and ``shmpool serve`` supervise through this class; neither
knows how a worker is launched, nor what a connection carries.
"""

from __future__ import annotations

import select
import socket
import time
from typing import Any

from .. import layout as L
from ..errors import BrokenPool, WorkerDied, from_status
from . import control
from .launch import Launcher, WorkerProcess, describe


def killed_starting(i: int, pid: int | None, how: str) -> WorkerDied:
    """A replacement for worker i ended by a signal (*how*) before it served."""
    return WorkerDied(f"worker {i} (pid {pid}) was {how} while it started; "
                      "the next call starts another")


class Slot:
    """Worker position i: its process, control socket and connection count."""

    proc: WorkerProcess = None  # type: ignore[assignment]   # None: no worker in the slot
    ctrl: socket.socket = None  # type: ignore[assignment]
    max_conns = 0

    def __init__(self, index: int):
        self.index = index
        self.conns = 0
        self.peers: dict[int, int] = {}      # peer pid -> connections (server)
        self.tags: dict[int, int] = {}       # connection tag -> peer pid

    @property
    def pid(self) -> int | None:
        return self.proc.pid if self.proc is not None else None


class Workers:
    def __init__(self, n: int, config: dict, start_method: str = "forkserver",
                 startup_timeout: float = 60.0):
        self.config = dict(config, workers=n)
        self.startup_timeout = startup_timeout
        self.launcher = Launcher(start_method)
        self.slots = [Slot(i) for i in range(n)]

    def start(self, i: int, replacing: bool = False) -> Slot:
        """Start worker i and wait until it serves; raises BrokenPool, or the
        error that kept it from loading its detectors.  *replacing*: a worker
        that died during a call is being replaced, so one killed by a signal
        while it starts (an OOM kill, a stray SIGKILL) is WorkerDied: the call
        failed, the pool did not, and the next call starts another."""
        slot = self.slots[i]
        if slot.proc is not None:           # an interrupted restart left one behind
            self.stop(i)
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        try:
            keep = [theirs.fileno()]
            proc = self.launcher.start(dict(self.config, index=i), theirs, keep,
                                       self.startup_timeout)
        except BaseException:
            ours.close()
            raise
        finally:
            theirs.close()
        slot.proc, slot.ctrl, slot.conns = proc, ours, 0
        slot.peers.clear()
        slot.tags.clear()
        try:
            ready = self._ready(slot, replacing)
        except BaseException:
            self.stop(i)
            raise
        slot.max_conns = int(ready["max_conns"])
        return slot

    def _ready(self, slot: Slot, replacing: bool) -> dict:
        deadline = time.monotonic() + self.startup_timeout
        while True:
            left = deadline - time.monotonic()
            watched: list[Any] = [slot.ctrl, slot.proc.pidfd]
            readable = select.select(watched, [], [], max(left, 0))[0]
            if slot.ctrl in readable:
                msg = control.recv(slot.ctrl)
                if msg is not None and msg[0] == control.READY and isinstance(msg[2], dict):
                    err = msg[2].get("error")
                    if err:
                        raise from_status(L.Status.DETECTOR_ERROR, err["type"], err["message"],
                                          err["traceback"])
                    return msg[2]
                if msg is not None:
                    continue
            if not readable and left > 0:
                continue
            if not readable:
                raise BrokenPool(f"worker {slot.index} did not start within "
                                 f"{self.startup_timeout:g} s")
            status = self.launcher.exit_status(slot.proc, 1.0)
            if replacing and status is not None and status < 0:
                raise killed_starting(slot.index, slot.proc.pid, describe(status))
            raise BrokenPool(f"worker {slot.index} failed to start ({describe(status)}); "
                             "its error, if it printed one, is on this process's stderr")

    def give(self, i: int, fd: int, tag: int, peer: int = 0) -> None:
        """Hand connection *fd* to worker i (the caller then closes its copy)."""
        slot = self.slots[i]
        control.send_conn(slot.ctrl, fd, tag)
        slot.conns += 1
        slot.tags[tag] = peer
        slot.peers[peer] = slot.peers.get(peer, 0) + 1

    def closed(self, i: int, tag: int) -> None:
        """Worker i said connection *tag* ended."""
        slot = self.slots[i]
        if tag in slot.tags:
            peer = slot.tags.pop(tag)
            slot.conns -= 1
            left = slot.peers.get(peer, 1) - 1
            if left > 0:
                slot.peers[peer] = left
            else:
                slot.peers.pop(peer, None)

    def alive(self, i: int) -> bool:
        proc = self.slots[i].proc
        return proc is not None and proc.alive()

    def kill(self, i: int) -> None:
        proc = self.slots[i].proc
        if proc is not None:
            proc.kill()

    def stop(self, i: int, kill: bool = True, wait: float = 2.0) -> str:
        """End worker i (SIGKILL by its pidfd unless it already ended); how it ended."""
        slot = self.slots[i]
        proc, ctrl = slot.proc, slot.ctrl
        slot.proc = slot.ctrl = None  # type: ignore[assignment]
        slot.conns = 0
        slot.peers.clear()
        slot.tags.clear()
        if ctrl is not None:
            ctrl.close()                 # its watchdog ends it on its own, too
        if proc is None:
            return "not running"
        if kill and proc.alive():
            proc.kill()
        status = self.launcher.exit_status(proc, wait)
        self.launcher.forget(proc)
        return describe(status)

    def stop_gracefully(self, i: int) -> None:
        slot = self.slots[i]
        if slot.ctrl is not None:
            try:
                control.send_stop(slot.ctrl)
            except OSError:
                pass

    def pids(self) -> list[int]:
        return [s.proc.pid for s in self.slots if s.proc is not None and s.proc.alive()]

    def close(self, wait: float = 2.0) -> None:
        for slot in self.slots:
            if slot.proc is not None:
                slot.proc.kill()
        for i in range(len(self.slots)):
            self.stop(i, kill=True, wait=wait)
        self.launcher.close()
