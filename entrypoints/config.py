"""Settings from config.ini, then `CHAT_<SECTION>_<KEY>` environment variables.

The structs below are the schema, spelled once: each field is a key of its section, with its
type, bounds (`Meta`) and default; `msgspec.convert(strict=False)` reads the text by them,
`forbid_unknown_fields` refuses a misspelt key and `__post_init__` holds the rules across keys.
`Parse` marks the few keys read by a function of their own, `Secret` those never quoted.

`[llm]` is the primary model; each name in its `fallbacks` is a section `[llm.<name>]` holding a
whole ModelSettings of its own (nothing inherited from `[llm]`). The seed's flat format (a
`[DEFAULT]` section with redis_host, redis_port, redis_password, api_url, JWT_TOKEN, model) is
read too, as Redis at that address and the openai provider posting to api_url exactly as given.
A mistake raises ConfigError naming the file and line (or variable), the section, the key and
what is wrong, and never the value of a secret.
"""

import configparser
import os
import re
import types
import typing
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Annotated, Any, Literal
from urllib.parse import quote, urlsplit

import msgspec
from msgspec import Meta

from adapters.llm.token_limit import TokenLimitParameter
from adapters.redis_address import REDIS_SCHEMES, SPELLINGS, parse_redis_url
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


class _Invalid(ValueError):
    """Raised by a `__post_init__`: a rule across keys is broken, and `key` is the one to fix."""

    def __init__(self, key: str, problem: str) -> None:
        super().__init__(problem)
        self.key = key


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
    if url.partition("://")[0] not in REDIS_SCHEMES:
        raise ValueError(
            f"is not a valid Redis URL (use {SPELLINGS}, memory://, or leave it empty for the "
            "embedded server)"
        )
    parse_redis_url(url)  # raises ValueError saying what is wrong
    return url


def _tokens(text: str) -> tuple[str, ...]:
    tokens = _comma_list(text)
    if any(re.search(r"\s", t) for t in tokens):
        raise ValueError("a token contains white space")
    return tokens


def _token(text: str) -> str:
    if re.search(r"\s", text):
        raise ValueError("contains white space")
    return text


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


_FLAGS = {"1": True, "true": True, "yes": True, "on": True}
_FLAGS |= {"0": False, "false": False, "no": False, "off": False}


def _flag(text: str) -> bool:
    # msgspec reads true/false/1/0 only; config files also say yes/no/on/off.
    try:
        return _FLAGS[text.lower()]
    except KeyError:
        raise ValueError(f"{text!r} is not a boolean (use true or false)") from None


# --- the schema ---

_DEFAULT_DATA_DIR = "./data"
Port = Annotated[int, Meta(ge=1, le=65535)]
Provider = Literal["echo", "openai", "huggingface", "anthropic"]
Flag = Annotated[bool, Parse(_flag)]
# A model's name: a section name ([llm.<name>]) and part of its variables' names.
ModelName = Annotated[str, Meta(pattern=r"^[A-Za-z0-9][A-Za-z0-9_-]{0,63}$")]
_NAME_RULE = "1 to 64 letters, digits, _ or -, the first a letter or digit"
_RESERVED_NAME = "default"  # will mean "the configured order" where a request picks a model


class ServerSettings(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    host: str = "127.0.0.1"
    port: Port = 8000
    cors_origins: Annotated[tuple[str, ...], Parse(_origins)] = ()


class AuthSettings(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    tokens: Annotated[tuple[str, ...], Parse(_tokens), Secret()] = ()
    rate_limit: Annotated[RateLimit, Parse(_rate_limit)] | None = None


class RedisSettings(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    url: Annotated[str, Parse(_redis_url), Secret()] = ""  # empty: embedded redis-server
    data_dir: str = _DEFAULT_DATA_DIR  # relative: to the config file's folder
    key_prefix: Annotated[str, Parse(_key_prefix)] = "chat"
    session_ttl_seconds: Annotated[int, Meta(ge=0)] = 86400
    # A TLS url's CA (empty: the system's), and the client's certificate and key for a server
    # that asks for one. Relative: to the config file's folder.
    tls_ca_file: str = ""
    tls_cert_file: str = ""
    tls_key_file: str = ""
    # > 0: an exchange is acknowledged once this many replicas have it (Redis WAIT)
    min_replicas_ack: Annotated[int, Meta(ge=0, le=16)] = 0

    def __post_init__(self) -> None:
        files = {"tls_ca_file": self.tls_ca_file, "tls_cert_file": self.tls_cert_file}
        files["tls_key_file"] = self.tls_key_file
        for key, file in files.items():
            if file and not self.url.startswith("rediss"):
                raise _Invalid(key, "set, but [redis] url is not a TLS one (rediss://...)")
            if file and not Path(file).is_file():
                raise _Invalid(key, f"{file}: no such file")
        if bool(self.tls_cert_file) != bool(self.tls_key_file):
            missing = "tls_key_file" if self.tls_cert_file else "tls_cert_file"
            raise _Invalid(missing, "tls_cert_file and tls_key_file go together")


class HistorySettings(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    max_messages: Annotated[int, Meta(ge=2)] = 50
    max_message_chars: Annotated[int, Meta(ge=1)] = 32000
    stream_keep_seconds: Annotated[int, Meta(ge=1)] = 300


class ModelSettings(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """One model's provider configuration: [llm] for the primary, [llm.<name>] a fallback."""

    provider: Provider = "echo"
    api_url: Annotated[str, Parse(_http_url)] = ""
    api_key: Annotated[str, Secret()] = ""
    model: str = ""
    timeout_seconds: Annotated[float, Meta(gt=0, le=3600)] = 60.0
    max_retries: Annotated[int, Meta(ge=0, le=10)] = 2
    max_tokens: Annotated[int, Meta(ge=1)] | None = 512  # None: not sent
    max_tokens_parameter: TokenLimitParameter = "auto"
    temperature: Annotated[float, Meta(ge=0, le=2)] | None = 0.7  # None: not sent
    echo_word_seconds: Annotated[float, Meta(ge=0, le=10)] = 0.05
    context_tokens: Annotated[int, Meta(ge=0)] = 0  # the model's window; 0: unknown, no trimming
    exact_url: bool = False  # set by the seed's format only: api_url is the endpoint itself

    def __post_init__(self) -> None:
        if self.provider != "echo" and not self.api_url:
            raise _Invalid("api_url", f"required for provider {self.provider!r}")
        if self.provider == "anthropic" and not self.model:
            raise _Invalid("model", "required for provider 'anthropic'")
        if self.provider == "anthropic" and self.max_tokens is None:
            raise _Invalid("max_tokens", "required for provider 'anthropic'")


class LlmSettings(ModelSettings, frozen=True):
    """[llm]: the primary model, and what applies to every model."""

    name: ModelName = "primary"  # the primary's name, as replies report it
    system_prompt: str = ""
    stream_on_disconnect: OnDisconnect = "continue"
    fallbacks: Annotated[tuple[ModelName, ...], Parse(_comma_list)] = ()  # in the order tried
    # A model that fails cooldown_failures times in a row goes last for cooldown_seconds.
    cooldown_seconds: Annotated[float, Meta(gt=0, le=86400)] = 30.0
    cooldown_failures: Annotated[int, Meta(ge=1, le=1000)] = 3

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.name == _RESERVED_NAME:
            raise _Invalid("name", f"{_RESERVED_NAME!r} is reserved; choose another name")
        seen = {self.name}
        for name in self.fallbacks:
            if name == _RESERVED_NAME:
                raise _Invalid("fallbacks", f"{_RESERVED_NAME!r} is reserved; choose another name")
            if name == self.name:
                raise _Invalid("fallbacks", f"{name!r} is the primary's name ([llm] name)")
            if name in seen:
                raise _Invalid("fallbacks", f"{name!r} is listed twice")
            seen.add(name)


class NamedModel(msgspec.Struct, frozen=True):
    name: str
    settings: ModelSettings


class CleanupSettings(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    enabled: Flag = True
    interval_seconds: Annotated[int, Meta(ge=1)] = 3600
    scope: CleanupScope = "idle"


class MetricsSettings(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    enabled: Flag = True  # GET /metrics, in Prometheus' text format
    token: Annotated[str, Parse(_token), Secret()] = ""  # empty: /metrics is open


class LogSettings(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    format: Literal["text", "json"] = "text"
    level: Literal["debug", "info", "warning", "error"] = "info"


class TracingSettings(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    # OTLP over HTTP, e.g. http://localhost:4318 (the collector's traces path is added);
    # empty: no traces
    otlp_endpoint: Annotated[str, Parse(_http_url)] = ""
    service_name: Annotated[str, Meta(min_length=1)] = "chat-service"


class Settings(msgspec.Struct, frozen=True):
    server: ServerSettings = ServerSettings()
    auth: AuthSettings = AuthSettings()
    redis: RedisSettings = RedisSettings()
    history: HistorySettings = HistorySettings()
    llm: LlmSettings = LlmSettings()
    cleanup: CleanupSettings = CleanupSettings()
    metrics: MetricsSettings = MetricsSettings()
    log: LogSettings = LogSettings()
    tracing: TracingSettings = TracingSettings()
    fallback_models: tuple[NamedModel, ...] = ()  # [llm.<name>] sections, as [llm] lists them
    source: str = NO_CONFIG_FILE  # the config file these came from

    def models(self) -> tuple[NamedModel, ...]:
        """Every model in the order they are asked: the primary, then the fallbacks."""
        return (NamedModel(self.llm.name, self.llm), *self.fallback_models)


# --- reading text into the schema ---

_INTERNAL_KEYS = {"exact_url"}  # not settable by a file or variable
_PATH_KEYS = ("data_dir", "tls_ca_file", "tls_cert_file", "tls_key_file")  # of [redis]


class _Key(msgspec.Struct, frozen=True):
    """What the text of one key needs before msgspec reads it by the field's type."""

    optional: bool  # empty text means None
    parse: Callable[[str], Any] | None
    secret: bool
    choices: tuple[str, ...]  # a Literal's values, matched without regard to case


def _key(hint: Any) -> _Key:
    optional = False
    if typing.get_origin(hint) in (typing.Union, types.UnionType):
        members = [arg for arg in typing.get_args(hint) if arg is not type(None)]
        optional, hint = True, members[0]
    extras: tuple[Any, ...] = ()
    if typing.get_origin(hint) is Annotated:
        hint, *metadata = typing.get_args(hint)
        extras = tuple(metadata)
    return _Key(
        optional=optional,
        parse=next((extra.function for extra in extras if isinstance(extra, Parse)), None),
        secret=any(isinstance(extra, Secret) for extra in extras),
        choices=typing.get_args(hint) if typing.get_origin(hint) is Literal else (),
    )


def _keys(struct: type[msgspec.Struct]) -> dict[str, _Key]:
    hints = typing.get_type_hints(struct, include_extras=True)
    return {name: _key(hint) for name, hint in hints.items() if name not in _INTERNAL_KEYS}


# section -> its keys; the sections are the struct-typed fields of Settings
_SCHEMA = {
    section: _keys(struct)
    for section, struct in typing.get_type_hints(Settings).items()
    if isinstance(struct, type) and issubclass(struct, msgspec.Struct)
}
_MODEL_KEYS = _keys(ModelSettings)  # the keys of a fallback's [llm.<name>] section
_FALLBACK_PREFIX = "llm."


def _keys_of(section: str) -> dict[str, _Key]:
    return _MODEL_KEYS if section.startswith(_FALLBACK_PREFIX) else _SCHEMA.get(section, {})


def _variable(section: str, key: str) -> str:
    """The environment variable of a key: [llm.gpt-4o] model is CHAT_LLM_GPT_4O_MODEL."""
    return re.sub(r"[.-]", "_", f"CHAT_{section}_{key}").upper()


def _value(key: _Key | None, raw: str) -> Any:
    """A key's text made ready for msgspec.convert(strict=False), which reads numbers and
    checks bounds: stripped, empty as None where None is allowed, a Literal in lower case."""
    text = raw.strip()
    if key is None:  # an unknown key (forbid_unknown_fields names it) or exact_url
        return text
    if key.optional and not text:
        return None
    if key.parse is not None:
        return key.parse(text)
    return text.lower() if key.choices else text


_LEGACY_SECTION = "DEFAULT"
_LEGACY_KEYS = {"redis_host", "redis_port", "redis_password", "api_url", "jwt_token", "model"}

# (section, key) -> (text, where it came from: file, line and section, or variable)
RawValues = dict[tuple[str, str], tuple[str, str]]


class _Origins:
    """Where a key's value came from, for an error; a key set nowhere is placed in its
    section of the file (at the header's line, if the file has the section)."""

    def __init__(self, raw: RawValues, headers: Mapping[str, str], file: str) -> None:
        self.raw, self.headers, self.file = raw, headers, file

    def of(self, section: str, key: str) -> str:
        if (section, key) in self.raw:
            return self.raw[section, key][1]
        return f"{self.headers.get(section, f'{self.file} [{section}]')} {key}"


# (section, key) -> line in the file; key "" is the section's header
_Lines = dict[tuple[str, str], int]


def _read_file(path: Path) -> tuple[configparser.ConfigParser, _Lines]:
    # No default section and no interpolation: the seed's [DEFAULT] is read as a plain
    # section, and a `%` in a secret is just a character.
    parser = configparser.ConfigParser(default_section="\x00", interpolation=None)
    try:
        text = path.read_text(encoding="utf-8")
        parser.read_string(text, source=str(path))
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
    return parser, _line_numbers(parser, text)


def _line_numbers(parser: configparser.ConfigParser, text: str) -> _Lines:
    """Where each section and key starts, for errors: configparser does not keep it. The file
    parsed, so an unindented line is a header, a comment or a key's first line."""
    lines: _Lines = {}
    section = ""
    for number, line in enumerate(text.splitlines(), 1):
        if not line[:1].strip() or line[0] in "#;":
            continue
        if header := parser.SECTCRE.match(line.strip()):
            section = header["header"]
            lines[section, ""] = number
        elif option := parser.OPTCRE.match(line):
            lines[section, parser.optionxform(option["option"].strip())] = number
    return lines


def _place(path: Path, lines: _Lines, section: str, key: str = "") -> str:
    """A key's (or a section's) place in the file: `<file> line 7 [llm] model`."""
    line = f" line {lines[section, key]}" if (section, key) in lines else ""
    return f"{path}{line} [{section}]" + (f" {key}" if key else "")


def _legacy_values(path: Path, section: Mapping[str, str], lines: _Lines) -> RawValues:
    """Map the seed's flat keys onto sections; each value remembers where it came from."""

    def where(key: str, shown: str = "") -> str:
        return _place(path, lines, _LEGACY_SECTION, key).removesuffix(key) + (shown or key)

    values: RawValues = {}
    if "redis_host" in section or "redis_port" in section:
        host = section.get("redis_host", "localhost").strip() or "localhost"
        port = section.get("redis_port", "6379").strip() or "6379"
        if not port.isdigit():
            raise ConfigError(f"{where('redis_port')}: {port!r} is not an integer")
        password = section.get("redis_password", "").strip()
        auth = f":{quote(password, safe='')}@" if password else ""
        values["redis", "url"] = (f"redis://{auth}{host}:{port}/0", where("redis_host"))
    if "api_url" in section:
        values["llm", "provider"] = ("openai", where("api_url"))
        values["llm", "api_url"] = (section["api_url"], where("api_url"))
        values["llm", "exact_url"] = ("true", where("api_url"))
    if "jwt_token" in section:
        values["llm", "api_key"] = (section["jwt_token"], where("jwt_token", "JWT_TOKEN"))
    if "model" in section:
        values["llm", "model"] = (section["model"], where("model"))
    return values


def _file_values(path: Path) -> tuple[RawValues, dict[str, str]]:
    """The file's values, and its sections: name -> the header's place in the file."""
    values: RawValues = {}
    headers: dict[str, str] = {}
    parser, lines = _read_file(path)
    for name in parser.sections():
        if name == _LEGACY_SECTION:
            section = parser[name]
            unknown = sorted(set(section) - _LEGACY_KEYS)
            if unknown:
                raise ConfigError(f"{_place(path, lines, name, unknown[0])}: unknown key")
            values.update(_legacy_values(path, section, lines))
            continue
        headers[name] = _place(path, lines, name)
        if name not in _SCHEMA and not name.startswith(_FALLBACK_PREFIX):
            raise ConfigError(
                f"{_place(path, lines, name)}: unknown section (expected one of "
                f"{', '.join(_SCHEMA)}, or llm.<name> for a fallback model)"
            )
        for key, value in parser[name].items():
            if key in _INTERNAL_KEYS:  # a field, so forbid_unknown_fields lets it through
                raise ConfigError(f"{_place(path, lines, name, key)}: {_unknown_key(name)}")
            values[name, key] = (value, _place(path, lines, name, key))
    return values, headers


def _environment_values(
    environ: Mapping[str, str], schema: dict[str, dict[str, _Key]]
) -> RawValues:
    values: RawValues = {}
    for section, keys in schema.items():
        for key in keys:
            variable = _variable(section, key)
            if variable in environ:
                values[section, key] = (
                    environ[variable],
                    f"environment {variable} ([{section}] {key})",
                )
    return values


def _section_values(section: str, raw: RawValues) -> dict[str, Any]:
    """One section's values as msgspec.convert takes them; a reader's error names the origin."""
    keys = _keys_of(section)
    values: dict[str, Any] = {}
    for (name, key), (text, origin) in raw.items():
        if name == section:
            try:
                values[key] = _value(keys.get(key), text)
            except ValueError as error:
                # Readers of secrets (tokens, a Redis URL's password) never quote them.
                raise ConfigError(f"{origin}: {error}") from None
    return values


def load_settings(
    path: str | Path | None = None, environ: Mapping[str, str] | None = None
) -> Settings:
    """Read settings; the file is `path`, else $CHAT_CONFIG, else ./config.ini if present.

    A relative data_dir (or TLS file) is taken from the config file's folder (a variable's,
    from the working directory), so the service finds its files wherever it is started.
    """
    environ = os.environ if environ is None else environ
    explicit = path if path is not None else environ.get(CONFIG_ENV)
    candidate = Path(explicit) if explicit else Path("config.ini")
    config_path = candidate if candidate.is_file() else None
    if explicit and config_path is None:
        raise ConfigError(f"{candidate}: config file not found")
    raw, headers = _file_values(config_path) if config_path else ({}, {})
    raw.update(_environment_values(environ, _SCHEMA))
    origins = _Origins(raw, headers, str(config_path or NO_CONFIG_FILE))

    sections = {name: _section_values(name, raw) for name in _SCHEMA}
    sections["redis"]["data_dir"] = sections["redis"].get("data_dir") or _DEFAULT_DATA_DIR
    for key in _PATH_KEYS:
        if given := sections["redis"].get(key):
            from_variable = raw.get(("redis", key), ("", ""))[1].startswith("environment")
            base = config_path.parent if config_path and not from_variable else Path()
            sections["redis"][key] = str((base / given).resolve())

    settings = _convert(sections, Settings, origins)
    fallbacks = _fallback_models(settings.llm.fallbacks, environ, origins)
    return msgspec.structs.replace(
        settings,
        fallback_models=fallbacks,
        source=str(config_path.resolve()) if config_path else NO_CONFIG_FILE,
    )


def _fallback_models(
    names: tuple[str, ...], environ: Mapping[str, str], origins: _Origins
) -> tuple[NamedModel, ...]:
    """Each name in [llm] fallbacks, read from [llm.<name>] and its variables."""
    listed_at = origins.of("llm", "fallbacks")
    listed = {_FALLBACK_PREFIX + name for name in names}
    for section, header in origins.headers.items():
        if section.startswith(_FALLBACK_PREFIX) and section not in listed:
            raise ConfigError(
                f"{header}: not in [llm] fallbacks; list it there or remove the section"
            )
    _check_variables(names, listed_at)
    models = []
    for name in names:
        section = _FALLBACK_PREFIX + name
        variables = _environment_values(environ, {section: _MODEL_KEYS})
        if section not in origins.headers and not variables:
            raise ConfigError(
                f"{listed_at}: {name!r} has no section: add [{section}] to the file or set "
                f"its variables ({_variable(section, 'provider')}, ...)"
            )
        origins.raw.update(variables)
        values = _section_values(section, origins.raw)
        models.append(NamedModel(name, _convert(values, ModelSettings, origins, section)))
    return tuple(models)


def _check_variables(names: tuple[str, ...], listed_at: str) -> None:
    """Every variable sets one key: a fallback's name must not give one of its keys the
    variable of another key: of another fallback (gpt-4o and gpt_4o), or of [llm] (none
    does with today's keys; an [llm] key named like <name>_<key> would)."""
    owners = {_variable(s, key): f"[{s}] {key}" for s, keys in _SCHEMA.items() for key in keys}
    for name in names:
        section = _FALLBACK_PREFIX + name
        for key in _MODEL_KEYS:
            variable = _variable(section, key)
            if variable in owners:
                raise ConfigError(
                    f"{listed_at}: {name!r} makes {variable} the variable of both "
                    f"{owners[variable]} and [{section}] {key}; rename {name!r}"
                )
            owners[variable] = f"[{section}] {key}"


def _unknown_key(section: str) -> str:
    return f"unknown key (expected one of {', '.join(_keys_of(section))})"


_T = typing.TypeVar("_T")


def _convert(data: dict[str, Any], target: type[_T], origins: _Origins, section: str = "") -> _T:
    """msgspec.convert, its error told as one line: where the value came from, what is wrong.
    `section` is the one `data` holds, if it holds one section rather than all of them."""
    try:
        return msgspec.convert(data, target, strict=False)
    except msgspec.ValidationError as error:
        message, _, path = str(error).partition(" - at `$")
        names = re.findall(r"\.(\w+)", path)
        index = re.search(r"\[(\d+)\]`?$", path)
        if not section:
            section, *names = names or [""]
            data = data.get(section, {})
        unknown = re.fullmatch(r"Object contains unknown field `(.+)`", message)
        if isinstance(error.__cause__, _Invalid):  # a rule of a __post_init__
            key, problem = error.__cause__.key, str(error.__cause__)
        elif unknown:
            key, problem = unknown[1], _unknown_key(section)
            if section.startswith(_FALLBACK_PREFIX) and key in _SCHEMA["llm"]:
                problem = f"a key of [llm] only, not of a fallback's section; {problem}"
        else:
            key = names[-1] if names else ""
            value = data.get(key)
            if index and isinstance(value, tuple):
                value = value[int(index[1])]
            problem = _problem(message, value, _keys_of(section).get(key))
        raise ConfigError(f"{origins.of(section, key)}: {problem}") from None


def _problem(message: str, value: Any, key: _Key | None) -> str:
    """msgspec's words for a value that does not fit, in the config's words."""
    hidden = key is None or key.secret
    quoted, plain = ("", "") if hidden else (f"{value!r} ", f"{value} ")
    if wrong_type := re.fullmatch(r"Expected `(\w+).*`, got `.+`", message):
        kind = {"int": "an integer", "float": "a number"}.get(wrong_type[1], "valid")
        return f"{quoted}is not {kind}"
    if message.startswith("Expected `str` matching regex"):  # only ModelName has a pattern
        return f"{quoted}is not a model name ({_NAME_RULE})"
    if bound := re.fullmatch(r"Expected `[^`]+` (.+)", message):
        return f"{plain}is out of range (must be {bound[1]})"
    if message.startswith("Invalid enum value") and key is not None:
        return f"{quoted}is not one of {', '.join(key.choices)}"
    return message


def redis_location(url: str) -> str:
    """Where a Redis URL points, for logs and /ready: its nodes or socket, no password."""
    return parse_redis_url(url).location()


def describe(settings: Settings, store: str) -> str:
    """One log line of what was chosen, without any secret; `store` says where the history
    store is (the embedded server's socket is known only once it runs)."""
    auth = f"{len(settings.auth.tokens)} token(s)" if settings.auth.tokens else "OFF"
    fallbacks = ",".join(f"{m.name}({m.settings.provider})" for m in settings.fallback_models)
    return (
        f"config={settings.source} provider={settings.llm.provider} "
        f"model={settings.llm.model or '-'} fallbacks={fallbacks or 'none'} "
        f"store={store} auth={auth} "
        f"rate_limit={settings.auth.rate_limit or 'off'} cleanup={describe_cleanup(settings)} "
        f"metrics={_describe_metrics(settings.metrics)} traces={_describe_traces(settings.tracing)}"
    )


def _describe_metrics(metrics: MetricsSettings) -> str:
    if not metrics.enabled:
        return "off"
    return "/metrics" + (" (token)" if metrics.token else "")


def _describe_traces(tracing: TracingSettings) -> str:
    """The collector's address only: a URL may carry credentials."""
    if not tracing.otlp_endpoint:
        return "off"
    parts = urlsplit(tracing.otlp_endpoint)
    return f"{parts.scheme}://{parts.hostname}" + (f":{parts.port}" if parts.port else "")


def describe_cleanup(settings: Settings) -> str:
    """What the cleanup job will delete, and when, in words."""
    cleanup = settings.cleanup
    if not cleanup.enabled:
        return "off"
    every = f"every {cleanup.interval_seconds} s"
    if cleanup.scope == "all":
        return f"{every}, deletes EVERY chat history, in use or not (scope=all)"
    return f"{every}, deletes chat histories not written to for {cleanup.interval_seconds} s"
