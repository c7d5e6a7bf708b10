"""A third-party plugin: a middleware that stamps responses, with a setting, a route, an observer and a CLI command."""

import json
from typing import Any

from starlette.responses import JSONResponse

from respan_gateway import Settings, hookimpl


class HelloSettings(Settings):
    greeting: str = "hello"


class Hello:
    def __init__(self, settings: HelloSettings, gateway: Any) -> None:
        self.greeting = settings.greeting

    async def __call__(self, call, call_next):
        call.response_headers["x-hello-plugin"] = self.greeting
        return await call_next(call)


async def hello_route(request):
    return JSONResponse({"hello": "world"})


@hookimpl
def register_middlewares(register):
    register("hello", Hello, order=650, settings=HelloSettings)


@hookimpl
def register_routes(register):
    register("/hello", hello_route, methods=["GET"])


class OutcomeSettings(Settings):
    # Where to append one JSON line per finished call ("" = nowhere).
    path: str = ""


class OutcomeFile:
    """An observer: one line per call with what the core says happened to it."""

    def __init__(self, settings: OutcomeSettings, gateway: Any) -> None:
        self.path = settings.path

    def observe(self, call):
        if not self.path:
            return
        o = call.outcome
        line = {
            "request_id": call.request_id, "kind": call.kind, "status": o.status, "stream_end": o.stream_end,
            "chunks": o.chunks, "error": type(o.error).__name__ if o.error is not None else None,
            "model": o.model, "provider": o.provider, "answer": o.answer is not None,
        }
        with open(self.path, "a") as f:
            f.write(json.dumps(line) + "\n")


@hookimpl
def register_observers(register):
    register("hello_outcomes", OutcomeFile, settings=OutcomeSettings, needs_answer=True)


async def greet(args, gateway):
    """`respan-gateway hello NAME`: a CLI command, with the gateway built from the config."""
    greeting = gateway.config.section("hello", HelloSettings).greeting
    print(f"{greeting}, {args.name}! (database started: {gateway.database.connected})")
    return 3 if args.name == "nobody" else 0


def greet_arguments(parser):
    parser.add_argument("name")


@hookimpl
def register_commands(register):
    register("hello", greet, help="greet someone", arguments=greet_arguments)
