"""Where requests go and how they authenticate: the base URL or Azure resource, the key's
variable, the proxy. Everything here is checked before anything is sent, and nothing here ever
shows a credential."""

from __future__ import annotations

import ipaddress
import os
import urllib.request
from dataclasses import dataclass
from urllib.parse import quote, urlsplit

from batchrun.errors import InputError
from batchrun.jobs import Request

OPENAI_BASE_URL = "https://api.openai.com/v1"
AZURE_API_VERSION = "2024-10-21"


def without_userinfo(url: str) -> str:
    """The URL with any `user:password@` shown as `***@`: for messages, never for sending.
    Plain string work, so it cannot fail on a malformed URL a server handed us."""
    scheme, sep, rest = url.partition("://")
    if not sep:
        return url
    end = min((i for i in map(rest.find, "/?#") if i >= 0), default=len(rest))
    authority = rest[:end]
    if "@" in authority:
        authority = "***@" + authority.rpartition("@")[2]
    return scheme + sep + authority + rest[end:]


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _check_url(url: str, what: str, key_env: str) -> str:
    """The URL if requests can be built on it; else an InputError that never echoes credentials."""
    shown = without_userinfo(url)
    example = f"give e.g. {OPENAI_BASE_URL}"
    try:
        parts = urlsplit(url)
        parts.port  # noqa: B018 - parsing the port is the check: it raises on a bad one
    except ValueError as exc:
        problem = "has an invalid port" if "port" in str(exc).lower() else "is not a valid URL"
        raise InputError(f"{what} {shown!r} {problem}; {example}") from None
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise InputError(f"{what} {shown!r} is not an http(s) URL; {example}")
    if parts.username is not None or parts.password is not None:
        # URLs are printed, stored in the job's manifest and shown by `status`; keys are not.
        raise InputError(
            f"{what} {shown!r} holds a user name or password (user:…@). batchrun takes no "
            "credentials in URLs, since it prints and stores the URL. Remove them and export the "
            f"key in ${key_env} (or the variable you name with --api-key-env)."
        )
    if any(c.isspace() or not c.isprintable() for c in url):
        raise InputError(f"{what} {shown!r} holds a space or control character; {example}")
    if parts.query or parts.fragment or url.endswith(("?", "#")):
        raise InputError(
            f"{what} {shown!r} has a query (?…) or fragment (#…); batchrun appends the API's "
            f"paths to it, so {example}"
        )
    return url


@dataclass(frozen=True, slots=True)
class Endpoint:
    """Where requests go and how they authenticate. Holds the key's env var name, never the key."""

    base_url: str = OPENAI_BASE_URL
    azure: bool = False
    api_version: str = AZURE_API_VERSION
    key_env: str = "OPENAI_API_KEY"
    insecure: bool = False

    @classmethod
    def make(
        cls,
        base_url: str | None,
        azure_endpoint: str | None,
        key_env: str | None,
        insecure: bool = False,
    ) -> Endpoint:
        azure = bool(azure_endpoint)
        key_env = key_env or ("AZURE_OPENAI_API_KEY" if azure else "OPENAI_API_KEY")
        url = _check_url(
            (azure_endpoint or base_url or OPENAI_BASE_URL).strip().rstrip("/"),
            "The Azure endpoint" if azure else "The base URL",
            key_env,
        )
        parts = urlsplit(url)
        if parts.scheme == "http" and not _is_loopback(parts.hostname or "") and not insecure:
            raise InputError(
                f"{url} is plain http to a host that is not this machine: the API key would cross "
                "the network unencrypted. Use https, or pass --insecure if you really mean it."
            )
        return cls(
            base_url=url,
            azure=azure,
            api_version=os.environ.get("OPENAI_API_VERSION") or AZURE_API_VERSION,
            key_env=key_env,
            insecure=insecure,
        )

    @property
    def host(self) -> str:
        return urlsplit(self.base_url).netloc

    def url_for(self, request: Request) -> str:
        # Request.url is always one of SUPPORTED_URLS, so no input line can choose the host.
        path = request.url.removeprefix("/v1")
        if self.azure:
            deployment = quote(request.model, safe="")
            return (
                f"{self.base_url}/openai/deployments/{deployment}{path}"
                f"?api-version={quote(self.api_version, safe='')}"
            )
        return self.base_url + path

    def api_key(self) -> str:
        key = os.environ.get(self.key_env, "").strip()
        if not key:
            raise InputError(
                f"${self.key_env} is not set. Export your API key in that variable "
                "(batchrun never takes the key as a flag), or use --simulate to try batchrun "
                "without one."
            )
        bad = next((i for i, c in enumerate(key) if not (c.isascii() and c.isprintable())), None)
        if bad is not None:
            # An HTTP header cannot carry it; aiohttp would raise on every request. The key is
            # never shown, only where the offending character sits.
            raise InputError(
                f"${self.key_env} holds a control or non-ASCII character (a line break, tab or "
                f"typographic character) at position {bad + 1} of {len(key)}: often two keys "
                "pasted together or a copy that picked up extra characters. Export the key alone."
            )
        return key


def env_proxy(url: str) -> str | None:
    """The proxy `url` goes through per HTTP_PROXY / HTTPS_PROXY / NO_PROXY (upper or lower
    case), read as curl and urllib read them; the URL may hold the proxy's credentials."""
    parts = urlsplit(url)
    if not parts.hostname or urllib.request.proxy_bypass(parts.hostname):
        return None
    proxy = urllib.request.getproxies().get(parts.scheme)
    if not proxy:
        return None
    return proxy if "://" in proxy else f"http://{proxy}"  # "host:port" is common, and means http


def proxy_for(url: str) -> str | None:
    """The proxy requests to `url` go through, fit to print: credentials shown as ***."""
    proxy = env_proxy(url)
    return None if proxy is None else without_userinfo(proxy)
