"""The simulated lab's MAAS region: /MAAS/api/2.0/ machines, version and whoami.

It checks OAuth 1.0 the way MAAS (through piston) does, quirks included: a request missing one of
the six oauth_* names is anonymous and gets a bare 401, and a wrong PLAINTEXT signature gets a 401
whose body echoes the real token secret. The machines listing applies MAAS's tag rules: AND of
exact names, 400 for an unknown tag or parameter, and no filter at all for an empty value.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import re
import time
from collections import deque
from typing import Any
from urllib.parse import quote, unquote

from aiohttp import web

from rackwatch.simlab.state import MaasInventory, SimMachine

API = "/MAAS/api/2.0"
USERNAME = "rackwatch"
# MAAS NODE_STATUS names, indexed by the status code.
MAAS_STATUSES = (
    "New",
    "Commissioning",
    "Failed commissioning",
    "Missing",
    "Ready",
    "Reserved",
    "Deployed",
    "Retired",
    "Broken",
    "Deploying",
    "Allocated",
    "Failed deployment",
    "Releasing",
    "Releasing failed",
    "Disk erasing",
    "Failed disk erasing",
    "Rescue mode",
    "Entering rescue mode",
    "Failed to enter rescue mode",
    "Exiting rescue mode",
    "Failed to exit rescue mode",
    "Testing",
    "Failed testing",
)
NONCE_WINDOW_S = 300
_OAUTH_NAMES = (
    "oauth_consumer_key",
    "oauth_token",
    "oauth_signature",
    "oauth_signature_method",
    "oauth_timestamp",
    "oauth_nonce",
)
# The filter names MAAS's form knows; the simulation applies the ones in _FILTERS and accepts the
# exempt ones. Any other name is a 400, as on the real server.
_FILTERS = ("tags", "not_tags", "hostname", "not_hostname", "id", "not_id", "status", "not_status")
_EXEMPT = ("agent_name", "comment", "dry_run", "verbose")
# The filter labels of MAAS's statuses, indexed by the status code.
_STATUS_LABELS = (
    "new",
    "commissioning",
    "failed_commissioning",
    "missing",
    "ready",
    "reserved",
    "deployed",
    "retired",
    "broken",
    "deploying",
    "allocated",
    "failed_deployment",
    "releasing",
    "failed_releasing",
    "disk_erasing",
    "failed_disk_erasing",
    "rescue_mode",
    "entering_rescue_mode",
    "failed_entering_rescue_mode",
    "exiting_rescue_mode",
    "failed_exiting_rescue_mode",
    "testing",
    "failed_testing",
)
_POWERED_ON = frozenset({"Deployed", "Deploying", "Allocated", "Testing", "Commissioning"})


def _text(status: int, text: str, **headers: str) -> web.Response:
    return web.Response(status=status, text=text, headers=headers)


def _unauthorised(reason: str) -> web.Response:
    return _text(
        401, f"Authorization Error: {reason}", **{"WWW-Authenticate": 'OAuth realm="OAuth"'}
    )


class MaasApi:
    """The MAAS routes, over a lab's inventory."""

    def __init__(self, lab: MaasInventory) -> None:
        self._lab = lab
        self._consumer_key, self._token_key, self._token_secret = lab.maas_api_key.split(":")
        self._nonces: set[tuple[str, str, str]] = set()
        self._nonce_log: deque[tuple[float, tuple[str, str, str]]] = deque()

    def register(self, router: web.UrlDispatcher) -> None:
        for path, handler in (
            ("/version/", self.version),
            ("/users/", self.users),
            ("/machines/", self.machines),
        ):
            router.add_get(API + path, handler)
            # Django's APPEND_SLASH answers the slashless URL with a redirect.
            router.add_get(API + path.rstrip("/"), self.append_slash)

    async def append_slash(self, request: web.Request) -> web.Response:
        query = f"?{request.query_string}" if request.query_string else ""
        raise web.HTTPMovedPermanently(f"{request.path}/{query}")

    async def version(self, _request: web.Request) -> web.Response:
        return web.json_response(
            {
                "capabilities": [
                    "networks-management",
                    "static-ipaddresses",
                    "ipv6-deployment-ubuntu",
                    "devices-management",
                    "storage-deployment-ubuntu",
                    "network-deployment-ubuntu",
                    "bridging-interface-ubuntu",
                    "bridging-automatic-ubuntu",
                    "authenticate-api",
                ],
                "version": "3.4.2",
                "subversion": "",
            }
        )

    async def users(self, request: web.Request) -> web.Response:
        if (denied := self.authenticate(request)) is not None:
            return denied
        user = {
            "is_superuser": True,
            "username": USERNAME,
            "email": f"{USERNAME}@example.com",
            "is_local": True,
            "resource_uri": f"{API}/users/{USERNAME}/",
        }
        op = request.query.get("op")
        if op == "whoami":
            return web.json_response(user)
        if op is None:
            return web.json_response([user])
        return _text(400, f"Unrecognised signature: method=GET op={op}")

    async def machines(self, request: web.Request) -> web.Response:
        if (denied := self.authenticate(request)) is not None:
            return denied
        if "op" in request.query:
            return _text(400, f"Unrecognised signature: method=GET op={request.query['op']}")
        errors: dict[str, list[str]] = {}
        for name in request.query:
            if name not in _FILTERS and name not in _EXEMPT and name not in errors:
                errors[name] = ["No such constraint."]
        wanted = {name: _split(request.query.getall(name, [])) for name in _FILTERS}
        unknown = [
            t for t in (*wanted["tags"], *wanted["not_tags"]) if t not in self._lab.maas_tags
        ]
        if unknown:
            listed = ", ".join(f"'{tag}'" for tag in dict.fromkeys(unknown))
            errors["tags"] = [f"No such tag(s): {listed}."]
        for name in ("status", "not_status"):
            bad = [s for s in wanted[name] if s not in _STATUS_LABELS]
            if bad:
                errors[name] = [
                    f"Select a valid choice. {bad[0]} is not one of the available choices."
                ]
        if errors:
            return web.json_response(errors, status=400)
        machines = self._lab.machines
        if wanted["tags"]:  # the machines that carry the first tag asked for, looked up cheaply
            tag, rack_of = wanted["tags"][0], self._lab.machine_rack
            machines = [m for m in machines if rack_of[m.hostname] == tag or tag in m.tags]
        return web.json_response(
            [self.machine_json(m) for m in machines if _selected(self._lab, m, wanted)]
        )

    # -- OAuth, as piston checks it -------------------------------------------------------------

    def authenticate(self, request: web.Request) -> web.Response | None:
        """None when the request carries a valid OAuth signature for the lab's key."""
        header = request.headers.get("Authorization", "")
        if not all(n in header for n in _OAUTH_NAMES) and not all(
            n in request.query for n in _OAUTH_NAMES
        ):
            return _text(401, "Forbidden", **{"WWW-Authenticate": 'OAuth realm="MAAS API"'})
        params = _parse_oauth_header(header)
        params.update({k: v for k, v in request.query.items() if k.startswith("oauth_")})
        if any(name not in params for name in _OAUTH_NAMES):
            return _text(400, "Bad Request: Missing OAuth parameters.")
        version = params.get("oauth_version", "1.0")
        if version != "1.0":
            return _unauthorised(f"'OAuth version {version} not supported.'")
        if params["oauth_consumer_key"] != self._consumer_key:
            return _unauthorised("Invalid API key.")
        if params["oauth_token"] != self._token_key:
            return _unauthorised(f"'Invalid access token: {params['oauth_token']}'")
        now = int(time.time())
        try:
            timestamp = int(params["oauth_timestamp"])
        except ValueError:
            return _text(400, "Bad Request: Invalid timestamp.")
        if now - timestamp > NONCE_WINDOW_S:
            return _unauthorised(
                f"'Expired timestamp: given {timestamp} and now {now} has a greater difference "
                f"than threshold {NONCE_WINDOW_S}'"
            )
        if not self._use_nonce(params["oauth_nonce"]):
            return _unauthorised(f"'Nonce already used: {params['oauth_nonce']}'")
        method = params["oauth_signature_method"]
        if method == "PLAINTEXT":
            expected = "&" + quote(self._token_secret, safe="~")  # the consumer secret is ""
        elif method == "HMAC-SHA1":
            base = _hmac_base_string(request, params)
            key = ("&" + quote(self._token_secret, safe="~")).encode()
            expected = base64.b64encode(
                hmac.new(key, base.encode(), hashlib.sha1).digest()
            ).decode()
        else:
            return _unauthorised(
                f"'Signature method {method} not supported try one of the following: "
                "PLAINTEXT, HMAC-SHA1'"
            )
        if params["oauth_signature"] != expected:
            # MAAS really does echo the expected value, which for PLAINTEXT is the secret.
            shown = expected if method == "PLAINTEXT" else base
            return _unauthorised(f"'Invalid signature. Expected signature base string: {shown}'")
        return None

    def _use_nonce(self, nonce: str) -> bool:
        now = time.monotonic()
        while self._nonce_log and now - self._nonce_log[0][0] > NONCE_WINDOW_S:
            self._nonces.discard(self._nonce_log.popleft()[1])
        key = (self._consumer_key, self._token_key, nonce)
        if key in self._nonces:
            return False
        self._nonces.add(key)
        self._nonce_log.append((now, key))
        return True

    # -- wire format ----------------------------------------------------------------------------

    def machine_json(self, machine: SimMachine) -> dict[str, Any]:
        """A realistic subset of MAAS 3.x's machine object."""
        lab = self._lab
        system_id = lab.system_ids[machine.hostname]
        status = machine.maas_status
        deployed = status in ("Deployed", "Deploying", "Allocated")
        return {
            "system_id": system_id,
            "hostname": machine.hostname,
            "fqdn": f"{machine.hostname}.maas",
            "domain": {
                "authoritative": True,
                "ttl": None,
                "is_default": True,
                "name": "maas",
                "resource_record_count": 0,
                "id": 0,
                "resource_uri": f"{API}/domains/0/",
            },
            "description": "",
            "hardware_uuid": None,
            "status": MAAS_STATUSES.index(status),
            "status_name": status,
            "status_message": (
                "Marking node broken - BMC unreachable" if status == "Broken" else status
            ),
            "status_action": "",
            "error_description": "BMC unreachable" if status == "Broken" else "",
            "owner": "testflinger" if deployed else None,
            "owner_data": {},
            "workload_annotations": {},
            "locked": False,
            "tag_names": tags_of(lab, machine),
            "zone": {
                "name": "default",
                "description": "",
                "id": 1,
                "resource_uri": f"{API}/zones/default/",
            },
            "pool": {
                "name": "default",
                "description": "Default pool",
                "id": 0,
                "resource_uri": f"{API}/resourcepool/0/",
            },
            "architecture": "amd64/generic",
            "osystem": "ubuntu" if deployed else "",
            "distro_series": "noble" if deployed else "",
            "hwe_kernel": "ga-24.04" if deployed else None,
            "min_hwe_kernel": "",
            "cpu_count": 32,
            "cpu_speed": 2100,
            "memory": 131072,
            "swap_size": None,
            "storage": 960197.124096,
            "power_type": "ipmi",
            "power_state": (
                "on" if status in _POWERED_ON else "unknown" if status == "Broken" else "off"
            ),
            "netboot": not deployed,
            "ephemeral_deploy": False,
            "bios_boot_method": "uefi",
            "ip_addresses": [lab.ip_addresses[machine.hostname]] if deployed else [],
            "interface_set": [],
            "boot_interface": None,
            "blockdevice_set": [],
            "physicalblockdevice_set": [],
            "hardware_info": {
                "system_vendor": "Supermicro",
                "system_product": "SYS-620P-TRT",
                "cpu_model": "Intel(R) Xeon(R) Silver 4314 CPU @ 2.40GHz",
            },
            "node_type": 0,
            "node_type_name": "Machine",
            "parent": None,
            "pod": None,
            "resource_uri": f"{API}/machines/{system_id}/",
        }


def _split(values: list[str]) -> list[str]:
    """Repeated values, each possibly a comma- or space-separated list (MAAS's legacy form)."""
    return [item for value in values for item in re.split(r"[,\s]+", value) if item]


def tags_of(lab: MaasInventory, machine: SimMachine) -> list[str]:
    """A machine's MAAS tags: its rack's, then any others it carries (another rack's, say)."""
    rack = lab.machine_rack[machine.hostname]
    return [rack, *(tag for tag in dict.fromkeys(machine.tags) if tag != rack)]


def _selected(lab: MaasInventory, machine: SimMachine, wanted: dict[str, list[str]]) -> bool:
    tags = set(tags_of(lab, machine))
    label = _STATUS_LABELS[MAAS_STATUSES.index(machine.maas_status)]
    system_id = lab.system_ids[machine.hostname]
    return (
        all(tag in tags for tag in wanted["tags"])
        and not any(tag in tags for tag in wanted["not_tags"])
        and (not wanted["hostname"] or machine.hostname in wanted["hostname"])
        and machine.hostname not in wanted["not_hostname"]
        and (not wanted["id"] or system_id in wanted["id"])
        and system_id not in wanted["not_id"]
        and (not wanted["status"] or label in wanted["status"])
        and label not in wanted["not_status"]
    )


def _parse_oauth_header(header: str) -> dict[str, str]:
    """Piston's parser: split on commas, skip the realm, strip quotes, percent-decode."""
    if not header.startswith("OAuth "):
        return {}
    params = {}
    for piece in header[len("OAuth ") :].split(","):
        if "realm" in piece or "=" not in piece:
            continue
        name, value = piece.split("=", 1)
        params[name.strip()] = unquote(value.strip().strip('"'))
    return params


def _hmac_base_string(request: web.Request, params: dict[str, str]) -> str:
    """RFC 5849's signature base string for the request, as an HMAC-SHA1 signer built it."""
    pairs = [(k, v) for k, v in params.items() if k != "oauth_signature" and k.startswith("oauth_")]
    pairs += [(k, v) for k, v in request.query.items() if not k.startswith("oauth_")]
    encoded = sorted((quote(k, safe="~"), quote(v, safe="~")) for k, v in pairs)
    normalized = "&".join(f"{k}={v}" for k, v in encoded)
    url = str(request.url.with_query(None).with_fragment(None))
    return "&".join(quote(part, safe="~") for part in (request.method.upper(), url, normalized))
