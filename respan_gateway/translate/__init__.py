"""The translations between the wire formats the gateway serves and OpenAI chat completions, its common
shape: one module per format (``responses``: the OpenAI Responses API), each public, so that every
provider adapter and plugin reuses the same mapping."""
