"""Bearer-token auth for mutating endpoints and a cap on request body size."""

from __future__ import annotations

import hmac
import json
from typing import Any

from fastapi import HTTPException, Request
from fastapi.security import HTTPBearer

# Declares the scheme in the OpenAPI docs ("Authorize" button); `require_token` enforces it.
bearer_scheme = HTTPBearer(auto_error=False, description="INSTRUCTRAY_API_TOKEN")


def require_token(request: Request) -> None:
    expected: str = request.app.state.token
    header = request.headers.get("authorization")
    if not header:
        raise HTTPException(
            401,
            "missing bearer token: send 'Authorization: Bearer <token>' "
            "(the token is INSTRUCTRAY_API_TOKEN or INSTRUCTRAY_API_TOKEN_FILE of the server)",
            headers={"WWW-Authenticate": "Bearer"},
        )
    scheme, _, token = header.partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        raise HTTPException(
            401,
            "malformed Authorization header: expected 'Bearer <token>'",
            headers={"WWW-Authenticate": "Bearer"},
        )
    if not hmac.compare_digest(token.strip().encode(), expected.encode()):
        raise HTTPException(403, "invalid bearer token", headers={"WWW-Authenticate": "Bearer"})


class _TooLarge(Exception):
    pass


class BodySizeLimit:
    """Rejects a body over ``max_bytes`` with 413, by Content-Length before the app runs, or
    while reading a chunked body that has none."""

    def __init__(self, app: Any, max_bytes: int) -> None:
        self.app = app
        self.max_bytes = max_bytes

    async def _reject(self, send: Any) -> None:
        body = json.dumps(
            {"detail": f"request body too large: the limit is {self.max_bytes} bytes"}
        ).encode()
        await send(
            {
                "type": "http.response.start",
                "status": 413,
                "headers": [
                    (b"content-type", b"application/json"),
                    (b"content-length", str(len(body)).encode()),
                    (b"connection", b"close"),
                ],
            }
        )
        await send({"type": "http.response.body", "body": body})

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        for name, value in scope["headers"]:
            if name == b"content-length":
                try:
                    too_big = int(value) > self.max_bytes
                except ValueError:
                    too_big = False
                if too_big:
                    await self._reject(send)
                    return
        seen = 0
        started = False

        async def limited_receive() -> dict:
            nonlocal seen
            message = await receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > self.max_bytes:
                    raise _TooLarge
            return message

        async def tracking_send(message: dict) -> None:
            nonlocal started
            if message["type"] == "http.response.start":
                started = True
            await send(message)

        try:
            await self.app(scope, limited_receive, tracking_send)
        except _TooLarge:
            if started:
                raise
            await self._reject(send)
