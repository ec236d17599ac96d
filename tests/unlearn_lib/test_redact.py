"""Redaction: URL passwords, secret query parameters and secret environment values never reach a log."""

from __future__ import annotations

import io
import logging

import pytest

from unlearn_lib.redact import RedactingFilter, install_log_redaction, redact_text, redact_url, split_url_password


@pytest.mark.parametrize(
    ("url", "masked"),
    [
        ("postgresql://app:pw@db/unlearn", "postgresql://app:***@db/unlearn"),
        (
            "postgresql+psycopg://app:s3cr%40t@db:5432/unlearn?sslmode=require",
            "postgresql+psycopg://app:***@db:5432/unlearn?sslmode=require",
        ),
        ("mysql://root:p@ss@mysql.internal:3306/state", "mysql://root:***@mysql.internal:3306/state"),
        ("http://alice:hunter2@mlflow:5000", "http://alice:***@mlflow:5000"),
        ("https://bob:tok@[::1]:8443/api", "https://bob:***@[::1]:8443/api"),
        ("redis://:pw@cache:6379/0", "redis://:***@cache:6379/0"),
    ],
)
def test_url_passwords_are_masked_and_the_user_kept(url, masked):
    assert redact_url(url) == masked


@pytest.mark.parametrize(
    "url",
    [
        "http://mlflow:5000",
        "postgresql://app@db/unlearn",
        "sqlite:////abs/path/state.db",
        "https://example.com/search?q=key+lime&page=2",
        "http://host/path?email=a@b.com",
        "http://[::1]:8080/",
        "not a url at all",
    ],
)
def test_urls_without_credentials_are_untouched(url):
    assert redact_url(url) == url


def test_secret_query_parameters_are_masked_case_insensitively():
    url = "https://s3.example.com/b/k?X-Amz-Credential=AKIA%2F1&X-Amz-Signature=abc123&region=eu&API_KEY=k&Token=t"
    assert redact_url(url) == (
        "https://s3.example.com/b/k?X-Amz-Credential=***&X-Amz-Signature=***&region=eu&API_KEY=***&Token=***"
    )
    assert redact_url("postgresql://app@db/x?password=pw&sslmode=require") == (
        "postgresql://app@db/x?password=***&sslmode=require"
    )


def test_free_text_with_two_urls():
    text = "could not reach postgresql://app:pw1@db/unlearn; fell back to http://u:pw2@mlflow:5000/api (retrying)"
    assert redact_text(text, env={}) == (
        "could not reach postgresql://app:***@db/unlearn; fell back to http://u:***@mlflow:5000/api (retrying)"
    )


def test_secret_environment_values_are_masked_and_nothing_else():
    env = {
        "AWS_ACCESS_KEY_ID": "AKIAEXAMPLE",
        "AWS_SECRET_ACCESS_KEY": "wJalr/XUtnFEMI",
        "AWS_SESSION_TOKEN": "FQoGZXIvYXdzEJr",
        "UNLEARN_STATE_DB_PASSWORD": "p@ss word",
        "GITHUB_TOKEN": "ghp_abcdef",
        "STRIPE_KEY": "sk_live_1234",
        "MY_SECRET_THING": "opensesame",
        "SHORT_PASSWORD": "abc",  # under 4 characters: masking it would garble ordinary words
        "TOKENIZERS_PARALLELISM": "false",  # no secret, and "false" is everywhere in logs
        "HOME": "/home/app",
        "AWS_REGION": "eu-west-1",
    }
    text = (
        "key AKIAEXAMPLE secret wJalr/XUtnFEMI session FQoGZXIvYXdzEJr db p@ss word (url p%40ss%20word) "
        "gh ghp_abcdef stripe sk_live_1234 other opensesame; abc false /home/app eu-west-1"
    )
    assert redact_text(text, env=env) == (
        "key *** secret *** session *** db *** (url ***) gh *** stripe *** other ***; abc false /home/app eu-west-1"
    )


def test_redact_text_reads_os_environ_by_default(monkeypatch):
    monkeypatch.setenv("MLFLOW_TRACKING_PASSWORD", "correct-horse")
    assert redact_text("login with correct-horse") == "login with ***"


def test_text_without_secrets_is_unchanged():
    text = "epoch 3: loss=0.12, key=value pairs are fine, see https://example.com/docs?page=2#intro"
    assert redact_text(text, env={"PATH": "/usr/bin"}) == text


def test_split_url_password():
    assert split_url_password("postgresql://app:p%40ss@db/x") == ("postgresql://app@db/x", "p@ss")
    assert split_url_password("postgresql://app@db/x") == ("postgresql://app@db/x", None)
    assert split_url_password("sqlite:///state.db") == ("sqlite:///state.db", None)


def test_logging_filter_masks_messages_args_and_tracebacks():
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.setFormatter(logging.Formatter("%(message)s"))
    handler.addFilter(RedactingFilter(env={"DB_PASSWORD": "hunter22"}))
    log = logging.getLogger("test_redact.filter")
    log.addHandler(handler)
    log.propagate = False
    try:
        log.warning("connecting to %s as %s", "postgresql://app:hunter22@db/x", "app")
        try:
            raise RuntimeError("auth failed for hunter22")
        except RuntimeError:
            log.exception("boom")
    finally:
        log.removeHandler(handler)
    out = stream.getvalue()
    assert "hunter22" not in out
    assert "connecting to postgresql://app:***@db/x as app" in out and "auth failed for ***" in out


def test_install_log_redaction_covers_the_root_handlers():
    root = logging.getLogger()
    handler = logging.StreamHandler(io.StringIO())
    root.addHandler(handler)
    try:
        flt = install_log_redaction(env={})
        assert flt in handler.filters
        install_log_redaction(env={})  # idempotent: one filter per handler
        assert sum(isinstance(f, RedactingFilter) for f in handler.filters) == 1
    finally:
        root.removeHandler(handler)
