"""Where each service listens: --address, else an environment variable, else the local default.

The ports are defined here once: every service's `serve` command and `start()` take their
default from DEFAULT_PORTS, and every client resolves its target with `resolve`.
"""

import os

DEFAULT_PORTS = {"lineage": 50051, "trainer": 50052, "proposer": 50053}


def env_var(service: str) -> str:
    return f"EVO_{service.upper()}_ADDRESS"


def resolve(service: str, address: str | None) -> str:
    return address or os.environ.get(env_var(service)) or f"localhost:{DEFAULT_PORTS[service]}"
