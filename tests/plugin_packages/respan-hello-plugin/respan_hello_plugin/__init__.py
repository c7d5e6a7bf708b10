"""A third-party plugin: a middleware that stamps responses, with a setting, and a route."""

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
