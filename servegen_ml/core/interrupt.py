"""SIGTERM handled like SIGINT: the running command unwinds, so atomic writes remove their temporary files.

``timeout``, Kubernetes and CI stop a job with SIGTERM, whose default action
kills the process at once and leaves ``.tmp`` files behind.
"""

from __future__ import annotations

import contextlib
import signal
import threading
from collections.abc import Iterator


class Terminated(KeyboardInterrupt):
    """Raised in the main thread on SIGTERM (a KeyboardInterrupt, so every cleanup path that handles ^C runs)."""


_received: list[int] = []


def _interrupt(signum: int) -> KeyboardInterrupt:
    if signum == signal.SIGTERM:
        return Terminated(f"terminated by signal {signum}")
    return KeyboardInterrupt(f"interrupted by signal {signum}")


def _raise_interrupt(signum, frame):
    _received.append(signum)
    raise _interrupt(signum)


def raise_if_interrupted() -> None:
    """Raise :class:`Terminated` (SIGTERM) or KeyboardInterrupt (SIGINT) if one came: a handler's
    exception is lost when it fires inside a finalizer or a library that swallows it (a ^C during
    ``validate`` was: 6 of 80 runs exited 0), so long loops, commits and the CLI's exit check."""
    if _received:
        raise _interrupt(_received[-1])


@contextlib.contextmanager
def terminate_as_interrupt() -> Iterator[None]:
    """Within the block, SIGTERM raises :class:`Terminated` and SIGINT KeyboardInterrupt, each also
    recorded for :func:`raise_if_interrupted` (main thread only; a no-op elsewhere)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = {sig: signal.signal(sig, _raise_interrupt) for sig in (signal.SIGTERM, signal.SIGINT)}
    try:
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
        _received.clear()


def fit_interruptibly(trainer, *args, **kwargs) -> None:
    """``trainer.fit(*args, **kwargs)`` of a Lightning Trainer, an interrupt given back as one.

    Lightning turns ^C and SIGTERM during ``fit`` into ``SystemExit(1)``; this raises
    KeyboardInterrupt or :class:`Terminated` instead, so the command unwinds and exits 130 or
    143 like any other interrupt. A real ``SystemExit`` passes through.
    """
    try:
        trainer.fit(*args, **kwargs)
    except SystemExit:
        if not getattr(trainer, "interrupted", False):
            raise
        # A SIGTERM that came before Lightning installed its own handler.
        raise_if_interrupted()
        sigterm = getattr(getattr(trainer, "_signal_connector", None), "received_sigterm", False)
        raise (Terminated if sigterm else KeyboardInterrupt)("training interrupted") from None
