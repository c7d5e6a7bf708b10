"""respan-gateway: a self-hostable LLM gateway that speaks the Respan gateway API.

The public names a plugin needs live here; the machinery lives in the submodules.
"""

from .app import create_app
from .call import ANONYMOUS, Attempt, Call, CallNext, Chunk, JSONResult, KeyLimits, Principal, Result, StreamResult, Target, aclose
from .config import Config, ConfigError, ProviderSettings, Settings
from .endpoints import Accumulator, ChatTranslation, Endpoint, TextPieces
from .errors import (
    CONTEXT_LENGTH_EXCEEDED,
    AuthenticationFailed,
    BadRequest,
    GatewayError,
    ModelNotFound,
    NotFound,
    RateLimited,
    StreamInterrupted,
    UpstreamError,
    UpstreamTimeout,
    UpstreamTooLarge,
    UpstreamUnreachable,
)
from .gateway import Gateway
from .hookspecs import hookimpl
from .outcome import CacheInfo, Customer, Outcome, PromptRef
from .params import RespanParams
from .openai_adapter import OpenAIAdapter, OpenAICompatibleAdapter
from .routes import json_body
from .providers import AdapterContext, ErrorFields, ProviderAdapter, StreamMark
from .upstream import Timeout, TransportError, UpstreamClient, UpstreamResponse

__version__ = "0.1.0"

__all__ = [
    "ANONYMOUS", "Accumulator", "Attempt", "CacheInfo", "ChatTranslation", "Customer", "Endpoint", "Outcome", "PromptRef", "AuthenticationFailed", "BadRequest", "Call", "CallNext", "Chunk", "Config",
    "ConfigError", "Gateway", "GatewayError", "JSONResult", "KeyLimits", "ModelNotFound", "NotFound", "Principal",
    "AdapterContext", "ErrorFields", "OpenAIAdapter", "OpenAICompatibleAdapter", "StreamMark", "aclose",
    "ProviderAdapter", "ProviderSettings", "RateLimited", "RespanParams", "Result", "Settings",
    "StreamInterrupted", "StreamResult", "Target", "UpstreamError", "UpstreamTimeout", "UpstreamTooLarge",
    "UpstreamUnreachable", "CONTEXT_LENGTH_EXCEEDED", "Timeout", "TransportError", "UpstreamClient", "UpstreamResponse",
    "TextPieces", "hookimpl", "create_app", "json_body",
]

