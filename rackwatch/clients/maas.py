"""MAAS: the machines of one rack, by tag, with OAuth1 PLAINTEXT signing."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from oauthlib import oauth1

from rackwatch.clients._http import Http, Pool
from rackwatch.config import MaasSettings, check_rack_name
from rackwatch.errors import UnknownRackError, UpstreamResponseError
from rackwatch.model import Machine


class MaasClient:
    """Reads machines from one MAAS region.

    The API key is "consumer_key:token_key:token_secret"; MAAS's consumer secret is always
    empty. Every attempt is signed anew, because MAAS refuses a nonce it has seen before.
    """

    def __init__(self, settings: MaasSettings, pool: Pool) -> None:
        consumer_key, token_key, token_secret = settings.api_key.get_secret_value().split(":")
        # MAAS echoes the token secret in some 401 bodies: those are never quoted.
        self._http = Http(
            "maas",
            pool,
            timeout_s=settings.timeout.total_seconds(),
            quote_refusals=False,
            secrets=[token_secret],
        )
        self._machines_url = f"{settings.url}api/2.0/machines/"
        self._signer = oauth1.Client(
            consumer_key,
            client_secret="",
            resource_owner_key=token_key,
            resource_owner_secret=token_secret,
            signature_method=oauth1.SIGNATURE_PLAINTEXT,
        )

    async def _sign(self) -> Mapping[str, str]:
        # With PLAINTEXT the URL is not part of the signature, so the bare URL will do.
        _, headers, _ = self._signer.sign(self._machines_url, http_method="GET")
        return {"Authorization": headers["Authorization"]}

    async def machines(self, rack: str) -> list[Machine]:
        """The machines tagged with the rack's name."""
        check_rack_name(rack)
        reply = await self._http.request(
            "GET",
            self._machines_url,
            params={"tags": rack},
            headers=self._sign,
            expect=(200, 400),
        )
        data = reply.json()
        if reply.status == 400:
            if isinstance(data, dict) and "tags" in data:
                raise UnknownRackError(rack)
            raise UpstreamResponseError(
                "maas", f"{reply.what} answered 400: {reply.message()}", status=400
            )
        if not isinstance(data, list):
            raise UpstreamResponseError("maas", f"{reply.what}: expected a list of machines")
        return [_machine(item, reply.what) for item in data]


def _machine(item: Any, what: str) -> Machine:
    try:
        return Machine(
            hostname=str(item["hostname"]),
            system_id=str(item["system_id"]),
            status=str(item.get("status_name") or ""),
            power_state=str(item.get("power_state") or "unknown"),
            tags=tuple(str(tag) for tag in item.get("tag_names") or ()),
        )
    except (KeyError, TypeError, AttributeError):
        raise UpstreamResponseError(
            "maas", f"{what}: a machine without hostname or system_id"
        ) from None
