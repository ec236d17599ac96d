"""Masking credentials before text reaches logs, MLflow params and tags, or error messages.

Three sources of secrets are masked with ``***``:

- the password of a URL (``scheme://user:password@host``; the user is kept, it says *who*);
- query (and fragment) parameters whose names look secret (``password``, ``secret``, ``token``,
  ``key``, ``signature``, ``credential``, ``sig``, ``pwd``), in URLs and in request lines;
- the values of environment variables whose names look secret (``*SECRET*``, ``*PASSWORD*``,
  ``*TOKEN*``, ``*_KEY``, and the AWS credential variables), wherever they appear.

URLs are read the way :mod:`urllib.parse` reads them: the password ends at the last ``@``
before the first ``/``, ``?`` or ``#``, so a password holding one of those must be
percent-encoded (as the URL standard asks) to be recognised.
"""

from __future__ import annotations

import logging
import os
import re
from collections.abc import Mapping
from urllib.parse import quote, unquote

__all__ = [
    "MASK",
    "RedactingFilter",
    "install_log_redaction",
    "redact_text",
    "redact_url",
    "secret_env_values",
    "split_url_password",
]

MASK = "***"

# A password may hold "@" (urllib splits at the last one) but not "/", "?", "#" or whitespace,
# which end the authority; the greedy class plus backtracking finds that last "@".
_USERINFO = re.compile(
    r"(?P<head>(?<![A-Za-z0-9+.\-])[A-Za-z][A-Za-z0-9+.\-]*://(?P<user>[^\s:/?#@\[\]]*)):(?P<password>[^\s/?#]*)@"
)
# Only after "?" or "&" so prose such as "the key=value pairs" stays as written.
_PARAM = re.compile(r"(?<=[?&])(?P<name>[A-Za-z0-9_.%\-\[\]]+)=(?P<value>[^&#\s'\"<>]+)")
_FRAGMENT_PARAM = re.compile(r"(?<=[#&])(?P<name>[A-Za-z0-9_.%\-\[\]]+)=(?P<value>[^&\s'\"<>]+)")
_SECRET_PARAM_WORDS = ("password", "passwd", "secret", "token", "key", "signature", "credential")
_SECRET_PARAM_NAMES = {"sig", "pwd", "pass"}
_SECRET_ENV_WORDS = ("SECRET", "PASSWORD", "TOKEN")
_SECRET_ENV_NAMES = {"AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN"}
# Values that carry no secret: masking them (TOKENIZERS_PARALLELISM=false) would garble every log
# line that says "false" while protecting nothing.
_HARMLESS_VALUES = {"true", "false", "none", "null", "yes", "no", "on", "off"}
_MIN_SECRET_LEN = 4


def _secret_param(name: str) -> bool:
    n = unquote(name).lower()
    return n in _SECRET_PARAM_NAMES or any(w in n for w in _SECRET_PARAM_WORDS)


def _secret_env_name(name: str) -> bool:
    n = name.upper()
    return n in _SECRET_ENV_NAMES or n.endswith("_KEY") or any(w in n for w in _SECRET_ENV_WORDS)


def secret_env_values(env: Mapping[str, str] | None = None) -> list[str]:
    """Values of secret-looking variables worth masking, longest first (so no secret is half-masked)."""
    env = os.environ if env is None else env
    values = {
        v
        for k, v in env.items()
        if _secret_env_name(k)
        and isinstance(v, str)
        and len(v) >= _MIN_SECRET_LEN
        and v.lower() not in _HARMLESS_VALUES
    }
    # A password with reserved characters appears percent-encoded inside URLs.
    values |= {q for v in values if (q := quote(v, safe="")) != v}
    return sorted(values, key=lambda v: (-len(v), v))


def _mask_userinfo(m: re.Match[str]) -> str:
    if not m.group("password"):
        return m.group(0)
    return f"{m.group('head')}:{MASK}@"


def _mask_param(m: re.Match[str]) -> str:
    if not _secret_param(m.group("name")):
        return m.group(0)
    return f"{m.group('name')}={MASK}"


def _mask_url_parts(text: str) -> str:
    text = _USERINFO.sub(_mask_userinfo, text)
    text = _PARAM.sub(_mask_param, text)
    return _FRAGMENT_PARAM.sub(_mask_param, text)


def redact_url(url: str) -> str:
    """``url`` with its password and secret-looking query parameters masked; otherwise unchanged."""
    return _mask_url_parts(url)


def split_url_password(url: str) -> tuple[str, str | None]:
    """``url`` without the password in its user info, and that password (``None`` when there is none)."""
    m = _USERINFO.match(url)
    if m is None or not m.group("password"):
        return url, None
    return f"{m.group('head')}@{url[m.end() :]}", unquote(m.group("password"))


def redact_text(text: str, env: Mapping[str, str] | None = None) -> str:
    """``text`` with every URL credential and every secret environment value (``env``, default
    ``os.environ``) masked."""
    for value in secret_env_values(env):
        if value in text:
            text = text.replace(value, MASK)
    return _mask_url_parts(text)


def _redact_any(value: object, env: Mapping[str, str] | None) -> object:
    if isinstance(value, str):
        return redact_text(value, env)
    return value


class RedactingFilter(logging.Filter):
    """Rewrites each record's message (and formatted traceback) through :func:`redact_text`.

    Attach it to *handlers*: a filter on a logger does not see records propagated from its
    children. The message is formatted first, so a secret split between ``msg`` and ``args``
    is still found; ``args`` is then cleared.
    """

    def __init__(self, name: str = "", env: Mapping[str, str] | None = None) -> None:
        super().__init__(name)
        # None means "read os.environ at each record", so secrets set after start-up are masked too.
        self.env = env

    def filter(self, record: logging.LogRecord) -> bool:
        try:
            record.msg = redact_text(record.getMessage(), self.env)
            record.args = None
        except Exception:  # a record that cannot be formatted is logging's to report, not ours to drop
            record.msg = _redact_any(record.msg, self.env)
            if isinstance(record.args, tuple):
                record.args = tuple(_redact_any(a, self.env) for a in record.args)
            elif isinstance(record.args, Mapping):
                record.args = {k: _redact_any(v, self.env) for k, v in record.args.items()}
        if record.exc_info and not record.exc_text:
            # Formatters cache the traceback text in exc_text; filling it here means the cached,
            # redacted text is what every handler prints.
            record.exc_text = logging.Formatter().formatException(record.exc_info)
        if record.exc_text:
            record.exc_text = redact_text(record.exc_text, self.env)
        if record.stack_info:
            record.stack_info = redact_text(record.stack_info, self.env)
        return True


def install_log_redaction(
    logger: logging.Logger | None = None, env: Mapping[str, str] | None = None
) -> RedactingFilter:
    """Adds one :class:`RedactingFilter` to every handler of ``logger`` (default: the root logger).

    Handlers added later are not covered; call this after logging is configured.
    """
    target = logging.getLogger() if logger is None else logger
    flt = RedactingFilter(env=env)
    for handler in target.handlers:
        if not any(isinstance(f, RedactingFilter) for f in handler.filters):
            handler.addFilter(flt)
    return flt
