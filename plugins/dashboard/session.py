"""Signed session cookies and CSRF tokens of the dashboard (itsdangerous signatures, HMAC-SHA1/SHA-512).

The session cookie holds the tenant, the key's name and a random CSRF value, signed and timestamped:
a cookie older than ``session_ttl`` or with a bad signature is no session. The sign-in form, sent
before any session exists, carries the signature of a random value held in a second cookie.
"""

from __future__ import annotations

import hmac
import os
import secrets
from typing import Any

import itsdangerous

SESSION_COOKIE = "respan_ui_session"
LOGIN_COOKIE = "respan_ui_login"
SECRET_ENV = "RESPAN_DASHBOARD_SECRET"


class Session(dict[str, Any]):
    @property
    def tenant(self) -> str:
        return str(self["t"])

    @property
    def key_id(self) -> str:
        return str(self.get("k") or "")

    @property
    def csrf_token(self) -> str:
        return str(self["c"])


class Sessions:
    def __init__(self, secret: str, ttl: float) -> None:
        secret = secret or os.environ.get(SECRET_ENV, "") or secrets.token_urlsafe(32)
        self.ttl = ttl
        self._sessions = itsdangerous.URLSafeTimedSerializer(secret, salt="respan-dashboard-session")
        self._login = itsdangerous.TimestampSigner(secret, salt="respan-dashboard-login")

    def issue(self, tenant: str, key_id: str | None) -> str:
        return self._sessions.dumps({"t": tenant, "k": key_id, "c": secrets.token_urlsafe(24)})

    def load(self, cookie: str | None) -> Session | None:
        if not cookie:
            return None
        try:
            data = self._sessions.loads(cookie, max_age=self.ttl)
        except itsdangerous.BadData:
            return None
        return Session(data) if isinstance(data, dict) and "t" in data and "c" in data else None

    @staticmethod
    def check_csrf(session: Session, token: str | None) -> bool:
        return bool(token) and hmac.compare_digest(session.csrf_token.encode(), str(token).encode())

    # -- the sign-in form -----------------------------------------------------------------------
    @staticmethod
    def login_nonce() -> str:
        return secrets.token_urlsafe(24)

    def login_token(self, nonce: str) -> str:
        return self._login.sign(nonce).decode()

    def check_login_token(self, nonce: str | None, token: str | None) -> bool:
        if not nonce or not token:
            return False
        try:
            value = self._login.unsign(token, max_age=3600).decode()
        except itsdangerous.BadData:
            return False
        return hmac.compare_digest(value.encode(), nonce.encode())
