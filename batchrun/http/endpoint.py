"""Where requests go and how they authenticate: the base URL or Azure resource, the key's
variable, the proxy. Everything here is checked before anything is sent, and nothing here ever
shows a credential."""

from __future__ import annotations

import base64
import ipaddress
import os
import re
from dataclasses import dataclass
from urllib.parse import quote, unquote, urlsplit

from batchrun.errors import InputError, without_userinfo
from batchrun.policy.request import Request

OPENAI_BASE_URL = "https://api.openai.com/v1"
AZURE_API_VERSION = "2024-10-21"


def shown_url(url: str) -> str:
    """A URL the user gave, as messages show it: without credentials in the userinfo, and with
    its query and fragment cut to "?…" and "#…", since a key pasted there may have any shape
    (so `redact` cannot know it) and batchrun refuses such URLs anyway."""
    shown = without_userinfo(url)
    cut = min((i for i in (shown.find("?"), shown.find("#")) if i >= 0), default=-1)
    return shown if cut < 0 else shown[:cut] + shown[cut] + "…"


# What API keys look like: OpenAI's sk-…; the prefixes of other OpenAI-compatible providers
# (Groq gsk_, Hugging Face hf_, Fireworks fw_, Perplexity pplx-, xAI xai-, Google AIza), whose
# keys can pass for a variable's name; and the long unbroken hex or base64-ish runs of Azure
# and most others. Variable names (upper case with underscores) never match.
_KEY_LIKE = re.compile(r"(?:^|[^A-Za-z0-9])sk-[A-Za-z0-9_-]{8,}"
                       r"|(?:^|[^A-Za-z0-9])(?:gsk_|hf_|fw_|pplx-|xai-)[A-Za-z0-9]{20,}"
                       r"|AIza[A-Za-z0-9_-]{30,}|^[A-Za-z0-9+/=]{32,}$")


ENV_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")


def looks_like_key(value: str) -> bool:
    return bool(_KEY_LIKE.search(value.strip()))


def check_key_env(key_env: str) -> str:
    """--api-key-env: a variable's name. Never echoed when it is not one: it may be a key."""
    if looks_like_key(key_env) or not ENV_NAME.match(key_env):
        raise InputError(
            "--api-key-env takes the name of the environment variable that holds the key (e.g. "
            "OPENAI_API_KEY), never the key itself; what was given is not a variable name, so "
            "it is not shown. Export the key in a variable and pass that variable's name."
        )
    return key_env


def _ip(host: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    try:
        ip = ipaddress.ip_address(host.strip("[]"))
    except ValueError:
        return None
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        return ip.ipv4_mapped
    return ip


def _is_loopback(host: str) -> bool:
    """This machine: localhost (and *.localhost, RFC 6761), 127.0.0.0/8, ::1, 0.0.0.0."""
    host = host.lower().rstrip(".")
    if host == "localhost" or host.endswith(".localhost"):
        return True
    ip = _ip(host)
    return ip is not None and (ip.is_loopback or ip.is_unspecified)


def _check_url(url: str, what: str, key_env: str) -> str:
    """The URL if requests can be built on it; else an InputError that never echoes credentials."""
    shown = shown_url(url)
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
        key_env = check_key_env(key_env or ("AZURE_OPENAI_API_KEY" if azure else "OPENAI_API_KEY"))
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

    def auth_headers(self, api_key: str) -> dict[str, str]:
        """How this endpoint takes the key: Azure's api-key header, everyone else's bearer."""
        return {"api-key": api_key} if self.azure else {"Authorization": f"Bearer {api_key}"}

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


# What each scheme's proxy is read from, first found wins; lower case before upper, as curl.
_PROXY_VARS = {
    "https": ("https_proxy", "HTTPS_PROXY", "all_proxy", "ALL_PROXY"),
    "http": ("http_proxy", "HTTP_PROXY", "all_proxy", "ALL_PROXY"),
}


def _env(*names: str) -> tuple[str, str] | None:
    """The first of `names` that is set, and its value; an empty value means "none"."""
    for name in names:
        value = os.environ.get(name)
        if value is not None:
            return (name, value.strip()) if value.strip() else None
    return None


def _no_proxy_match(entry: str, host: str, port: int) -> bool:
    """One NO_PROXY entry against a request's host and port. Read as curl reads it (a name
    matches itself and its subdomains, a leading dot is ignored, IPs exactly, CIDR ranges for
    IPs, `*` everything), plus `host:port`, which matches that host on that port only."""
    entry = entry.lower().rstrip(".")
    if entry == "*":
        return True
    if "/" in entry:  # a CIDR range: only IP literals are in it (names are not resolved)
        ip = _ip(host)
        try:
            return ip is not None and ip in ipaddress.ip_network(entry, strict=False)
        except ValueError:
            return False
    want_port: int | None = None
    if entry.startswith("["):  # [v6] or [v6]:port
        entry, _, rest = entry[1:].partition("]")
        want_port = int(rest[1:]) if rest.startswith(":") and rest[1:].isdigit() else None
    elif entry.count(":") == 1:  # name:port or v4:port; more colons is a bare IPv6 address
        entry, _, port_text = entry.partition(":")
        if not port_text.isdigit():
            return False
        want_port = int(port_text)
    if want_port is not None and want_port != port:
        return False
    entry = entry.removeprefix(".")
    ip, entry_ip = _ip(host), _ip(entry)
    if ip is not None or entry_ip is not None:
        return ip is not None and ip == entry_ip
    return bool(entry) and (host == entry or host.endswith("." + entry))


def _bypass(host: str, port: int) -> bool:
    found = _env("no_proxy", "NO_PROXY")
    entries = found[1].replace(",", " ").split() if found else []
    return any(_no_proxy_match(entry, host, port) for entry in entries)


def _check_proxy(name: str, value: str) -> str:
    """The proxy URL from variable `name`, or an InputError naming the variable (never the
    proxy's password) when aiohttp could not use it."""
    url = value if "://" in value else f"http://{value}"  # "host:port" is common, means http
    shown = shown_url(url)
    problem = ""
    try:
        parts = urlsplit(url)
        parts.port  # noqa: B018 - parsing the port is the check: it raises on a bad one
    except ValueError:
        problem = "is not a valid URL"
    else:
        if parts.scheme not in ("http", "https"):
            problem = f"uses {parts.scheme}://, and batchrun can use only http:// proxies"
        elif not parts.hostname or parts.path not in ("", "/") or parts.query or parts.fragment:
            problem = "is not of the form http://[user:password@]host:port"
        elif any(c.isspace() or not c.isprintable() for c in url):
            problem = "holds a space or control character"
    if problem:
        raise InputError(
            f"${name} ({shown}) {problem}. Set it to http://host:port, with any user name or "
            "password percent-encoded (/ as %2F, # as %23, ? as %3F, @ as %40), or unset it."
        )
    return url


def env_proxy(url: str) -> str | None:
    """The proxy `url` goes through per https_proxy / http_proxy / all_proxy / no_proxy (lower
    or upper case; see `_no_proxy_match`); the URL may hold the proxy's credentials. Loopback
    destinations never go through a proxy. Raises InputError for a proxy setting that cannot
    be used."""
    parts = urlsplit(url)
    host = (parts.hostname or "").rstrip(".")
    if not host or _is_loopback(host):
        return None
    names: tuple[str, ...] = _PROXY_VARS.get(parts.scheme, ())
    if os.environ.get("REQUEST_METHOD"):
        # Under CGI, HTTP_PROXY is the client's "Proxy:" header (httpoxy): never trust it.
        names = tuple(n for n in names if n != "HTTP_PROXY")
    found = _env(*names)
    if found is None:
        return None
    proxy = _check_proxy(*found)
    if _bypass(host, parts.port or (443 if parts.scheme == "https" else 80)):
        return None
    return proxy


def proxy_for(url: str) -> str | None:
    """The proxy requests to `url` go through, fit to print: credentials shown as ***."""
    proxy = env_proxy(url)
    return None if proxy is None else without_userinfo(proxy)


def proxy_secrets(proxy: str | None) -> tuple[str, ...]:
    """The proxy's credentials in each form a message could quote them (as written, decoded,
    and as the Basic header carries them), for `redact`."""
    if proxy is None:
        return ()
    userinfo = proxy.partition("://")[2].rpartition("@")[0]
    if not userinfo:
        return ()
    user, _, password = userinfo.partition(":")
    decoded = f"{unquote(user)}:{unquote(password)}"
    basic = base64.b64encode(decoded.encode()).decode()
    return tuple(s for s in {userinfo, decoded, password, unquote(password), basic} if s)
