"""Where prompts come from: the folder's files (loaded at start-up and on reload) and the database,
behind one lookup; the database's prompts are cached for ``cache_ttl`` seconds.

The cache is what bounds how stale a replica can be: a deploy (or a new version, a rename, a delete)
made through one replica is seen by every other one at most ``cache_ttl`` seconds later, and at once
by the replica that made it (its entry is dropped). A prompt that does not exist is cached too (for
the same time), so unknown ids do not reach the database on every request.
"""

from __future__ import annotations

import time
from collections import OrderedDict
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

import structlog

from respan_gateway.database import Database
from respan_gateway.hookspecs import PromptInfo, PromptVersionInfo

from .model import Prompt
from .settings import PromptsSettings
from .store import PromptStore

if TYPE_CHECKING:
    from .files import PromptFileError
    from .render import TemplateEnvironment

log = structlog.get_logger("respan_gateway.prompts")


class Prompts:
    """The prompts of every tenant (the plugin's :class:`~respan_gateway.hookspecs.PromptCatalog`).

    ``env``: the Jinja sandbox the files' templates are compiled in, asked for when there is a folder;
    ``clock``: the monotonic clock of the cache's expiry (a test sets its own)."""

    def __init__(self, settings: PromptsSettings, env: Callable[[], TemplateEnvironment], database: Database | None) -> None:
        self.settings = settings
        self.env = env
        self.store = PromptStore(database) if database is not None else None
        self.files: dict[str, Prompt] = {}
        self.file_errors: list[PromptFileError] = []
        self.clock: Callable[[], float] = time.monotonic
        self._cache: OrderedDict[tuple[str, str], tuple[float, Prompt | None]] = OrderedDict()

    # -- files ------------------------------------------------------------------------------------
    def load_files(self) -> None:
        """(Re)read the folder. A file that does not load is logged (``file_errors``) and keeps what
        it held before, if anything (the middleware makes an error at start-up fatal)."""
        if not self.settings.folder:
            return
        from .files import load_folder  # Jinja's templates: imported when there are files

        prompts, errors = load_folder(Path(self.settings.folder), self.env())
        for error in errors:
            log.error("prompt_file_invalid", error=str(error))
        # A file broken by an edit keeps serving what it held before (a bad push takes nothing down).
        broken = {str(e.path) for e in errors}
        for old in self.files.values():
            if old.path in broken and old.prompt_id not in prompts:
                prompts[old.prompt_id] = old
        self.files, self.file_errors = prompts, errors
        log.info("prompt_files_loaded", folder=self.settings.folder, prompts=len(prompts), errors=len(errors))

    # -- lookups ----------------------------------------------------------------------------------
    async def get(self, tenant: str, prompt_id: str) -> Prompt | None:
        """The prompt ``prompt_id`` as ``tenant`` sees it: a file's first, else the database's."""
        prompt = self.files.get(prompt_id)
        if prompt is not None and prompt.visible_to(tenant):
            return prompt
        if self.store is None:
            return None
        key = (tenant, prompt_id)
        ttl = self.settings.cache_ttl
        now = self.clock()
        entry = self._cache.get(key)
        if entry is not None and entry[0] > now:
            return entry[1]
        prompt = await self.store.load(tenant, prompt_id)
        if ttl > 0:
            self._cache[key] = (now + ttl, prompt)
            self._cache.move_to_end(key)
            while len(self._cache) > self.settings.cache_size:
                self._cache.popitem(last=False)
        return prompt

    def file_prompt(self, tenant: str, prompt_id: str) -> Prompt | None:
        prompt = self.files.get(prompt_id)
        return prompt if prompt is not None and prompt.visible_to(tenant) else None

    def forget(self, tenant: str, prompt_id: str) -> None:
        """Drop a cached prompt (this replica changed it)."""
        self._cache.pop((tenant, prompt_id), None)

    # -- PromptCatalog ----------------------------------------------------------------------------
    async def list_prompts(self, tenant: str) -> list[PromptInfo]:
        found = {p.prompt_id: p.info for p in self.files.values() if p.visible_to(tenant)}
        if self.store is not None:
            for info in await self.store.list(tenant):
                found.setdefault(info.prompt_id, info)
        return [found[k] for k in sorted(found)]

    async def versions(self, tenant: str, prompt_id: str) -> list[PromptVersionInfo] | None:
        prompt = self.file_prompt(tenant, prompt_id)
        if prompt is None and self.store is not None:
            prompt = await self.store.load(tenant, prompt_id)
        return prompt.version_infos() if prompt is not None else None
