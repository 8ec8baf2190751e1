"""Read ahead on a background thread, so reading the next chunk overlaps computing on this one.

>>> list(prefetch(iter(range(5)), depth=2, transform=lambda x: x * 10))
[0, 10, 20, 30, 40]
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Callable, Iterator

_DONE = object()


class _Failure:
    def __init__(self, error: BaseException):
        self.error = error


def prefetch(items: Iterator, depth: int = 2, transform: Callable | None = None) -> Iterator:
    """Yield ``items`` (each passed through ``transform``), produced up to ``depth`` ahead on a thread.

    An exception raised while producing an item is re-raised, in order, in the consumer. Closing the
    returned generator early (``break``, an error) stops the thread after its current item.
    """
    if depth < 1:
        raise ValueError(f"depth must be at least 1, got {depth}")
    buffer: queue.Queue = queue.Queue(maxsize=depth)
    stop = threading.Event()

    def put(value) -> bool:
        while not stop.is_set():
            try:
                buffer.put(value, timeout=0.1)
                return True
            except queue.Full:
                continue
        return False

    def produce() -> None:
        try:
            for item in items:
                if not put(transform(item) if transform is not None else item):
                    return
        except BaseException as error:  # handed to the consumer, which re-raises it
            put(_Failure(error))
            return
        put(_DONE)

    worker = threading.Thread(target=produce, name="jneuron-prefetch", daemon=True)
    worker.start()
    try:
        while True:
            value = buffer.get()
            if value is _DONE:
                return
            if isinstance(value, _Failure):
                raise value.error
            yield value
    finally:
        stop.set()
        worker.join()
