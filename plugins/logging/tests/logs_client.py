"""The logs API of a running gateway, as a user calls it (raw HTTP): a helper of the logging tests."""

from __future__ import annotations

import time
from typing import Any

import httpx2

from respan_gateway.testing import TEST_KEY


class Logs:
    """The logs API of a running gateway, as a user calls it (raw HTTP)."""

    def __init__(self, url: str, key: str = TEST_KEY) -> None:
        self.url = url
        self.headers = {"authorization": f"Bearer {key}"}

    def list(self, filters: dict[str, Any] | None = None, **params: Any) -> dict[str, Any]:
        body: dict[str, Any] = {"filters": filters or {}}
        body.update({k: v for k, v in params.items() if k == "operator"})
        query = {k: v for k, v in params.items() if k != "operator"}
        r = httpx2.post(f"{self.url}/api/request-logs/list/", params=query, json=body, headers=self.headers, timeout=10)
        assert r.status_code == 200, r.text
        return r.json()

    def get(self, log_id: str) -> dict[str, Any]:
        r = httpx2.get(f"{self.url}/api/request-logs/{log_id}/", headers=self.headers, timeout=10)
        assert r.status_code == 200, r.text
        return r.json()

    def wait_for(self, log_id: str, timeout: float = 60.0) -> dict[str, Any]:
        """The record, once it is readable: stream records complete when the stream ends, a disconnect
        may finish a moment later, and a read gives up waiting for a slow store's write after 2 s
        (the logging plugin's READ_FLUSH_TIMEOUT). ``timeout`` is only a deadline."""
        deadline = time.monotonic() + timeout
        while True:
            r = httpx2.get(f"{self.url}/api/request-logs/{log_id}/", headers=self.headers, timeout=10)
            if r.status_code == 200 or time.monotonic() > deadline:
                assert r.status_code == 200, r.text
                return r.json()
            time.sleep(0.05)

    def summary(self, filters: dict[str, Any] | None = None) -> dict[str, Any]:
        r = httpx2.post(f"{self.url}/api/request-logs/summary/", json={"filters": filters or {}}, headers=self.headers, timeout=10)
        assert r.status_code == 200, r.text
        return r.json()

    def patch(self, log_id: str, body: dict[str, Any]) -> httpx2.Response:
        return httpx2.patch(f"{self.url}/api/request-logs/{log_id}/", json=body, headers=self.headers, timeout=10)
