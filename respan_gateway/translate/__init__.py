"""The one translation layer: each endpoint's wire format to and from OpenAI chat completions, one
module per wire format (``responses``: the OpenAI Responses API; ``messages``: Anthropic Messages;
``anthropic`` and ``gemini``: those providers' own formats for their adapters), each public, so that
every provider adapter that speaks chat serves every endpoint (``Endpoint.via_chat``)."""
