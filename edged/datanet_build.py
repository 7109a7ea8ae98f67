"""Building a datanet's span-index segment in a child process, with its progress relayed
back: the suffix array's construction needs several times the corpus in memory, and a
daemon's heap would keep that after the build. ``DatanetStore`` (``edged/datanets.py``)
calls :func:`build_in_child`; the spawned child imports this module, not the store's."""

from __future__ import annotations

import multiprocessing
from collections.abc import Callable, Sequence
from concurrent.futures import Future, ProcessPoolExecutor, wait
from multiprocessing.queues import SimpleQueue
from pathlib import Path
from typing import Any

from attribution.span_index import CorpusDocument, CorpusError, SegmentInfo, build_segment
from edged.errors import InvalidRequest


def build_in_child(directory: Path, documents: Sequence[CorpusDocument],
                   progress: Callable[[int], None] | None) -> None:
    """Build the segment of ``documents`` at ``directory`` in a child process; a corpus
    the builder refuses is an ``InvalidRequest``. ``progress`` gets the builder's counts
    of documents read, relayed from the child."""
    context = multiprocessing.get_context("spawn")
    updates: SimpleQueue[int] = context.SimpleQueue()
    try:
        with ProcessPoolExecutor(max_workers=1, mp_context=context,
                                 initializer=_send_build_progress_to,
                                 initargs=(updates if progress else None,)) as pool:
            future = pool.submit(_build_segment_reporting, directory, list(documents))
            try:
                if progress is not None:
                    _relay_progress(future, updates, progress)
                future.result()
            except CorpusError as exc:
                raise InvalidRequest(str(exc), param="documents") from None
    finally:
        updates.close()


# In a build child only: where build_segment's progress goes (None: nowhere). A pool
# initializer is the one way to hand a worker a queue, so it lives in a module global.
_build_progress: SimpleQueue[int] | None = None


def _send_build_progress_to(updates: SimpleQueue[int] | None) -> None:
    """Pool initializer of a build child: keep the queue its progress counts go to."""
    global _build_progress
    _build_progress = updates


def _build_segment_reporting(directory: Path, documents: list[CorpusDocument]) -> SegmentInfo:
    """``build_segment`` in a build child, its document counts sent to the parent."""
    return build_segment(directory, documents,
                         progress=None if _build_progress is None else _build_progress.put)


def _relay_progress(future: Future[Any], updates: SimpleQueue[int],
                    progress: Callable[[int], None]) -> None:
    """Pass the build child's counts to ``progress`` until its ``future`` is done."""
    while True:
        # The child writes each count before it returns, so once the future is done
        # every count it sent is readable here.
        finished = future.done()
        while not updates.empty():
            progress(updates.get())
        if finished:
            return
        wait([future], timeout=0.1)
