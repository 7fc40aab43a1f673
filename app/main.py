"""The application factory: wires settings, spool, storage and uploader.

The lifespan opens the spool (replaying what an earlier run left), starts the
uploader, and on shutdown lets uploads in flight finish within the grace
period.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI
from starlette.types import ASGIApp

from app import __version__
from app.auth import WriteGuard
from app.config import Settings
from app.metrics import Metrics
from app.routes import Relay, install_error_handlers, router
from app.spool import Spool
from app.storage import S3Storage
from app.transport import CompleteBodyMiddleware
from app.uploader import Uploader

log = logging.getLogger(__name__)


class RelayApp(FastAPI):
    """FastAPI with the complete-body fix outside every other middleware.

    It must sit outermost to see uvicorn's own ``receive``, including when an
    operator adds middleware of their own after create_app.
    """

    def build_middleware_stack(self) -> ASGIApp:
        return CompleteBodyMiddleware(super().build_middleware_stack())


def create_app(settings: Settings, storage: S3Storage | None = None) -> FastAPI:
    storage = storage or S3Storage(settings)
    metrics = Metrics()
    spool = Spool(settings.spool_dir, settings.spool_max_bytes)
    uploader = Uploader(settings, spool, storage, metrics)
    relay = Relay(
        settings=settings,
        uploader=uploader,
        storage=storage,
        guard=WriteGuard(settings),
        metrics=metrics,
    )

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        await uploader.start()
        log.info(
            "relay started bucket=%s spool=%s ack=%s",
            settings.s3_bucket,
            settings.spool_dir,
            settings.ack,
        )
        try:
            yield
        finally:
            await uploader.stop(settings.shutdown_grace_s)
            log.info("relay stopped spool_entries=%d", spool.entry_count)

    app = RelayApp(title="hlsrelay", version=__version__, lifespan=lifespan)
    app.state.relay = relay
    app.include_router(router)
    install_error_handlers(app)
    return app
