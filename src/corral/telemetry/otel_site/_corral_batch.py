"""The span queue between the app's threads and the exporter's (loaded by ``_corral_otel``).

Why not the SDK's ``BatchSpanProcessor``: its ``on_end`` costs a ``getpid`` system call, a
shutdown test, a queue-full test and a metrics hook per span, on the app's request path. Here
ending a span is one ``deque.append`` and one length test; the exporter's thread is woken only
when a whole batch is waiting (or every schedule delay), never per span, and a process that
forks gets a fresh queue and thread in the child from ``os.register_at_fork``, not from a pid
test per span. It reads the SDK's settings (``OTEL_BSP_SCHEDULE_DELAY``,
``OTEL_BSP_MAX_QUEUE_SIZE``, ``OTEL_BSP_MAX_EXPORT_BATCH_SIZE``) and keeps its behaviour: a full
queue drops the oldest span (said once on stderr), shutdown exports what is queued, the export
runs with instrumentation suppressed so the exporter's own HTTP is never traced.
"""

from __future__ import annotations

import collections
import os
import sys
import threading
import weakref
from typing import Any


def _setting(name: str, default: int) -> int:
    try:
        value = int(os.environ.get(name, "") or default)
    except ValueError:
        return default
    return value if value > 0 else default


class BatchProcessor:
    """A ``SpanProcessor`` (duck-typed: the SDK calls ``on_start``, ``_on_ending``, ``on_end``,
    ``shutdown``, ``force_flush``) that hands batches to ``exporter.export`` on its own
    thread. ``emit`` is the lean spans' way in: they are always sampled."""

    def __init__(self, exporter: Any, suppress: Any) -> None:
        self._exporter = exporter
        self._suppress = suppress  # () -> None: suppresses instrumentation in this thread
        self._delay = _setting("OTEL_BSP_SCHEDULE_DELAY", 5000) / 1000
        size = _setting("OTEL_BSP_MAX_QUEUE_SIZE", 2048)
        self._batch = min(_setting("OTEL_BSP_MAX_EXPORT_BATCH_SIZE", 512), size)
        self._queue: collections.deque[Any] = collections.deque(maxlen=size)
        self._dropped_said = False
        self._done = False
        self._lock = threading.Lock()  # one export at a time: the worker's or a flush's
        self._start_worker()
        if hasattr(os, "register_at_fork"):
            ref = weakref.ref(self)

            def after_in_child() -> None:
                me = ref()
                if me is not None:
                    me._start_worker()

            os.register_at_fork(after_in_child=after_in_child)

    def _start_worker(self) -> None:
        # Fresh after a fork too: the parent's queue is the parent's to send.
        self._queue.clear()
        self._lock = threading.Lock()
        self._awake = threading.Event()
        self._thread = threading.Thread(
            target=self._work, name="OtelBatchSpanRecordProcessor", daemon=True
        )
        self._thread.start()

    def emit(self, span: Any) -> None:
        queue = self._queue
        if len(queue) == queue.maxlen and not self._dropped_said:
            self._dropped_said = True
            sys.stderr.write("corral-otel: span queue full, dropping the oldest spans\n")
        queue.append(span)
        if len(queue) >= self._batch and not self._awake.is_set():
            self._awake.set()

    def on_start(self, span: Any, parent_context: Any = None) -> None:
        pass

    def _on_ending(self, span: Any) -> None:
        pass

    def on_end(self, span: Any) -> None:
        if span.context.trace_flags.sampled and not self._done:
            self.emit(span)

    def _work(self) -> None:
        self._suppress()
        while not self._done:
            self._awake.wait(self._delay)
            self._awake.clear()  # before exporting: a batch filling meanwhile wakes us again
            if not self._done:
                self._export(whole=False)
        self._export(whole=True)

    def _export(self, whole: bool) -> None:
        """Whole batches while there are any; then, unless ``whole``, what is left once."""
        queue, popleft = self._queue, self._queue.popleft
        with self._lock:
            first = True
            while queue and (whole or first or len(queue) >= self._batch):
                first = False
                batch = [popleft() for _ in range(min(self._batch, len(queue)))]
                try:
                    self._exporter.export(batch)
                except Exception as error:  # the next batch may fare better; the app goes on
                    sys.stderr.write(f"corral-otel: export failed: {error!r}\n")

    def shutdown(self) -> None:
        if self._done:
            return
        self._done = True
        self._awake.set()
        self._thread.join(30)
        self._exporter.shutdown()

    def force_flush(self, timeout_millis: int = 30000) -> bool:
        if self._done:
            return False
        self._export(whole=True)
        return True
