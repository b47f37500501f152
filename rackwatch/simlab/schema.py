"""The simulated Testflinger server's schema validation, with marshmallow's messages.

A `Check` looks at one field's value and returns None, or what marshmallow would say about it: a
list of messages, or a mapping of them for a nested value. `validate` applies the checks of a
schema (`JOB_FIELDS`, `AGENT_FIELDS`, or one of a route's own) to a request body and returns its
errors, which a 422 answer carries under "detail". This module imports nothing of the lab.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

__all__ = [
    "Check",
    "validate",
    "string",
    "queue_name",
    "integer",
    "boolean",
    "mapping",
    "strings",
    "one_of",
    "provision_data",
    "JOB_FIELDS",
    "AGENT_FIELDS",
]

Check = Callable[[Any], list[str] | dict[str, Any] | None]


def validate(body: Any, fields: dict[str, Check], required: tuple[str, ...] = ()) -> dict[str, Any]:
    """The errors of `body` by field name, {} when it is valid; only provision_data may be null."""
    if not isinstance(body, dict):
        return {"_schema": ["Invalid input type."]}
    errors: dict[str, Any] = {}
    for name, value in body.items():
        check = fields.get(name)
        if check is None:
            errors[name] = ["Unknown field."]
        elif value is None and check is not provision_data:
            errors[name] = ["Field may not be null."]
        elif (problem := check(value)) is not None:
            errors[name] = problem
    for name in required:
        if name not in body:
            errors[name] = ["Missing data for required field."]
    return errors


def string(value: Any) -> list[str] | None:
    return None if isinstance(value, str) else ["Not a valid string."]


def queue_name(value: Any) -> list[str] | None:
    if not isinstance(value, str):
        return ["Not a valid string."]
    return None if value else ["Shorter than minimum length 1."]


def integer(value: Any) -> list[str] | None:
    return (
        None if isinstance(value, int) and not isinstance(value, bool) else ["Not a valid integer."]
    )


def boolean(value: Any) -> list[str] | None:
    return None if isinstance(value, bool) else ["Not a valid boolean."]


def mapping(value: Any) -> list[str] | None:
    return None if isinstance(value, dict) else ["Not a valid mapping type."]


def strings(value: Any) -> list[str] | dict[str, Any] | None:
    if not isinstance(value, list):
        return ["Not a valid list."]
    bad = {
        str(i): ["Not a valid string."] for i, item in enumerate(value) if not isinstance(item, str)
    }
    return bad or None


def one_of(*choices: str) -> Check:
    def check(value: Any) -> list[str] | None:
        return None if value in choices else [f"Must be one of: {', '.join(choices)}."]

    return check


_MAAS_PROVISION = {"distro": str, "kernel": str, "user_data": str, "disks": list, "ephemeral": bool}


def provision_data(value: Any) -> dict[str, Any] | None:
    """None for the MAAS and noprovision shapes (and, unchecked, connectors that take a URL)."""
    if value is None:
        return None
    valid = isinstance(value, dict) and (
        all(k in _MAAS_PROVISION and isinstance(v, _MAAS_PROVISION[k]) for k, v in value.items())
        or (set(value) == {"skip"} and isinstance(value["skip"], bool))
        or any(key in value for key in ("url", "use_attachment", "jobs"))
    )
    return None if valid else {"_schema": ["Invalid provision data schema."]}


JOB_FIELDS: dict[str, Check] = {
    "job_queue": queue_name,
    "job_id": string,
    "name": string,
    "tags": strings,
    "provision_data": provision_data,
    "test_data": mapping,
    "reserve_data": mapping,
    "allocate_data": mapping,
    "firmware_update_data": mapping,
    "global_timeout": integer,
    "output_timeout": integer,
    "allocation_timeout": integer,
    "job_priority": integer,
    "exclude_agents": strings,
    "job_status_webhook": string,
    "parent_job_id": string,
    "debug": boolean,
}
AGENT_FIELDS: dict[str, Check] = {
    "identifier": string,
    "job_id": string,
    "location": string,
    "log": strings,
    "provision_type": string,
    "queues": strings,
    "state": string,
    "comment": string,
}
