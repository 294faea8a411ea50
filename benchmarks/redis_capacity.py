"""Redis's side of scale-out, measured with ``redis-benchmark`` (scenario F).

A publish on a tidings node costs Redis one ``EVALSHA`` of the backend's append script
(counter, topic history, hub-wide log); each node then reads the hub-wide log with
``XREAD``, in batches. So with N nodes Redis spends, per published event, one append plus N
times a batched read's share: these are the two numbers measured here, on the same core the
servers use. ``PUBLISH`` is measured too, for scale: it is what a pub/sub design would pay.
"""

from __future__ import annotations

import shutil
import subprocess
from typing import Any

#: Events one XREAD returns in the read test (a node under load reads in batches).
READ_BATCH = 100


def redis_benchmark(
    port: int, args: list[str], *, n: int, clients: int, pipeline: int
) -> dict[str, Any]:
    """One ``redis-benchmark`` test: requests/s and p50 latency."""
    argv = ["taskset", "-c", "1", "redis-benchmark", "-p", str(port), "--csv", "-n", str(n)]
    argv += ["-c", str(clients), "-P", str(pipeline), *args]
    out = subprocess.run(argv, capture_output=True, text=True, timeout=120, check=True).stdout
    line = out.strip().splitlines()[-1]
    # The test name is quoted but not escaped: take the numbers from the right.
    fields = line.rsplit(",", 7)
    numbers = [float(f.strip('"')) for f in fields[1:]]
    return {"rps": numbers[0], "p50_ms": numbers[3], "p99_ms": numbers[5]}


def measure(port: int) -> dict[str, Any]:
    """The results record for scenario F's Redis capacity."""
    if shutil.which("redis-benchmark") is None:
        return {"scenario": "F", "server": "redis-benchmark", "error": "redis-benchmark missing"}
    from redis import Redis

    from tidings.backends.redis import APPEND_SCRIPT, RedisKeys, append_arguments
    from tidings.events import make_draft

    client = Redis(port=port)
    client.flushall()
    keys = RedisKeys("tidings")
    payload = {"t": 1795691681000000, "n": 1, "pad": ""}
    draft = make_draft("bench", payload)
    script_keys, script_args = append_arguments(keys, draft, history_size=1000, log_size=100_000)
    sha = client.script_load(APPEND_SCRIPT)
    evalsha = ["EVALSHA", sha, str(len(script_keys)), *script_keys]
    evalsha += [a.decode() if isinstance(a, bytes) else a for a in script_args]
    tests = []
    append = redis_benchmark(port, evalsha, n=100_000, clients=4, pipeline=16)
    tests.append({"name": "tidings append script (EVALSHA)", **append})
    xread = ["XREAD", "COUNT", str(READ_BATCH), "STREAMS", keys.log, "0-0"]
    read = redis_benchmark(port, xread, n=20_000, clients=2, pipeline=4)
    tests.append({"name": f"node read: XREAD COUNT {READ_BATCH} of the log", **read})
    publish = redis_benchmark(
        port, ["PUBLISH", "bench", '{"t":1,"n":1}'], n=200_000, clients=4, pipeline=16
    )
    tests.append({"name": "PUBLISH, no subscriber (for scale)", **publish})
    client.flushall()
    client.close()
    append_us = 1e6 / append["rps"]
    read_us_per_event = 1e6 / (read["rps"] * READ_BATCH)
    return {
        "scenario": "F",
        "server": "redis-benchmark",
        "tests": tests,
        "append_us": round(append_us, 2),
        "read_us_per_event_per_node": round(read_us_per_event, 3),
        "summary": f"append {append['rps']:,.0f}/s ({append_us:.1f} µs), node read "
        f"{read_us_per_event:.2f} µs/event",
    }
