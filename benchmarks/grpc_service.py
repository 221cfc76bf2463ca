"""The Python gRPC detector service the benchmark compares against.

Raw bytes in (little-endian float64), raw bytes out (little-endian int64
indices): a generic handler with identity (de)serializers, so no protobuf
code generation.  The service runs numpy's one-liner.  Run as

    python -m benchmarks.grpc_service --socket PATH [--threads N]

and it serves ``/shmpool.bench.Detector/Detect`` on ``unix:PATH`` until
SIGTERM or SIGINT.
"""

from __future__ import annotations

import argparse
import signal
import threading
import time
from concurrent import futures

import grpc
import numpy as np

SERVICE = "shmpool.bench.Detector"
METHOD = "Detect"
FULL_METHOD = f"/{SERVICE}/{METHOD}"
OPTIONS = [("grpc.max_send_message_length", -1), ("grpc.max_receive_message_length", -1)]


def detect_bytes(request: bytes, context) -> bytes:
    x = np.frombuffer(request, dtype="<f8")
    if x.size == 0:
        return b""
    return np.where(np.abs(x - x.mean()) > 2 * x.std())[0].astype("<i8").tobytes()


def serve(socket_path: str, threads: int) -> int:
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=threads), options=OPTIONS)
    handler = grpc.method_handlers_generic_handler(
        SERVICE, {METHOD: grpc.unary_unary_rpc_method_handler(detect_bytes)})
    server.add_generic_rpc_handlers((handler,))
    if server.add_insecure_port(f"unix:{socket_path}") == 0:
        raise SystemExit(f"cannot listen on unix:{socket_path}")
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    server.start()
    while not stop.wait(0.5):
        pass
    server.stop(grace=1.0).wait(5.0)
    return 0


class Client:
    """The Python caller: one channel, one unary-unary callable, bytes both ways."""

    def __init__(self, socket_path: str, ready_timeout: float = 30.0, proc=None):
        self.channel = grpc.insecure_channel(f"unix:{socket_path}", options=OPTIONS)
        end = time.monotonic() + ready_timeout
        while True:
            try:
                grpc.channel_ready_future(self.channel).result(timeout=0.5)
                break
            except grpc.FutureTimeoutError:
                if proc is not None and proc.poll() is not None:
                    self.close()
                    raise RuntimeError(f"the gRPC server exited with code {proc.returncode}") from None
                if time.monotonic() > end:
                    self.close()
                    raise RuntimeError(
                        f"the gRPC server did not answer within {ready_timeout:.0f} s") from None
        self._call = self.channel.unary_unary(FULL_METHOD)   # no serializers: bytes

    def detect(self, x: np.ndarray) -> np.ndarray:
        return np.frombuffer(self._call(x.tobytes()), dtype="<i8")

    def close(self) -> None:
        self.channel.close()


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--socket", required=True)
    ap.add_argument("--threads", type=int, default=4)
    args = ap.parse_args(argv)
    return serve(args.socket, args.threads)


if __name__ == "__main__":
    raise SystemExit(main())
