"""The zygote: a preloaded process that forks workers (see launch.py).

    launcher ──SPAWN config + worker's control fd──> zygote ──fork──> worker.main
             <──SPAWNED pid + pidfd───────────────
             <──EXITED pid, status──────────────── (pidfd readable: waitpid)

It stays single-threaded (fork safety), wakes only for a message or a child's
exit, and exits when its launcher's socket closes; the workers it started
stay with their own supervisors.
"""

from __future__ import annotations

import signal

signal.signal(signal.SIGINT, signal.SIG_IGN)    # before anything slow: Ctrl-C is the host's

import json  # noqa: E402
import os  # noqa: E402
import select  # noqa: E402
import socket  # noqa: E402
import sys  # noqa: E402

import numpy  # noqa: E402,F401 - preloaded for every worker

from .. import detectors  # noqa: E402,F401 - preloaded
from . import worker  # noqa: E402
from .launch import set_process_name  # noqa: E402


def _send(sock: socket.socket, body: dict, fds: tuple[int, ...] = ()) -> None:
    socket.send_fds(sock, [json.dumps(body).encode()], list(fds))


def main(fd: int) -> None:
    set_process_name("shmpool-zygote")
    sock = socket.socket(fileno=fd)
    children: dict[int, int] = {}              # pidfd -> pid
    poller = select.poll()
    poller.register(sock, select.POLLIN)
    while True:
        for pfd, _ev in poller.poll():
            if pfd != sock.fileno():
                pid = children.pop(pfd)
                poller.unregister(pfd)
                os.close(pfd)
                try:
                    _, st = os.waitpid(pid, 0)
                    status = os.waitstatus_to_exitcode(st)
                except ChildProcessError:
                    status = None
                try:
                    _send(sock, {"kind": "exited", "pid": pid, "status": status})
                except OSError:
                    pass
                continue
            try:
                msg, fds, _flags, _addr = socket.recv_fds(sock, 1 << 20, 4)
            except OSError:
                msg, fds = b"", []
            if not msg:
                os._exit(0)                    # the launcher is gone
            ctrl = fds[0]
            config = json.loads(msg)
            try:
                pid = os.fork()
            except OSError as e:
                os.close(ctrl)
                _send(sock, {"kind": "error", "message": str(e)})
                continue
            if pid == 0:
                try:
                    sock.close()
                    for c in children:
                        os.close(c)
                    signal.signal(signal.SIGCHLD, signal.SIG_DFL)
                    worker.apply_environment(config)
                    worker.main(ctrl, config)
                finally:
                    os._exit(70)
            os.close(ctrl)
            pidfd = os.pidfd_open(pid)
            children[pidfd] = pid
            poller.register(pidfd, select.POLLIN)
            try:
                _send(sock, {"kind": "spawned", "pid": pid}, (pidfd,))
            except OSError:
                os._exit(0)


if __name__ == "__main__":
    main(int(sys.argv[1]))
