"""``respan-gateway keys create|list|revoke``: the database keys, from the command line.

Runs against the database of the config (``--config``), as the running gateways see it; no gateway
needs to be running. The operator at the command line is trusted with every tenant (``--tenant``).
"""

from __future__ import annotations

import argparse
import sys
import time
from typing import Any

import msgspec

from respan_gateway import GatewayError, KeyLimits
from respan_gateway.database import StoreUnavailable

from .api import check_name, parse_expiry, parse_limits
from .middleware import AuthSettings
from .store import ApiKeyStore

_LIMIT_NAMES = ", ".join(KeyLimits.__struct_fields__)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    sub = parser.add_subparsers(dest="keys_command", required=True, metavar="{create,list,revoke}")
    create = sub.add_parser("create", help="issue a key; prints it once")
    create.add_argument("--tenant", default="default", help="whose key it is (default: default)")
    create.add_argument("--name", default="", help="a name to recognise it by")
    create.add_argument("--environment", choices=["production", "test"], default="production")
    create.add_argument("--expires-at", help="ISO 8601 date or date-time (UTC when no zone is given)")
    create.add_argument("--admin", action="store_true", help="may use the keys API and the dashboard of its tenant")
    create.add_argument("--limit", action="append", default=[], metavar="NAME=VALUE",
                        help=f"a limit (repeatable): {_LIMIT_NAMES}")
    create.add_argument("--json", action="store_true", help="print the key as JSON")
    listing = sub.add_parser("list", help="list keys (never their secret)")
    listing.add_argument("--tenant", help="one tenant's keys (default: every tenant's)")
    listing.add_argument("--include-revoked", action="store_true")
    listing.add_argument("--json", action="store_true", help="print the keys as a JSON array")
    revoke = sub.add_parser("revoke", help="revoke a key by its id")
    revoke.add_argument("id")
    revoke.add_argument("--tenant", help="refuse unless the key belongs to this tenant")


def _limits(pairs: list[str]) -> dict[str, Any]:
    fields: dict[str, Any] = {}
    for pair in pairs:
        name, sep, value = pair.partition("=")
        if not sep or not name.strip():
            raise GatewayError(f"--limit {pair!r}: expected NAME=VALUE (names: {_LIMIT_NAMES})")
        try:
            fields[name.strip()] = int(value)
        except ValueError:
            try:
                fields[name.strip()] = float(value)
            except ValueError:
                raise GatewayError(f"--limit {pair!r}: {value!r} is not a number") from None
    return fields


async def keys_command(args: argparse.Namespace, gateway: Any) -> int:
    if gateway.database is None:  # pragma: no cover - this plugin declares a store, so there is one
        print("respan-gateway keys: no database configured", file=sys.stderr)
        return 1
    store = ApiKeyStore(gateway.database)
    ttl = gateway.config.section("auth", AuthSettings).key_cache_ttl
    try:
        if args.keys_command == "create":
            now = time.time()
            key, plain = await store.create(
                tenant=args.tenant, name=check_name(args.name), environment=args.environment,
                expires_at=parse_expiry(args.expires_at, now), limits=parse_limits(_limits(args.limit)),
                admin=args.admin)
            if args.json:
                print(msgspec.json.encode({**key.to_api(now), "key": plain}).decode())
            else:
                print(f"key:         {plain}")
                print("             (shown once: store it now; the gateway keeps only its hash)")
                shown = key.to_api(now)
                shown.update(admin="yes" if key.admin else "no", expires_at=shown["expires_at"] or "never",
                             limits=", ".join(f"{k}={v:g}" for k, v in shown["limits"].items() if v is not None) or "none")
                for name in ("id", "prefix", "tenant", "name", "environment", "admin", "expires_at", "limits"):
                    print(f"{name + ':':<13}{shown[name]}")
            return 0
        if args.keys_command == "list":
            found = await store.list(args.tenant, include_revoked=args.include_revoked)
            now = time.time()
            if args.json:
                print(msgspec.json.encode([k.to_api(now) for k in found]).decode())
                return 0
            print(f"{'ID':<37}{'PREFIX':<14}{'TENANT':<16}{'NAME':<20}{'ENV':<11}{'ADMIN':<6}{'STATUS':<8}EXPIRES")
            for k in found:
                shown = k.to_api(now)
                print(f"{k.id:<37}{k.prefix:<14}{k.tenant[:15]:<16}{k.name[:19]:<20}{k.environment:<11}"
                      f"{'yes' if k.admin else 'no':<6}{shown['status']:<8}{shown['expires_at'] or '-'}")
            return 0
        key = await store.get(args.id, args.tenant)
        if key is None:
            print(f"respan-gateway keys: no key `{args.id}`" + (f" in tenant `{args.tenant}`" if args.tenant else ""),
                  file=sys.stderr)
            return 1
        already = key.revoked_at is not None
        key = await store.revoke(key)
        print(f"{'already revoked' if already else 'revoked'}: {key.id} ({key.prefix}, tenant {key.tenant}); "
              f"running gateways refuse it within [auth] key_cache_ttl = {ttl:g} s")
        return 0
    except StoreUnavailable as exc:
        print(f"respan-gateway keys: the database is unreachable: {exc}", file=sys.stderr)
        return 1
    except GatewayError as exc:
        print(f"respan-gateway keys: {exc.message}", file=sys.stderr)
        return 2
