"""A Kubernetes API emulator (PyPI `kmock`) on a loopback port, for the official client.

kmock serves create/read/list/watch/patch/delete over real HTTP, keeping objects in memory;
nothing runs (no controllers), so a test moves a Job or pod along by patching its status.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any


class Emulated:
    """The client and the emulator (for canned answers, e.g. pod logs)."""

    def __init__(self, api: Any, emulator: Any):
        self.api = api
        self.emulator = emulator

    def serve_log(self, namespace: str, pod: str, text: str) -> None:
        """`GET .../pods/POD/log` answers `text` (the emulator keeps no container logs)."""
        path = f"/api/v1/namespaces/{namespace}/pods/{pod}/log"
        self.emulator["get", path] << text


RESOURCES = ("batch/v1/jobs", "v1/pods", "v1/services")


@contextmanager
def kube_emulator() -> Iterator[Emulated]:
    """Yield an official-client `ApiClient` (and the emulator) on a fresh emulator on
    loopback; stop it after."""
    from kmock import KubernetesEmulator, Server
    from kubernetes import client

    started = threading.Event()
    state: dict[str, Any] = {}

    async def serve() -> None:
        state["stop"] = asyncio.Event()
        async with KubernetesEmulator() as emulator, Server(emulator, host="127.0.0.1") as server:
            # Declared up front, an empty list is empty (as on a real server), not a 404.
            for resource in RESOURCES:
                emulator.resources[resource] = {}
            state["url"] = f"http://127.0.0.1:{server.port}"
            state["emulator"] = emulator
            started.set()
            await state["stop"].wait()

    loop = asyncio.new_event_loop()
    thread = threading.Thread(target=loop.run_until_complete, args=(serve(),), daemon=True)
    thread.start()
    if not started.wait(10):
        raise RuntimeError("the Kubernetes emulator did not start")
    config = client.Configuration()
    config.host = state["url"]
    api = client.ApiClient(config)
    try:
        yield Emulated(api, state["emulator"])
    finally:
        api.close()
        loop.call_soon_threadsafe(state["stop"].set)
        thread.join(10)
        loop.close()
