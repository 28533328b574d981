"""SIGINT/SIGTERM. During training (:class:`GracefulStop`): finish the step, write a checkpoint,
say how to resume, exit; a second Ctrl-C stops at once. Elsewhere (:class:`TerminateAsInterrupt`):
SIGTERM unwinds like Ctrl-C, so no half-written file is left. Cluster schedulers send SIGTERM
before they kill a preempted job.
"""

from __future__ import annotations

import contextlib
import signal
import threading
from collections.abc import Iterator
from types import FrameType

EXIT_CODES = {signal.SIGINT: 130, signal.SIGTERM: 143}


class GracefulStop:
    """While active (main thread only), the first SIGINT/SIGTERM is recorded instead of killing."""

    def __init__(self) -> None:
        self.signum: int | None = None
        self._previous: dict[int, object] = {}

    def _handle(self, signum: int, frame: FrameType | None) -> None:
        if self.signum is not None and signum == signal.SIGINT:
            raise KeyboardInterrupt  # asked twice: stop now
        self.signum = signum

    def __enter__(self) -> GracefulStop:
        if threading.current_thread() is threading.main_thread():
            for s in EXIT_CODES:
                self._previous[s] = signal.signal(s, self._handle)
        return self

    def __exit__(self, *exc) -> None:
        for s, handler in self._previous.items():
            signal.signal(s, handler)
        self._previous.clear()

    @property
    def name(self) -> str:
        return signal.Signals(self.signum).name if self.signum is not None else ""

    @property
    def exit_code(self) -> int:
        return EXIT_CODES.get(self.signum, 130)


class Terminated(KeyboardInterrupt):
    """SIGTERM outside a graceful section: unwinds like Ctrl-C, so atomic writes remove their temporaries."""


def _raise_terminated(signum: int, frame: FrameType | None) -> None:
    raise Terminated


class TerminateAsInterrupt:
    """While active (main thread only, and only where SIGTERM has its default action), SIGTERM
    raises :class:`Terminated` instead of killing the process silently mid-write."""

    def __init__(self) -> None:
        self._previous = None

    def __enter__(self) -> TerminateAsInterrupt:
        if threading.current_thread() is threading.main_thread() and signal.getsignal(signal.SIGTERM) == signal.SIG_DFL:
            self._previous = signal.signal(signal.SIGTERM, _raise_terminated)
        return self

    def __exit__(self, *exc) -> None:
        if self._previous is not None:
            signal.signal(signal.SIGTERM, self._previous)
            self._previous = None


@contextlib.contextmanager
def interrupts_held() -> Iterator[None]:
    """Hold SIGINT/SIGTERM until the block ends, then deliver the first one to the handler it would
    have met. For third-party writers whose clean-up masks an exception raised inside them: numpy's
    ``savez`` closes its zip in a ``finally``, and that close fails on the half-open member, so an
    interrupt there came out as a ValueError traceback. Main thread only (elsewhere: no-op)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    received: list[int] = []
    previous: dict[int, object] = {}
    try:  # installed inside the try, so a signal between the two installs still restores the first
        for s in EXIT_CODES:
            previous[s] = signal.signal(s, lambda signum, frame: received.append(signum))
        yield
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)
        if received:
            signal.raise_signal(received[0])  # the restored handler runs now, as if it had just arrived
