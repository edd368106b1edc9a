"""A Kubernetes API emulator (PyPI `kmock`) on a loopback port, for the official client.

kmock serves create/read/list/watch/patch/delete over real HTTP, keeping objects in memory;
nothing runs (no controllers), so a test moves a Job or pod along by patching its status.
kmock 0.8 ignores `labelSelector` on lists; here equality selectors (`k=v,k2=v2`, what the
platform's clients send) filter as on a real server.
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


def selected(obj: dict[str, Any], selector: str) -> bool:
    """Whether `obj` matches an equality-based label selector (`k=v,k2=v2`)."""
    labels = (obj.get("metadata") or {}).get("labels") or {}
    for term in filter(None, (t.strip() for t in selector.split(","))):
        key, _, value = term.partition("=")
        if labels.get(key) != value.lstrip("="):
            return False
    return True


RESOURCES = ("batch/v1/jobs", "v1/pods", "v1/services", "v1/resourcequotas")


@contextmanager
def kube_emulator() -> Iterator[Emulated]:
    """Yield an official-client `ApiClient` (and the emulator) on a fresh emulator on
    loopback; stop it after."""
    from kmock import KubernetesEmulator, Server
    from kubernetes import client

    class Emulator(KubernetesEmulator):  # type: ignore[misc]
        async def _serve_list(self, request: Any) -> Any:
            payload = await super()._serve_list(request)
            selector = request.params.get("labelSelector")
            if selector:
                payload["items"] = [o for o in payload["items"] if selected(o, selector)]
            return payload

    started = threading.Event()
    state: dict[str, Any] = {}

    async def serve() -> None:
        state["stop"] = asyncio.Event()
        async with Emulator() as emulator, Server(emulator, host="127.0.0.1") as server:
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
