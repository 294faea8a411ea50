"""What one ``send`` of an SSE event costs this machine's kernel, with no server around it.

Every server in the run pays at least one ``send`` per event per subscriber unless it
coalesces; on loopback that call also runs the receiving side of TCP. Its cost depends on
the machine (CPU, virtualisation, mitigations) and grows with the number of sockets
(caches), so the run records it next to the results: it is the floor under B's and D's
CPU per delivery, and what makes numbers from different machines comparable.

Run pinned to the server core: ``python -m benchmarks.write_floor`` prints JSON.
"""

from __future__ import annotations

import json
import resource
import socket
import sys
import time

#: Socket pairs measured (both ends live in this process: 2 descriptors per pair).
SIZES = (100, 1_000, 9_000)
PAYLOAD = b"x" * 150  # about one event of the scenarios, chunk framing included


def measure(sizes: tuple[int, ...] = SIZES, sends: int = 30_000) -> dict[str, float]:
    """µs per non-blocking ``send`` of :data:`PAYLOAD`, written round-robin over N sockets
    whose peer has read everything before the next round (as a subscriber keeping up)."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    limit = resource.getrlimit(resource.RLIMIT_NOFILE)[0]
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(4096)
    pairs: list[tuple[socket.socket, socket.socket]] = []
    result: dict[str, float] = {}
    try:
        for size in sizes:
            if 2 * size + 16 > limit:
                continue
            while len(pairs) < size:
                client = socket.create_connection(listener.getsockname())
                server, _ = listener.accept()
                server.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
                server.setblocking(False)
                client.setblocking(False)
                pairs.append((server, client))
            rounds = max(3, sends // size)
            spent = 0.0
            for _ in range(rounds):
                start = time.perf_counter()
                for server, _client in pairs:
                    server.send(PAYLOAD)
                spent += time.perf_counter() - start
                for _server, client in pairs:
                    client.recv(65536)
            result[str(size)] = round(spent / (rounds * size) * 1e6, 2)
    finally:
        for server, client in pairs:
            server.close()
            client.close()
        listener.close()
    return result


if __name__ == "__main__":
    json.dump(measure(), sys.stdout)
    print()
