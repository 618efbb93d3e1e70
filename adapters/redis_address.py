"""Where the store is: a Redis URL read once, for the client, the config's errors and the logs.

Besides redis-py's own spellings (redis://, rediss://, unix://), two name several nodes:
- Sentinel, as RedisVL spells it: `redis+sentinel://[user:password@]host1:26379,host2:26379/
  service_name[/db]`; the credentials are the data nodes' (the sentinels are asked without);
- Cluster: `redis+cluster://[user:password@]host1:7000,host2:7001[/]`, seed nodes from which
  the client learns the rest.
`rediss+sentinel://` and `rediss+cluster://` are the same over TLS.
"""

from typing import Literal, NamedTuple
from urllib.parse import unquote, urlsplit

Kind = Literal["single", "sentinel", "cluster"]

_SCHEMES: dict[str, tuple[Kind, bool]] = {
    "redis": ("single", False),
    "rediss": ("single", True),
    "unix": ("single", False),
    "redis+sentinel": ("sentinel", False),
    "rediss+sentinel": ("sentinel", True),
    "redis+cluster": ("cluster", False),
    "rediss+cluster": ("cluster", True),
}
REDIS_SCHEMES = frozenset(_SCHEMES)
SPELLINGS = (
    "redis://, rediss://, unix://, redis+sentinel://host:port,.../service_name/db, "
    "redis+cluster://host:port,... (rediss+ for TLS)"
)


class RedisAddress(NamedTuple):
    kind: Kind
    tls: bool
    url: str  # as configured: redis-py reads a single node's itself
    nodes: tuple[tuple[str, int], ...]  # sentinels or cluster seeds; a single node's host
    username: str | None
    password: str | None
    service_name: str  # sentinel only
    db: int

    def location(self) -> str:
        """For logs and /ready: which nodes, never the password."""
        if self.url.startswith("unix:"):
            return f"redis at unix:{urlsplit(self.url).path}"
        nodes = ",".join(f"{host}:{port}" for host, port in self.nodes)
        if self.kind == "sentinel":
            return f"redis sentinel {self.service_name} via {nodes}"
        if self.kind == "cluster":
            return f"redis cluster via {nodes}"
        return f"redis at {nodes}"


def parse_redis_url(url: str) -> RedisAddress:
    """Raise ValueError saying what is wrong (never quoting a password)."""
    scheme, _, rest = url.partition("://")
    if scheme not in _SCHEMES or not rest:
        raise ValueError(f"is not a valid Redis URL (use {SPELLINGS})")
    kind, tls = _SCHEMES[scheme]
    if scheme == "unix":
        if not urlsplit(url).path:
            raise ValueError("is not a valid Redis URL (unix:// needs a socket path)")
        return RedisAddress(kind, tls, url, (), None, None, "", 0)
    netloc, _, path = rest.partition("?")[0].partition("/")
    userinfo, _, hosts = netloc.rpartition("@")
    username, password = _credentials(userinfo)
    nodes = tuple(_node(node) for node in hosts.split(","))
    if kind == "single" and len(nodes) > 1:
        raise ValueError("names several hosts: use redis+sentinel:// or redis+cluster:// for those")
    service_name = ""
    if kind == "sentinel":
        service_name, _, path = path.partition("/")
        if not service_name:
            raise ValueError("needs the service name: redis+sentinel://host:port,.../name/db")
    db = _db(path)
    if kind == "cluster" and db != 0:
        raise ValueError("a Redis Cluster has only db 0")
    return RedisAddress(kind, tls, url, nodes, username, password, service_name, db)


def _credentials(userinfo: str) -> tuple[str | None, str | None]:
    if not userinfo:
        return None, None
    user, colon, password = userinfo.partition(":")
    return unquote(user) or None, unquote(password) if colon else None


def _node(text: str) -> tuple[str, int]:
    host, colon, port = text.strip().rpartition(":")
    if not colon:
        host, port = text.strip(), "6379"
    host = host.strip("[]")
    if not host:
        raise ValueError("is not a valid Redis URL (no host)")
    if not port.isdigit() or not 0 < int(port) < 65536:
        raise ValueError("is not a valid Redis URL (bad port)")
    return host, int(port)


def _db(text: str) -> int:
    text = text.strip("/")
    if not text:
        return 0
    if not text.isdigit():
        raise ValueError("is not a valid Redis URL (the db must be a number)")
    return int(text)
