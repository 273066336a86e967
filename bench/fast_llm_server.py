"""An OpenAI-compatible chat server that streams one short reply at once, for benchmarks.

It stands for a self-hosted vLLM or Ollama that is never the bottleneck: every
`POST /v1/chat/completions` gets the same precomputed Server-Sent Events body
(a dozen `chat.completion.chunk` events, then `[DONE]`), on keep-alive HTTP/1.1,
from a bare asyncio server, so the numbers measure the responder and not this.
With `--echo` the reply repeats the request's last message instead, so a client
can tell which message a reply answers (bench.soak_bench).

    python -m bench.fast_llm_server --port 8900 [--echo]
"""

import argparse
import asyncio
import functools
import json
import re

import uvloop

REPLY = "That sounds like a lovely thing to learn. What made you curious about it?"


def _event(delta: dict[str, str], finish: str | None) -> bytes:
    chunk = {
        "id": "chatcmpl-bench",
        "object": "chat.completion.chunk",
        "created": 0,
        "model": "bench",
        "choices": [{"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}],
    }
    return f"data: {json.dumps(chunk)}\n\n".encode()


def sse_body(reply: str = REPLY) -> bytes:
    tokens = re.findall(r"\s*\S+", reply)
    events = [_event({"role": "assistant", "content": ""}, None)]
    events += [_event({"content": token}, None) for token in tokens]
    events.append(_event({}, "stop"))
    events.append(b"data: [DONE]\n\n")
    return b"".join(events)


def http_response(body: bytes) -> bytes:
    return (
        b"HTTP/1.1 200 OK\r\n"
        b"content-type: text/event-stream\r\n"
        b"x-request-id: bench\r\n"
        b"content-length: " + str(len(body)).encode() + b"\r\n\r\n" + body
    )


RESPONSE = http_response(sse_body())


def echo_response(request: bytes) -> bytes:
    """The reply `You said: <last message>`; the fixed one for a request without
    messages (a readiness probe)."""
    try:
        content = json.loads(request)["messages"][-1]["content"]
    except (ValueError, KeyError, IndexError, TypeError):
        return RESPONSE
    return http_response(sse_body(f"You said: {content}"))


async def serve_connection(
    reader: asyncio.StreamReader, writer: asyncio.StreamWriter, *, echo: bool = False
) -> None:
    try:
        while True:
            head = await reader.readuntil(b"\r\n\r\n")
            length = 0
            for line in head.split(b"\r\n"):
                name, _, value = line.partition(b":")
                if name.strip().lower() == b"content-length":
                    length = int(value.strip())
            request = await reader.readexactly(length) if length else b""
            writer.write(echo_response(request) if echo else RESPONSE)
            await writer.drain()
    except (asyncio.IncompleteReadError, ConnectionError):
        pass
    finally:
        writer.close()


async def main(port: int, echo: bool = False) -> None:
    serve = functools.partial(serve_connection, echo=echo)
    server = await asyncio.start_server(serve, "127.0.0.1", port, backlog=1024)
    async with server:
        await server.serve_forever()


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--echo", action="store_true", help="repeat the last message")
    args = parser.parse_args()
    uvloop.run(main(args.port, args.echo))
