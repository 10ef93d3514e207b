"""Team mode commands.

python -m pipeline.team up|down|status [--dir .team] [--host 127.0.0.1] [--mlflow-port 5010] [--s3-port 9010]
                                       [--postgres-port 5433] [--tls|--no-tls] [--cert F --key F [--ca F]]
python -m pipeline.team exec [--env .team/client.env] [--no-tracking] -- COMMAND...
python -m pipeline.team user add NAME --role read|edit [--dir .team] [--mlflow-port 5010] ...
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

from pipeline.errors import PipelineError, run_cli
from pipeline.team import accounts, client, stack
from pipeline.team.settings import TeamConfig


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="python -m pipeline.team", description="Team mode: shared DVC remote and MLflow on PostgreSQL + S3."
    )
    sub = parser.add_subparsers(dest="action", required=True)
    user = sub.add_parser("user", help="team members' MLflow accounts")
    user.add_argument("user_action", choices=["add"])
    user.add_argument("name", help="the account's name (letters, digits, . _ -)")
    user.add_argument(
        "--role",
        choices=sorted(accounts.ROLES),
        required=True,
        help="read: see everything, pull (a read-only DVC key); edit: also log runs, register models, push",
    )
    user.add_argument(
        "--params", type=Path, default=Path("params.yaml"), help="where the experiment and model names are"
    )
    for name, text in (
        ("up", "start (or reuse) the local team servers"),
        ("down", "stop them"),
        ("status", "show which answer"),
        ("user", None),
    ):
        servers = user if name == "user" else sub.add_parser(name, help=text)
        servers.add_argument("--dir", type=Path, default=TeamConfig.folder, help="state folder (git-ignored)")
        servers.add_argument(
            "--host",
            default=TeamConfig.host,
            help="address MLflow and S3 listen on (not loopback: over TLS only); PostgreSQL stays on 127.0.0.1",
        )
        servers.add_argument(
            "--tls",
            action=argparse.BooleanOptionalAction,
            default=None,
            help="serve HTTPS (default: exactly when --host is not loopback)",
        )
        servers.add_argument(
            "--cert", type=Path, help="the lab's own server certificate (PEM; default: team-up makes one)"
        )
        servers.add_argument("--key", type=Path, help="its private key (PEM, unencrypted)")
        servers.add_argument(
            "--ca", type=Path, help="what clients should trust for --cert (default: the system's store)"
        )
        servers.add_argument("--mlflow-port", type=int, default=TeamConfig.mlflow_port)
        servers.add_argument("--s3-port", type=int, default=TeamConfig.s3_port)
        servers.add_argument("--postgres-port", type=int, default=TeamConfig.postgres_port)
    run = sub.add_parser("exec", help="run a command with the team settings (env file, DVC remote, checks)")
    run.add_argument("--env", type=Path, default=TeamConfig().client_env, help="client env file (TEAM_ENV)")
    run.add_argument("--no-tracking", action="store_true", help="the command needs S3 only (dvc push/pull)")
    run.add_argument("command", nargs=argparse.REMAINDER)
    args = parser.parse_args(argv)

    if args.action == "exec":
        command = args.command[1:] if args.command[:1] == ["--"] else args.command
        status = client.run(args.env, command, need_tracking=not args.no_tracking)
        if status:
            raise SystemExit(status)
        return
    config = TeamConfig(
        folder=args.dir,
        host=args.host,
        mlflow_port=args.mlflow_port,
        s3_port=args.s3_port,
        postgres_port=args.postgres_port,
        tls=args.tls,
        cert=args.cert,
        key=args.key,
        ca=args.ca,
    )
    if args.action == "user":
        accounts.add(config, args.name, args.role, args.params)
    elif args.action == "up":
        stack.up(config)
    elif args.action == "down":
        stack.down(config)
    elif not stack.status(config):
        raise PipelineError("not every team server answers (`make team-up` starts them)")


if __name__ == "__main__":
    sys.exit(run_cli(main))
