"""Serve a simulated lab in its own process: `python -m rackwatch.simlab --help`.

Prints one JSON line on stdout (maas_url, testflinger_url, maas_api_key, port), then serves until
SIGTERM or SIGINT. The MAAS key is the lab's fake one.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import signal
import sys

from rackwatch.simlab.lab import Behaviour, Lab, demo_lab, uniform_lab


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m rackwatch.simlab", description="Serve a simulated MAAS + Testflinger lab."
    )
    parser.add_argument("--demo", action="store_true", help="the demo lab: 3 mixed racks")
    parser.add_argument("--racks", type=int, default=3, help="racks of a uniform lab")
    parser.add_argument("--per-rack", type=int, default=8, help="machines per rack")
    parser.add_argument(
        "--behaviour", type=Behaviour, default=Behaviour.PASS, choices=list(Behaviour)
    )
    parser.add_argument("--provision-seconds", type=float, default=2.0)
    parser.add_argument("--pickup-seconds", type=float, default=0.2)
    parser.add_argument("--slow-factor", type=float, default=20.0)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0, help="0 picks a free port")
    parser.add_argument(
        "--login", metavar="ID:SECRET", help="require a Testflinger login with these credentials"
    )
    parser.add_argument("--token-lifetime", type=float, default=600.0)
    args = parser.parse_args(argv)
    if args.login is not None and ":" not in args.login:
        parser.error("--login takes CLIENT_ID:SECRET")
    return args


def build_lab(args: argparse.Namespace) -> Lab:
    login = tuple(args.login.split(":", 1)) if args.login else None
    options = {
        "provision_seconds": args.provision_seconds,
        "pickup_seconds": args.pickup_seconds,
        "slow_factor": args.slow_factor,
        "testflinger_login": login,
        "token_lifetime": args.token_lifetime,
    }
    if args.demo:
        return demo_lab(**options)
    return uniform_lab(args.racks, args.per_rack, args.behaviour, **options)


async def serve(lab: Lab, host: str, port: int) -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    async with lab.serve(host, port) as urls:
        line = {
            "maas_url": urls.maas,
            "testflinger_url": urls.testflinger,
            "maas_api_key": lab.maas_api_key,
            "port": urls.port,
            "racks": lab.rack_names,
        }
        print(json.dumps(line), flush=True)
        await stop.wait()


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    asyncio.run(serve(build_lab(args), args.host, args.port))
    return 0


if __name__ == "__main__":
    sys.exit(main())
