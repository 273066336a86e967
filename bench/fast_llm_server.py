"""An OpenAI-compatible chat server that streams one short reply at once, for benchmarks.

It stands for a self-hosted vLLM or Ollama that is never the bottleneck: every
`POST /v1/chat/completions` gets the same precomputed Server-Sent Events body
(a dozen `chat.completion.chunk` events, then `[DONE]`), on keep-alive HTTP/1.1,
from a bare asyncio server, so the numbers measure the responder and not this.

    python -m bench.fast_llm_server --port 8900
"""

import argparse
import asyncio
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


BODY = sse_body()
HEAD = (
    b"HTTP/1.1 200 OK\r\n"
    b"content-type: text/event-stream\r\n"
    b"x-request-id: bench\r\n"
    b"content-length: " + str(len(BODY)).encode() + b"\r\n\r\n"
)


async def serve_connection(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    try:
        while True:
            head = await reader.readuntil(b"\r\n\r\n")
            length = 0
            for line in head.split(b"\r\n"):
                name, _, value = line.partition(b":")
                if name.strip().lower() == b"content-length":
                    length = int(value.strip())
            if length:
                await reader.readexactly(length)
            writer.write(HEAD + BODY)
            await writer.drain()
    except (asyncio.IncompleteReadError, ConnectionError):
        pass
    finally:
        writer.close()


async def main(port: int) -> None:
    server = await asyncio.start_server(serve_connection, "127.0.0.1", port, backlog=1024)
    async with server:
        await server.serve_forever()


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--port", type=int, required=True)
    uvloop.run(main(parser.parse_args().port))
