"""`unlearn stack up|status|down`: a local stack on 127.0.0.1 with what a cluster provides.

Registered into the `unlearn` command through the ``unlearn.commands`` entry point; the work
is :mod:`unlearn_lib.stack`'s.
"""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any

EXIT_DOWN = 1


def _echo(line: str) -> None:
    print(line, flush=True)


def cmd_up(args: argparse.Namespace) -> int:
    from unlearn_lib.settings import Settings
    from unlearn_lib.stack import up

    base = Settings() if args.model_name is None else Settings(model_name=args.model_name)
    info = up(
        args.dir,
        args.workspace,
        state_db=args.state_db,
        mlflow_backend=args.mlflow_backend,
        dvc_cache=args.dvc_cache,
        base=base,
        echo=_echo,
    )
    if info.already_running:
        print(f"the stack in {info.dir} is already running; nothing to do")
    elif info.restarted:
        print(f"restarted {', '.join(info.restarted)} in {info.dir} ({info.seconds:.0f}s)")
    else:
        print(f"stack up in {info.dir} ({info.seconds:.0f}s)")
    for name, svc in info.services.items():
        print(f"  {name:<9}{svc.url:<58}pid {svc.pid}, log {svc.log}")
    seed = info.seed
    if seed:
        print(
            f"  seeded: main {seed['git_main'][:12]}, {seed['dvc_files_pushed']} DVC files to {seed['dvc_remote']}, "
            f"model {seed['model_name']} version {seed['model_version']} (production)"
        )
    if info.state_db == "sqlite":
        print(
            "warning: the state database is a SQLite file on this machine: container runs cannot open it "
            "(they need `--state-db postgresql`)",
            file=sys.stderr,
        )
    print(f"use it:   source {args.dir.rstrip('/')}/{info.env_path.name}   (credentials; then `unlearn ...` uses it)")
    print(f"stop it:  unlearn stack down --dir {args.dir}")
    return 0


def cmd_status(args: argparse.Namespace) -> int:
    from unlearn_lib.stack import status

    st = status(args.dir)
    if args.json:
        print(json.dumps(st, indent=1))
        return 0 if st["up"] else EXIT_DOWN
    if not st["exists"]:
        print(f"no stack in {st['dir']} (start one with `unlearn stack up`)")
        return EXIT_DOWN
    for name, svc in st["services"].items():
        state = "up" if svc["alive"] and svc["answering"] else ("not answering" if svc["alive"] else "down")
        print(f"{name:<9}{state:<15}{svc['url']:<58}pid {svc['pid']}, log {svc['log']}")
    stopped = " (stopped by `unlearn stack down`)" if st["stopped"] else ""
    print(f"stack in {st['dir']}: {'up' if st['up'] else 'NOT up'}{stopped}")
    return 0 if st["up"] else EXIT_DOWN


def cmd_down(args: argparse.Namespace) -> int:
    from unlearn_lib.stack import down

    stopped = down(args.dir, purge=args.purge)
    if stopped:
        print(f"stopped {', '.join(stopped)}")
    else:
        print(f"no stack running in {args.dir}")
    if args.purge:
        print(f"deleted {args.dir}")
    return 0


def register(sub: Any) -> None:
    p = sub.add_parser("stack", help="a local stack on 127.0.0.1: S3 (moto), MLflow, git server, PostgreSQL")
    ps = p.add_subparsers(dest="stack_command", required=True, metavar="ACTION")
    u = ps.add_parser("up", help="start the services and seed them from the workspace (no-op when running)")
    u.add_argument("--workspace", help="local workspace to seed from (default: workspace; created if absent)")
    u.add_argument(
        "--state-db",
        choices=["postgresql", "sqlite"],
        default="postgresql",
        help="state database: PostgreSQL (default; containers can reach it) or a SQLite file in DIR",
    )
    u.add_argument(
        "--mlflow-backend",
        choices=["sqlite", "postgresql"],
        default="sqlite",
        help="MLflow's database: SQLite in DIR (default) or the stack's PostgreSQL",
    )
    u.add_argument("--dvc-cache", default=".cache/dvc", help="shared DVC cache when the workspace is created")
    u.add_argument("--model-name", help="registered model name (default: the settings' default)")
    u.set_defaults(func=cmd_up)
    s = ps.add_parser("status", help="each service: process alive, port answering; exit 1 unless all are up")
    s.add_argument("--json", action="store_true")
    s.set_defaults(func=cmd_status)
    d = ps.add_parser("down", help="stop every service (exit 0 when nothing runs)")
    d.add_argument("--purge", action="store_true", help="also delete the stack folder")
    d.set_defaults(func=cmd_down)
    for cmd in (u, s, d):
        cmd.add_argument("--dir", default=".stack", help="the stack's folder (default .stack)")
