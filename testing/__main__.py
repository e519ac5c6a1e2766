"""Private, throwaway PostgreSQL 15 and MariaDB 10.11 servers, by hand.

Usage: python -m twostep.testing up [--dir DIR]
    Starts both servers, prints their twostep client configs as JSON (one line each, stdout),
    then waits for Ctrl-C / SIGTERM and stops both. Without --dir the data is in a temporary
    directory that is removed on exit. (`scripts/throwaway_dbs.py up` runs this, from a clone.)
"""

from __future__ import annotations

import argparse
import json
import shutil
import signal
import sys
import tempfile
from pathlib import Path

from ._mariadb import MariaDBServer
from ._postgres import PostgresServer
from ._processes import sleep_until_signalled
from ._server import Server


def _raise_interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt


def up(directory: Path | None) -> None:
    """Starts both servers with a `twostep` database, prints their configs, waits, stops."""
    base = directory or Path(tempfile.mkdtemp(prefix="twostep-dbs-"))
    signal.signal(signal.SIGTERM, _raise_interrupt)
    servers: list[Server] = []
    try:
        servers = [PostgresServer(base / "postgres"), MariaDBServer(base / "mariadb")]
        for server in servers:
            server.start()
            server.create_database("twostep", exist_ok=True)
            print(json.dumps(server.config("twostep")), flush=True)
        where = ", ".join(f"{s.name} on {s.host}:{s.port}" for s in servers)
        print(f"{where} (data in {base}); Ctrl-C to stop.", file=sys.stderr, flush=True)
        sleep_until_signalled()
    except KeyboardInterrupt:
        pass
    finally:
        for server in servers:
            server.stop()
        if directory is None:
            shutil.rmtree(base, ignore_errors=True)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="python -m twostep.testing", description=__doc__.splitlines()[0]
    )
    commands = parser.add_subparsers(dest="command", required=True)
    up_parser = commands.add_parser("up", help="start both servers until Ctrl-C")
    up_parser.add_argument("--dir", type=Path, help="data directory (default: temporary)")
    args = parser.parse_args(argv)
    if args.command == "up":
        up(args.dir)


if __name__ == "__main__":
    main()
