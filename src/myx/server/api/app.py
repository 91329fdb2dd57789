"""``create_app()``: the FastAPI application over one :class:`Runtime`."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI

from myx import __version__
from myx.server.api import errors
from myx.server.api.routes import auth, batches, commands, deployments, hosts, system, upgrades
from myx.server.runtime import Runtime
from myx.server.settings import Settings


def create_app(settings: Settings | None = None, runtime: Runtime | None = None) -> FastAPI:
    """Build the app; settings are read here, never at import time."""
    runtime = runtime or Runtime(settings or Settings())

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        await runtime.start()
        try:
            yield
        finally:
            await runtime.stop()

    app = FastAPI(
        title="MyX",
        version=__version__,
        lifespan=lifespan,
        openapi_url="/api/openapi.json",
        docs_url="/api/docs",
        redoc_url=None,
    )
    app.state.runtime = runtime
    errors.install(app)
    for module in (auth, hosts, commands, batches, deployments, upgrades, system):
        app.include_router(module.router)
    return app
