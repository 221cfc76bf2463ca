"""Receiving on the non-blocking SEQPACKET sockets every process here uses."""

from __future__ import annotations

import os
import socket
import time


def recv_spinning(sock: socket.socket, poller, size: int, spin: float, wait_ms: int | None):
    """Receive one packet from a non-blocking socket: spin briefly, then sleep.

    A sleeping vCPU takes tens of microseconds to wake on a VM, more than a
    small detect costs; a short spin keeps the receiving CPU awake through
    back-to-back calls.  Returns None when wait_ms passes with nothing.
    """
    end = time.perf_counter() + spin
    while True:
        try:
            return sock.recv(size)
        except BlockingIOError:
            pass
        if time.perf_counter() >= end:
            break
        os.sched_yield()     # the peer may be waiting for this very CPU
    while True:
        if not poller.poll(wait_ms):
            return None
        try:
            return sock.recv(size)
        except BlockingIOError:
            continue
