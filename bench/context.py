"""What every section shares: one SeaweedFS, its bucket, the change feed, and
factories for relays and for the direct uploader's S3 client."""

from __future__ import annotations

import contextlib
import shutil
import uuid
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from app.config import Settings
from app.locals3 import REGION, LocalS3
from app.storage import build_client
from bench.events import BucketEvents
from bench.procs import FloorProcess, RelayProcess, load_average
from bench.profile import Profiler

if TYPE_CHECKING:
    from mypy_boto3_s3 import S3Client


@dataclass
class Bench:
    work_dir: Path
    quick: bool
    profile_dir: Path | None
    # Settings every relay of the run gets (``--relay-env``), under the ones
    # a section needs for what it measures.
    relay_env: dict[str, str] = field(default_factory=dict)
    profile_gil: bool = False
    s3: LocalS3 = field(init=False)
    bucket: str = field(init=False)
    events: BucketEvents = field(init=False)
    profiles: dict[str, object] = field(default_factory=dict)

    def start(self) -> Bench:
        # Volumes of 1 GiB: each time one fills, SeaweedFS holds writes for
        # ~0.2 s while it grows another; at the default 16 MiB that is every
        # 16th segment, a trait of the test store rather than of S3.
        self.s3 = LocalS3(self.work_dir / "s3", volume_size_mb=1024).start()
        self.bucket = f"bench-{uuid.uuid4().hex[:12]}"
        self.s3.create_bucket(self.bucket)
        self.events = BucketEvents(
            self.s3, self.bucket, self.work_dir / "events.log"
        ).start()
        return self

    def stop(self) -> None:
        with contextlib.suppress(Exception):
            self.events.stop()
        self.s3.stop()

    def settings(self, **overrides: object) -> Settings:
        """Settings for the bucket, as a relay started by ``relay`` reads them."""
        values: dict[str, object] = {
            "s3_bucket": self.bucket,
            "s3_endpoint": self.s3.endpoint,
            "s3_region": REGION,
            "s3_access_key": self.s3.access_key,
            "s3_secret_key": self.s3.secret_key,
            "s3_addressing": "path",
            "spool_dir": self.work_dir / "unused-spool",
        }
        values.update(overrides)
        return Settings(**values)  # type: ignore[arg-type]

    def direct_client(
        self, max_connections: int = 64, *, streamed: bool = False
    ) -> S3Client:
        """The relay's own client construction: same config, same headers.

        ``streamed`` is the relay's client for bodies it sends while they
        arrive (unsigned payload): the direct arm against those must not pay
        for a payload hash the relay skips.
        """
        return build_client(
            self.settings(s3_max_connections=max_connections), streamed=streamed
        )

    @contextlib.contextmanager
    def relay(
        self, name: str, env: Mapping[str, str] | None = None, *, floor: bool = False
    ) -> Iterator[RelayProcess]:
        """A relay, or with ``floor`` the least one could spend (bench/floor.py)."""
        merged = {**self.relay_env, **(env or {})}
        kind = FloorProcess if floor else RelayProcess
        relay = kind(name, self.s3, self.bucket, self.work_dir, merged)
        relay.start()
        try:
            yield relay
        finally:
            relay.stop()
            shutil.rmtree(relay.spool_dir, ignore_errors=True)

    @contextlib.contextmanager
    def profiled(self, name: str, pid: int) -> Iterator[None]:
        """py-spy on ``pid`` for the block, when profiling was asked for."""
        if self.profile_dir is None:
            yield
            return
        profiler = Profiler(
            pid, self.profile_dir / f"profile-{name}.txt", self.profile_gil
        )
        profiler.start()
        try:
            yield
        finally:
            self.profiles[name] = profiler.stop()


def loads() -> list[float]:
    return list(load_average())
