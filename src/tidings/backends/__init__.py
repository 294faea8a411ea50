"""Backends: ids, history and fan-out (memory, redis)."""
