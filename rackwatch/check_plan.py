"""What a check cycle needs from the configuration: its plan, as plain values."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any

from rackwatch import policy
from rackwatch.config import Settings


@dataclass(frozen=True, slots=True)
class CheckPlan:
    """What a cycle needs from the configuration."""

    limits: policy.Limits
    poll_interval: timedelta
    submit_grace: timedelta = timedelta(minutes=2)
    location: str = ""
    job_template: Mapping[str, Any] = field(default_factory=dict)
    dry_run: bool = False
    failures_to_unhealthy: int = 2
    incident_ratio: float = 0.5
    secrets: tuple[str, ...] = ()  # scrubbed from the provision logs kept
    concurrency: int = 50  # jobs begun and posted at once, as requests in flight are bounded

    @classmethod
    def from_settings(cls, settings: Settings, *, dry_run: bool = False) -> CheckPlan:
        return cls(
            limits=policy.Limits(
                max_fail_streak=settings.check.max_fail_streak,
                stale_after=settings.check.stale_after,
                job_timeout=settings.check.job_timeout,
            ),
            poll_interval=settings.check.poll_interval,
            submit_grace=settings.check.submit_grace,
            location=settings.testflinger.location,
            job_template=settings.job,
            dry_run=dry_run,
            failures_to_unhealthy=settings.health.failures_to_unhealthy,
            incident_ratio=settings.health.rack_incident_ratio,
            secrets=tuple(settings.secret_values()),
            concurrency=settings.check.concurrency,
        )
