"""Token bytes to text that never shows (the start of) a stop string."""

from __future__ import annotations

import codecs
from collections.abc import Sequence


class StopTextStream:
    """Turns token bytes into text that never contains (the start of) a stop string.

    Bytes go through an incremental UTF-8 decoder; text that could be the beginning of a
    stop string is held back until it is known not to be one. Once a stop string is
    complete, :attr:`stopped` is set and only the text before it is released.
    """

    def __init__(self, stops: Sequence[str]) -> None:
        self.stops = tuple(s for s in stops if s)
        self.stopped = False
        self._decode = codecs.getincrementaldecoder("utf-8")(errors="replace").decode
        self._pending = ""

    def push(self, data: bytes) -> str:
        """Feed one token's bytes; return the text that is now safe to emit."""
        return self._release(self._decode(data), final=False)

    def finish(self) -> str:
        """Flush the decoder and return whatever was held back (the end of the text)."""
        return self._release(self._decode(b"", True), final=True)

    def _release(self, text: str, final: bool) -> str:
        if self.stopped:
            return ""
        pending = self._pending + text
        cut = min((i for i in (pending.find(s) for s in self.stops) if i >= 0), default=-1)
        if cut >= 0:
            self.stopped = True
            self._pending = ""
            return pending[:cut]
        hold = 0 if final else self._partial_stop_length(pending)
        self._pending = pending[len(pending) - hold :]
        return pending[: len(pending) - hold]

    def _partial_stop_length(self, text: str) -> int:
        """Length of the longest tail of ``text`` that is a proper prefix of a stop string."""
        longest = 0
        for stop in self.stops:
            for size in range(min(len(stop) - 1, len(text)), longest, -1):
                if text.endswith(stop[:size]):
                    longest = size
                    break
        return longest
