"""The ``[responses]`` section (see README.md beside this file)."""

from __future__ import annotations

from typing import Annotated

import msgspec

from respan_gateway import Settings


class ResponsesSettings(Settings):
    # Days a stored response stays readable (GET /api/responses/{id}, previous_response_id); 0 = kept
    # until deleted. Expired rows are never read, and are deleted at most every `purge_interval` seconds.
    retention_days: Annotated[float, msgspec.Meta(ge=0)] = 30.0
    purge_interval: Annotated[float, msgspec.Meta(gt=0)] = 3600.0
