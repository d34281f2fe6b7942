"""The ``vkprovider`` command: ``run`` (the provider), ``sim`` (simulated bases), ``--version``."""

from __future__ import annotations

import argparse
import asyncio
import sys

from vkprovider import __version__


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="vkprovider",
        description="Koupleless bases as virtual Kubernetes nodes, modules as pods (ModuleController v2 in Python).",
    )
    parser.add_argument("--version", action="version", version=f"vkprovider {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    run = sub.add_parser("run", help="run the provider (configured by environment variables, see README)")
    run.add_argument("--kubeconfig", help="kubeconfig path (default: $KUBECONFIG, else in-cluster)")
    run.add_argument("--env", help="environment name (default: $ENV or dev)")
    run.add_argument("--http-port", type=int, help="heartbeat port (default: $HTTP_TUNNEL_LISTEN_PORT or 7777)")
    run.add_argument("--log-format", choices=["text", "json"], help="log format (default: $VKP_LOG_FORMAT)")
    sim = sub.add_parser("sim", help="run simulated Koupleless bases (arklet-compatible)")
    from vkprovider.sim.cli import add_arguments

    add_arguments(sim)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command == "run":
        from vkprovider.app import run
        from vkprovider.config import Settings
        from vkprovider.logs import setup_logging

        overrides = {
            k: v
            for k, v in {
                "kubeconfig": args.kubeconfig,
                "env": args.env,
                "http_tunnel_port": args.http_port,
                "log_format": args.log_format,
            }.items()
            if v is not None
        }
        settings = Settings(**overrides)
        setup_logging(settings.log_format, settings.log_level)
        asyncio.run(run(settings))
        return 0
    if args.command == "sim":
        from vkprovider.logs import setup_logging
        from vkprovider.sim.cli import run_sim

        setup_logging("text", "INFO")
        try:
            asyncio.run(run_sim(args))
        except KeyboardInterrupt:
            pass
        return 0
    parser.print_help()
    return 2


if __name__ == "__main__":
    sys.exit(main())
