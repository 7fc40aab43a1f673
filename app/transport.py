"""ASGI glue between uvicorn and the app: bodies that arrived whole stay whole.

ffmpeg sends the last chunk of a PUT and closes the socket without reading the
answer. uvicorn (0.30 to at least 0.55) then answers ``receive()`` with
``http.disconnect`` even when the rest of the body already sits in its buffer,
so the app would throw away a complete upload. This middleware hands that
buffered remainder to the app as the final ``http.request`` message instead.
"""

from __future__ import annotations

from typing import Any

from starlette.types import ASGIApp, Message, Receive, Scope, Send


class CompleteBodyMiddleware:
    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        body_done = False

        async def receive_whole() -> Message:
            nonlocal body_done
            message = await receive()
            if message["type"] == "http.request":
                body_done = not message.get("more_body", False)
            elif message["type"] == "http.disconnect" and not body_done:
                rest = _buffered_final_body(receive)
                if rest is not None:
                    body_done = True
                    return {"type": "http.request", "body": rest, "more_body": False}
            return message

        await self.app(scope, receive_whole, send)


def _buffered_final_body(receive: Receive) -> bytes | None:
    """The body uvicorn parsed to its end but did not hand over, if any.

    uvicorn's ``receive`` is a bound method of its request cycle, which keeps
    the unread bytes in ``body`` and sets ``more_body`` False once the parser
    saw the end of the message. Anything else (another server, a body cut
    short) gives None, and the disconnect stands.
    """
    cycle: Any = getattr(receive, "__self__", None)
    if cycle is None or getattr(cycle, "more_body", True) is not False:
        return None
    body = getattr(cycle, "body", None)
    if not isinstance(body, (bytes, bytearray)):
        return None
    cycle.body = type(body)()
    return bytes(body)
