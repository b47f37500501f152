"""Twenty SIGKILLs of the daemon at random moments, with slow serial POSTs (benchmarks/kill.py)."""

from __future__ import annotations

from pathlib import Path

from benchmarks import kill


async def test_twenty_sigkills_double_lose_and_orphan_nothing(tmp_path: Path) -> None:
    """Killed 20 times mid-cycle, the daemon never doubles a job, loses an agent or a job."""
    figures = await kill.run(kills=20, seed=1, scratch=tmp_path)
    assert figures.jobs > 0
    assert (figures.duplicates, figures.lost, figures.untracked) == (0, 0, 0)
    assert figures.last_exit == 0
