"""Webhook targets: a subscriber may not make the service call into its own network.

A URL must be http or https, name a host, and carry no credentials. Every address the
host resolves to must be a public unicast address; private, loopback, link-local,
site-local, multicast, reserved, shared and unspecified addresses are refused unless the
development setting ``TELLONCE_WEBHOOK_ALLOW_PRIVATE`` allows them. An IPv6 address that
carries an IPv4 address (IPv4-mapped, IPv4-compatible, 6to4 ``2002::/16``, Teredo, NAT64
``64:ff9b::/96``) is judged by the IPv4 address too. The dispatcher checks again before
every attempt, and then connects to the address it checked (``pinned``), so a name that
resolves elsewhere a moment later (DNS rebinding) does not redirect the request.
"""

from __future__ import annotations

import asyncio
import ipaddress
import socket
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any
from urllib.parse import SplitResult, urlsplit

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
# (host, port) -> the addresses it resolves to; replaceable in tests.
Resolver = Callable[[str, int], Awaitable[list[str]]]

MAX_URL_LENGTH = 2048


class UnsafeWebhookTarget(ValueError):
    """Why a webhook URL is refused, in words a department developer can act on."""


async def system_resolver(host: str, port: int) -> list[str]:
    """The addresses of ``host`` from the system resolver, without blocking the loop."""
    loop = asyncio.get_running_loop()
    infos = await loop.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    return [str(info[4][0]) for info in infos]


def _address(text: str) -> IPAddress:
    # An IPv6 address may carry a zone ("fe80::1%eth0"); the zone does not change its kind.
    return ipaddress.ip_address(text.split("%", 1)[0])


_NAT64 = ipaddress.IPv6Network("64:ff9b::/96")
_IPV4_COMPATIBLE = ipaddress.IPv6Network("::/96")


def embedded_ipv4(address: ipaddress.IPv6Address) -> ipaddress.IPv4Address | None:
    """The IPv4 address an IPv6 address carries, in any of the forms that route to it."""
    if address.ipv4_mapped is not None:
        return address.ipv4_mapped
    if address.sixtofour is not None:
        return address.sixtofour
    if address.teredo is not None:
        return address.teredo[1]
    if address in _NAT64 or (address in _IPV4_COMPATIBLE and int(address) > 1):
        return ipaddress.IPv4Address(int(address) & 0xFFFFFFFF)
    return None


def refusal(address: IPAddress, *, allow_private: bool) -> str | None:
    """Why ``address`` may not be a webhook target; ``None`` when it may."""
    if isinstance(address, ipaddress.IPv6Address):
        inner = embedded_ipv4(address)
        if inner is not None:
            # Judged like the IPv4 address it routes to, as the IPv4-mapped form always was.
            why = refusal(inner, allow_private=allow_private)
            return f"carries {inner}, which {why}" if why is not None else None
    # Never valid targets, whatever the setting.
    if address.is_unspecified:
        return "is the unspecified address"
    if address.is_multicast:
        return "is a multicast address"
    if allow_private:
        return None
    if address.is_loopback:
        return "is a loopback address"
    if address.is_link_local:
        return "is a link-local address"
    if isinstance(address, ipaddress.IPv6Address) and address.is_site_local:
        # fec0::/10: deprecated (RFC 3879), yet neither private nor reserved to ``ipaddress``.
        return "is a site-local address"
    if address.is_private:
        return "is a private address"
    if address.is_reserved:
        return "is a reserved address"
    if not address.is_global:
        return "is not a public address"
    return None


def parse(url: str) -> SplitResult:
    """Check the URL's shape (scheme, a valid host name, no credentials) before anything
    is resolved."""
    if len(url) > MAX_URL_LENGTH:
        raise UnsafeWebhookTarget(f"the URL is longer than {MAX_URL_LENGTH} characters")
    if not url.isascii() or not url.isprintable() or " " in url:
        # A URL is printable ASCII (RFC 3986; an international name is sent as IDNA). A NUL
        # in the host would end the name the resolver checks early, so the address checked
        # would not be the one named.
        raise UnsafeWebhookTarget("the URL may hold only printable ASCII characters, without spaces")
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError:
        raise UnsafeWebhookTarget("the URL is not well formed") from None
    if parts.scheme not in ("http", "https"):
        raise UnsafeWebhookTarget("only http and https webhook URLs are accepted")
    if not parts.hostname:
        raise UnsafeWebhookTarget("the URL names no host")
    try:
        # The resolver sends the name as IDNA, which refuses an empty label ("a..b",
        # ".example.com") or one longer than 63 characters; refuse such a host here.
        parts.hostname.encode("idna")
    except UnicodeError:
        raise UnsafeWebhookTarget("the URL's host is not a valid host name") from None
    if parts.username is not None or parts.password is not None:
        raise UnsafeWebhookTarget("the URL may not carry credentials")
    if port == 0:
        raise UnsafeWebhookTarget("the URL's port is not valid")
    return parts


async def check_target(url: str, *, allow_private: bool, resolver: Resolver | None = None) -> list[IPAddress]:
    """Raise ``UnsafeWebhookTarget`` unless every address of the URL's host may be called;
    return those addresses (the ones a delivery may connect to)."""
    parts = parse(url)
    host = parts.hostname or ""
    port = parts.port or (443 if parts.scheme == "https" else 80)
    try:
        addresses = [_address(host)]
    except ValueError:
        try:
            resolved = await (resolver or system_resolver)(host, port)
        except (OSError, UnicodeError):
            raise UnsafeWebhookTarget(f"the host {host} could not be resolved") from None
        try:
            addresses = [_address(text) for text in resolved]
        except ValueError:
            raise UnsafeWebhookTarget(
                f"the host {host} resolved to something that is not an address"
            ) from None
    if not addresses:
        raise UnsafeWebhookTarget(f"the host {host} could not be resolved")
    for address in addresses:
        why = refusal(address, allow_private=allow_private)
        if why is not None:
            raise UnsafeWebhookTarget(
                f"the host {host} resolves to {address}, which {why}; webhooks go only to public addresses"
            )
    return addresses


@dataclass(frozen=True)
class Pinned:
    """A request to ``url`` sent to one checked address: the URL with that address as its
    host, the original ``Host`` header, and for https the name to send as SNI and to verify
    the certificate against."""

    url: str
    headers: dict[str, str]
    extensions: dict[str, Any]


def pinned(url: str, address: IPAddress) -> Pinned:
    parts = urlsplit(url)
    host = parts.hostname or ""
    literal = f"[{address}]" if isinstance(address, ipaddress.IPv6Address) else str(address)
    netloc = f"{literal}:{parts.port}" if parts.port else literal
    original = parts.netloc.rpartition("@")[2]
    extensions: dict[str, Any] = {"sni_hostname": host} if parts.scheme == "https" else {}
    return Pinned(parts._replace(netloc=netloc).geturl(), {"host": original}, extensions)
