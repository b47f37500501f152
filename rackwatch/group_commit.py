"""The state file's writes that a cycle's checks ask for together, made in one transaction.

Each check writes its row three times: its job about to be submitted, submitted, and ended.
The checks are tasks of one event loop, and many of them come to a write in the same turn of
it: as posting slots free, and as a round of the job tracking tells many jobs that they ended.
`GroupCommit` makes the writes asked for in one turn in one transaction (`Store.batch`), each
in a savepoint of its own, so that a write that fails undoes only itself and raises in its own
caller. A write is durable when its await returns, as one of its own would be: no job is posted
before its check is on disk. May import: `store`.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any, TypeVar

from rackwatch.store import Store

T = TypeVar("T")


class GroupCommit:
    """Runs writes to `store` (calls of its write methods), those of one turn together."""

    def __init__(self, store: Store) -> None:
        self._store = store
        self._pending: list[tuple[Callable[[], Any], asyncio.Future[Any]]] = []
        self.transactions = 0  # committed, however many writes each held

    async def __call__(self, write: Callable[[], T]) -> T:
        """What `write()` answers, once it is committed; what it raises, raised here."""
        loop = asyncio.get_running_loop()
        future: asyncio.Future[T] = loop.create_future()
        if not self._pending:
            loop.call_soon(self._commit)
        self._pending.append((write, future))
        return await future

    def _commit(self) -> None:
        pending, self._pending = self._pending, []
        answers: list[tuple[asyncio.Future[Any], Any, Exception | None]] = []
        try:
            with self._store.batch():
                for write, future in pending:
                    try:
                        answers.append((future, write(), None))
                    except Exception as exc:  # its savepoint is undone; the others go on
                        answers.append((future, None, exc))
        except BaseException as exc:  # not committed: none of them was written
            for _, future in pending:
                if not future.done():
                    future.set_exception(exc)
            if not isinstance(exc, Exception):
                raise
            return
        self.transactions += 1
        for future, answer, error in answers:
            if future.done():  # its caller was cancelled meanwhile; the write stands
                continue
            if error is not None:
                future.set_exception(error)
            else:
                future.set_result(answer)
