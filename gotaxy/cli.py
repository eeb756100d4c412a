# -*- test-case-name: tests.test_cli -*-
"""
``gotaxy``: manage client tokens in a server's store.

    gotaxy token create NAME [--expires-in DAYS]
    gotaxy token list
    gotaxy token revoke NAME

It works on the store directly (``--data-dir`` or ``--store``), so it can run
while the server does: a running server notices a revoked token within ten
seconds and disconnects the client.
"""

from __future__ import annotations

import argparse
import datetime
import os
import sys
from typing import List, Optional, TextIO

from gotaxy.config import ServerConfig
from gotaxy.store import Store, StoreError, default_url


def _when(timestamp: Optional[float]) -> str:
    if timestamp is None:
        return "-"
    return datetime.datetime.fromtimestamp(timestamp, datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="gotaxy", description="Manage a Gotaxy server's client tokens.")
    parser.add_argument("--data-dir", default=ServerConfig().data_dir, help="server data directory [gotaxy-data]")
    parser.add_argument("--store", default=None, help="SQLAlchemy URL of the store (overrides --data-dir)")
    commands = parser.add_subparsers(dest="command", required=True)
    token = commands.add_parser("token", help="create, list or revoke client tokens")
    actions = token.add_subparsers(dest="action", required=True)
    create = actions.add_parser("create", help="create a token; it is printed once")
    create.add_argument("name", help="the client's name, shown in logs and the panel")
    create.add_argument("--expires-in", type=float, metavar="DAYS", help="expire after DAYS days")
    actions.add_parser("list", help="list tokens (never their secret)")
    revoke = actions.add_parser("revoke", help="revoke a token; its client is disconnected")
    revoke.add_argument("name")
    return parser


def main(argv: Optional[List[str]] = None, out: TextIO = sys.stdout) -> int:
    args = _parser().parse_args(argv)
    if args.store is None and not os.path.exists(os.path.join(args.data_dir, "gotaxy.db")):
        print(
            f"gotaxy: no store in {args.data_dir!r}; start the server once or pass --data-dir/--store",
            file=sys.stderr,
        )
        return 1
    if args.store is not None and args.store.startswith("sqlite:///"):
        # A SQLite URL to a file that does not exist would create an empty store.
        path = args.store[len("sqlite:///") :]
        if path and path != ":memory:" and not os.path.exists(path):
            print(f"gotaxy: no store at {path!r}; check --store", file=sys.stderr)
            return 1
    if getattr(args, "expires_in", None) is not None and args.expires_in <= 0:
        print("gotaxy: --expires-in takes a number of days greater than 0", file=sys.stderr)
        return 1
    store = Store(args.store or default_url(args.data_dir))
    try:
        if args.action == "create":
            expires = None
            if args.expires_in is not None:
                expires = datetime.datetime.now(datetime.timezone.utc).timestamp() + args.expires_in * 86400
            record, token = store.create_token(args.name, expires_at=expires)
            print(f"token for client {record.name!r} (shown only now): {token}", file=out)
        elif args.action == "list":
            print(f"{'NAME':<24} {'CREATED':<21} {'EXPIRES':<21} {'LAST USED':<21} STATE", file=out)
            now = datetime.datetime.now(datetime.timezone.utc).timestamp()
            for t in store.list_tokens():
                state = "revoked" if t.revoked_at else ("active" if t.active(now) else "expired")
                print(
                    f"{t.name:<24} {_when(t.created_at):<21} {_when(t.expires_at):<21} "
                    f"{_when(t.last_used_at):<21} {state}",
                    file=out,
                )
        elif args.action == "revoke":
            if not store.revoke_token(args.name):
                print(f"gotaxy: no active token named {args.name!r}", file=sys.stderr)
                return 1
            print(f"revoked the token of {args.name!r}", file=out)
    except StoreError as e:
        print(f"gotaxy: {e}", file=sys.stderr)
        return 1
    finally:
        store.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
