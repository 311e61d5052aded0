"""The egress policy (services.actions.egress): address classes, the numeric host forms the C
resolver accepts, allow-lists. Pure: no lookups, no sockets (``socket.inet_aton`` is the C
library's parser, used as the oracle of :func:`numeric_ipv4`)."""

from __future__ import annotations

import ipaddress
import socket
from ipaddress import IPv4Address, IPv4Network, IPv6Address

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from services.actions.egress import (
    EgressConfig,
    EgressDenied,
    EgressPolicy,
    IPAddress,
    address_class,
    literal_address,
    numeric_ipv4,
    parse_allow_entry,
)
from services.tenancy.config import TenantConfig

DENY = EgressPolicy()

# Every form the issue lists, and their relatives: (host as written in a URL, refused class).
REFUSED_LITERALS = [
    ("169.254.169.254", "link-local"),
    ("127.0.0.1", "loopback"),
    ("127.255.255.254", "loopback"),
    ("[::1]", "loopback"),
    ("::1", "loopback"),
    ("0:0:0:0:0:0:0:1", "loopback"),
    ("10.0.0.5", "private"),
    ("172.16.0.1", "private"),
    ("172.31.255.255", "private"),
    ("192.168.1.1", "private"),
    ("100.64.0.1", "shared"),
    ("0x7f000001", "loopback"),
    ("0X7F000001", "loopback"),
    ("2130706433", "loopback"),
    ("017700000001", "loopback"),
    ("0177.0.0.1", "loopback"),
    ("0177.0.0.01", "loopback"),
    ("0x7f.0.0.1", "loopback"),
    ("0x7f.1", "loopback"),
    ("127.1", "loopback"),
    ("127.0.1", "loopback"),
    ("0xa9.0xfe.0xa9.0xfe", "link-local"),
    ("2852039166", "link-local"),  # 169.254.169.254
    ("0xa.5", "private"),  # 10.0.0.5
    ("0.0.0.0", "unspecified"),
    ("0", "unspecified"),
    ("0.1.2.3", "unspecified"),
    ("[::]", "unspecified"),
    ("224.0.0.1", "multicast"),
    ("239.255.255.250", "multicast"),
    ("[ff02::1]", "multicast"),
    ("240.0.0.1", "reserved"),
    ("255.255.255.255", "reserved"),
    ("192.0.2.10", "reserved"),
    ("198.18.0.1", "reserved"),
    ("[::ffff:127.0.0.1]", "loopback"),
    ("[::ffff:7f00:1]", "loopback"),
    ("[::ffff:169.254.169.254]", "link-local"),
    ("[::ffff:10.0.0.5]", "private"),
    ("[0:0:0:0:0:ffff:7f00:0001]", "loopback"),
    ("[64:ff9b::a9fe:a9fe]", "link-local"),  # NAT64 of 169.254.169.254
    ("[64:ff9b::127.0.0.1]", "loopback"),
    ("[2002:7f00:1::1]", "loopback"),  # 6to4 of 127.0.0.1
    ("[2002:a00:5::]", "private"),  # 6to4 of 10.0.0.5
    ("[::127.0.0.1]", "reserved"),  # IPv4-compatible (deprecated)
    ("[::ffff:0:127.0.0.1]", "reserved"),  # IPv4-translated
    ("[fe80::1]", "link-local"),
    ("fe80::1%eth0", "link-local"),
    ("[fc00::1]", "private"),
    ("[fd12:3456:789a::1]", "private"),
    ("[fec0::1]", "private"),
    ("[64:ff9b:1::1]", "private"),
    ("[2001:db8::1]", "reserved"),
    ("[100::1]", "reserved"),
    ("[4000::1]", "reserved"),
]
PUBLIC_LITERALS = [
    "8.8.8.8",
    "93.184.216.34",
    "1.1.1.1",
    "0x08080808",  # 8.8.8.8
    "134744072",  # 8.8.8.8
    "[2606:4700:4700::1111]",
    "[2a00:1450:4001::200e]",
    "[::ffff:8.8.8.8]",
    "[64:ff9b::808:808]",  # NAT64 of 8.8.8.8
    "[2002:808:808::1]",  # 6to4 of 8.8.8.8
]


@pytest.mark.parametrize(("host", "kind"), REFUSED_LITERALS)
def test_every_loopback_private_and_reserved_form_is_refused(host: str, kind: str) -> None:
    ip = literal_address(host)
    assert ip is not None, host
    assert address_class(ip) == kind
    with pytest.raises(EgressDenied) as denied:
        DENY.vet(host, [ip])
    assert denied.value.kind == kind
    assert f"{kind} address" in str(denied.value)


@pytest.mark.parametrize("host", PUBLIC_LITERALS)
def test_public_addresses_in_any_form_are_admitted(host: str) -> None:
    ip = literal_address(host)
    assert ip is not None
    assert address_class(ip) is None
    assert DENY.vet(host, [ip]) == [ip]


@pytest.mark.parametrize(
    "host",
    ["localhost", "metadata.google.internal", "api.example", "08.0.0.1", "1.2.3.4.", "0x", "256.1.1.1.1"],
)
def test_names_are_not_literals(host: str) -> None:
    """What is not an address by itself goes to the resolver (and its answer is vetted)."""
    assert literal_address(host) is None


def test_a_name_is_judged_by_what_it_resolves_to() -> None:
    loopback, metadata, public = (
        IPv4Address("127.0.0.1"),
        IPv4Address("169.254.169.254"),
        IPv4Address("8.8.8.8"),
    )
    with pytest.raises(EgressDenied, match=r"localhost \(127\.0\.0\.1\) refused: loopback"):
        DENY.vet("localhost", [loopback])
    with pytest.raises(EgressDenied, match="link-local"):
        DENY.vet("metadata.google.internal", [metadata])
    with pytest.raises(EgressDenied, match="loopback"):  # one bad address refuses the name
        DENY.vet("rebind.example", [public, loopback])
    assert DENY.vet("dns.google", [public]) == [public]


def test_an_embedded_ipv4_is_named_in_the_refusal() -> None:
    with pytest.raises(EgressDenied, match=r"loopback address, IPv4 127\.0\.0\.1 inside IPv6"):
        DENY.vet("x", [IPv6Address("::ffff:127.0.0.1")])


# --- numeric forms: what the C resolver makes of a host string --------------------------------


def libc(host: str) -> IPv4Address | None:
    try:
        return IPv4Address(socket.inet_aton(host))
    except (OSError, ValueError):
        return None


@st.composite
def numeric_part(draw: st.DrawFn, limit: int) -> str:
    value = draw(st.integers(0, limit))
    form = draw(st.sampled_from(["dec", "hex", "HEX", "oct", "zeros"]))
    if form == "hex":
        return hex(value)
    if form == "HEX":
        return "0X" + format(value, "X")
    if form == "oct":
        return "0" + format(value, "o")
    if form == "zeros":
        return "0" * draw(st.integers(1, 3)) + str(value)  # leading zeros: octal, or not a number
    return str(value)


@st.composite
def numeric_host(draw: st.DrawFn) -> str:
    count = draw(st.integers(1, 4))
    limits = {1: [0xFFFFFFFF], 2: [0xFF, 0xFFFFFF], 3: [0xFF, 0xFF, 0xFFFF], 4: [0xFF] * 4}[count]
    # Sometimes past the limit, which the resolver refuses.
    parts = [draw(numeric_part(limit * draw(st.sampled_from([1, 1, 1, 300])))) for limit in limits]
    return ".".join(parts) + draw(st.sampled_from(["", "", ".", " trailing", "x", "\t"]))


@settings(max_examples=300, deadline=None)
@given(numeric_host())
def test_numeric_hosts_read_as_the_c_library_reads_them(host: str) -> None:
    assert numeric_ipv4(host) == libc(host)


@settings(max_examples=300, deadline=None)
@given(st.text(alphabet="0123456789abcdefxX. ", max_size=24))
def test_any_short_string_reads_as_the_c_library_reads_it(host: str) -> None:
    assert numeric_ipv4(host) == libc(host)


REFUSED_V4 = [
    IPv4Network(net)
    for net in (
        *("0.0.0.0/8", "127.0.0.0/8", "10.0.0.0/8", "172.16.0.0/12", "192.168.0.0/16"),
        *("100.64.0.0/10", "169.254.0.0/16", "224.0.0.0/4", "240.0.0.0/4", "198.18.0.0/15"),
    )
]


@st.composite
def refused_ipv4(draw: st.DrawFn) -> IPv4Address:
    net = draw(st.sampled_from(REFUSED_V4))
    return net[draw(st.integers(0, net.num_addresses - 1))]


def spellings(ip: IPv4Address) -> list[str]:
    """Ways to write ``ip`` in a URL host that reach it."""
    a, b, c, d = ip.packed
    n = int(ip)
    return [
        str(ip),
        str(n),
        hex(n),
        "0" + format(n, "o"),
        ".".join("0" + format(x, "o") for x in ip.packed),
        ".".join(hex(x) for x in ip.packed),
        f"{a}.{(b << 16) | (c << 8) | d}",
        f"{a}.{b}.{(c << 8) | d}",
        f"{hex(a)}.{(b << 16) | (c << 8) | d}",
        f"[::ffff:{ip}]",
        f"[{IPv6Address(0xFFFF << 32 | n)}]",
        f"[{IPv6Address((0x64FF9B << 96) | n)}]",
        f"[{IPv6Address((0x2002 << 112) | (n << 80))}]",
    ]


@settings(max_examples=150, deadline=None)
@given(refused_ipv4())
def test_a_refused_ipv4_address_is_refused_in_every_spelling(ip: IPv4Address) -> None:
    kind = address_class(ip)
    assert kind is not None
    for host in spellings(ip):
        parsed = literal_address(host)
        assert parsed is not None, host
        assert address_class(parsed) == kind, host
        with pytest.raises(EgressDenied):
            DENY.vet(host, [parsed])
        if not host.startswith("["):
            assert libc(host) == ip, host  # and that is what the resolver would connect to


@settings(max_examples=300, deadline=None)
@given(st.ip_addresses())
def test_nothing_python_calls_non_public_is_admitted(ip: IPAddress) -> None:
    """``ipaddress``'s own flags as a second opinion: an address we call public is none of them
    (IPv4 inside IPv6 is judged by the IPv4 address, which Python does not do)."""
    if address_class(ip) is not None:
        return
    judged: IPAddress = ip
    if isinstance(ip, IPv6Address):
        from services.actions.egress import embedded_ipv4

        judged = embedded_ipv4(ip) or ip
    flags = ("is_private", "is_loopback", "is_link_local", "is_multicast", "is_reserved", "is_unspecified")
    assert not [flag for flag in flags if getattr(judged, flag)], judged
    assert judged not in IPv4Network("100.64.0.0/10") if judged.version == 4 else True


@settings(max_examples=200, deadline=None)
@given(st.ip_addresses(v=4), st.ip_addresses(v=6))
def test_private_and_loopback_by_python_are_refused(v4: IPv4Address, v6: IPv6Address) -> None:
    for ip in (v4, v6):
        if ip.is_loopback or ip.is_link_local or ip.is_multicast or ip.is_unspecified:
            assert address_class(ip) is not None


# --- allow-lists -------------------------------------------------------------------------------


def test_an_allow_list_admits_what_it_lists_and_nothing_else() -> None:
    policy = EgressPolicy.build(False, ("10.1.0.0/16", "127.0.0.1", "API.Acme.Internal.", "*.svc.acme"))
    ip = ipaddress.ip_address
    assert policy.vet("10.1.2.3", [ip("10.1.2.3")])
    assert policy.vet("127.0.0.1", [ip("127.0.0.1")])
    assert policy.vet("x", [ip("::ffff:10.1.0.9")])  # mapped: its IPv4 is in the list
    assert policy.vet("api.acme.internal", [ip("192.168.7.7")])  # a listed name, whatever it resolves to
    assert policy.vet("billing.svc.acme", [ip("172.20.0.1")])
    assert policy.vet("a.b.svc.acme.", [ip("172.20.0.1")])
    assert policy.vet("8.8.8.8", [ip("8.8.8.8")])  # public stays admitted
    for host, address in [
        ("10.2.0.1", "10.2.0.1"),
        ("127.0.0.2", "127.0.0.2"),
        ("::1", "::1"),
        ("localhost", "127.0.0.2"),  # listed: the address 127.0.0.1, not the name
        ("169.254.169.254", "169.254.169.254"),
        ("svc.acme", "172.20.0.1"),  # the wildcard is for subdomains only
        ("evilsvc.acme", "172.20.0.1"),
        ("api.acme.internal.evil", "10.0.0.1"),
        ("other.acme.internal", "192.168.7.7"),
    ]:
        with pytest.raises(EgressDenied):
            policy.vet(host, [ip(address)])


@settings(max_examples=300, deadline=None)
@given(refused_ipv4(), st.integers(8, 32), refused_ipv4())
def test_a_listed_network_admits_exactly_its_addresses(
    base: IPv4Address, prefix: int, probe: IPv4Address
) -> None:
    net = IPv4Network(f"{base}/{prefix}", strict=False)
    policy = EgressPolicy.build(False, (str(net),))
    if probe in net:
        assert policy.vet(str(probe), [probe]) == [probe]
    else:
        with pytest.raises(EgressDenied):
            policy.vet(str(probe), [probe])


def test_the_engine_switch_admits_everything() -> None:
    policy = EgressConfig(allow_private=True).policy_for("acme")
    for host, _ in REFUSED_LITERALS:
        parsed = literal_address(host)
        assert parsed is not None
        assert policy.vet(host, [parsed]) == [parsed]


def test_policies_are_per_tenant_and_shared_when_equal() -> None:
    lists = {"acme": ["10.0.0.0/8"], "beta": ["10.0.0.0/8"], "gamma": []}
    config = EgressConfig(tenant_allow=lambda tenant: lists.get(tenant, []))
    assert config.policy_for("acme") is config.policy_for("beta")  # one connection pool for both
    assert config.policy_for("gamma") is config.policy_for("unknown") is EgressPolicy.build(False, ())
    assert config.policy_for("acme") != config.policy_for("gamma")
    with pytest.raises(EgressDenied):
        config.policy_for("gamma").vet("10.0.0.1", [IPv4Address("10.0.0.1")])


@pytest.mark.parametrize(
    ("entry", "parsed"),
    [
        ("10.0.0.0/8", IPv4Network("10.0.0.0/8")),
        ("10.1.2.3/8", IPv4Network("10.0.0.0/8")),
        ("127.0.0.1", IPv4Network("127.0.0.1/32")),
        ("0x7f000001", IPv4Network("127.0.0.1/32")),
        ("[::1]", ipaddress.ip_network("::1/128")),
        ("fd00::/8", ipaddress.ip_network("fd00::/8")),
        ("localhost", "localhost"),
        ("API.acme.internal.", "api.acme.internal"),
        ("*.acme.internal", "*.acme.internal"),
    ],
)
def test_allow_entries_parse(entry: str, parsed: object) -> None:
    assert parse_allow_entry(entry) == parsed


@pytest.mark.parametrize(
    "entry", ["", "http://10.0.0.1/", "10.0.0.0/33", "a..b", "*", "*.", "a b", "x" * 300, "-a.b", "host:80"]
)
def test_bad_allow_entries_are_refused_by_tenant_configuration(entry: str) -> None:
    with pytest.raises(ValueError):
        parse_allow_entry(entry)
    with pytest.raises(ValueError, match="egress"):
        TenantConfig(tenant="acme", egress_allow=[entry])


def test_tenant_configuration_keeps_its_allow_list() -> None:
    config = TenantConfig(tenant="acme", egress_allow=[" 10.0.0.0/8", "*.acme.internal"])
    assert config.egress_allow == ["10.0.0.0/8", "*.acme.internal"]
    assert TenantConfig.model_validate_json(config.model_dump_json()) == config
    assert TenantConfig(tenant="acme").egress_allow == []
    with pytest.raises(ValueError, match="at most"):
        TenantConfig(tenant="acme", egress_allow=["10.0.0.1"] * 257)
