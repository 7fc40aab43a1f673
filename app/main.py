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
from app.access import AccessMiddleware
from app.auth import WriteGuard
from app.cleanup import CleanupScheduler
from app.cleanup import router as cleanup_router
from app.config import Settings
from app.forwarding import build_router as build_forwarding_router
from app.limits import RequestLimits
from app.metrics import Metrics
from app.openapi import install_openapi
from app.readiness import Readiness, probe_storage
from app.routes import Relay, install_error_handlers, router
from app.shutdown import ShutdownClock
from app.spool import Spool
from app.storage import S3Storage
from app.transport import CompleteBodyMiddleware
from app.uploader import Uploader

log = logging.getLogger(__name__)


class RelayApp(FastAPI):
    """FastAPI with the complete-body fix outside every other middleware.

    It must sit outermost to see uvicorn's own ``receive``, including when an
    operator adds middleware of their own after create_app. The access
    middleware comes right inside it, so every answer is counted and logged,
    500s and refusals by other middleware included.
    """

    def build_middleware_stack(self) -> ASGIApp:
        relay = self.state.relay
        # The complete-body fix reads uvicorn's own receive(), so nothing may
        # wrap receive() outside it, the access middleware included.
        inner = AccessMiddleware(
            super().build_middleware_stack(),
            relay.metrics,
            relay.guard.trusted_proxies,
        )
        return CompleteBodyMiddleware(inner)


def create_app(settings: Settings, storage: S3Storage | None = None) -> FastAPI:
    # Probes use their own short timeouts, unless a test hands in a storage.
    probe = probe_storage(settings) if storage is None else storage
    # Their answers keep the clean-up's view of S3's clock current.
    storage = storage or S3Storage(settings, clock=probe.clock)
    metrics = Metrics()
    spool = Spool(
        settings.spool_dir,
        settings.spool_max_bytes,
        fsync_puts=settings.ack == "spool",
    )
    uploader = Uploader(settings, spool, storage, metrics)
    relay = Relay(
        settings=settings,
        uploader=uploader,
        storage=storage,
        guard=WriteGuard(settings, metrics),
        metrics=metrics,
    )
    cleanup = CleanupScheduler(settings, uploader, storage)
    shutdown = ShutdownClock(settings.shutdown_grace_s)
    readiness = Readiness(settings, spool, uploader, probe)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        await uploader.start()
        await cleanup.resume()
        readiness.start()
        log.info(
            "relay started bucket=%s spool=%s ack=%s",
            settings.s3_bucket,
            settings.spool_dir,
            settings.ack,
        )
        try:
            yield
        finally:
            relay.guard.close()
            cleanup.stop()
            await readiness.stop()
            await uploader.stop(shutdown.remaining())
            log.info("relay stopped spool_entries=%d", spool.entry_count)

    # /docs is install_openapi's; ReDoc would need a CDN of its own.
    app = RelayApp(
        title="hlsrelay",
        version=__version__,
        lifespan=lifespan,
        docs_url=None,
        redoc_url=None,
    )
    app.state.relay = relay
    app.state.shutdown = shutdown
    app.state.readiness = readiness
    app.state.cleanup = cleanup
    app.include_router(cleanup_router)
    app.include_router(router)
    app.include_router(build_forwarding_router(settings))
    install_error_handlers(app)
    install_openapi(app)
    app.add_middleware(RequestLimits, settings=settings)
    return app
