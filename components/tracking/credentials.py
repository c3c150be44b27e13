"""Credentials in URLs, params and environment values: find them, hide them, cut them off.

One place for every masking rule, so that what MLflow records, what an error message prints and
what a submitted job is sent all hide the same things. Nothing here imports the rest of trainwise.
"""

from __future__ import annotations

import re
from typing import Mapping
from urllib.parse import parse_qsl, urlsplit

MASK = "***"

# `scheme://user:password@` up to the LAST `@` before the path: a password may itself hold `@`
# (`https://u:p@ss@host`: urllib takes the host after the last one, and so does this).
_URL_USERINFO = re.compile(r"(?P<scheme>[a-zA-Z][a-zA-Z0-9+.-]*://)[^/\s?#]*@")

# Words that make a key a credential wherever they stand (split on non-letters and camelCase:
# `db.Password`, `AWS_SECRET_ACCESS_KEY`, `clientSecret`).
_SECRET_WORDS = {"password", "passwd", "pwd", "passphrase", "secret", "secrets", "credential", "credentials",
                 "apikey", "authorization", "cookie", "sas", "privatekey"}
# "key" and "token" are ordinary words in ML params (`max_tokens`, `pad_token`, `sort_key`); they
# name a credential only after one of these words, or alone (`token`, `KEY` as a whole key).
_KEY_QUALIFIERS = {"api", "access", "secret", "private", "ssh", "encryption", "signing", "master", "account",
                   "client", "license", "service", "session", "auth"}
_NOT_CREDENTIAL_TOKEN = {"max", "min", "num", "n", "pad", "eos", "bos", "unk", "cls", "sep", "mask", "start", "end",
                         "special", "first", "last", "per", "total"}
# Values that are credentials whatever their key (well-known formats): OpenAI / Anthropic keys,
# GitHub and Hugging Face tokens, AWS access key ids, Slack tokens, JWTs, PEM private keys, bearer
# / basic auth headers; and the secret parameters of a signed URL (S3 presigned, Azure SAS).
_SECRET_VALUE = re.compile(
    r"\b(?:sk-[A-Za-z0-9_-]{16,}|gh[pousr]_[A-Za-z0-9]{30,}|github_pat_[A-Za-z0-9_]{30,}|hf_[A-Za-z0-9]{30,}"
    r"|(?:AKIA|ASIA)[0-9A-Z]{16}|xox[abprs]-[A-Za-z0-9-]{10,}"
    r"|eyJ[A-Za-z0-9_-]{8,}\.eyJ[A-Za-z0-9_-]{8,}\.[A-Za-z0-9_-]*)"
    r"|-----BEGIN [A-Z ]*PRIVATE KEY-----|\b(?:Bearer|Basic)\s+\S{8,}")
_SECRET_QUERY_KEY = r"[^=&#\s]*(?:token|signature|sig|password|secret|credential|api[_-]?key)[^=&#\s]*"
_URL_SECRET_QUERY = re.compile(rf"(?P<k>[?&](?:{_SECRET_QUERY_KEY})=)[^&#\s]+", re.IGNORECASE)
# `key=value` / `key: value` / `--key=value` inside a longer value (a command line in an
# environment variable, a connection string): masked when the key names a credential.
_INLINE_PAIR = re.compile(r"(?<![\w.-])(?P<k>-{0,2}[A-Za-z_][\w.-]*)(?P<sep>[\"']?[ \t]*[=:][ \t]*)"
                          r"(?P<v>\"[^\"]*\"|'[^']*'|[^\s&,;]+)")
# `--password hunter2`: a credential option followed by its value as the next word.
_INLINE_OPTION = re.compile(r"(?<![\w.-])(?P<k>--?[A-Za-z_][\w.-]*)(?P<sep>[ \t]+)(?P<v>[^\s-]\S*)")


def _words(key: str) -> list[str]:
    spaced = re.sub(r"([a-z0-9])([A-Z])", r"\1 \2", key)
    return [w for w in re.split(r"[^A-Za-z0-9]+", spaced.lower()) if w]


def is_secret_key(key: str) -> bool:
    """Whether a (dotted) param or tag key names a credential: by whole words, not substrings,
    so `train.max_tokens` or `checkpoints_to_keep` are ordinary params while `mlflow.password`,
    `api_key`, `AWS_SECRET_ACCESS_KEY`, `hf_token` and `RAY_AUTH_TOKEN` are secrets."""
    words = _words(key)
    if any(w in _SECRET_WORDS for w in words):
        return True
    for i, w in enumerate(words):
        prev = words[i - 1] if i else None
        if w == "key" and (prev in _KEY_QUALIFIERS or len(words) == 1):
            return True
        if w == "token" and i == len(words) - 1 and prev not in _NOT_CREDENTIAL_TOKEN:
            return True  # `auth_token`, `hf_token`, `TRAINWISE_API_TOKEN`, `token`; not `pad_token`
    return False


def _mask_pair(m: re.Match) -> str:
    if not is_secret_key(m["k"].lstrip("-")) or m["v"] == MASK:
        return m[0]
    return f"{m['k']}{m['sep']}{MASK}"


def mask_value(v: str) -> str:
    """``v`` with its secret-looking parts replaced by ``***``: a URL's ``user:password@`` (all of
    it, up to the host), a signed URL's signature / token query parameters, ``password=...`` /
    ``--password ...`` pairs whose key names a credential, and strings in a well-known
    credential format. For anything written or printed that may hold a URL or a command line."""
    v = _URL_USERINFO.sub(lambda m: f"{m['scheme']}{MASK}@", v)
    v = _SECRET_VALUE.sub(MASK, v)  # first: `Authorization: Basic xyz` is one secret, not a pair and a word
    v = _URL_SECRET_QUERY.sub(lambda m: f"{m['k']}{MASK}", v)
    v = _INLINE_PAIR.sub(_mask_pair, v)
    return _INLINE_OPTION.sub(_mask_pair, v)


def mask_secrets(d: Mapping[str, object]) -> dict[str, object]:
    """Hide values that may be credentials before they reach the tracking store.

    By key: a key naming a credential (:func:`is_secret_key`) has its value replaced by ``***``.
    By value: every string value is passed through :func:`mask_value`. Substrings of ordinary
    names ("token" in `max_tokens`, "key" in `checkpoints_to_keep`) do not count: masking them
    would hide the very params a run is compared by.
    """
    out = {}
    for k, v in d.items():
        if is_secret_key(str(k)) and v not in (None, "", "None"):
            out[k] = MASK
        elif isinstance(v, str):
            out[k] = mask_value(v)
        else:
            out[k] = v
    return out


def url_credentials(url: str) -> str | None:
    """What credentials ``url`` carries, in words ("a user name and password", "the query parameter
    `X-Amz-Signature`"), or None. A user name alone counts for http(s), where it is how tokens are
    passed (`https://TOKEN@host`), not for sftp/ssh, where it names the account."""
    try:
        parts = urlsplit(url)
    except ValueError:
        return None
    if not parts.scheme or "://" not in url:
        return None
    if parts.password is not None:
        return "a user name and password"
    if parts.username and parts.scheme.lower() in ("http", "https"):
        return "a user name (or token) before the host"
    for key, _ in parse_qsl(parts.query, keep_blank_values=True):
        if is_secret_key(key) or re.fullmatch(_SECRET_QUERY_KEY, key, re.IGNORECASE):
            return f"the query parameter `{key}`"
    return None


def strip_credentials(url: str) -> tuple[str, str | None, str | None]:
    """``url`` without its ``user:password@`` part, then the user name and password (None when
    absent): http://u:p@host:5000/x -> (http://host:5000/x, "u", "p")."""
    parts = urlsplit(url)
    if parts.username is None and parts.password is None:
        return url, None, None
    host = parts.hostname or ""
    netloc = f"[{host}]" if ":" in host else host
    if parts.port:
        netloc += f":{parts.port}"
    return parts._replace(netloc=netloc).geturl(), parts.username, parts.password
