"""The model catalog shipped with the gateway (``model_catalog.toml``), merged under the config's.

The shipped file names providers by adapter type; :func:`available_models` keeps the entries whose
type has a configured provider (the provider whose id is the type name, else the first of that type)
and lays the config's ``[models]`` over them: a config entry replaces a shipped one whole.
:func:`public_listing` is the body of ``GET /api/models/public``.
"""

from __future__ import annotations

import functools
import tomllib
from importlib import resources
from typing import TYPE_CHECKING, Any

import msgspec

from .config import ModelEntry

if TYPE_CHECKING:
    from .providers import Catalog, ProviderAdapter


@functools.cache
def shipped_models() -> dict[str, ModelEntry]:
    text = resources.files(__package__).joinpath("model_catalog.toml").read_text(encoding="utf-8")
    return msgspec.convert(tomllib.loads(text)["models"], dict[str, ModelEntry])


def available_models(config_models: dict[str, ModelEntry], providers: dict[str, ProviderAdapter]) -> dict[str, ModelEntry]:
    """Shipped entries of configured provider types (re-pointed at the provider id), then the config's."""
    provider_of_type: dict[str, str] = {}
    for pid, adapter in providers.items():
        type_name = adapter.settings.type or pid
        if type_name not in provider_of_type or pid == type_name:
            provider_of_type[type_name] = pid
    models = {
        slug: msgspec.structs.replace(entry, provider=provider_of_type[entry.provider])
        for slug, entry in shipped_models().items()
        if entry.provider in provider_of_type
    }
    models.update(config_models)
    return models


def public_listing(catalog: Catalog) -> dict[str, Any]:
    """The catalog with prices, in the shape of Respan's ``GET /api/models/public`` (plus our fields)."""
    out = []
    for slug, entry in catalog.models.items():
        adapter = catalog.providers.get(entry.provider)
        out.append({
            "model_name": slug,
            "provider": {"provider_id": entry.provider, "provider_name": entry.provider,
                         "type": (adapter.settings.type or entry.provider) if adapter is not None else None},
            "upstream_model": entry.upstream_model or slug,
            "mode": entry.mode,
            "input_cost": entry.input_cost,
            "output_cost": entry.output_cost,
            "cache_read_cost": entry.cache_read_cost,
            "cache_write_cost": entry.cache_write_cost,
            "max_context_window": entry.context_window,
            "max_output_tokens": entry.max_output_tokens,
            "capabilities": entry.capabilities,
            "function_call": "tools" in entry.capabilities,
            "image_support": "vision" in entry.capabilities,
            "streaming_support": "streaming" in entry.capabilities,
        })
    return {"models": out}
