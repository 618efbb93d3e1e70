"""Settings from config.ini, then `CHAT_<SECTION>_<KEY>` environment variables.

The structs below are the schema, spelled once: each field is a key of its section, its type
says how the text is read, and `Meta` its bounds (checked by msgspec). The seed's flat format (a
`[DEFAULT]` section with redis_host, redis_port, redis_password, api_url, JWT_TOKEN, model) is
read too, as Redis at that address and the openai provider posting to api_url exactly as given.
A mistake raises ConfigError naming the file (or variable), the section, the key and what is
wrong, and never the value of a secret.
"""

import configparser
import os
import re
import typing
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Annotated, Any, Literal
from urllib.parse import quote, urlsplit

import msgspec
from msgspec import Meta

from adapters.llm.token_limit import TokenLimitParameter
from application.purge_histories import CleanupScope
from application.stream_message import OnDisconnect

CONFIG_ENV = "CHAT_CONFIG"
MEMORY_URL = "memory://"  # [redis] url for an in-process store that keeps nothing
NO_CONFIG_FILE = "(no config file)"


class ConfigError(ValueError):
    pass


class Parse:
    """Annotated metadata: read a key's text with this function (it raises ValueError saying
    what is wrong) instead of by its type. msgspec ignores metadata it does not know."""

    def __init__(self, function: Callable[[str], Any]) -> None:
        self.function = function


class Secret:
    """Annotated metadata: the key's value is never quoted in an error."""


class RateLimit(msgspec.Struct, frozen=True):
    limit: int
    window_seconds: int

    def __str__(self) -> str:
        unit = {v: k for k, v in _UNITS.items()}.get(self.window_seconds)
        return f"{self.limit}/{unit}" if unit else f"{self.limit} per {self.window_seconds}s"


# --- readers of single keys: each returns the value or raises ValueError with what is wrong ---


def _http_url(text: str) -> str:
    if text:
        parts = urlsplit(text)
        if parts.scheme not in {"http", "https"} or not parts.hostname:
            raise ValueError("must be an http:// or https:// URL with a host")
    return text


def _redis_url(url: str) -> str:
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
    tokens = _comma_list(text)
    if any(re.search(r"\s", t) for t in tokens):
        raise ValueError("a token contains white space")
    return tokens


def _origins(text: str) -> tuple[str, ...]:
    origins = _comma_list(text)
    for origin in origins:
        parts = urlsplit(origin)
        if origin != "*" and (parts.scheme not in {"http", "https"} or not parts.hostname):
            raise ValueError(f"{origin!r} is not an origin like https://chat.example.com or *")
    return origins


_UNITS = {"second": 1, "minute": 60, "hour": 3600, "day": 86400}


def _rate_limit(text: str) -> RateLimit:
    spec = text.lower()
    match = re.fullmatch(r"(\d+)\s*/\s*(second|minute|hour|day)s?", spec)
    if not match or int(match[1]) < 1:
        raise ValueError(
            f"{spec!r} is not a rate like 60/minute (units: second, minute, hour, day)"
        )
    return RateLimit(int(match[1]), _UNITS[match[2]])


def _key_prefix(text: str) -> str:
    if not text or re.search(r"[\s{}]", text):
        raise ValueError("must be non-empty, without white space or braces")
    return text


def _comma_list(text: str) -> tuple[str, ...]:
    return tuple(item.strip() for item in text.split(",") if item.strip())


# --- the schema ---

_DEFAULT_DATA_DIR = "./data"
Port = Annotated[int, Meta(ge=1, le=65535)]
Provider = Literal["echo", "openai", "huggingface", "anthropic"]


class ServerSettings(msgspec.Struct, frozen=True):
    host: str = "127.0.0.1"
    port: Port = 8000
    cors_origins: Annotated[tuple[str, ...], Parse(_origins)] = ()


class AuthSettings(msgspec.Struct, frozen=True):
    tokens: Annotated[tuple[str, ...], Parse(_tokens), Secret()] = ()
    rate_limit: Annotated[RateLimit, Parse(_rate_limit)] | None = None


class RedisSettings(msgspec.Struct, frozen=True):
    url: Annotated[str, Parse(_redis_url), Secret()] = ""  # empty: embedded redis-server
    data_dir: str = _DEFAULT_DATA_DIR  # relative: to the config file's folder
    key_prefix: Annotated[str, Parse(_key_prefix)] = "chat"
    session_ttl_seconds: Annotated[int, Meta(ge=0)] = 86400


class HistorySettings(msgspec.Struct, frozen=True):
    max_messages: Annotated[int, Meta(ge=2)] = 50
    max_message_chars: Annotated[int, Meta(ge=1)] = 32000
    stream_keep_seconds: Annotated[int, Meta(ge=1)] = 300


class LlmSettings(msgspec.Struct, frozen=True):
    provider: Provider = "echo"
    api_url: Annotated[str, Parse(_http_url)] = ""
    api_key: Annotated[str, Secret()] = ""
    model: str = ""
    system_prompt: str = ""
    timeout_seconds: Annotated[float, Meta(gt=0, le=3600)] = 60.0
    max_retries: Annotated[int, Meta(ge=0, le=10)] = 2
    max_tokens: Annotated[int, Meta(ge=1)] | None = 512  # None: not sent
    max_tokens_parameter: TokenLimitParameter = "auto"
    temperature: Annotated[float, Meta(ge=0, le=2)] | None = 0.7  # None: not sent
    stream_on_disconnect: OnDisconnect = "continue"
    echo_word_seconds: Annotated[float, Meta(ge=0, le=10)] = 0.05
    exact_url: bool = False  # set by the seed's format only: api_url is the endpoint itself


class CleanupSettings(msgspec.Struct, frozen=True):
    enabled: bool = True
    interval_seconds: Annotated[int, Meta(ge=1)] = 3600
    scope: CleanupScope = "idle"


class Settings(msgspec.Struct, frozen=True):
    server: ServerSettings = ServerSettings()
    auth: AuthSettings = AuthSettings()
    redis: RedisSettings = RedisSettings()
    history: HistorySettings = HistorySettings()
    llm: LlmSettings = LlmSettings()
    cleanup: CleanupSettings = CleanupSettings()
    source: str = NO_CONFIG_FILE  # the config file these came from


_INTERNAL_KEYS = {("llm", "exact_url")}  # not settable by a file or variable


class _Key(msgspec.Struct, frozen=True):
    """One key of the schema: how its text is read, and whether its value is a secret."""

    kind: Any  # the field's type, without None and Annotated metadata
    optional: bool
    parse: Callable[[str], Any] | None
    secret: bool


def _key(hint: Any) -> _Key:
    optional = False
    if typing.get_origin(hint) in (typing.Union, type(int | None)):
        members = [arg for arg in typing.get_args(hint) if arg is not type(None)]
        optional, hint = True, members[0]
    extras: tuple[Any, ...] = ()
    if typing.get_origin(hint) is Annotated:
        hint, *metadata = typing.get_args(hint)
        extras = tuple(metadata)
    parse = next((extra.function for extra in extras if isinstance(extra, Parse)), None)
    return _Key(hint, optional, parse, any(isinstance(extra, Secret) for extra in extras))


def _schema() -> dict[str, dict[str, _Key]]:
    sections: dict[str, dict[str, _Key]] = {}
    for section, struct in typing.get_type_hints(Settings).items():
        if isinstance(struct, type) and issubclass(struct, msgspec.Struct):
            hints = typing.get_type_hints(struct, include_extras=True)
            sections[section] = {
                name: _key(hint)
                for name, hint in hints.items()
                if (section, name) not in _INTERNAL_KEYS
            }
    return sections


_SCHEMA = _schema()
_BOOLEANS = {"1": True, "true": True, "yes": True, "on": True}
_BOOLEANS |= {"0": False, "false": False, "no": False, "off": False}


def _read(key: _Key, raw: str) -> Any:
    """A key's text as its type; bounds are left to msgspec.convert."""
    text = raw.strip()
    if key.optional and not text:
        return None
    if key.parse is not None:
        return key.parse(text)
    if typing.get_origin(key.kind) is Literal:
        choices = typing.get_args(key.kind)
        if text.lower() not in choices:
            raise ValueError(f"{text!r} is not one of {', '.join(choices)}")
        return text.lower()
    if key.kind is bool:
        if text.lower() not in _BOOLEANS:
            raise ValueError(f"{text!r} is not a boolean (use true or false)")
        return _BOOLEANS[text.lower()]
    if key.kind is int:
        try:
            return int(text)
        except ValueError:
            raise ValueError(f"{text!r} is not an integer") from None
    if key.kind is float:
        try:
            return float(text)
        except ValueError:
            raise ValueError(f"{text!r} is not a number") from None
    return text


_LEGACY_SECTION = "DEFAULT"
_LEGACY_KEYS = {"redis_host", "redis_port", "redis_password", "api_url", "jwt_token", "model"}

# (section, key) -> (text, where it came from: file and section, or variable)
RawValues = dict[tuple[str, str], tuple[str, str]]


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


def _legacy_values(path: Path, section: Mapping[str, str]) -> RawValues:
    """Map the seed's flat keys onto sections; each value remembers where it came from."""
    where = f"{path} [{_LEGACY_SECTION}]"
    values: RawValues = {}
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


def _file_values(path: Path) -> RawValues:
    values: RawValues = {}
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
    return values


def _environment_values(environ: Mapping[str, str]) -> RawValues:
    values: RawValues = {}
    for name, keys in _SCHEMA.items():
        for key in keys:
            variable = f"CHAT_{name}_{key}".upper()
            if variable in environ:
                values[name, key] = (environ[variable], f"environment {variable} ([{name}] {key})")
    return values


def _convert(sections: dict[str, Any], raw: RawValues) -> Settings:
    """Check the bounds; an error names where the value came from, as the readers' do."""
    try:
        return msgspec.convert(sections, Settings)
    except msgspec.ValidationError as error:
        reason, _, where = str(error).rpartition(" - at ")
        section, _, key = where.strip("`").removeprefix("$.").partition(".")
        origin = raw.get((section, key), ("", f"[{section}] {key}"))[1]
        bound = re.fullmatch(r"Expected `\w+` (.+)", reason)
        if bound and not _SCHEMA[section][key].secret:
            reason = f"{sections[section][key]:g} is out of range (must be {bound[1]})"
        raise ConfigError(f"{origin}: {reason}") from None


def load_settings(
    path: str | Path | None = None, environ: Mapping[str, str] | None = None
) -> Settings:
    """Read settings; the file is `path`, else $CHAT_CONFIG, else ./config.ini if present.

    A relative data_dir is taken from the config file's folder (a variable's, from the
    working directory), so the service keeps its data in one place wherever it is started.
    """
    environ = os.environ if environ is None else environ
    explicit = path if path is not None else environ.get(CONFIG_ENV)
    candidate = Path(explicit) if explicit else Path("config.ini")
    config_path = candidate if candidate.is_file() else None
    if explicit and config_path is None:
        raise ConfigError(f"{candidate}: config file not found")
    raw = _file_values(config_path) if config_path else {}
    raw.update(_environment_values(environ))

    sections: dict[str, dict[str, Any]] = {name: {} for name in _SCHEMA}
    for (name, key), (text, origin) in raw.items():
        reader = _SCHEMA[name].get(key) or _key(bool)  # exact_url, set by the legacy format
        try:
            sections[name][key] = _read(reader, text)
        except ValueError as error:
            # Readers of secrets (tokens, api_key, a Redis URL's password) never quote them.
            raise ConfigError(f"{origin}: {error}") from None

    data_dir = Path(sections["redis"].get("data_dir") or _DEFAULT_DATA_DIR)
    from_variable = raw.get(("redis", "data_dir"), ("", ""))[1].startswith("environment")
    base = config_path.parent if config_path and not from_variable else Path()
    sections["redis"]["data_dir"] = str((base / data_dir).resolve())

    settings = _convert(sections, raw)
    settings = msgspec.structs.replace(
        settings, source=str(config_path.resolve()) if config_path else NO_CONFIG_FILE
    )
    _check_together(settings, raw)
    return settings


def _check_together(settings: Settings, raw: RawValues) -> None:
    llm = settings.llm

    def origin(key: str) -> str:
        return raw.get(("llm", key), ("", f"{settings.source} [llm] {key}"))[1]

    if llm.provider != "echo" and not llm.api_url:
        raise ConfigError(f"{origin('api_url')}: required for provider {llm.provider!r}")
    if llm.provider == "anthropic" and not llm.model:
        raise ConfigError(f"{origin('model')}: required for provider 'anthropic'")
    if llm.provider == "anthropic" and llm.max_tokens is None:
        raise ConfigError(f"{origin('max_tokens')}: required for provider 'anthropic'")


def redis_location(url: str) -> str:
    """Where a Redis URL points, for logs and /ready: host and port or socket, no password."""
    parts = urlsplit(url)
    if parts.scheme == "unix":
        return f"redis at unix:{parts.path}"
    try:
        port = parts.port or 6379
    except ValueError:
        port = 6379
    return f"redis at {parts.hostname}:{port}"


def describe(settings: Settings, store: str) -> str:
    """One log line of what was chosen, without any secret; `store` says where the history
    store is (the embedded server's socket is known only once it runs)."""
    auth = f"{len(settings.auth.tokens)} token(s)" if settings.auth.tokens else "OFF"
    return (
        f"config={settings.source} provider={settings.llm.provider} "
        f"model={settings.llm.model or '-'} store={store} auth={auth} "
        f"rate_limit={settings.auth.rate_limit or 'off'} cleanup={describe_cleanup(settings)}"
    )


def describe_cleanup(settings: Settings) -> str:
    """What the cleanup job will delete, and when, in words."""
    cleanup = settings.cleanup
    if not cleanup.enabled:
        return "off"
    every = f"every {cleanup.interval_seconds} s"
    if cleanup.scope == "all":
        return f"{every}, deletes EVERY chat history, in use or not (scope=all)"
    return f"{every}, deletes chat histories not written to for {cleanup.interval_seconds} s"
