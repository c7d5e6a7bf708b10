"""The ``[prompts]`` section."""

from __future__ import annotations

from typing import Annotated

import msgspec

from respan_gateway import Settings


class PromptsSettings(Settings):
    # The folder of prompt files (*.toml, *.yaml, *.yml), relative to the working directory; "" = none.
    folder: str = ""
    # Seconds a prompt read from the database is reused before it is read again: the longest a replica
    # serves a prompt changed through another one (its own changes it sees at once). 0 = read every time.
    cache_ttl: Annotated[float, msgspec.Meta(ge=0)] = 2.0
    # Prompts (tenant, id) kept in that cache at most.
    cache_size: Annotated[int, msgspec.Meta(ge=1)] = 10_000
    # Bounds of one template's render: its output (and any value it makes), in characters...
    max_output_chars: Annotated[int, msgspec.Meta(ge=1)] = 200_000
    # ... its work (loop iterations plus calls) ...
    max_iterations: Annotated[int, msgspec.Meta(ge=1)] = 100_000
    # ... and its time, in seconds.
    render_timeout: Annotated[float, msgspec.Meta(gt=0)] = 0.5
