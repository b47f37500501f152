"""The live progress line of a cycle on a terminal, and log lines that keep clear of it.

`Progress` rewrites one line on stderr in place as the jobs of a cycle move on; `BelowProgress`
is stderr for log lines, each of which first erases that line. May import: `check` (for
`Tally`) and `render.cycle`.
"""

from __future__ import annotations

import asyncio
import sys
import time
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from datetime import timedelta
from typing import TextIO, cast

from rackwatch.jobs import Tally
from rackwatch.render.cycle import progress_line

_ERASE_LINE = "\r\x1b[2K"


class Progress:
    """A progress line on stderr, rewritten in place at each update and every second."""

    def __init__(self, racks: Sequence[str]) -> None:
        self._racks = racks
        self._started = time.monotonic()
        self._tally = Tally()

    def update(self, tally: Tally) -> None:
        """Draw the line for `tally`, the latest a cycle gave (its `on_progress`)."""
        self._tally = tally
        elapsed = timedelta(seconds=time.monotonic() - self._started)
        sys.stderr.write(_ERASE_LINE + progress_line(self._racks, tally, elapsed))
        sys.stderr.flush()

    @asynccontextmanager
    async def ticking(self) -> AsyncIterator[None]:
        """Redraw the line every second while the block runs; erase it at the end."""
        ticker = asyncio.create_task(self._tick())
        try:
            yield
        finally:
            ticker.cancel()
            self.clear()

    async def _tick(self) -> None:
        while True:
            self.update(self._tally)
            await asyncio.sleep(1.0)

    def clear(self) -> None:
        sys.stderr.write(_ERASE_LINE)
        sys.stderr.flush()


class BelowProgress:
    """stderr for log lines on a terminal: each line first erases the progress line.

    The progress line is drawn again at its next update, under the log line.
    """

    def __init__(self, stream: TextIO) -> None:
        self._stream = stream
        self._line_start = True

    def write(self, text: str) -> int:
        if self._line_start and text:
            self._stream.write(_ERASE_LINE)
        self._line_start = text.endswith("\n")
        return self._stream.write(text)

    def flush(self) -> None:
        self._stream.flush()

    def isatty(self) -> bool:
        return self._stream.isatty()

    def fileno(self) -> int:
        return self._stream.fileno()


def log_stream() -> TextIO | None:
    """Where log lines go: below the progress line on a terminal, else None (the default)."""
    return cast(TextIO, BelowProgress(sys.stderr)) if sys.stderr.isatty() else None
