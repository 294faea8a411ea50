"""The client's address behind trusted proxies (``X-Forwarded-For``, ``X-Forwarded-Proto``).

Per-IP limits count by the client's address. Behind a reverse proxy the socket's peer is
the proxy, so a proxy listed in ``--forwarded-allow-ips`` (addresses or networks, ``*`` for
any) may name the client: the address is the right-most entry of ``X-Forwarded-For`` that
is not itself a trusted proxy, as nginx's ``real_ip_recursive`` takes it. Headers from a
peer that is not trusted are ignored, so a client cannot pick its own address.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Sequence

__all__ = ["TrustedProxies"]

_Network = ipaddress.IPv4Network | ipaddress.IPv6Network


class TrustedProxies:
    """Which peers may name the client, and what they name.

    Args:
        trusted: addresses or networks (``10.0.0.0/8``) of trusted proxies; ``*`` trusts
            every peer. Entries that are neither are ignored.
    """

    def __init__(self, trusted: Sequence[str]) -> None:
        self.any = "*" in trusted
        self._hosts: set[str] = set()
        self._networks: list[_Network] = []
        for entry in trusted:
            entry = entry.strip()
            if not entry or entry == "*":
                continue
            try:
                if "/" in entry:
                    self._networks.append(ipaddress.ip_network(entry, strict=False))
                else:
                    self._hosts.add(str(ipaddress.ip_address(entry)))
            except ValueError:
                continue

    def __bool__(self) -> bool:
        return self.any or bool(self._hosts) or bool(self._networks)

    def trusts(self, host: str) -> bool:
        """Whether the peer ``host`` is a trusted proxy."""
        if self.any or host in self._hosts:
            return True
        if not self._networks:
            return False
        try:
            address = ipaddress.ip_address(host)
        except ValueError:
            return False
        return any(address in network for network in self._networks)

    def client(
        self, peer: tuple[str, int] | None, headers: Sequence[tuple[bytes, bytes]]
    ) -> tuple[tuple[str, int] | None, str | None]:
        """The client's address and the scheme the proxy saw (``None``: keep the socket's).

        ``peer`` is the socket's peer; the answer is ``peer`` itself unless it is trusted
        and sent forwarded headers.
        """
        if peer is None or not self.trusts(peer[0]):
            return peer, None
        forwarded_for = proto = None
        for name, value in headers:
            if name == b"x-forwarded-for":
                forwarded_for = value if forwarded_for is None else forwarded_for + b"," + value
            elif name == b"x-forwarded-proto":
                proto = value.decode("latin-1").strip().lower()
        client = peer
        if forwarded_for is not None:
            hops = [hop.strip() for hop in forwarded_for.decode("latin-1").split(",")]
            hops = [hop for hop in hops if hop]
            for hop in reversed(hops):
                client = (hop, 0)
                if not self.trusts(hop):
                    break
        scheme = proto if proto in ("http", "https") else None
        return client, scheme
