"""Provider ``azure``: Azure OpenAI deployments (``azure/<deployment>`` slugs).

Azure speaks OpenAI's wire format with three differences, handled here: the deployment goes in the
path (``/openai/deployments/<deployment>/chat/completions``), every request carries an
``api-version`` query parameter, and the key goes in the ``api-key`` header. Each deployment may live
on its own resource, with its own key and API version (``[providers.<id>.deployments.<name>]``).
The Responses API (``/openai/responses``, the deployment as the body's ``model``) passes through
natively, as on OpenAI. Streams lose Azure's prompt-filter preamble chunk (no choices, not a ``chat.completion.chunk``), which
strict OpenAI clients would trip over; everything else passes through as OpenAI's adapter does.
"""

from __future__ import annotations

from collections.abc import AsyncIterator

import msgspec

from respan_gateway import AdapterContext, Call, Chunk, OpenAIAdapter, ProviderAdapter, Settings, Target, hookimpl
from respan_gateway.config import ConfigError, ProviderSettings
from respan_gateway.hookspecs import RegisterProvider
from respan_gateway.upstream import UpstreamResponse

_decode = msgspec.json.decode


class AzureDeployment(Settings):
    """One deployment, when it differs from the provider's defaults."""

    # The deployment's name on Azure, when the slug uses another name (default: the table's name).
    deployment: str = ""
    # The resource endpoint, e.g. https://my-resource.openai.azure.com
    base_url: str = ""
    api_key: str = ""
    api_version: str = ""


class AzureSettings(ProviderSettings):
    # `api-version` of every request unless the deployment or the request's credentials name another.
    api_version: str = "2024-10-21"
    # `api-version` of the Responses API (`/openai/responses`), which needs a newer one than chat.
    responses_api_version: str = "2025-04-01-preview"
    deployments: dict[str, AzureDeployment] = {}


class AzureAdapter(OpenAIAdapter):
    Settings = AzureSettings
    default_base_url = ""
    # `api-key`, and `authorization` for Entra ID tokens.
    credential_headers = frozenset({"api-key", "authorization"})
    settings: AzureSettings

    def __init__(self, provider_id: str, settings: AzureSettings, context: AdapterContext) -> None:
        ProviderAdapter.__init__(self, provider_id, settings, context)
        for name, dep in settings.deployments.items():
            if not (dep.base_url or self.base_url):
                raise ConfigError(f"`providers.{provider_id}.deployments.{name}.base_url`: no base_url here nor on the provider")
        if not self.base_url and not settings.deployments:
            raise ConfigError(f"`providers.{provider_id}.base_url`: an azure provider needs its resource endpoint, e.g. https://NAME.openai.azure.com")

    def _deployment(self, target: Target) -> AzureDeployment:
        return self.settings.deployments.get(target.upstream_model) or AzureDeployment()

    def api_key(self, target: Target) -> str | None:
        if target.api_key:
            return target.api_key
        return self._deployment(target).api_key or super().api_key(target)

    def configured_secrets(self) -> tuple[str, ...]:
        return (*super().configured_secrets(), *(dep.api_key for dep in self.settings.deployments.values()))

    def url(self, target: Target, path: str) -> str:
        dep = self._deployment(target)
        base = (target.base_url or dep.base_url or self.base_url).rstrip("/").removesuffix("/openai")
        version = target.extra.get("api_version") or dep.api_version or self.settings.api_version
        name = dep.deployment or target.upstream_model
        return f"{base}/openai/deployments/{name}{path}?api-version={version}"

    def responses_url(self, target: Target) -> str:
        # The Responses API is per resource, not per deployment: the deployment is the body's `model`.
        dep = self._deployment(target)
        base = (target.base_url or dep.base_url or self.base_url).rstrip("/").removesuffix("/openai")
        return f"{base}/openai/responses?api-version={self.settings.responses_api_version}"

    def responses_model(self, target: Target) -> str:
        return self._deployment(target).deployment or target.upstream_model

    def headers(self, call: Call, target: Target) -> dict[str, str]:
        key = self.key_for(target)
        return self.request_headers(call, {"api-key": key} if key else {})

    async def relay(self, call: Call, response: UpstreamResponse, target: Target) -> AsyncIterator[Chunk]:
        async for chunk in super().relay(call, response, target):
            if b'"prompt_filter_results"' in chunk.data and _is_filter_preamble(chunk.data):
                continue
            yield chunk


def _is_filter_preamble(data: bytes) -> bool:
    try:
        obj = _decode(data)
    except msgspec.DecodeError:
        return False
    return isinstance(obj, dict) and not obj.get("choices") and obj.get("usage") is None


@hookimpl
def register_providers(register: RegisterProvider) -> None:
    register("azure", AzureAdapter)

