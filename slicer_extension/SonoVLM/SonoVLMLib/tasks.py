"""Server requests off Slicer's GUI thread, without Qt.

A workflow action is a generator of *steps* (see :mod:`.workflow`): it yields a callable that
only talks to the server (HTTP, no MRML), receives that callable's result (or has its exception
thrown in), and does the scene work itself. :func:`run_steps` drives one on the calling thread
(tests, the self-test, scripts). :class:`BackgroundSteps` runs each request on a worker thread
and the scene work on the thread that polls it (Slicer's GUI thread, from a ``QTimer``), so the
panel keeps answering; :meth:`BackgroundSteps.cancel` stops waiting at once (the generator is
closed, its clean-up runs, whatever the server still answers is dropped).
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Generator
from typing import Any

#: A workflow action: yields server requests, receives their results, returns its outcome.
Steps = Generator[Callable[[], Any], Any, Any]


class Cancelled(Exception):
    """The user cancelled the action before the server answered."""


def run_steps(steps: Steps) -> Any:
    """Run every request of ``steps`` on this thread; return the action's outcome."""
    return _advance(steps, lambda request: _call(request))


def _call(request: Callable[[], Any]) -> tuple[bool, Any]:
    try:
        return True, request()
    except Exception as error:  # handed to the action, which decides
        return False, error


def _advance(steps: Steps, execute: Callable[[Callable[[], Any]], tuple[bool, Any]]) -> Any:
    try:
        request = next(steps)
        while True:
            ok, value = execute(request)
            request = steps.send(value) if ok else steps.throw(value)
    except StopIteration as done:
        return done.value


class BackgroundSteps:
    """Drive ``steps`` with each request on a daemon thread; call :meth:`poll` from the GUI
    thread until it returns ``True``, then read :attr:`outcome` or :attr:`error`.

    Args:
        steps: the action.
    """

    def __init__(self, steps: Steps) -> None:
        self._steps = steps
        self._lock = threading.Lock()
        self._reply: tuple[bool, Any] | None = None
        self._thread: threading.Thread | None = None
        self.done = False
        self.cancelled = False
        self.outcome: Any = None
        self.error: BaseException | None = None
        self._start(lambda: next(self._steps), local=True)

    def _start(self, advance: Callable[[], Callable[[], Any]], local: bool) -> None:
        try:
            request = advance()
        except StopIteration as done:
            self._finish(outcome=done.value)
            return
        except Exception as error:
            self._finish(error=error)
            return
        self._thread = threading.Thread(
            target=self._work, args=(request,), daemon=True, name="SonoVLM request"
        )
        self._thread.start()

    def _work(self, request: Callable[[], Any]) -> None:
        reply = _call(request)
        with self._lock:
            if not self.cancelled:
                self._reply = reply

    def poll(self) -> bool:
        """Hand a finished request's result to the action (scene work runs here); ``True`` once
        the action is over."""
        if self.done:
            return True
        with self._lock:
            reply, self._reply = self._reply, None
        if reply is not None:
            ok, value = reply
            self._start(lambda: self._steps.send(value) if ok else self._steps.throw(value), local=True)
        return self.done

    def cancel(self) -> None:
        """Stop now: the action's clean-up runs, its pending reply will be dropped."""
        if self.done:
            return
        with self._lock:
            self.cancelled = True
            self._reply = None
        self._steps.close()
        self._finish(error=Cancelled("cancelled before the server answered"))

    def wait(self, timeout: float | None = None) -> bool:
        """Block until the request in flight has answered (for tests); ``True`` if it did."""
        if self._thread is not None:
            self._thread.join(timeout)
            return not self._thread.is_alive()
        return True

    def _finish(self, outcome: Any = None, error: BaseException | None = None) -> None:
        self.done = True
        self.outcome = outcome
        self.error = error
