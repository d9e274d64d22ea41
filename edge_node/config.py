"""An edge node's settings, from flags and ``LIVECLASS_EDGE_*`` variables."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from liveclass.origin.classlog import DEFAULT_RETENTION


@dataclass
class EdgeConfig:
    """Everything an edge node needs to know to start.

    ``public_url`` is the http(s) base URL members reach the edge at;
    ``origin_url`` the origin's base URL (keys, registry). ``log_url`` selects
    the class log: None for in process, ``redis://...`` for Redis.
    """

    edge_id: str = "edge-1"
    host: str = "127.0.0.1"
    port: int = 8801
    public_url: str = ""
    origin_url: str = "http://127.0.0.1:8800"
    # Shared secret the origin's edge registry expects as a bearer token.
    edge_key: str = ""
    latitude: float = 0.0
    longitude: float = 0.0
    region: str = ""
    capacity: int = 20_000
    class_limit: int = 50_000
    log_url: str | None = None
    # Entries the class log keeps per class; this edge trims to it as it
    # appends, so give every edge and the origin the same number.
    log_retention: int = DEFAULT_RETENTION
    data_dir: Path = field(default_factory=lambda: Path("liveclass-data/edge"))
    tls_cert: Path | None = None
    tls_key: Path | None = None
    # WebRTC: which local addresses ICE may advertise (empty: loopback only),
    # an address to advertise instead behind NAT, and STUN/TURN servers (none
    # unless configured, so no packet leaves the machine by default).
    ice_interfaces: list[str] = field(default_factory=list)
    ice_public_ip: str | None = None
    ice_servers: list[str] = field(default_factory=list)
    heartbeat_s: float = 2.0
    # How long a drain (SIGTERM, or the origin's request) may take to move
    # the members elsewhere before the edge stops anyway: well within the
    # 30 s container platforms usually allow between SIGTERM and SIGKILL.
    drain_timeout_s: float = 10.0
    # Whether this process registers with the origin and sends heartbeats;
    # worker processes leave that to their parent, which sums their load.
    register: bool = True
    transcode: bool = True
    # The processes serving this edge id (``--workers``) and which one this
    # is: a closing poll waits for the marker of each (every one holds
    # votes of its own members).
    workers: int = 1
    worker: int = 0

    @property
    def base_url(self) -> str:
        """The URL members use: ``public_url`` or one built from host and port."""
        if self.public_url:
            return self.public_url.rstrip("/")
        scheme = "https" if self.tls_cert else "http"
        return f"{scheme}://{self.host}:{self.port}"
