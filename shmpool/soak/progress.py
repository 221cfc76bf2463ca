"""Progress while the soak runs: a tqdm bar when tqdm is installed
(``pip install 'shmpool[soak]'``), else a plain line on stderr every few
seconds; nothing with ``--no-progress``."""

from __future__ import annotations

import sys
import time


def line_interval(duration: float | None) -> float:
    """Seconds between two plain progress lines: 5 s for short runs, up to a minute."""
    if duration is None:
        return 10.0
    return min(max(duration / 20, 5.0), 60.0)


class Plain:
    """A progress line on *stream* at most every *every* seconds."""

    def __init__(self, duration: float | None, calls: int | None, stream=None,
                 every: float | None = None):
        self.duration, self.calls = duration, calls
        self.stream = stream if stream is not None else sys.stderr
        self.every = line_interval(duration) if every is None else every
        self._next = time.monotonic() + self.every

    def update(self, elapsed: float, done: int, status: str, force: bool = False) -> None:
        now = time.monotonic()
        if not force and now < self._next:
            return
        self._next = now + self.every
        if self.duration is not None:
            where = f"{elapsed:.0f}/{self.duration:g} s"
        elif self.calls is not None:
            where = f"{elapsed:.0f} s, {done:,}/{self.calls:,} calls"
        else:
            where = f"{elapsed:.0f} s"
        print(f"shmpool soak: {where}: {status}", file=self.stream, flush=True)

    def close(self) -> None:
        pass


class Bar:
    """The same, as a tqdm bar."""

    def __init__(self, tqdm, duration: float | None, calls: int | None, every: float = 1.0):
        self.duration, self.every = duration, every
        self._next = 0.0
        if duration is None:
            self.bar = tqdm(total=calls, unit="call", dynamic_ncols=True, mininterval=1)
        else:
            self.bar = tqdm(total=round(duration), unit="s", dynamic_ncols=True, mininterval=1,
                            bar_format="{l_bar}{bar}| {n:.0f}/{total_fmt} s [{elapsed}<"
                                       "{remaining}{postfix}]")

    def update(self, elapsed: float, done: int, status: str, force: bool = False) -> None:
        now = time.monotonic()
        if not force and now < self._next:
            return
        self._next = now + self.every
        self.bar.set_postfix_str(status, refresh=False)
        self.bar.n = (min(done, self.bar.total) if self.duration is None
                      else min(round(elapsed), self.bar.total))
        self.bar.refresh()

    def close(self) -> None:
        self.bar.close()


class Silent:
    def update(self, elapsed: float, done: int, status: str, force: bool = False) -> None:
        pass

    def close(self) -> None:
        pass


def progress(enabled: bool, duration: float | None, calls: int | None):
    """A Bar, a Plain line without tqdm, or Silent when not *enabled*."""
    if not enabled:
        return Silent()
    try:
        from tqdm import tqdm
    except ImportError:
        return Plain(duration, calls)
    return Bar(tqdm, duration, calls)
