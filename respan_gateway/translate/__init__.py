"""The one translation layer: each endpoint's wire format to and from OpenAI chat completions, one
module per wire format, so that every provider adapter that speaks chat serves every endpoint
(``Endpoint.via_chat``)."""
