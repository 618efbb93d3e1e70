"""A throwaway CA and certificates (the `openssl` CLI), a TLS-only redis-server 7, and an ACL
user with only the commands the service sends.

    rediss://<user>:<password>@127.0.0.1:<tls port>/0

is the URL the service is given; the CA, client certificate and key are files
(`Certificates.ca`, `.client_cert`, `.client_key`) that its TLS settings name. For redis-py
directly: `Redis(..., **server.ssl_options)`, or `server.url_with_files` (the same files as
query parameters, which redis-py's from_url passes through).
"""

import secrets
import shutil
import subprocess
import tempfile
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal
from urllib.parse import quote, urlencode

import pytest

from tests.support.redis_process import RedisProcess, Throwaway

# What the service sends, read from adapters/redis_*.py (2026-12-01), in three groups. Keep
# them in step with the adapters: test_redis_topologies runs each as this user.
# redis-py's own calls: CLIENT SETINFO on connect (Redis 7.2+; its refusal is ignored, but
# is noise: granted where the server has it), SCRIPT LOAD/EXISTS around EVALSHA (Script
# objects, and in pipelines), MULTI/EXEC for transactional pipelines (the rate limiter).
# redis-py's incr() sends INCRBY, not INCR. WAIT is issue 14's min_replicas_ack.
SERVICE_COMMANDS: tuple[str, ...] = (
    # called directly
    "ping", "get", "set", "exists", "unlink", "scan", "incrby", "expire",
    "lrange", "lindex", "xrange", "xread",
    "evalsha", "eval", "script|load", "script|exists", "multi", "exec", "wait",
    "client|setinfo",
    # called by the Lua scripts (redis.call is checked against the ACL as well)
    "del", "pexpire", "persist", "lpos", "rpush", "ltrim", "time",
    "hget", "hmget", "hset", "hdel", "hincrby", "xadd", "xrevrange",
)  # fmt: skip
# A redis-py cluster client also asks for the slot map, follows ASK redirects, and reads
# COMMAND's table (where each command's keys are).
CLUSTER_CLIENT_COMMANDS: tuple[str, ...] = (
    "cluster|slots", "cluster|shards", "asking", "readonly", "command",
)  # fmt: skip


class OpenSSLMissing(RuntimeError):
    pass


@dataclass(frozen=True)
class Certificates:
    """PEM files: a CA, a server certificate for 127.0.0.1 and localhost (also valid as a
    client certificate, as Redis presents it to its primary and cluster peers), a client one."""

    directory: Path
    ca: Path
    server_cert: Path
    server_key: Path
    client_cert: Path
    client_key: Path

    def server_settings(self, auth_clients: str = "yes") -> list[str]:
        return [
            f"tls-cert-file {self.server_cert}",
            f"tls-key-file {self.server_key}",
            f"tls-ca-cert-file {self.ca}",
            f"tls-auth-clients {auth_clients}",
        ]

    @property
    def client_options(self) -> dict[str, Any]:
        """redis-py keyword arguments for a client that trusts the CA and shows its cert."""
        return {
            "ssl": True,
            "ssl_ca_certs": str(self.ca),
            "ssl_certfile": str(self.client_cert),
            "ssl_keyfile": str(self.client_key),
        }


def _openssl(*args: str, cwd: Path) -> None:
    binary = shutil.which("openssl")
    if binary is None:
        raise OpenSSLMissing(
            "the `openssl` command is not on PATH: the TLS tests make their throwaway CA "
            "with it (apt-get install openssl)"
        )
    done = subprocess.run([binary, *args], cwd=cwd, capture_output=True, text=True)
    if done.returncode != 0:
        raise RuntimeError(f"openssl {' '.join(args)} failed:\n{done.stderr}")


_LEAF_EXTENSIONS = """\
basicConstraints = critical, CA:FALSE
keyUsage = critical, digitalSignature
subjectKeyIdentifier = hash
authorityKeyIdentifier = keyid, issuer
"""


def make_certificates(directory: Path) -> Certificates:
    """A CA valid for two days and the two certificates it signs (P-256 keys: fast to make)."""
    directory.mkdir(parents=True, exist_ok=True)
    key = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes"]
    _openssl(
        "req", "-x509", *key, "-keyout", "ca.key", "-out", "ca.crt", "-days", "2",
        "-subj", "/CN=chat-service test CA",
        "-addext", "basicConstraints=critical,CA:TRUE",
        "-addext", "keyUsage=critical,keyCertSign,cRLSign",
        cwd=directory,
    )  # fmt: skip
    leaves = {
        "server": "extendedKeyUsage = serverAuth, clientAuth\n"
        "subjectAltName = IP:127.0.0.1, DNS:localhost\n",
        "client": "extendedKeyUsage = clientAuth\n",
    }
    for name, extensions in leaves.items():
        (directory / f"{name}.ext").write_text(_LEAF_EXTENSIONS + extensions)
        _openssl(
            "req", "-new", *key, "-keyout", f"{name}.key", "-out", f"{name}.csr",
            "-subj", f"/CN=chat-service test {name}", cwd=directory,
        )  # fmt: skip
        _openssl(
            "x509", "-req", "-in", f"{name}.csr", "-CA", "ca.crt", "-CAkey", "ca.key",
            "-set_serial", str(secrets.randbits(63)), "-days", "2",
            "-extfile", f"{name}.ext", "-out", f"{name}.crt", cwd=directory,
        )  # fmt: skip
    return Certificates(
        directory=directory,
        ca=directory / "ca.crt",
        server_cert=directory / "server.crt",
        server_key=directory / "server.key",
        client_cert=directory / "client.crt",
        client_key=directory / "client.key",
    )


def acl_rules(
    password: str, *, key_prefix: str = "chat", commands: Sequence[str] = SERVICE_COMMANDS
) -> list[str]:
    """ACL SETUSER rules: this password, the service's keys only, these commands only.

    The keys are `<prefix>:...` and, for a session's tagged keys (cluster slots),
    `{<prefix>:history:...}:...`; `{` is no glob character. No pub/sub channels. SCAN has
    no key argument: its MATCH, not the ACL, keeps it to the prefix.
    """
    return [
        "reset",
        "on",
        f">{password}",
        f"~{key_prefix}:*",
        f"~{{{key_prefix}:*",
        "resetchannels",
        "-@all",
        *(f"+{command}" for command in commands),
    ]


def create_user(
    processes: Sequence[RedisProcess],
    name: str,
    password: str,
    *,
    key_prefix: str = "chat",
    commands: Sequence[str] = SERVICE_COMMANDS,
) -> None:
    """The same ACL user on each process (ACLs are per server: a cluster or a primary and
    its replicas each need it, or a failover loses the user)."""
    for process in processes:
        since_7_2 = _version(process) >= (7, 2)
        known = [c for c in commands if since_7_2 or c not in _SINCE_7_2]
        rules = acl_rules(password, key_prefix=key_prefix, commands=known)
        process.call("ACL", "SETUSER", name, *rules)


_SINCE_7_2 = {"client|setinfo"}


def _version(process: RedisProcess) -> tuple[int, ...]:
    version: str = process.call("INFO", "server")["redis_version"]
    return tuple(int(part) for part in version.split("."))


class RedisTLSServer(Throwaway):
    """A TLS-only redis-server (`port 0`, `tls-port <free>`) whose default user has a
    password only the harness knows (`admin_options`), and a service user (`url`).

    `auth_clients` is Redis's tls-auth-clients: "yes" asks every client for a certificate
    signed by the CA, "optional" checks one only if shown.
    """

    def __init__(
        self,
        certificates: Certificates,
        directory: Path | None = None,
        *,
        auth_clients: Literal["yes", "optional", "no"] = "yes",
        user: str = "chat-service",
        key_prefix: str = "chat",
        commands: Sequence[str] = SERVICE_COMMANDS,
    ) -> None:
        self.own_directory = directory is None
        self.directory = directory or Path(tempfile.mkdtemp(prefix="redis-tls-"))
        self.certificates = certificates
        self.user = user
        self.password = secrets.token_urlsafe(16)
        self.key_prefix = key_prefix
        self.commands = tuple(commands)
        self._admin_password = secrets.token_urlsafe(16)
        self.process = RedisProcess(
            self.directory,
            lambda: [
                *certificates.server_settings(auth_clients),
                f"requirepass {self._admin_password}",
                "save ''",
                "appendonly no",
            ],
            port_names=("tls-port",),
            client_options={**certificates.client_options, "password": self._admin_password},
            name="redis-tls",
        )

    @property
    def port(self) -> int:
        return self.process.port

    @property
    def url(self) -> str:
        """The service user's URL; the TLS files are separate settings (`ssl_options`)."""
        return f"rediss://{quote(self.user)}:{quote(self.password)}@127.0.0.1:{self.port}/0"

    @property
    def ssl_options(self) -> dict[str, Any]:
        """The TLS files as redis-py keyword arguments, beside `url` (from_url)."""
        return {k: v for k, v in self.certificates.client_options.items() if k != "ssl"}

    @property
    def url_with_files(self) -> str:
        """`url` with the CA, certificate and key as query parameters (redis-py from_url)."""
        return f"{self.url}?{urlencode(self.ssl_options)}"

    @property
    def admin_options(self) -> dict[str, Any]:
        """redis-py keyword arguments for the unrestricted default user (setup, checks)."""
        return {"host": "127.0.0.1", "port": self.port, **self.process.client_options}

    def start(self) -> str:
        self.process.start()
        create_user(
            [self.process], self.user, self.password,
            key_prefix=self.key_prefix, commands=self.commands,
        )  # fmt: skip
        return self.url

    def add_user(
        self,
        name: str,
        *,
        key_prefix: str = "chat",
        commands: Sequence[str] = SERVICE_COMMANDS,
    ) -> str:
        """Another ACL user; returns its URL."""
        password = secrets.token_urlsafe(16)
        create_user([self.process], name, password, key_prefix=key_prefix, commands=commands)
        return f"rediss://{quote(name)}:{quote(password)}@127.0.0.1:{self.port}/0"

    def stop(self) -> None:
        self.process.kill()

    def __repr__(self) -> str:
        return f"RedisTLSServer(port={self.port}, running={self.process.running})"


@pytest.fixture(scope="session")
def tls_certificates(tmp_path_factory: pytest.TempPathFactory) -> Certificates:
    """One CA per test process (each xdist worker makes its own)."""
    return make_certificates(tmp_path_factory.mktemp("tls"))


@pytest.fixture(scope="module")
def redis_tls(
    tls_certificates: Certificates, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[RedisTLSServer]:
    """A TLS redis-server with the service's ACL user, shared by one test module: tests use
    keys of their own, or flush through `admin_options`."""
    with RedisTLSServer(tls_certificates, tmp_path_factory.mktemp("redis-tls")) as server:
        yield server
