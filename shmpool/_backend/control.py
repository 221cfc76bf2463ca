"""Messages between a supervisor (a Pool, or shmpool serve) and its workers.

Private to one installed version, unlike docs/LAYOUT.md, and about
supervision only: the detection protocol is shmpool.layout's.  One message
per SEQPACKET packet on the worker's control socket::

    supervisor -> worker   CONN  tag, + the connection's fd (SCM_RIGHTS)
                           STOP  finish, answer waiting requests SHUTTING_DOWN, exit
    worker -> supervisor   READY pid, connection limit, or why it cannot serve
                           CLOSED tag: a connection ended

A worker whose control socket reaches end-of-file exits at once: its
supervisor is gone.
"""

from __future__ import annotations

import json
import socket
import struct

CONN, STOP, READY, CLOSED = 1, 2, 3, 4
_HEAD = struct.Struct("<IQ")          # kind, tag
MAX = 65536


def send_conn(ctrl: socket.socket, fd: int, tag: int) -> None:
    socket.send_fds(ctrl, [_HEAD.pack(CONN, tag)], [fd])


def send_stop(ctrl: socket.socket) -> None:
    ctrl.send(_HEAD.pack(STOP, 0))


def send_ready(ctrl: socket.socket, pid: int, max_conns: int, error: dict | None = None) -> None:
    ctrl.send(_HEAD.pack(READY, 0) + json.dumps(
        {"pid": pid, "max_conns": max_conns, "error": error}).encode())


def send_closed(ctrl: socket.socket, tag: int) -> None:
    ctrl.send(_HEAD.pack(CLOSED, tag))


def recv(ctrl: socket.socket, flags: int = 0) -> tuple[int, int, object, list[int]] | None:
    """(kind, tag, body, fds) of the next message, or None at end-of-file."""
    msg, fds, _flags, _addr = socket.recv_fds(ctrl, MAX, 4, flags)
    if not msg:
        for fd in fds:
            socket.close(fd)
        return None
    kind, tag = _HEAD.unpack_from(msg)
    body = json.loads(msg[_HEAD.size:]) if kind == READY else None
    return kind, tag, body, list(fds)


__all__ = ["CONN", "STOP", "READY", "CLOSED", "send_conn", "send_stop", "send_ready",
           "send_closed", "recv"]
