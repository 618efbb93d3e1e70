import configparser
from pathlib import Path

import msgspec
import pytest

from entrypoints.config import (
    _SCHEMA,
    ConfigError,
    LlmSettings,
    ModelSettings,
    NamedModel,
    RateLimit,
    Settings,
    describe,
    load_settings,
    redis_location,
)

REPO = Path(__file__).resolve().parents[2]

SEED_CONFIG = """\
[DEFAULT]
redis_host = cache.internal
redis_port = 6380
redis_password = p@ss:w%rd
api_url = https://api-inference.huggingface.co/models/mistralai/Mistral-7B-Instruct-v0.2
JWT_TOKEN = hf_secret_token
model = mistralai/Mistral-7B-Instruct-v0.2
"""


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "config.ini"
    path.write_text(text)
    return path


def error_for(path: Path, environ: dict[str, str] | None = None) -> str:
    with pytest.raises(ConfigError) as caught:
        load_settings(path, environ or {})
    return str(caught.value)


def test_the_shipped_config_is_the_embedded_default() -> None:
    shipped = load_settings(REPO / "config.ini", {})
    assert shipped.source == str(REPO / "config.ini")
    assert shipped == msgspec.structs.replace(
        Settings(),
        redis=msgspec.structs.replace(Settings().redis, data_dir=str(REPO / "data")),
        source=shipped.source,
    )


def test_every_key_of_the_schema_is_in_the_shipped_config() -> None:
    """config.ini documents every key: it is the list users read."""
    shipped = configparser.ConfigParser(interpolation=None)
    shipped.read(REPO / "config.ini")
    assert {name: set(shipped[name]) for name in shipped.sections()} == {
        name: set(keys) for name, keys in _SCHEMA.items()
    }


def test_a_relative_data_dir_is_taken_from_the_config_files_folder(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    (tmp_path / "conf").mkdir()
    path = write(tmp_path / "conf", "[redis]\ndata_dir = ./state\n")

    assert load_settings(path, {}).redis.data_dir == str(tmp_path / "conf" / "state")
    from_variable = load_settings(path, {"CHAT_REDIS_DATA_DIR": "state"})
    assert from_variable.redis.data_dir == str(elsewhere / "state")
    assert load_settings(path, {"CHAT_REDIS_DATA_DIR": "/abs"}).redis.data_dir == "/abs"


def test_empty_max_tokens_and_temperature_are_not_sent(tmp_path: Path) -> None:
    settings = load_settings(write(tmp_path, "[llm]\nmax_tokens =\ntemperature =\n"), {})
    assert settings.llm.max_tokens is None
    assert settings.llm.temperature is None
    anthropic = "[llm]\nprovider = anthropic\napi_url = https://x\nmodel = m\nmax_tokens =\n"
    assert "[llm] max_tokens: required for provider 'anthropic'" in error_for(
        write(tmp_path, anthropic)
    )


def test_lists_and_choices(tmp_path: Path) -> None:
    text = (
        "[server]\ncors_origins = https://a.example, http://localhost:5173 ,\n"
        "[cleanup]\nscope = ALL\n[llm]\nmax_tokens_parameter = max_completion_tokens\n"
        "[auth]\nrate_limit = 60/minute\n"
    )
    settings = load_settings(write(tmp_path, text), {})
    assert settings.server.cors_origins == ("https://a.example", "http://localhost:5173")
    assert settings.cleanup.scope == "all"
    assert settings.llm.max_tokens_parameter == "max_completion_tokens"
    assert str(settings.auth.rate_limit) == "60/minute"
    assert "rate_limit=60/minute" in describe(settings, "redis at x:1")


def test_the_startup_line_says_what_cleanup_deletes_and_names_the_file(tmp_path: Path) -> None:
    path = write(tmp_path, "[cleanup]\ninterval_seconds = 900\n")
    line = describe(load_settings(path, {}), "redis at x:1")
    assert f"config={path}" in line
    assert "every 900 s, deletes chat histories not written to for 900 s" in line
    everything = describe(load_settings(path, {"CHAT_CLEANUP_SCOPE": "all"}), "-")
    assert "deletes EVERY chat history, in use or not" in everything
    assert "cleanup=off" in describe(load_settings(path, {"CHAT_CLEANUP_ENABLED": "no"}), "-")
    assert "metrics=/metrics traces=off" in line
    operated = {"CHAT_METRICS_TOKEN": "s3cret", "CHAT_TRACING_OTLP_ENDPOINT": "http://u:pw@c:4318/"}
    said = describe(load_settings(path, operated), "-")
    assert "metrics=/metrics (token) traces=http://c:4318" in said
    assert "s3cret" not in said
    assert "pw" not in said


def test_without_a_file_the_defaults_apply(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    settings = load_settings(environ={})
    assert settings.llm.provider == "echo"
    assert settings.redis.url == ""
    assert settings.server.port == 8000


def test_environment_overrides_every_section(tmp_path: Path) -> None:
    path = write(tmp_path, "[llm]\nprovider = echo\n[server]\nport = 9000\n")
    settings = load_settings(
        path,
        {
            "CHAT_SERVER_PORT": "9100",
            "CHAT_LLM_PROVIDER": "anthropic",
            "CHAT_LLM_API_URL": "https://api.anthropic.com",
            "CHAT_LLM_MODEL": "claude",
            "CHAT_LLM_API_KEY": "k",
            "CHAT_AUTH_TOKENS": "a, b ,,c",
            "CHAT_AUTH_RATE_LIMIT": "60/minute",
            "CHAT_REDIS_URL": "redis://localhost:6379/2",
            "CHAT_HISTORY_MAX_MESSAGES": "10",
            "CHAT_CLEANUP_ENABLED": "false",
        },
    )
    assert settings.server.port == 9100
    assert settings.llm.provider == "anthropic"
    assert settings.auth.tokens == ("a", "b", "c")
    assert settings.auth.rate_limit == RateLimit(60, 60)
    assert settings.redis.url == "redis://localhost:6379/2"
    assert settings.history.max_messages == 10
    assert settings.cleanup.enabled is False


def test_config_file_comes_from_chat_config(tmp_path: Path) -> None:
    path = write(tmp_path, "[server]\nport = 8123\n")
    assert load_settings(environ={"CHAT_CONFIG": str(path)}).server.port == 8123
    missing = tmp_path / "nope.ini"
    with pytest.raises(ConfigError, match=r"nope\.ini: config file not found"):
        load_settings(environ={"CHAT_CONFIG": str(missing)})


def test_the_seeds_flat_config_keeps_working(tmp_path: Path) -> None:
    settings = load_settings(write(tmp_path, SEED_CONFIG), {})
    assert settings.redis.url == "redis://:p%40ss%3Aw%25rd@cache.internal:6380/0"
    assert settings.llm.provider == "openai"
    assert settings.llm.exact_url is True
    assert settings.llm.api_url.endswith("/Mistral-7B-Instruct-v0.2")
    assert settings.llm.api_key == "hf_secret_token"
    assert settings.llm.model == "mistralai/Mistral-7B-Instruct-v0.2"


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("[llm]\nprovider = gpt5\n", "[llm] provider: 'gpt5' is not one of echo, openai"),
        ("[cleanup]\nscope = some\n", "[cleanup] scope: 'some' is not one of idle, all"),
        ("[server]\ncors_origins = example.com\n", "[server] cors_origins: 'example.com' is not"),
        ("[llm]\ntimeout_seconds = 0\n", "[llm] timeout_seconds: 0 is out of range (must be > 0"),
        ("[server]\nport = eighty\n", "[server] port: 'eighty' is not an integer"),
        ("[server]\nport = 70000\n", "[server] port: 70000 is out of range (must be <= 65535)"),
        ("[history]\nmax_messages = 1.5\n", "[history] max_messages: '1.5' is not an integer"),
        ("[llm]\nprovider = openai\n", "[llm] api_url: required for provider 'openai'"),
        ("[llm]\nprovider = huggingface\n", "[llm] api_url: required for provider 'huggingface'"),
        ("[llm]\napi_url = ftp://x\n", "[llm] api_url: must be an http:// or https:// URL"),
        ("[redis]\nurl = http://localhost\n", "[redis] url: is not a valid Redis URL"),
        ("[redis]\nurl = redis://localhost:port/0\n", "[redis] url: is not a valid Redis URL"),
        ("[redis]\nurl = redis+sentinel://h:26379\n", "[redis] url: needs the service name"),
        ("[redis]\nurl = redis+cluster://h:7000/3\n", "[redis] url: a Redis Cluster has only db 0"),
        ("[redis]\nurl = redis://a:1,b:2\n", "[redis] url: names several hosts: use redis+"),
        ("[redis]\nurl = redis+cluster://a:1,b:x\n", "[redis] url: is not a valid Redis URL (bad"),
        ("[redis]\ntls_ca_file = ca.pem\n", "[redis] tls_ca_file: set, but [redis] url is not"),
        ("[redis]\nurl = rediss://h\ntls_ca_file = no.pem\n", "[redis] tls_ca_file: /"),
        ("[auth]\nrate_limit = lots\n", "[auth] rate_limit: 'lots' is not a rate like 60/minute"),
        ("[cleanup]\nenabled = maybe\n", "[cleanup] enabled: 'maybe' is not a boolean"),
        ("[llm]\ntemprature = 1\n", "[llm] temprature: unknown key"),
        ("[database]\nurl = x\n", "[database]: unknown section"),
        ("not an ini file\n", "line 1: cannot be parsed: no [section] header"),
        ("[llm]\nprovider = echo\nsk-oops\n", "line 3: cannot be parsed: expected `key = value`"),
        ("[llm]\nmodel = a\nmodel = b\n", "line 3: [llm] model: set twice"),
        ("[llm]\n[server]\n[llm]\n", "line 3: [llm]: appears twice"),
    ],
)
def test_a_mistake_names_file_section_key_and_problem(
    tmp_path: Path, text: str, expected: str
) -> None:
    path = write(tmp_path, text)
    message = error_for(path)
    assert message.startswith(str(path))
    assert expected in message
    assert "\n" not in message


@pytest.mark.parametrize(
    ("url", "location"),
    [
        ("redis://:pw@cache:6380/0", "redis at cache:6380"),
        ("rediss://user:pw@cache/1", "redis at cache:6379"),
        (
            "redis+sentinel://user:pw@s1:26379,s2:26380/chat-primary/2",
            "redis sentinel chat-primary via s1:26379,s2:26380",
        ),
        ("unix:///run/redis.sock", "redis at unix:/run/redis.sock"),
        ("rediss+cluster://user:pw@c1:7000,c2:7001", "redis cluster via c1:7000,c2:7001"),
    ],
)
def test_every_redis_topology_is_read_and_told_without_its_password(
    tmp_path: Path, url: str, location: str
) -> None:
    settings = load_settings(write(tmp_path, f"[redis]\nurl = {url}\n"), {})
    assert settings.redis.url == url
    assert redis_location(url) == location


def test_tls_files_are_taken_from_the_config_files_folder_and_go_in_pairs(tmp_path: Path) -> None:
    for name in ("ca.pem", "client.pem", "client.key"):
        (tmp_path / name).write_text("-")
    keys = "tls_ca_file = ca.pem\ntls_cert_file = client.pem\ntls_key_file = client.key\n"
    settings = load_settings(write(tmp_path, f"[redis]\nurl = rediss://h\n{keys}"), {})
    assert settings.redis.tls_ca_file == str(tmp_path / "ca.pem")
    assert settings.redis.tls_key_file == str(tmp_path / "client.key")
    half = write(tmp_path, "[redis]\nurl = rediss://h\ntls_cert_file = client.pem\n")
    assert "[redis] tls_key_file: tls_cert_file and tls_key_file go together" in error_for(half)


def test_a_mistake_in_the_environment_names_the_variable(tmp_path: Path) -> None:
    path = write(tmp_path, "")
    message = error_for(path, {"CHAT_LLM_MAX_TOKENS": "many"})
    assert message == "environment CHAT_LLM_MAX_TOKENS ([llm] max_tokens): 'many' is not an integer"


def test_secrets_are_never_quoted_in_errors(tmp_path: Path) -> None:
    bad_redis = write(tmp_path, "[redis]\nurl = redis://:hunter2@host:notaport/0\n")
    assert "hunter2" not in error_for(bad_redis)
    bad_token = write(tmp_path, "[auth]\ntokens = good, zq9 tok3n\n")
    assert "tok3n" not in error_for(bad_token)


def test_booleans_and_choices_read_as_before(tmp_path: Path) -> None:
    path = write(tmp_path, "[cleanup]\nenabled = Off\n[llm]\nprovider = ECHO\n")
    settings = load_settings(path, {})
    assert settings.cleanup.enabled is False
    assert settings.llm.provider == "echo"
    for text, expected in [("yes", True), ("ON", True), ("1", True), ("no", False), ("0", False)]:
        assert load_settings(path, {"CHAT_CLEANUP_ENABLED": text}).cleanup.enabled is expected


def test_a_mistake_in_a_key_names_its_line(tmp_path: Path) -> None:
    text = "# comment\n[server]\nhost = a\n  continued\n\nport = 70000\n"
    assert error_for(write(tmp_path, text)).startswith(f"{tmp_path / 'config.ini'} line 6 [server]")


TWO_FALLBACKS = """\
[llm]
provider = huggingface
api_url = https://api-inference.huggingface.co/models/mistralai/Mistral-7B-Instruct-v0.2
context_tokens = 32768
timeout_seconds = 5
temperature = 0.2
name = mistral
system_prompt = Be brief.
fallbacks = local, claude
cooldown_seconds = 10
cooldown_failures = 2

[llm.claude]
provider = anthropic
api_url = https://api.anthropic.com
model = claude-sonnet-4-5
max_tokens = 1024
context_tokens = 200000

[llm.local]
provider = openai
api_url = http://127.0.0.1:11434/v1
model = llama3.2
"""


def test_fallback_sections_are_read_in_the_order_fallbacks_lists_them(tmp_path: Path) -> None:
    settings = load_settings(write(tmp_path, TWO_FALLBACKS), {})
    assert settings.llm.name == "mistral"
    assert settings.llm.context_tokens == 32768
    assert (settings.llm.cooldown_seconds, settings.llm.cooldown_failures) == (10.0, 2)
    assert [model.name for model in settings.models()] == ["mistral", "local", "claude"]
    assert settings.models()[0] == NamedModel("mistral", settings.llm)
    claude = settings.fallback_models[1].settings
    assert type(claude) is ModelSettings
    assert (claude.provider, claude.model, claude.max_tokens) == (
        "anthropic",
        "claude-sonnet-4-5",
        1024,
    )
    assert claude.context_tokens == 200000


def test_a_fallback_takes_the_schemas_defaults_not_the_primarys(tmp_path: Path) -> None:
    local = load_settings(write(tmp_path, TWO_FALLBACKS), {}).fallback_models[0].settings
    assert local == ModelSettings(
        provider="openai", api_url="http://127.0.0.1:11434/v1", model="llama3.2"
    )
    assert (local.timeout_seconds, local.temperature, local.context_tokens) == (60.0, 0.7, 0)


def test_without_fallbacks_the_primary_is_the_only_model() -> None:
    settings = Settings()
    assert settings.models() == (NamedModel("primary", settings.llm),)
    assert "fallbacks=none" in describe(settings, "-")


def test_the_startup_line_names_the_fallbacks_without_secrets(tmp_path: Path) -> None:
    path = write(tmp_path, TWO_FALLBACKS + "api_key = sk-local-secret\n")
    line = describe(load_settings(path, {"CHAT_LLM_CLAUDE_API_KEY": "sk-ant-secret"}), "-")
    assert "fallbacks=local(openai),claude(anthropic)" in line
    assert "secret" not in line


def test_a_fallback_can_be_configured_by_variables_alone(tmp_path: Path) -> None:
    settings = load_settings(
        write(tmp_path, ""),
        {
            "CHAT_LLM_FALLBACKS": "claude",
            "CHAT_LLM_CLAUDE_PROVIDER": "anthropic",
            "CHAT_LLM_CLAUDE_API_URL": "https://api.anthropic.com",
            "CHAT_LLM_CLAUDE_API_KEY": "sk-ant",
            "CHAT_LLM_CLAUDE_MODEL": "claude-sonnet-4-5",
        },
    )
    assert settings.llm.fallbacks == ("claude",)
    (claude,) = settings.fallback_models
    assert (claude.name, claude.settings.provider, claude.settings.api_key) == (
        "claude",
        "anthropic",
        "sk-ant",
    )


def test_a_variable_overrides_a_fallback_sections_key(tmp_path: Path) -> None:
    text = "[llm]\nfallbacks = gpt-4o\n[llm.gpt-4o]\nprovider = openai\napi_url = https://a\n"
    path = write(tmp_path, text)
    settings = load_settings(path, {"CHAT_LLM_GPT_4O_MODEL": "gpt-4o", "CHAT_LLM_MODEL": "x"})
    assert settings.fallback_models[0].settings.model == "gpt-4o"
    assert settings.llm.model == "x"
    message = error_for(path, {"CHAT_LLM_GPT_4O_MAX_RETRIES": "many"})
    assert message == (
        "environment CHAT_LLM_GPT_4O_MAX_RETRIES ([llm.gpt-4o] max_retries): "
        "'many' is not an integer"
    )


def test_fallbacks_from_a_variable_replace_the_files(tmp_path: Path) -> None:
    settings = load_settings(
        write(tmp_path, TWO_FALLBACKS), {"CHAT_LLM_FALLBACKS": "claude, local"}
    )
    assert [model.name for model in settings.fallback_models] == ["claude", "local"]


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        (
            "[llm]\nfallbacks = claude\n",
            "line 2 [llm] fallbacks: 'claude' has no section: add [llm.claude] to the file or "
            "set its variables (CHAT_LLM_CLAUDE_PROVIDER, ...)",
        ),
        (
            "[llm]\nfallbacks = a\n[llm.a]\n[llm.b]\n",
            "line 4 [llm.b]: not in [llm] fallbacks; list it there or remove the section",
        ),
        ("[llm]\nfallbacks = a b\n", "line 2 [llm] fallbacks: 'a b' is not a model name"),
        ("[llm]\nfallbacks = -a\n", "line 2 [llm] fallbacks: '-a' is not a model name"),
        ("[llm]\nfallbacks = a, " + "x" * 65 + "\n", "[llm] fallbacks: 'xxxx"),
        ("[llm]\nname = my model\n", "line 2 [llm] name: 'my model' is not a model name"),
        ("[llm]\nfallbacks = default\n", "[llm] fallbacks: 'default' is reserved"),
        ("[llm]\nname = default\n", "[llm] name: 'default' is reserved"),
        ("[llm]\nfallbacks = primary\n", "[llm] fallbacks: 'primary' is the primary's name"),
        ("[llm]\nname = a\nfallbacks = b, a\n", "[llm] fallbacks: 'a' is the primary's name"),
        ("[llm]\nfallbacks = a, b, a\n", "[llm] fallbacks: 'a' is listed twice"),
        (
            "[llm]\nfallbacks = a\n[llm.a]\nprovider = openai\n",
            "line 3 [llm.a] api_url: required for provider 'openai'",
        ),
        (
            "[llm]\nfallbacks = a\n[llm.a]\nprovider = anthropic\napi_url = https://x\n",
            "line 3 [llm.a] model: required for provider 'anthropic'",
        ),
        (
            "[llm]\nfallbacks = a\n[llm.a]\nsystem_prompt = Be brief.\n",
            "line 4 [llm.a] system_prompt: a key of [llm] only, not of a fallback's section; "
            "unknown key (expected one of provider, api_url",
        ),
        ("[llm]\nfallbacks = a\n[llm.a]\nmodle = x\n", "line 4 [llm.a] modle: unknown key"),
        ("[llm]\nfallbacks = a\n[llm.a]\nexact_url = true\n", "[llm.a] exact_url: unknown key"),
        ("[llm]\nexact_url = true\n", "line 2 [llm] exact_url: unknown key"),
        (
            "[llm]\nfallbacks = a\n[llm.a]\ntemperature = 3\n",
            "line 4 [llm.a] temperature: 3 is out of range (must be <= 2.0)",
        ),
        (
            "[llm]\nfallbacks = a\n[llm.a]\nprovider = gpt\n",
            "line 4 [llm.a] provider: 'gpt' is not one of echo, openai, huggingface, anthropic",
        ),
        (
            "[llm]\nfallbacks = a\n[llm.a]\napi_url = example.com\n",
            "line 4 [llm.a] api_url: must be an http:// or https:// URL",
        ),
        ("[llm]\ncontext_tokens = -1\n", "[llm] context_tokens: -1 is out of range (must be >= 0)"),
        ("[llm]\ncooldown_seconds = 0\n", "[llm] cooldown_seconds: 0 is out of range (must be > 0"),
        ("[llm]\ncooldown_failures = 0\n", "[llm] cooldown_failures: 0 is out of range"),
        ("[llm]\ncooldown_failures = 1001\n", "[llm] cooldown_failures: 1001 is out of range"),
        ("[llm.a]\n", "line 1 [llm.a]: not in [llm] fallbacks"),
        ("[llms]\n", "line 1 [llms]: unknown section"),
    ],
)
def test_a_fallback_mistake_names_file_line_section_key_and_problem(
    tmp_path: Path, text: str, expected: str
) -> None:
    path = write(tmp_path, text)
    message = error_for(path)
    assert message.startswith(f"{path} ")
    assert expected in message
    assert "\n" not in message


@pytest.mark.parametrize(
    ("fallbacks", "expected"),
    [
        (
            "gpt-4o, gpt_4o",
            "'gpt_4o' makes CHAT_LLM_GPT_4O_PROVIDER the variable of both "
            "[llm.gpt-4o] provider and [llm.gpt_4o] provider; rename 'gpt_4o'",
        ),
        (
            "Claude, claude",
            "'claude' makes CHAT_LLM_CLAUDE_PROVIDER the variable of both "
            "[llm.Claude] provider and [llm.claude] provider; rename 'claude'",
        ),
    ],
)
def test_names_whose_variables_would_be_the_same_are_refused(
    tmp_path: Path, fallbacks: str, expected: str
) -> None:
    path = write(tmp_path, "")
    message = error_for(path, {"CHAT_LLM_FALLBACKS": fallbacks})
    assert message == f"environment CHAT_LLM_FALLBACKS ([llm] fallbacks): {expected}"


def test_a_name_whose_variables_would_be_llms_own_is_refused(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # No name collides with today's [llm] keys; a key named <name>_<key> would.
    monkeypatch.setitem(_SCHEMA["llm"], "backup_model", _SCHEMA["llm"]["model"])
    path = write(tmp_path, "[llm]\nfallbacks = backup\n[llm.backup]\n")
    assert error_for(path) == (
        f"{path} line 2 [llm] fallbacks: 'backup' makes CHAT_LLM_BACKUP_MODEL the variable of "
        "both [llm] backup_model and [llm.backup] model; rename 'backup'"
    )


def test_a_fallbacks_secrets_are_never_quoted_in_errors(tmp_path: Path) -> None:
    secret = "sk-live-0123456789"
    listed = "[llm]\nfallbacks = a\n[llm.a]\n"
    for text in [
        f"{listed}provider = openai\napi_key = {secret}\n",  # api_url missing
        f"{listed}api-key = {secret}\n",  # a misspelt key
        f"[llm.b]\napi_key = {secret}\n",  # a section not listed
    ]:
        assert secret not in error_for(write(tmp_path, text))
    environ = {"CHAT_LLM_FALLBACKS": "a", "CHAT_LLM_A_API_KEY": secret, "CHAT_LLM_A_PROVIDER": "x"}
    assert secret not in error_for(write(tmp_path, ""), environ)


def test_the_seeds_format_has_no_fallbacks(tmp_path: Path) -> None:
    settings = load_settings(write(tmp_path, SEED_CONFIG), {})
    assert settings.fallback_models == ()
    assert [model.name for model in settings.models()] == ["primary"]
    assert isinstance(settings.llm, LlmSettings)
    assert "hf_secret_token" not in describe(settings, "-")
