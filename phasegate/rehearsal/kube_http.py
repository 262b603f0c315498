"""A small JSON client for the real control plane: the node agent, seeding and test checks.

Why not the official client here: the node agent must watch every pod and write status
subresources with strategic merge patches, and seeding writes whole manifests; both are a
few plain JSON requests, and httpx streams a watch as lines. The adapter under test keeps
using the official client, so the two never share a transport bug.
"""

from __future__ import annotations

import json
import ssl
from collections.abc import Iterator, Mapping
from typing import Any

import httpx

from phasegate.rehearsal.controlplane import Credentials

Obj = dict[str, Any]

STRATEGIC = "application/strategic-merge-patch+json"
MERGE = "application/merge-patch+json"
JSON_PATCH = "application/json-patch+json"


class KubeApiError(Exception):
    """A non-2xx answer: ``status`` and the Status object's reason and message."""

    def __init__(self, method: str, path: str, status: int, body: Obj) -> None:
        self.status = status
        self.reason = str(body.get("reason", ""))
        self.body = body
        super().__init__(f"{method} {path}: {status} {self.reason}: {body.get('message', '')}")


class KubeHttp:
    """Bearer-token JSON requests to one apiserver over TLS checked against its CA."""

    def __init__(self, credentials: Credentials, *, timeout: float = 30.0) -> None:
        context = ssl.create_default_context(cafile=str(credentials.ca_file))
        self._client = httpx.Client(base_url=credentials.server, verify=context, timeout=timeout,
                                    headers={"Authorization": f"Bearer {credentials.token}",
                                             "Accept": "application/json"})

    def close(self) -> None:
        self._client.close()

    def request(self, method: str, path: str, body: Any = None, *, content_type: str = "application/json",
                params: Mapping[str, str] | None = None) -> Obj:
        headers = {"Content-Type": content_type} if body is not None else {}
        content = json.dumps(body).encode() if body is not None else None
        response = self._client.request(method, path, content=content, headers=headers, params=params)
        payload: Obj = {}
        if response.content:
            try:
                payload = response.json()
            except ValueError:
                payload = {"message": response.text[:200]}
        if not 200 <= response.status_code < 300:
            raise KubeApiError(method, path, response.status_code, payload)
        return payload

    def get(self, path: str, **params: str) -> Obj:
        return self.request("GET", path, params=params or None)

    def find(self, path: str) -> Obj | None:
        try:
            return self.get(path)
        except KubeApiError as exc:
            if exc.status == 404:
                return None
            raise

    def post(self, path: str, body: Obj) -> Obj:
        return self.request("POST", path, body)

    def put(self, path: str, body: Obj) -> Obj:
        return self.request("PUT", path, body)

    def patch(self, path: str, body: Any, content_type: str = MERGE) -> Obj:
        return self.request("PATCH", path, body, content_type=content_type)

    def delete(self, path: str, body: Obj | None = None) -> Obj:
        return self.request("DELETE", path, body)

    def watch(self, path: str, resource_version: str, *, timeout_seconds: int = 60) -> Iterator[Obj]:
        """Watch events after ``resource_version`` until the server ends the stream."""
        params = {"watch": "true", "resourceVersion": resource_version, "allowWatchBookmarks": "true",
                  "timeoutSeconds": str(timeout_seconds)}
        with self._client.stream("GET", path, params=params, timeout=httpx.Timeout(10, read=timeout_seconds + 10)) as r:
            if r.status_code != 200:
                r.read()
                raise KubeApiError("GET", path, r.status_code, r.json() if r.content else {})
            for line in r.iter_lines():
                if line:
                    yield json.loads(line)
