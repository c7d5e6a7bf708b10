"""The ``prompts`` store: the prompts managed through the API, per tenant, in the gateway's database.

Two tables: ``prompts`` (one row per prompt: name, description, the deployed version) and
``prompt_versions`` (one row per version: its description as JSON). A version is immutable once
created; only which version is deployed changes. Every statement is one statement (no transaction
spans two), so SQLite and PostgreSQL behave alike; a new version's number is chosen in the INSERT
itself, and two replicas adding a version at once get different numbers (the loser retries).
"""

from __future__ import annotations

import time
from typing import Any

import msgspec

from respan_gateway.database import Database, Migration, RowRejected
from respan_gateway.hookspecs import PromptInfo, PromptVersionInfo

from .model import Prompt, Version


def _create(dialect: str) -> str:
    number, real, text_json = ("BIGINT", "DOUBLE PRECISION", "TEXT") if dialect == "postgres" else ("INTEGER", "REAL", "TEXT")
    return f"""
CREATE TABLE IF NOT EXISTS prompts (
  tenant TEXT NOT NULL,
  prompt_id TEXT NOT NULL,
  name TEXT NOT NULL,
  description TEXT NOT NULL DEFAULT '',
  deployed_version {number},
  created_at {real} NOT NULL,
  updated_at {real} NOT NULL,
  PRIMARY KEY (tenant, prompt_id)
);
CREATE TABLE IF NOT EXISTS prompt_versions (
  tenant TEXT NOT NULL,
  prompt_id TEXT NOT NULL,
  version {number} NOT NULL,
  config {text_json} NOT NULL,
  created_at {real} NOT NULL,
  PRIMARY KEY (tenant, prompt_id, version)
)"""


MIGRATIONS = [Migration(1, sqlite=_create("sqlite"), postgres=_create("postgres"))]

_encode = msgspec.json.Encoder().encode
_decode_version = msgspec.json.Decoder(PromptVersionInfo).decode


def _conflict(exc: BaseException) -> bool:
    """A unique-key violation (another replica took the number first), in either database."""
    return isinstance(exc, RowRejected) or type(exc).__name__ in ("IntegrityError", "UniqueViolationError")


class PromptStore:
    def __init__(self, database: Database) -> None:
        self.db = database

    async def load(self, tenant: str, prompt_id: str) -> Prompt | None:
        rows = await self.db.fetch("SELECT * FROM prompts WHERE tenant = $1 AND prompt_id = $2", tenant, prompt_id)
        if not rows:
            return None
        versions = await self.db.fetch(
            "SELECT version, config, created_at FROM prompt_versions WHERE tenant = $1 AND prompt_id = $2 ORDER BY version",
            tenant, prompt_id)
        return _prompt(rows[0], versions)

    async def list(self, tenant: str) -> list[PromptInfo]:
        rows = await self.db.fetch(
            "SELECT p.*, (SELECT MAX(v.version) FROM prompt_versions v WHERE v.tenant = p.tenant AND v.prompt_id = p.prompt_id) "
            "AS latest_version FROM prompts p WHERE p.tenant = $1 ORDER BY p.prompt_id", tenant)
        return [_info(r, r["latest_version"]) for r in rows]

    async def create(self, tenant: str, prompt_id: str, name: str, description: str) -> bool:
        """False when the tenant already has a prompt of that id."""
        now = time.time()
        created = await self.db.execute(
            "INSERT INTO prompts (tenant, prompt_id, name, description, deployed_version, created_at, updated_at) "
            "VALUES ($1, $2, $3, $4, NULL, $5, $5) ON CONFLICT (tenant, prompt_id) DO NOTHING",
            tenant, prompt_id, name, description, now)
        if created:  # versions left behind by a delete that did not finish
            await self.db.execute("DELETE FROM prompt_versions WHERE tenant = $1 AND prompt_id = $2", tenant, prompt_id)
        return created > 0

    async def update(self, tenant: str, prompt_id: str, changes: dict[str, Any]) -> bool:
        sets, args = [], [tenant, prompt_id, time.time()]
        for name in ("name", "description"):
            if name in changes:
                args.append(changes[name])
                sets.append(f"{name} = ${len(args)}")
        changed = await self.db.execute(
            f"UPDATE prompts SET {', '.join([*sets, 'updated_at = $3'])} WHERE tenant = $1 AND prompt_id = $2", *args)
        return changed > 0

    async def delete(self, tenant: str, prompt_id: str) -> bool:
        deleted = await self.db.execute("DELETE FROM prompts WHERE tenant = $1 AND prompt_id = $2", tenant, prompt_id)
        await self.db.execute("DELETE FROM prompt_versions WHERE tenant = $1 AND prompt_id = $2", tenant, prompt_id)
        return deleted > 0

    async def add_version(self, tenant: str, prompt_id: str, info: PromptVersionInfo) -> PromptVersionInfo | None:
        """Store ``info`` as the prompt's next version (its number chosen in the INSERT); None: no
        such prompt. The number lives in its column (the JSON's is ignored)."""
        now = time.time()
        config = _encode(msgspec.structs.replace(info, version=0, created_at=now, deployed=False)).decode()
        for _ in range(5):
            try:
                rows = await self.db.fetch(
                    "INSERT INTO prompt_versions (tenant, prompt_id, version, config, created_at) "
                    "SELECT p.tenant, p.prompt_id, COALESCE((SELECT MAX(v.version) FROM prompt_versions v "
                    "WHERE v.tenant = p.tenant AND v.prompt_id = p.prompt_id), 0) + 1, CAST($3 AS TEXT), "
                    "CAST($4 AS DOUBLE PRECISION) FROM prompts p WHERE p.tenant = $1 AND p.prompt_id = $2 RETURNING version",
                    tenant, prompt_id, config, now)
            except Exception as exc:
                if _conflict(exc):  # another replica took that number: take the next
                    continue
                raise
            if not rows:
                return None
            await self.db.execute("UPDATE prompts SET updated_at = $3 WHERE tenant = $1 AND prompt_id = $2",
                                  tenant, prompt_id, now)
            return msgspec.structs.replace(info, version=int(rows[0]["version"]), created_at=now, deployed=False)
        raise RowRejected("too many versions added at once; retry")

    async def deploy(self, tenant: str, prompt_id: str, version: int) -> bool:
        """Make ``version`` the deployed one; False when there is no such version."""
        changed = await self.db.execute(
            "UPDATE prompts SET deployed_version = $3, updated_at = $4 WHERE tenant = $1 AND prompt_id = $2 AND EXISTS "
            "(SELECT 1 FROM prompt_versions v WHERE v.tenant = $1 AND v.prompt_id = $2 AND v.version = $3)",
            tenant, prompt_id, version, time.time())
        return changed > 0


def _info(row: dict[str, Any], latest: Any) -> PromptInfo:
    return PromptInfo(
        prompt_id=row["prompt_id"], name=row["name"], description=row["description"] or "", source="api",
        deployed_version=int(row["deployed_version"]) if row["deployed_version"] is not None else None,
        latest_version=int(latest) if latest is not None else None,
        created_at=float(row["created_at"]), updated_at=float(row["updated_at"]),
    )


def _prompt(row: dict[str, Any], version_rows: list[dict[str, Any]]) -> Prompt:
    versions = []
    for v in version_rows:
        info = _decode_version(v["config"])
        versions.append(Version(msgspec.structs.replace(info, version=int(v["version"]))))
    latest = versions[-1].number if versions else None
    return Prompt(_info(row, latest), versions)
