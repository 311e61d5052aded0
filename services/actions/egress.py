"""The egress policy of ``http.request``: which addresses a tenant's workflow may connect to.

Pure (no I/O): given the host a URL names and the addresses it resolved to, :meth:`EgressPolicy.vet`
returns the addresses the action may connect to or raises :class:`EgressDenied` naming the
address class. Refused by default:

=========================  =======================================================================
class                      addresses
=========================  =======================================================================
``unspecified``            ``0.0.0.0/8`` (``0.0.0.0`` reaches the local host on Linux), ``::``
``loopback``               ``127.0.0.0/8``, ``::1``
``private``                ``10/8``, ``172.16/12``, ``192.168/16``, ``fc00::/7``, ``fec0::/10``,
                           ``64:ff9b:1::/48``
``shared``                 ``100.64.0.0/10`` (carrier-grade NAT)
``link-local``             ``169.254.0.0/16`` (cloud metadata at 169.254.169.254), ``fe80::/10``
``multicast``              ``224.0.0.0/4``, ``ff00::/8``
``reserved``               the other IANA special-purpose blocks (documentation, benchmarking,
                           ``240.0.0.0/4``, broadcast, ``::/8``, ``100::/64``, ``2001::/23``, …)
                           and every IPv6 address outside ``2000::/3``
=========================  =======================================================================

IPv6 forms that carry an IPv4 address which the network would reach (IPv4-mapped
``::ffff:a.b.c.d``, NAT64 ``64:ff9b::/96``, 6to4 ``2002::/16``) are judged by that IPv4 address.

The resolver, not Python, decides what a host string means: ``0x7f000001``, ``2130706433``,
``0177.0.0.1`` and ``127.1`` all resolve to 127.0.0.1. :func:`numeric_ipv4` reads such strings as
the C library's ``inet_aton`` does, so they are refused before any lookup; whatever the string,
the action connects only to addresses the resolver returned and this policy vetted.

An allow-list (per tenant, ``TenantConfig.egress_allow``) admits, besides public addresses, the
host names it lists (exact, or ``*.suffix`` for subdomains) whatever they resolve to, and the
addresses inside the CIDRs (or single addresses) it lists; nothing else. ``allow_private`` (the
engine-wide development switch ``SWITCHYARD_EGRESS_ALLOW_PRIVATE``) admits every address.
"""

from __future__ import annotations

import functools
import ipaddress
import re
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from ipaddress import IPv4Address, IPv4Network, IPv6Address, IPv6Network

IPAddress = IPv4Address | IPv6Address
IPNetwork = IPv4Network | IPv6Network

#: Longest allow-list and entry accepted in a tenant's configuration.
MAX_ALLOW_ENTRIES = 256
MAX_ENTRY_LENGTH = 253

_V4: tuple[tuple[str, str], ...] = (
    ("0.0.0.0/8", "unspecified"),
    ("127.0.0.0/8", "loopback"),
    ("10.0.0.0/8", "private"),
    ("172.16.0.0/12", "private"),
    ("192.168.0.0/16", "private"),
    ("100.64.0.0/10", "shared"),
    ("169.254.0.0/16", "link-local"),
    ("224.0.0.0/4", "multicast"),
    ("192.0.0.0/24", "reserved"),
    ("192.0.2.0/24", "reserved"),
    ("192.31.196.0/24", "reserved"),
    ("192.52.193.0/24", "reserved"),
    ("192.88.99.0/24", "reserved"),
    ("192.175.48.0/24", "reserved"),
    ("198.18.0.0/15", "reserved"),
    ("198.51.100.0/24", "reserved"),
    ("203.0.113.0/24", "reserved"),
    ("240.0.0.0/4", "reserved"),
)
_V6: tuple[tuple[str, str], ...] = (
    ("::/128", "unspecified"),
    ("::1/128", "loopback"),
    ("64:ff9b:1::/48", "private"),  # local-use NAT64, inside ::/8: first match wins
    ("::/8", "reserved"),  # also IPv4-compatible ::a.b.c.d and IPv4-translated ::ffff:0:a.b.c.d
    ("100::/64", "reserved"),
    ("2001::/23", "reserved"),
    ("2001:db8::/32", "reserved"),
    ("3fff::/20", "reserved"),
    ("5f00::/16", "reserved"),
    ("fc00::/7", "private"),
    ("fec0::/10", "private"),
    ("fe80::/10", "link-local"),
    ("ff00::/8", "multicast"),
)
_V4_NETS = tuple((IPv4Network(net), name) for net, name in _V4)
_V6_NETS = tuple((IPv6Network(net), name) for net, name in _V6)
_NAT64 = IPv6Network("64:ff9b::/96")
_SIX_TO_FOUR = IPv6Network("2002::/16")
_GLOBAL_UNICAST = IPv6Network("2000::/3")


def embedded_ipv4(ip: IPv6Address) -> IPv4Address | None:
    """The IPv4 address an IPv6 address reaches through mapping, NAT64 or 6to4, if any."""
    if ip.ipv4_mapped is not None:
        return ip.ipv4_mapped
    if ip in _NAT64:
        return IPv4Address(int(ip) & 0xFFFFFFFF)
    if ip in _SIX_TO_FOUR:
        return ip.sixtofour
    return None


def address_class(ip: IPAddress) -> str | None:
    """Why ``ip`` is refused (its class, see the module docstring), or None when it is public."""
    if isinstance(ip, IPv4Address):
        return next((name for net, name in _V4_NETS if ip in net), None)
    inner = embedded_ipv4(ip)
    if inner is not None:
        return address_class(inner)
    found = next((name for net, name in _V6_NETS if ip in net), None)
    if found is None and ip not in _GLOBAL_UNICAST:
        return "reserved"
    return found


# One part of an inet_aton address, as glibc reads it with strtoul(base 0): hex, octal or decimal.
_PART = re.compile(r"0[xX][0-9a-fA-F]+|0[0-7]*|[1-9][0-9]*")
_PART_MAX = (0xFFFFFFFF, 0xFFFFFF, 0xFFFF, 0xFF)


def numeric_ipv4(host: str) -> IPv4Address | None:
    """``host`` read as glibc's ``inet_aton`` reads it (which ``getaddrinfo`` uses): 1 to 4 parts,
    each decimal, octal (``0177``) or hex (``0x7f``), the last filling the remaining bytes
    (``127.1``, ``2130706433``); trailing text after whitespace is ignored. None: not numeric."""
    parts: list[int] = []
    pos = 0
    while True:
        match = _PART.match(host, pos)
        if match is None:
            return None
        digits = match.group()
        value = (
            int(digits[2:], 16) if digits[:2] in ("0x", "0X") else int(digits, 8 if digits[0] == "0" else 10)
        )
        if value > 0xFFFFFFFF:
            return None
        pos = match.end()
        if host[pos : pos + 1] == ".":
            if len(parts) > 2 or value > 0xFF:
                return None
            parts.append(value)
            pos += 1
            continue
        break
    rest = host[pos:]
    if rest and not (rest[0].isascii() and rest[0] in " \t\n\v\f\r"):
        return None
    if value > _PART_MAX[len(parts)]:
        return None
    number = 0
    for part in parts:
        number = (number << 8) | part
    return IPv4Address((number << (8 * (4 - len(parts)))) | value)


def literal_address(host: str) -> IPAddress | None:
    """The address ``host`` denotes by itself (IPv6 with or without brackets, any numeric IPv4
    form), or None when it is a name that needs resolving."""
    text = host[1:-1] if host.startswith("[") and host.endswith("]") else host
    try:
        return ipaddress.ip_address(text)
    except ValueError:
        return numeric_ipv4(text)


def normalize_host(host: str) -> str:
    """Host names compare case-insensitively and without the root label's trailing dot."""
    return host.strip().rstrip(".").lower()


_HOST_LABEL = re.compile(r"(?!-)[a-z0-9_-]{1,63}(?<!-)")


def parse_allow_entry(entry: str) -> str | IPNetwork:
    """One allow-list entry: a network (CIDR or single address) or a host name (``api.acme.internal``,
    ``*.acme.internal``, ``localhost``). ValueError says what is wrong."""
    text = entry.strip()
    if not text or len(text) > MAX_ENTRY_LENGTH:
        raise ValueError(f"egress allow entry {entry[:80]!r}: must be 1-{MAX_ENTRY_LENGTH} characters")
    try:
        return ipaddress.ip_network(text.strip("[]"), strict=False)
    except ValueError:
        pass
    numeric = numeric_ipv4(text)
    if numeric is not None:
        return IPv4Network(numeric)
    host = normalize_host(text)
    labels = host[2:].split(".") if host.startswith("*.") else host.split(".")
    if not all(_HOST_LABEL.fullmatch(label) for label in labels):
        raise ValueError(
            f"egress allow entry {entry[:80]!r} is neither an address, a CIDR (10.0.0.0/8) nor a host"
            " name (api.acme.internal, *.acme.internal)"
        )
    return host


class EgressDenied(Exception):
    """A connection the policy refuses; the message names the host, address and its class."""

    def __init__(self, host: str, address: IPAddress, kind: str) -> None:
        shown = host if host == str(address) else f"{host} ({address})"
        inner = embedded_ipv4(address) if isinstance(address, IPv6Address) else None
        carried = "" if inner is None else f", IPv4 {inner} inside IPv6"
        super().__init__(
            f"egress to {shown} refused: {kind} address{carried} (allow it for the tenant with"
            " `switchyard tenant update --egress-allow`)"
        )
        self.host, self.address, self.kind = host, address, kind


@dataclass(frozen=True)
class EgressPolicy:
    """What one tenant may reach; hashable (``http.request`` keeps one connection pool per policy,
    so a connection opened under one tenant's allow-list never serves another tenant)."""

    allow_private: bool = False
    hosts: frozenset[str] = frozenset()
    networks: tuple[IPNetwork, ...] = ()

    @staticmethod
    @functools.lru_cache(maxsize=1024)
    def build(allow_private: bool, entries: tuple[str, ...] = ()) -> EgressPolicy:
        """The policy of an allow-list (entries as :func:`parse_allow_entry` reads them); cached,
        so equal lists give the same object."""
        hosts: set[str] = set()
        networks: list[IPNetwork] = []
        for entry in entries:
            parsed = parse_allow_entry(entry)
            if isinstance(parsed, str):
                hosts.add(parsed)
            else:
                networks.append(parsed)
        return EgressPolicy(allow_private, frozenset(hosts), tuple(networks))

    def host_allowed(self, host: str) -> bool:
        """Whether the allow-list names ``host`` (exactly or by a ``*.`` suffix)."""
        name = normalize_host(host)
        if name in self.hosts:
            return True
        return any(entry.startswith("*.") and name.endswith(entry[1:]) for entry in self.hosts)

    def address_allowed(self, ip: IPAddress) -> bool:
        """Whether ``ip`` lies inside a listed network (an IPv4-mapped address counts as its IPv4)."""
        candidates: list[IPAddress] = [ip]
        if isinstance(ip, IPv6Address) and ip.ipv4_mapped is not None:
            candidates.append(ip.ipv4_mapped)
        return any(c.version == net.version and c in net for c in candidates for net in self.networks)

    def vet(self, host: str, addresses: Sequence[IPAddress]) -> list[IPAddress]:
        """The addresses to connect to; :class:`EgressDenied` when any of them is refused (a name
        that resolves to a public and a private address is refused as a whole)."""
        if self.allow_private or self.host_allowed(host):
            return list(addresses)
        for ip in addresses:
            kind = address_class(ip)
            if kind is not None and not self.address_allowed(ip):
                raise EgressDenied(host, ip, kind)
        return list(addresses)


@dataclass(frozen=True)
class EgressConfig:
    """What the executor hands ``http.request``: the engine-wide switch and each tenant's list."""

    allow_private: bool = False
    tenant_allow: Callable[[str], Iterable[str]] | None = field(default=None, compare=False)

    def policy_for(self, tenant: str) -> EgressPolicy:
        entries = tuple(self.tenant_allow(tenant)) if self.tenant_allow is not None else ()
        return EgressPolicy.build(self.allow_private, entries)
