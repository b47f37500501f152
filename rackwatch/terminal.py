"""What the terminal that text goes to can show, and a screen that `status --watch` redraws.

`look_of(stream)` says how text is to look on `stream`: on a terminal, fitted to its width and in
colour (unless NO_COLOR is set); in a pipe or a file, whole and plain, as it always was, so that
scripts see no change. `Screen` shows frame after frame in place. May import: `render.table` (for
`Look` and `cut`) and the standard library.
"""

from __future__ import annotations

import os
import shutil
from typing import TextIO

from rackwatch.render.table import PLAIN, Look, cut

_HOME = "\x1b[H"  # the cursor to the top left
_CLEAR_SCREEN = "\x1b[2J"
_CLEAR_LINE_END = "\x1b[K"
_CLEAR_BELOW = "\x1b[J"


def look_of(stream: TextIO, *, wide: bool = False) -> Look:
    """How text is to look on `stream`: on a terminal, fitted to its width ($COLUMNS, else the
    terminal's own) unless `wide`, and in colour unless `takes_colour` says no; in a pipe or a
    file, whole and plain."""
    if not stream.isatty():
        return PLAIN
    width = None if wide else shutil.get_terminal_size().columns
    return Look(width=width, colour=takes_colour(stream))


def takes_colour(stream: TextIO) -> bool:
    """Whether to colour what goes to `stream`: only a terminal, and not when NO_COLOR is set
    and not empty (https://no-color.org), nor when TERM is "dumb"."""
    if os.environ.get("NO_COLOR") or os.environ.get("TERM") == "dumb":
        return False
    return stream.isatty()


class Screen:
    """Frames shown one after another on `stream`: on a terminal, each over the one before,
    from the top left, as many of its lines as the terminal has rows for; elsewhere, each
    after the one before, whole and after a blank line."""

    def __init__(self, stream: TextIO) -> None:
        self._stream = stream
        self._in_place = stream.isatty()
        self._first = True

    def show(self, frame: str) -> None:
        lines = frame.splitlines()
        if not self._in_place:
            self._stream.write(("" if self._first else "\n") + frame + "\n")
        else:
            size = shutil.get_terminal_size()
            if len(lines) > size.lines - 1:  # the last row keeps the cursor
                more = len(lines) - (size.lines - 2)
                hidden = f"… {more} more lines: a taller terminal shows them"
                lines = [*lines[: max(size.lines - 2, 0)], cut(hidden, size.columns)]
            head = (_CLEAR_SCREEN if self._first else "") + _HOME
            self._stream.write(head + "".join(f"{line}{_CLEAR_LINE_END}\n" for line in lines))
            self._stream.write(_CLEAR_BELOW)
        self._first = False
        self._stream.flush()
