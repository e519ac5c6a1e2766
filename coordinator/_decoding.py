"""Requests decoded by the coordinator, not by grpcio: garbage is refused quietly.

grpcio decodes a request before the handler runs; bytes that are not the message (issue 11:
`\\xff\\xff\\xff\\xff` sent raw to any method) make it log an ERROR with a traceback for every
call. Here every handler is registered to take the raw bytes and decodes them itself: an
undecodable request is answered INVALID_ARGUMENT and logged once a minute per peer host
(`_peer_log`), never with a traceback. `CallerCheck` decodes the Coordinator's and Admin's
requests only once the caller passed its check; `open_handler` does the same for the open
services (health, reflection), which anyone may call.
"""

from __future__ import annotations

import inspect
import logging
from collections.abc import AsyncIterator, Callable
from typing import Any

import grpc
from google.protobuf.message import DecodeError

from ._peer_log import PeerLog

__all__ = ["Refused", "RequestDecoder"]

log = logging.getLogger("twostep.coordinator")


class Refused(Exception):
    """A call to answer with `code` and `details` before its handler runs: the caller's
    wrapper passes them to `context.abort` (awaited in a coroutine handler, not in a
    synchronous one)."""

    def __init__(self, code: grpc.StatusCode, details: str):
        super().__init__(details)
        self.code = code
        self.details = details


class RequestDecoder:
    """Decodes requests and refuses what does not decode; one rate-limited log for all."""

    def __init__(self) -> None:
        self._undecodable = PeerLog(log, "undecodable requests refused")

    def decode(
        self, decode: Callable[[bytes], Any], raw: bytes, context: Any, rpc: str, caller: str
    ) -> Any:
        """`decode(raw)`; raises `Refused` (INVALID_ARGUMENT) when it does not decode."""
        try:
            return decode(raw)
        except DecodeError:
            self._undecodable.warning(context.peer(), rpc=rpc, caller=caller)
            raise Refused(grpc.StatusCode.INVALID_ARGUMENT, f"not a valid {rpc} request") from None

    def open_handler(self, handler: grpc.RpcMethodHandler, rpc: str) -> grpc.RpcMethodHandler:
        """An open service's (coroutine) handler, taking raw bytes and decoding them here."""
        decode = handler.request_deserializer
        if decode is None:
            return handler

        async def decoded(raw: bytes, context: grpc.aio.ServicerContext) -> Any:
            try:
                return self.decode(decode, raw, context, rpc, "open service")
            except Refused as refused:
                await context.abort(refused.code, refused.details)
                raise AssertionError("unreachable: context.abort raises") from None

        async def each(raws: AsyncIterator[bytes], context: grpc.aio.ServicerContext) -> Any:
            async for raw in raws:
                yield await decoded(raw, context)

        serialize = handler.response_serializer
        if handler.unary_unary is not None:
            unary = handler.unary_unary

            async def unary_unary(raw: bytes, context: grpc.aio.ServicerContext) -> Any:
                return await unary(await decoded(raw, context), context)

            return grpc.unary_unary_rpc_method_handler(unary_unary, None, serialize)
        if handler.unary_stream is not None:
            streams = _streaming(handler.unary_stream, decoded)
            return grpc.unary_stream_rpc_method_handler(streams, None, serialize)
        if handler.stream_stream is not None:
            streams = _streaming(handler.stream_stream, each)
            return grpc.stream_stream_rpc_method_handler(streams, None, serialize)
        return handler  # stream-unary: no open service has one


def _streaming(behavior: Callable[..., Any], requests: Callable[..., Any]) -> Callable[..., Any]:
    """`behavior` (an async generator, or a coroutine that writes through the context) fed
    `requests(raw, context)`: awaited for one request, iterated for a stream."""
    one = inspect.iscoroutinefunction(requests)
    if inspect.isasyncgenfunction(behavior):

        async def generate(raw: Any, context: grpc.aio.ServicerContext) -> Any:
            request = await requests(raw, context) if one else requests(raw, context)
            async for reply in behavior(request, context):
                yield reply

        return generate

    async def write(raw: Any, context: grpc.aio.ServicerContext) -> None:
        request = await requests(raw, context) if one else requests(raw, context)
        await behavior(request, context)

    return write
