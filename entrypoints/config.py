"""Settings from config.ini, then `CHAT_<SECTION>_<KEY>` environment variables.

The seed's flat format (a `[DEFAULT]` section with redis_host, redis_port, redis_password,
api_url, JWT_TOKEN, model) is read too, as Redis at that address and the openai provider
posting to api_url exactly as given. A mistake raises ConfigError naming the file (or
variable), the section, the key and what is wrong, and never the value of a secret.
"""

import configparser
import os
import re
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, Literal
from urllib.parse import quote, urlsplit

import msgspec

CONFIG_ENV = "CHAT_CONFIG"
MEMORY_URL = "memory://"  # [redis] url for an in-process store that keeps nothing
PROVIDERS = ("echo", "openai", "huggingface", "anthropic")
Provider = Literal["echo", "openai", "huggingface", "anthropic"]


class ConfigError(ValueError):
    pass


class RateLimit(msgspec.Struct, frozen=True):
    limit: int
    window_seconds: int


class ServerSettings(msgspec.Struct, frozen=True):
    host: str = "127.0.0.1"
    port: int = 8000


class AuthSettings(msgspec.Struct, frozen=True):
    tokens: tuple[str, ...] = ()
    rate_limit: RateLimit | None = None


class RedisSettings(msgspec.Struct, frozen=True):
    url: str = ""  # empty: embedded redis-server under data_dir; memory:// keeps nothing
    data_dir: str = "./data"
    key_prefix: str = "chat"
    session_ttl_seconds: int = 86400


class HistorySettings(msgspec.Struct, frozen=True):
    max_messages: int = 50
    max_message_chars: int = 32000


class LlmSettings(msgspec.Struct, frozen=True):
    provider: Provider = "echo"
    api_url: str = ""
    api_key: str = ""
    model: str = ""
    system_prompt: str = ""
    timeout_seconds: float = 60.0
    max_retries: int = 2
    max_tokens: int = 512
    temperature: float = 0.7
    exact_url: bool = False  # the seed's api_url is the endpoint itself, not a base URL


class CleanupSettings(msgspec.Struct, frozen=True):
    enabled: bool = True
    interval_seconds: int = 3600


class Settings(msgspec.Struct, frozen=True):
    server: ServerSettings = ServerSettings()
    auth: AuthSettings = AuthSettings()
    redis: RedisSettings = RedisSettings()
    history: HistorySettings = HistorySettings()
    llm: LlmSettings = LlmSettings()
    cleanup: CleanupSettings = CleanupSettings()


# --- value parsers: each returns the value or raises ValueError with what is wrong ---


def _integer(minimum: int, maximum: int | None = None) -> Callable[[str], int]:
    def parse(text: str) -> int:
        try:
            value = int(text.strip())
        except ValueError:
            raise ValueError(f"{text.strip()!r} is not an integer") from None
        if value < minimum or (maximum is not None and value > maximum):
            bound = f"between {minimum} and {maximum}" if maximum is not None else f">= {minimum}"
            raise ValueError(f"{value} is out of range (must be {bound})")
        return value

    return parse


def _number(
    minimum: float, maximum: float, *, exclusive_min: bool = False
) -> Callable[[str], float]:
    def parse(text: str) -> float:
        try:
            value = float(text.strip())
        except ValueError:
            raise ValueError(f"{text.strip()!r} is not a number") from None
        if not (minimum < value if exclusive_min else minimum <= value) or value > maximum:
            raise ValueError(f"{value:g} is out of range ({minimum:g} to {maximum:g})")
        return value

    return parse


def _boolean(text: str) -> bool:
    lowered = text.strip().lower()
    if lowered in {"1", "true", "yes", "on"}:
        return True
    if lowered in {"0", "false", "no", "off"}:
        return False
    raise ValueError(f"{text.strip()!r} is not a boolean (use true or false)")


def _text(text: str) -> str:
    return text.strip()


def _provider(text: str) -> str:
    name = text.strip().lower()
    if name not in PROVIDERS:
        raise ValueError(f"unknown provider {name!r} (expected one of {', '.join(PROVIDERS)})")
    return name


def _http_url(text: str) -> str:
    url = text.strip()
    if url:
        parts = urlsplit(url)
        if parts.scheme not in {"http", "https"} or not parts.hostname:
            raise ValueError("must be an http:// or https:// URL with a host")
    return url


def _redis_url(text: str) -> str:
    url = text.strip()
    if not url or url == MEMORY_URL:
        return url
    parts = urlsplit(url)
    if parts.scheme in {"redis", "rediss"}:
        try:
            parts.port  # noqa: B018  (raises on a non-numeric port)
        except ValueError:
            raise ValueError("is not a valid Redis URL (bad port)") from None
        if not parts.hostname:
            raise ValueError("is not a valid Redis URL (no host)")
    elif parts.scheme == "unix":
        if not parts.path:
            raise ValueError("is not a valid Redis URL (unix:// needs a socket path)")
    else:
        raise ValueError(
            "is not a valid Redis URL (use redis://, rediss://, unix://, memory:// or leave "
            "it empty for the embedded server)"
        )
    return url


def _tokens(text: str) -> tuple[str, ...]:
    tokens = tuple(t.strip() for t in text.split(",") if t.strip())
    if any(re.search(r"\s", t) for t in tokens):
        raise ValueError("a token contains white space")
    return tokens


_UNITS = {"second": 1, "minute": 60, "hour": 3600, "day": 86400}


def _rate_limit(text: str) -> RateLimit | None:
    spec = text.strip().lower()
    if not spec:
        return None
    match = re.fullmatch(r"(\d+)\s*/\s*(second|minute|hour|day)s?", spec)
    if not match or int(match[1]) < 1:
        raise ValueError(
            f"{spec!r} is not a rate like 60/minute (units: second, minute, hour, day)"
        )
    return RateLimit(int(match[1]), _UNITS[match[2]])


def _key_prefix(text: str) -> str:
    prefix = text.strip()
    if not prefix or re.search(r"\s", prefix):
        raise ValueError("must be non-empty, without white space")
    return prefix


_SCHEMA: dict[str, dict[str, Callable[[str], Any]]] = {
    "server": {"host": _text, "port": _integer(1, 65535)},
    "auth": {"tokens": _tokens, "rate_limit": _rate_limit},
    "redis": {
        "url": _redis_url,
        "data_dir": _text,
        "key_prefix": _key_prefix,
        "session_ttl_seconds": _integer(0),
    },
    "history": {"max_messages": _integer(2), "max_message_chars": _integer(1)},
    "llm": {
        "provider": _provider,
        "api_url": _http_url,
        "api_key": _text,
        "model": _text,
        "system_prompt": _text,
        "timeout_seconds": _number(0, 3600, exclusive_min=True),
        "max_retries": _integer(0, 10),
        "max_tokens": _integer(1),
        "temperature": _number(0, 2),
    },
    "cleanup": {"enabled": _boolean, "interval_seconds": _integer(1)},
}

_LEGACY_SECTION = "DEFAULT"
_LEGACY_KEYS = {"redis_host", "redis_port", "redis_password", "api_url", "jwt_token", "model"}


def _read_file(path: Path) -> configparser.ConfigParser:
    # No default section and no interpolation: the seed's [DEFAULT] is read as a plain
    # section, and a `%` in a secret is just a character.
    parser = configparser.ConfigParser(default_section="\x00", interpolation=None)
    try:
        with path.open(encoding="utf-8") as file:
            parser.read_file(file)
    except configparser.MissingSectionHeaderError as error:
        raise ConfigError(
            f"{path} line {error.lineno}: cannot be parsed: no [section] header"
        ) from None
    except configparser.ParsingError as error:
        line = error.errors[0][0]  # not the line's text: it may be a secret
        raise ConfigError(
            f"{path} line {line}: cannot be parsed: expected `key = value` or `[section]`"
        ) from None
    except configparser.DuplicateOptionError as error:
        raise ConfigError(
            f"{path} line {error.lineno}: [{error.section}] {error.option}: set twice"
        ) from None
    except configparser.DuplicateSectionError as error:
        raise ConfigError(f"{path} line {error.lineno}: [{error.section}]: appears twice") from None
    except configparser.Error as error:
        raise ConfigError(f"{path}: cannot be parsed: {error.message.splitlines()[0]}") from None
    except UnicodeDecodeError:
        raise ConfigError(f"{path}: cannot be parsed: it is not UTF-8 text") from None
    return parser


def _legacy_values(
    path: Path, section: Mapping[str, str]
) -> dict[tuple[str, str], tuple[str, str]]:
    """Map the seed's flat keys onto sections; each value remembers where it came from."""
    where = f"{path} [{_LEGACY_SECTION}]"
    values: dict[tuple[str, str], tuple[str, str]] = {}
    if "redis_host" in section or "redis_port" in section:
        host = section.get("redis_host", "localhost").strip() or "localhost"
        port = section.get("redis_port", "6379").strip() or "6379"
        if not port.isdigit():
            raise ConfigError(f"{where} redis_port: {port!r} is not an integer")
        password = section.get("redis_password", "").strip()
        auth = f":{quote(password, safe='')}@" if password else ""
        values["redis", "url"] = (f"redis://{auth}{host}:{port}/0", f"{where} redis_host")
    if "api_url" in section:
        values["llm", "provider"] = ("openai", f"{where} api_url")
        values["llm", "api_url"] = (section["api_url"], f"{where} api_url")
        values["llm", "exact_url"] = ("true", f"{where} api_url")
    if "jwt_token" in section:
        values["llm", "api_key"] = (section["jwt_token"], f"{where} JWT_TOKEN")
    if "model" in section:
        values["llm", "model"] = (section["model"], f"{where} model")
    return values


def _raw_values(
    path: Path | None, environ: Mapping[str, str]
) -> dict[tuple[str, str], tuple[str, str]]:
    values: dict[tuple[str, str], tuple[str, str]] = {}
    if path is not None:
        parser = _read_file(path)
        for name in parser.sections():
            if name == _LEGACY_SECTION:
                section = parser[name]
                unknown = sorted(set(section) - _LEGACY_KEYS)
                if unknown:
                    raise ConfigError(f"{path} [{name}] {unknown[0]}: unknown key")
                values.update(_legacy_values(path, section))
                continue
            keys = _SCHEMA.get(name)
            if keys is None:
                raise ConfigError(
                    f"{path} [{name}]: unknown section (expected one of {', '.join(_SCHEMA)})"
                )
            for key, value in parser[name].items():
                if key not in keys:
                    raise ConfigError(
                        f"{path} [{name}] {key}: unknown key (expected one of {', '.join(keys)})"
                    )
                values[name, key] = (value, f"{path} [{name}] {key}")
    for name, keys in _SCHEMA.items():
        for key in keys:
            variable = f"CHAT_{name}_{key}".upper()
            if variable in environ:
                values[name, key] = (environ[variable], f"environment {variable} ([{name}] {key})")
    return values


def load_settings(
    path: str | Path | None = None, environ: Mapping[str, str] | None = None
) -> Settings:
    """Read settings; the file is `path`, else $CHAT_CONFIG, else ./config.ini if present."""
    environ = os.environ if environ is None else environ
    explicit = path if path is not None else environ.get(CONFIG_ENV)
    config_path = Path(explicit) if explicit else Path("config.ini")
    if not config_path.is_file():
        if explicit:
            raise ConfigError(f"{config_path}: config file not found")
        config_path = None  # type: ignore[assignment]
    raw = _raw_values(config_path, environ)

    sections: dict[str, dict[str, Any]] = {name: {} for name in _SCHEMA}
    for (name, key), (text, origin) in raw.items():
        parse = _SCHEMA[name].get(key, _boolean)  # exact_url, set only by the legacy format
        try:
            sections[name][key] = parse(text)
        except ValueError as error:
            # Parsers of secrets (tokens, api_key, a Redis URL's password) never quote the value.
            raise ConfigError(f"{origin}: {error}") from None

    settings = msgspec.convert(sections, Settings)
    _check_together(settings, raw, str(config_path or "(no config file)"))
    return settings


def _check_together(
    settings: Settings, raw: Mapping[tuple[str, str], tuple[str, str]], source: str
) -> None:
    llm = settings.llm

    def origin(key: str) -> str:
        return raw.get(("llm", key), ("", f"{source} [llm] {key}"))[1]

    if llm.provider != "echo" and not llm.api_url:
        raise ConfigError(f"{origin('api_url')}: required for provider {llm.provider!r}")
    if llm.provider == "anthropic" and not llm.model:
        raise ConfigError(f"{origin('model')}: required for provider 'anthropic'")


def describe(settings: Settings) -> str:
    """One log line of what was chosen, without any secret."""
    redis = settings.redis.url
    store = (
        f"embedded redis-server in {settings.redis.data_dir}"
        if not redis
        else "in-memory (nothing kept)"
        if redis == MEMORY_URL
        else f"redis at {urlsplit(redis).hostname or urlsplit(redis).path}"
    )
    auth = f"{len(settings.auth.tokens)} token(s)" if settings.auth.tokens else "OFF"
    cleanup = settings.cleanup
    return (
        f"provider={settings.llm.provider} model={settings.llm.model or '-'} store={store} "
        f"auth={auth} rate_limit={settings.auth.rate_limit or 'off'} "
        f"cleanup={f'every {cleanup.interval_seconds}s' if cleanup.enabled else 'off'}"
    )
