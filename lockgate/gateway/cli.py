"""`lockgate serve | check | keys new|create|list|revoke | spend | import`."""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
from pathlib import Path

from lockgate.gateway.config import GatewayConfig, StoreConfig
from lockgate.kernel.parsing import ConfigError

CONFIG_CANDIDATES = ("gateway.yaml", "policies/gateway.yaml")


def find_config(given: str | None) -> str:
    if given:
        return given
    for candidate in CONFIG_CANDIDATES:
        if Path(candidate).exists():
            return candidate
    return "gateway.yaml"


def config_or_exit(given: str | None, command: str) -> str:
    """The config file to use, or one sentence saying where it was looked for and how to name it."""
    path = find_config(given)
    if Path(path).is_file():
        return path
    if given:
        missing = f"--config {given}: no such file ({Path(given).absolute()})"
    else:
        looked = " and ".join(f"./{c}" for c in CONFIG_CANDIDATES)
        missing = f"no config found: looked for {looked} in {Path.cwd()}; pass --config PATH/TO/gateway.yaml"
    print(f"lockgate {command}: {missing}", file=sys.stderr)
    raise SystemExit(1)


def checked_or_exit(path: str) -> GatewayConfig:
    """gateway.yaml and every policy it mounts, checked together (proxy/checks.py): the
    same verdict for `check` and `serve`; every problem printed, never a traceback."""
    from lockgate.gateway.checks import inspect

    try:
        report = inspect(path)
    except Exception as exc:  # noqa: BLE001 - a checker's own bug still ends in a sentence, never a traceback
        print(f"{path}: cannot check this config (a bug in lockgate, please report it): {exc!r}", file=sys.stderr)
        raise SystemExit(1) from None
    if report.config is None:
        for problem in report.problems:
            print(problem, file=sys.stderr)
        print(f"{len(report.problems)} problem{'s' if len(report.problems) != 1 else ''} found", file=sys.stderr)
        raise SystemExit(1)
    return report.config


def cmd_serve(args: argparse.Namespace) -> int:
    from lockgate.gateway import server

    path = config_or_exit(args.config, "serve")
    config = checked_or_exit(path)
    for warning in config.warnings:
        print(warning, file=sys.stderr)
    # absolute, not resolved: a ConfigMap's gateway.yaml is a symlink whose target the next update deletes
    os.environ["LOCKGATE_CONFIG"] = str(Path(path).absolute())
    share_metrics(args.workers)
    from lockgate.gateway.app import create_app

    try:
        # one worker serves this very app; several each make their own from LOCKGATE_CONFIG,
        # and this one only proves the store opens, here rather than inside each worker
        app = create_app(config)
    except ConfigError as exc:
        for problem in exc.problems:
            print(problem, file=sys.stderr)
        return 1
    except OSError as exc:
        print(f"{path}: cannot open the {config.store.backend} store: {exc}", file=sys.stderr)
        return 1
    from lockgate.gateway.protocol import LockgateProtocol, LockgateWebSocketProtocol

    try:
        return server.run(
            app if args.workers <= 1 else "lockgate.gateway.app:app_from_env",
            config=config,
            config_path=os.environ["LOCKGATE_CONFIG"],
            http=LockgateProtocol,
            ws=LockgateWebSocketProtocol,
            host=args.host or config.server.host,
            port=args.port if args.port is not None else config.server.port,
            workers=args.workers,
            log_level=args.log_level,
            access_log=False,
            server_header=False,
            # X-Forwarded-For names the client only where a policy's trusted_proxies says so
            # (middleware/identity.py); uvicorn's own default believes it from loopback
            proxy_headers=False,
        )
    except server.ListenError as exc:
        print(exc, file=sys.stderr)
        return 1


def share_metrics(workers: int) -> None:
    """With several workers, /metrics must add up all of them: prometheus-client's
    multiprocess mode, in a directory of this server's own, removed when it exits. Set
    before anything imports prometheus-client (it picks its value class on import), and
    inherited by the workers uvicorn spawns."""
    if workers <= 1 or os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        return
    import atexit
    import shutil
    import tempfile

    path = tempfile.mkdtemp(prefix="lockgate-metrics-")
    os.environ["PROMETHEUS_MULTIPROC_DIR"] = path
    atexit.register(shutil.rmtree, path, ignore_errors=True)


def cmd_check(args: argparse.Namespace) -> int:
    path = config_or_exit(args.config, "check")
    config = checked_or_exit(path)
    for warning in config.warnings:
        print(warning, file=sys.stderr)
    mcp = f", MCP servers: {', '.join(s.name for s in config.mcp_servers)}" if config.mcp_servers else ""
    print(f"{path}: ok ({len(config.models)} models, middleware: {', '.join(n for n, _ in config.middleware) or 'none'}{mcp})")
    if getattr(args, "online", False) and config.mcp_servers:
        return asyncio.run(check_mcp_online(config))
    return 0


async def check_mcp_online(config: GatewayConfig) -> int:
    """`check --online`: each MCP server answers initialize and tools/list."""
    from lockgate.proxy.mcp import probe
    from lockgate.proxy.upstream import UpstreamClient

    client = UpstreamClient()
    await client.open()
    failed = 0
    try:
        for server in config.mcp_servers:
            count, problem = await probe(server, client)
            if problem is None:
                print(f"mcp server {server.name}: ok ({count} tools exposed)")
            else:
                failed += 1
                print(f"mcp server {server.name}: {problem}", file=sys.stderr)
    finally:
        await client.close()
    return 1 if failed else 0


def cmd_keys_new(args: argparse.Namespace) -> int:
    import yaml

    from lockgate.middleware.auth import new_key

    if args.master:
        if args.id or args.user or args.team or args.tier:
            print("--master takes no --id, --user, --team or --tier: the master key is nobody's", file=sys.stderr)
            return 2
        key, entry = new_key("master")
        print("New master key (it will not be shown again; lockgate keeps only its sha256):")
        print()
        print(f"    {key}")
        print()
        print("Put this line in auth.yaml (or its value in LOCKGATE_MASTER_KEY_SHA256 where auth.yaml reads it from the environment):")
        print()
        print(f'master_key_sha256: "{entry["sha256"]}"')
        return 0
    if not args.id:
        print("lockgate keys new: --id is required (or --master)", file=sys.stderr)
        return 2
    key, entry = new_key(args.id, user=args.user, team=args.team, tier=args.tier)
    print(f"New API key for {args.id!r} (it will not be shown again; lockgate keeps only its sha256):")
    print()
    print(f"    {key}")
    print()
    print("Paste this entry under `keys:` in auth.yaml:")
    print()
    print(yaml.safe_dump([entry], sort_keys=False), end="")
    return 0


def store_or_exit(path: str) -> StoreConfig:
    """Only gateway.yaml's `store:`: a command that reads the store needs no provider key
    in its environment, nor policies that parse."""
    from lockgate.gateway.config import parse_store
    from lockgate.kernel.parsing import Checker, load_yaml

    try:
        raw = load_yaml(Path(path))
    except ConfigError as exc:
        problems = exc.problems
    else:
        check = Checker(path)
        store = parse_store(check, raw if isinstance(raw, dict) else {}, Path(path).absolute().parent)
        problems = check.problems
    if problems:
        for problem in problems:
            print(problem, file=sys.stderr)
        raise SystemExit(1)
    return store


def admin_call(args: argparse.Namespace, method: str, path: str, body: dict | None = None) -> dict:
    """One call to a running gateway's admin API; its error printed and exit 1 on failure."""
    import httpx

    command = f"lockgate keys {args.keys_command}"
    key = args.master_key or os.environ.get("LOCKGATE_MASTER_KEY")
    if not key:
        raise SystemExit(f"{command}: no master key: set LOCKGATE_MASTER_KEY to it (LOCKGATE_MASTER_KEY=sk-lg-... {command} ...) "
                         "or pass --master-key; `lockgate keys new --master` makes one, with the master_key_sha256 line for auth.yaml")
    url = args.url.rstrip("/")
    try:
        response = httpx.request(method, url + path, json=body, headers={"Authorization": f"Bearer {key}"}, timeout=30)
    except httpx.HTTPError as exc:
        if isinstance(exc, httpx.TimeoutException):
            reason = "no answer in 30 s"
        elif isinstance(exc, httpx.ConnectError):
            reason = "could not connect"
        else:
            reason = "the connection failed"
        raise SystemExit(f"{command}: cannot reach the gateway at {url} ({reason}): is it running there? "
                         "Name it with --url or LOCKGATE_URL") from None
    try:
        answer = response.json()
    except ValueError:
        answer = {}
    if response.status_code >= 400:
        message = (answer.get("error") or {}).get("message") if isinstance(answer, dict) else None
        raise SystemExit(f"{command}: {response.status_code}: {message or response.text[:200]}")
    return answer


def name_value(text: str) -> tuple[str, str]:
    name, sep, value = text.partition("=")
    if not sep or not name:
        raise argparse.ArgumentTypeError(f"expected NAME=VALUE, not {text!r}")
    return name, value


def cmd_keys_create(args: argparse.Namespace) -> int:
    import json

    body: dict = {"id": args.id}
    for name in ("user", "team", "tier", "expires", "budget_usd", "budget_period", "rpm", "tpm"):
        if getattr(args, name) is not None:
            body[name] = getattr(args, name)
    if args.models:
        body["models"] = [m.strip() for m in args.models.split(",") if m.strip()]
    if args.metadata:
        body["metadata"] = dict(args.metadata)
    if args.aws:
        body["aws"] = True
    if args.passthrough:
        body["passthrough"] = [p.strip() for value in args.passthrough for p in value.split(",") if p.strip()]
    created = admin_call(args, "POST", "/admin/keys", body)
    if args.json:
        print(json.dumps(created, indent=2))
        return 0
    print(f"New API key for {created['id']!r} (it will not be shown again; the gateway keeps only its sha256):")
    print()
    print(f"    {created['key']}")
    if created.get("aws_access_key_id"):
        print()
        print("AWS access key pair for SigV4 clients (boto3 bedrock-runtime), also shown once:")
        print(f"    aws_access_key_id     = {created['aws_access_key_id']}")
        print(f"    aws_secret_access_key = {created['aws_secret_access_key']}")
    return 0


def cmd_keys_list(args: argparse.Namespace) -> int:
    import json

    keys = admin_call(args, "GET", "/admin/keys")["data"]
    if args.json:
        print(json.dumps(keys, indent=2))
        return 0
    header = ("id", "source", "user", "team", "models", "limits", "expires", "status")
    rows = [header]
    for key in keys:
        named = (("usd/" + (key.get("budget_period") or ""), key.get("budget_usd")), ("rpm", key.get("rpm")), ("tpm", key.get("tpm")))
        limits = ", ".join(f"{v} {k}" for k, v in named if v is not None)
        rows.append((key["id"], key["source"], key.get("user") or "-", key.get("team") or "-", ",".join(key.get("models") or ["*"]), limits or "-",
                     (key.get("expires") or "never")[:10], key["status"]))
    widths = [max(len(str(row[i])) for row in rows) for i in range(len(header))]
    for row in rows:
        print("  ".join(str(cell).ljust(width) for cell, width in zip(row, widths, strict=True)).rstrip())
    return 0


def cmd_keys_revoke(args: argparse.Namespace) -> int:
    admin_call(args, "DELETE", f"/admin/keys/{args.id}")
    print(f"Revoked {args.id!r}: requests with it are refused within a second, on every worker and replica.")
    return 0


def cmd_spend(args: argparse.Namespace) -> int:
    """Reads the spend report straight from the store gateway.yaml names (the same data
    `GET /admin/spend` serves), so it works whether or not the gateway is running."""
    import asyncio

    from lockgate.gateway.admin import spend_rows
    from lockgate.kernel.store import open_store

    store_config = store_or_exit(find_config(args.config))
    store = open_store(store_config)

    async def report() -> dict:
        try:
            return await spend_rows(store, args.by, args.period)
        finally:
            await store.close()

    result = asyncio.run(report())
    if args.json:
        import json

        print(json.dumps(result, indent=2))
        return 0
    print(f"spend by {args.by}, period {args.period} ({result['key']}), store {store_config.backend}")
    width = max([len(args.by)] + [len(str(row[args.by])) for row in result["data"]])
    print(f"{args.by:<{width}}  {'usd':>14}")
    for row in result["data"]:
        print(f"{row[args.by]:<{width}}  {row['spend_usd']:>14.6f}")
    print(f"{'total':<{width}}  {result['total_usd']:>14.6f}")
    return 0


def cmd_import(args: argparse.Namespace) -> int:
    """`lockgate import litellm|guide FILE [-o DIR]`: writes gateway.yaml and the policy
    files, and prints what was skipped and what could not be carried over. Refused
    inputs write nothing; every refusal is one line each, never a traceback."""
    from lockgate.gateway.importer import ImportRefused, run, write

    try:
        result = run(args.kind, Path(args.file))
    except ImportRefused as exc:
        for problem in exc.problems:
            print(f"lockgate import {args.kind}: {problem}", file=sys.stderr)
        print("Nothing was written.", file=sys.stderr)
        return 1
    out = Path(args.output)
    try:
        written = write(result, out)
    except ImportRefused as exc:
        for problem in exc.problems:
            print(f"lockgate import {args.kind}: {problem}", file=sys.stderr)
        return 1
    for path in written:
        print(f"wrote {path}")
    if result.skipped:
        print("\nSkipped, not imported (also at the top of gateway.yaml):")
        for line in result.skipped:
            print(f"  - {line}")
    if result.notes:
        print("\nNot carried over, or guessed (also at the top of gateway.yaml):")
        for note in result.notes:
            print(f"  - {note}")
    if result.env:
        print(f"\nThe output reads these environment variables: {', '.join(result.env)}")
    print(f"\nNext: lockgate check --config {out / 'gateway.yaml'}")
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="lockgate", description="An OpenAI-compatible LLM API gateway.")
    commands = parser.add_subparsers(dest="command", required=True)

    serve = commands.add_parser("serve", help="serve the gateway")
    serve.add_argument("--config", help="path to gateway.yaml (default: ./gateway.yaml, then ./policies/gateway.yaml)")
    serve.add_argument("--host")
    serve.add_argument("--port", type=int)
    serve.add_argument("--workers", type=int, default=1)
    serve.add_argument("--log-level", default="warning", choices=["critical", "error", "warning", "info", "debug"])
    serve.set_defaults(run=cmd_serve)

    check = commands.add_parser("check", help="validate gateway.yaml and every policy it names")
    check.add_argument("--config")
    check.add_argument("--online", action="store_true", help="also ask each MCP server for its tools")
    check.set_defaults(run=cmd_check)

    spend = commands.add_parser("spend", help="spend report from the store")
    spend.add_argument("--config")
    spend.add_argument("--by", default="key", choices=["key", "user", "team", "model", "tool"])
    spend.add_argument("--period", default="total", choices=["day", "month", "total"])
    spend.add_argument("--json", action="store_true", help="print JSON instead of a table")
    spend.set_defaults(run=cmd_spend)

    keys = commands.add_parser("keys", help="manage API keys").add_subparsers(dest="keys_command", required=True)
    keys_new = keys.add_parser("new", help="print a fresh API key once, and its auth.yaml entry")
    keys_new.add_argument("--id", help="the name logs, spend and limits show for this key")
    keys_new.add_argument("--master", action="store_true", help="a master key (for /admin/*) and its master_key_sha256 line")
    keys_new.add_argument("--user")
    keys_new.add_argument("--team")
    keys_new.add_argument("--tier")
    keys_new.set_defaults(run=cmd_keys_new)

    def remote(name: str, help: str) -> argparse.ArgumentParser:
        command = keys.add_parser(name, help=help)
        command.add_argument("--url", default=os.environ.get("LOCKGATE_URL", "http://127.0.0.1:4000"), help="the running gateway (default: $LOCKGATE_URL or http://127.0.0.1:4000)")
        command.add_argument("--master-key", help="the master key (default: $LOCKGATE_MASTER_KEY)")
        return command

    keys_create = remote("create", "create a runtime key on a running gateway (shown once; the store keeps only its sha256)")
    keys_create.add_argument("--id", required=True)
    keys_create.add_argument("--user")
    keys_create.add_argument("--team")
    keys_create.add_argument("--tier")
    keys_create.add_argument("--models", help="allow-list, comma separated globs")
    keys_create.add_argument("--expires", help="a date (2027-01-01) or an ISO datetime")
    keys_create.add_argument("--metadata", action="append", metavar="NAME=VALUE", type=name_value)
    # limits go as typed: the gateway checks them as auth.yaml's and names every problem at once
    keys_create.add_argument("--budget-usd")
    keys_create.add_argument("--budget-period", choices=["daily", "weekly", "monthly", "total"])
    keys_create.add_argument("--rpm")
    keys_create.add_argument("--tpm")
    keys_create.add_argument(
        "--aws", action="store_true",
        help="also issue an AWS access key pair for SigV4 clients (the Bedrock dialect; needs LOCKGATE_AWS_KEY_SECRET on the gateway)",
    )
    keys_create.add_argument("--passthrough", action="append", metavar="PROVIDER",
                             help="a provider whose passthrough routes (/openai/...) the key may use; repeat or comma separate")
    keys_create.add_argument("--json", action="store_true", help="print the answer as JSON")
    keys_create.set_defaults(run=cmd_keys_create)
    keys_list = remote("list", "list a running gateway's keys (auth.yaml's and runtime ones; never a secret)")
    keys_list.add_argument("--json", action="store_true")
    keys_list.set_defaults(run=cmd_keys_list)
    keys_revoke = remote("revoke", "revoke a runtime key on a running gateway")
    keys_revoke.add_argument("id")
    keys_revoke.set_defaults(run=cmd_keys_revoke)

    importing = commands.add_parser("import", help="write gateway.yaml and policies from a LiteLLM config or a guide's YAML")
    importing.add_argument("kind", choices=["litellm", "guide"], help="litellm: a LiteLLM Proxy config.yaml; guide: the seed's / Onyx guides' YAML")
    importing.add_argument("file")
    importing.add_argument("-o", "--output", default=".", help="directory for gateway.yaml and the policy files (default: .)")
    importing.set_defaults(run=cmd_import)

    args = parser.parse_args(argv)
    return args.run(args)


if __name__ == "__main__":
    sys.exit(main())
