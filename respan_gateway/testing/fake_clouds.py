"""The cloud wire formats of :class:`~respan_gateway.testing.FakeUpstream`: Google Vertex AI and AWS Bedrock.

The same fake server (same socket, scenarios and ``requests`` record) answers::

    POST /v1/projects/{p}/locations/{l}/publishers/google/models/{m}:generateContent        Gemini on Vertex
    POST /v1/projects/{p}/locations/{l}/publishers/google/models/{m}:streamGenerateContent?alt=sse
    POST /v1/publishers/google/models/{m}:generateContent | :streamGenerateContent          express mode
    POST /v1/projects/{p}/locations/{l}/publishers/anthropic/models/{m}:rawPredict           Claude on Vertex
    POST /v1/projects/{p}/locations/{l}/publishers/anthropic/models/{m}:streamRawPredict
    POST /token                                      Google's OAuth token endpoint (JWT bearer grant)
    POST /model/{modelId}/converse                   Bedrock Converse
    POST /model/{modelId}/converse-stream            Bedrock ConverseStream (AWS binary event stream)

Vertex checks auth as Google does: ``Authorization: Bearer`` with a token this fake issued at
``/token`` (or one given to :meth:`FakeUpstream.accept_token`); express mode (no project in the path)
takes ``x-goog-api-key``. The token endpoint decodes the service account's JWT assertion, keeps it in
``fake.token_requests`` (claims and the raw assertion, for a test that checks its signature) and, when
the account's public key was registered (``fake.service_accounts[email] = public_pem``), refuses a bad
signature with ``invalid_grant`` as Google does. Tokens live ``fake.token_lifetime`` seconds (3600).
Claude on Vertex needs ``anthropic_version: "vertex-2023-10-16"`` in the body and no ``model``.

Bedrock checks the SigV4 ``Authorization`` header by recomputing the signature with botocore from the
request as received (method, raw path, query, the signed headers, the body) and the secret of the
access key id in ``fake.aws_keys`` (:data:`FAKE_AWS_KEY_ID` is known by default): an unknown key is
``UnrecognizedClientException``, a wrong signature ``InvalidSignatureException`` (both 403, as AWS
answers). ``Authorization: Bearer <Bedrock API key>`` is accepted too. Streams are AWS event-stream
frames (:func:`event_frame`); ``midstream-error`` sends a ``modelStreamErrorException`` event.

Errors use the provider's envelope: Google's ``{"error": {code, message, status}}`` on Vertex, and on
Bedrock ``{"message"}`` with ``x-amzn-ErrorType`` (``error-401`` answers 403
``UnrecognizedClientException``, what AWS says of a bad key; 429 is ``ThrottlingException``).
"""

from __future__ import annotations

import base64
import re
import struct
import zlib
from typing import TYPE_CHECKING, Any
from urllib.parse import parse_qs, unquote

import msgspec

if TYPE_CHECKING:
    from .fake_upstream import FakeUpstream, RecordedRequest, Scenario, _Exchange

Message = dict[str, Any]

#: The access key the fake knows by default (AWS's documented example pair).
FAKE_AWS_KEY_ID = "AKIAIOSFODNN7EXAMPLE"
FAKE_AWS_SECRET = "wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY"

VERTEX = re.compile(
    r"^/(v1|v1beta1)/(?:projects/([^/]+)/locations/([^/]+)/)?publishers/(google|anthropic)/models/([^/:]+)"
    r":(generateContent|streamGenerateContent|rawPredict|streamRawPredict)$"
)
BEDROCK = re.compile(r"^/model/([^/]+)/(converse|converse-stream)$")
EVENT_STREAM_HEADERS = [(b"content-type", b"application/vnd.amazon.eventstream")]
BEDROCK_ERRORS = {
    400: "ValidationException", 401: "UnrecognizedClientException", 403: "AccessDeniedException",
    404: "ResourceNotFoundException", 408: "ModelTimeoutException", 424: "ModelErrorException",
    429: "ThrottlingException", 500: "InternalServerException", 503: "ServiceUnavailableException",
}
_AUTH = re.compile(r"AWS4-HMAC-SHA256 Credential=([^/]+)/(\d{8})/([^/]+)/([^/]+)/aws4_request, ?SignedHeaders=([^,]+), ?Signature=([0-9a-f]+)")


def wire_of(raw_path: str) -> str | None:
    if VERTEX.match(raw_path):
        return "vertex"
    if BEDROCK.match(raw_path):
        return "bedrock"
    if raw_path == "/token":
        return "oauth"
    return None


def model_of(raw_path: str) -> str | None:
    m = VERTEX.match(raw_path)
    if m:
        return m[5]
    m = BEDROCK.match(raw_path)
    return unquote(m[1]) if m else None


# -- AWS event stream and SigV4 ----------------------------------------------------------------------

def event_frame(headers: dict[str, str], payload: bytes) -> bytes:
    """One AWS event-stream message (string headers; prelude and message CRC32s), as Bedrock frames them.
    botocore only decodes this framing, so the fake encodes it here."""
    encoded = b"".join(
        struct.pack("!B", len(k)) + k + b"\x07" + struct.pack("!H", len(v)) + v
        for k, v in ((name.encode(), value.encode()) for name, value in headers.items())
    )
    prelude = struct.pack("!II", 12 + len(encoded) + len(payload) + 4, len(encoded))
    message = prelude + struct.pack("!I", zlib.crc32(prelude)) + encoded + payload
    return message + struct.pack("!I", zlib.crc32(message))


def bedrock_event(kind: str, payload: Message) -> bytes:
    return event_frame({":event-type": kind, ":content-type": "application/json", ":message-type": "event"},
                       msgspec.json.encode({**payload, "p": "abcdefgh"}))  # Bedrock pads events with "p"


def bedrock_exception(kind: str, message: str) -> bytes:
    return event_frame({":exception-type": kind, ":content-type": "application/json", ":message-type": "exception"},
                       msgspec.json.encode({"message": message}))


def sigv4_signature(method: str, url: str, headers: dict[str, str], body: bytes, key_id: str, secret: str,
                    region: str, service: str, amz_date: str, session_token: str | None = None) -> str:
    """The SigV4 signature of a request, computed by botocore's signer from exactly these parts
    (``headers``: the signed ones only; ``amz_date``: the request's ``X-Amz-Date``)."""
    from botocore.auth import SigV4Auth
    from botocore.awsrequest import AWSRequest
    from botocore.credentials import Credentials

    request = AWSRequest(method=method, url=url, data=body, headers=headers)
    request.context["timestamp"] = amz_date
    signer = SigV4Auth(Credentials(key_id, secret, session_token), service, region)
    return signer.signature(signer.string_to_sign(request, signer.canonical_request(request)), request)


def _check_sigv4(fake: FakeUpstream, request: RecordedRequest, host: str) -> tuple[int, str, str] | None:
    """None when the request is signed right, else (status, AWS error type, message)."""
    header = request.headers.get("authorization", "")
    if header.startswith("Bearer "):
        return None if header[7:].strip() else (403, "UnrecognizedClientException", "The security token included in the request is invalid.")
    m = _AUTH.fullmatch(header)
    if m is None:
        return 403, "MissingAuthenticationTokenException", "Missing Authentication Token"
    key_id, _, region, service, signed, signature = m.groups()
    secret = fake.aws_keys.get(key_id)
    if secret is None:
        return 403, "UnrecognizedClientException", "The security token included in the request is invalid."
    names = signed.split(";")
    headers = {name: (host if name == "host" else request.headers.get(name, "")) for name in names}
    url = f"http://{host}{request.raw_path}" + (f"?{request.query}" if request.query else "")
    expected = sigv4_signature(request.method, url, headers, request.body, key_id, secret, region, service,
                               request.headers.get("x-amz-date", ""))
    if expected != signature:
        return 403, "InvalidSignatureException", ("The request signature we calculated does not match the signature you "
                                                  "provided. Check your AWS Secret Access Key and signing method.")
    fake.signed_requests.append({"key_id": key_id, "region": region, "service": service, "signed_headers": names})
    return None


# -- errors ------------------------------------------------------------------------------------------

async def send_error(ex: _Exchange, wire: str, status: int, message: str, headers: list[tuple[bytes, bytes]] | None = None) -> None:
    if wire == "bedrock":
        kind = BEDROCK_ERRORS.get(status, "InternalServerException")
        if status == 401:
            status = 403  # AWS answers a bad key with 403 UnrecognizedClientException
        extra = [(b"x-amzn-errortype", f"{kind}:http://internal.amazon.com/coral/com.amazon.bedrock/".encode()),
                 (b"x-amzn-requestid", b"fake-request-id"), *(headers or [])]
        return await ex.respond(status, {"message": message}, extra)
    from .fake_providers import send_error as send_google

    await send_google(ex, "gemini", status, message, headers)  # Vertex: Google's envelope


# -- OAuth token endpoint ----------------------------------------------------------------------------

def _b64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


async def token(fake: FakeUpstream, ex: _Exchange, request: RecordedRequest) -> None:
    form = parse_qs(request.body.decode("latin-1"))
    assertion = (form.get("assertion") or [""])[0]
    if (form.get("grant_type") or [""])[0] != "urn:ietf:params:oauth:grant-type:jwt-bearer" or assertion.count(".") != 2:
        return await ex.respond(400, {"error": "invalid_request", "error_description": "Invalid grant_type or assertion."})
    head, payload, signature = assertion.split(".")
    try:
        claims = msgspec.json.decode(_b64(payload))
    except (msgspec.DecodeError, ValueError):
        return await ex.respond(400, {"error": "invalid_grant", "error_description": "Invalid JWT."})
    public_pem = fake.service_accounts.get(str(claims.get("iss")))
    if public_pem is not None and not _verify_rs256(public_pem, f"{head}.{payload}".encode(), _b64(signature)):
        return await ex.respond(400, {"error": "invalid_grant", "error_description": "Invalid JWT Signature."})
    with fake._lock:
        fake.token_requests.append({"claims": claims, "assertion": assertion})
        issued = f"ya29.fake-token-{next(fake._ids):06d}"
        fake.oauth_tokens[issued] = claims
    await ex.respond(200, {"access_token": issued, "expires_in": fake.token_lifetime, "token_type": "Bearer"})


def _verify_rs256(public_pem: str, signed: bytes, signature: bytes) -> bool:
    from cryptography.exceptions import InvalidSignature
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import padding

    key = serialization.load_pem_public_key(public_pem.encode())
    try:
        key.verify(signature, signed, padding.PKCS1v15(), hashes.SHA256())  # type: ignore[union-attr, call-arg]
    except InvalidSignature:
        return False
    return True


# -- Vertex AI ---------------------------------------------------------------------------------------

async def vertex(fake: FakeUpstream, ex: _Exchange, request: RecordedRequest, body: Message, scenario: Scenario) -> None:
    from .fake_providers import _anthropic_answer, _gemini

    m = VERTEX.match(request.raw_path)
    assert m is not None
    project, publisher, model, method = m[2], m[4], m[5], m[6]
    auth = request.headers.get("authorization", "")
    if project is None:  # express mode: an API key, Gemini only
        if not request.headers.get("x-goog-api-key"):
            return await send_error(ex, "vertex", 401, "API keys are not supported by this API. Expected OAuth2 access token or other authentication credentials that assert a principal.")
    elif not (auth.startswith("Bearer ") and (auth[7:] in fake.oauth_tokens or auth[7:] in fake.static_tokens)):
        return await send_error(ex, "vertex", 401, "Request had invalid authentication credentials. Expected OAuth 2 access token, login cookie or other valid authentication credential.")
    if publisher == "google":
        if method not in ("generateContent", "streamGenerateContent"):
            return await send_error(ex, "vertex", 400, f"publishers/google models do not serve {method}")
        return await _gemini(fake, ex, request, body, scenario, model, method)
    if method not in ("rawPredict", "streamRawPredict"):
        return await send_error(ex, "vertex", 400, f"publishers/anthropic models do not serve {method}")
    if body.get("anthropic_version") != "vertex-2023-10-16":
        return await send_error(ex, "vertex", 400, "anthropic_version: must be vertex-2023-10-16")
    if "model" in body:
        return await send_error(ex, "vertex", 400, "model: Extra inputs are not permitted (the model is in the URL)")
    if bool(body.get("stream")) != (method == "streamRawPredict"):
        return await send_error(ex, "vertex", 400, "stream: use streamRawPredict for streams and rawPredict otherwise")
    await _anthropic_answer(fake, ex, {**body, "model": model}, scenario)


# -- Bedrock -----------------------------------------------------------------------------------------

async def bedrock(fake: FakeUpstream, ex: _Exchange, request: RecordedRequest, body: Message, scenario: Scenario) -> None:
    from .fake_upstream import TOOL_ARGUMENT_FRAGMENTS, _answer_pieces
    from .fake_providers import _words

    m = BEDROCK.match(request.raw_path)
    assert m is not None
    model, stream = unquote(m[1]), m[2] == "converse-stream"
    host = request.headers.get("host", "")
    refused = _check_sigv4(fake, request, host)
    if refused is not None:
        status, kind, message = refused
        return await ex.respond(status, {"message": message},
                                [(b"x-amzn-errortype", f"{kind}:http://internal.amazon.com/coral/com.amazon.coral.service/".encode())])
    messages = body.get("messages")
    if not isinstance(messages, list) or not messages or "model" in body:
        return await send_error(ex, "bedrock", 400, "1 validation error detected: Value at 'messages' failed to satisfy constraint")
    roles = [msg.get("role") for msg in messages if isinstance(msg, dict)]
    if any(r not in ("user", "assistant") for r in roles) or any(a == b for a, b in zip(roles, roles[1:])) or roles[0] != "user":
        return await send_error(ex, "bedrock", 400, "A conversation must start with a user message and alternate user and assistant roles.")
    uses_tools = any("toolUse" in b or "toolResult" in b for msg in messages for b in msg.get("content") or [])
    if uses_tools and not body.get("toolConfig"):
        return await send_error(ex, "bedrock", 400, "The toolConfig field must be defined when using toolUse and toolResult content blocks.")
    tool = _bedrock_tool(body, scenario)
    pieces = TOOL_ARGUMENT_FRAGMENTS if tool else ["x" * scenario.big] if scenario.big else _answer_pieces(scenario.chunks)
    stop_reason = scenario.finish or ("tool_use" if tool else "end_turn")
    prompt = _words(body.get("system")) + _words(messages)
    usage = {"inputTokens": prompt, "outputTokens": len(pieces), "totalTokens": prompt + len(pieces) + scenario.cache_read + scenario.cache_write}
    if scenario.cache_read or scenario.cache_write:
        usage.update(cacheReadInputTokens=scenario.cache_read, cacheWriteInputTokens=scenario.cache_write)
    tool_id = f"tooluse_fake{next(fake._ids):06d}"
    if not stream:
        content = ([{"toolUse": {"toolUseId": tool_id, "name": tool, "input": {"city": "Paris"}}}] if tool
                   else [{"text": "".join(pieces)}])
        return await ex.respond(200, {"output": {"message": {"role": "assistant", "content": content}}, "stopReason": stop_reason,
                                      "usage": usage, "metrics": {"latencyMs": 12}}, [(b"x-amzn-requestid", b"fake-request-id")])
    frames = [bedrock_event("messageStart", {"role": "assistant"})]
    if tool:
        frames.append(bedrock_event("contentBlockStart", {"contentBlockIndex": 0, "start": {"toolUse": {"toolUseId": tool_id, "name": tool}}}))
        frames += [bedrock_event("contentBlockDelta", {"contentBlockIndex": 0, "delta": {"toolUse": {"input": p}}}) for p in pieces]
    else:
        frames += [bedrock_event("contentBlockDelta", {"contentBlockIndex": 0, "delta": {"text": p}}) for p in pieces]
    frames += [
        bedrock_event("contentBlockStop", {"contentBlockIndex": 0}),
        bedrock_event("messageStop", {"stopReason": stop_reason}),
        bedrock_event("metadata", {"usage": usage, "metrics": {"latencyMs": 12}}),
    ]
    error = bedrock_exception("modelStreamErrorException", "The model stream failed.")
    await fake._stream(ex, frames, scenario, error_frame=error, headers=EVENT_STREAM_HEADERS)


def _bedrock_tool(body: Message, scenario: Scenario) -> str | None:
    config = body.get("toolConfig") or {}
    tools = [t.get("toolSpec", {}).get("name") for t in config.get("tools") or []]
    choice = config.get("toolChoice") or {}
    if "tool" in choice:
        return str(choice["tool"].get("name"))
    last = (body.get("messages") or [{}])[-1]
    answered = any("toolResult" in b for b in last.get("content") or [])  # a model answers the tool's result
    if (tools and ("any" in choice or not answered)) or scenario.tool_call:
        return str(tools[0]) if tools else "fake_tool"
    return None


# -- helpers for tests -------------------------------------------------------------------------------

def make_service_account(token_uri: str, *, email: str = "gateway-test@fake-project.iam.gserviceaccount.com",
                         project: str = "fake-project") -> tuple[dict[str, Any], str]:
    """A throwaway service-account key (a fresh 2048-bit RSA key) whose ``token_uri`` is ``token_uri`` (the
    fake's ``/token``), and the PEM of its public key: ``(service-account JSON as a dict, public PEM)``."""
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import rsa

    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    private_pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    public_pem = key.public_key().public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
    info = {
        "type": "service_account", "project_id": project, "private_key_id": f"fake-key-{key.public_key().public_numbers().n % 10**12}",
        "private_key": private_pem.decode(), "client_email": email, "client_id": "100000000000000000001",
        "auth_uri": "https://accounts.google.com/o/oauth2/auth", "token_uri": token_uri,
    }
    return info, public_pem.decode()
