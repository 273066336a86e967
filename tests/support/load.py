"""A steady load of WebSocket sessions that records what became of every message."""

import asyncio
import contextlib
import json
from collections import Counter
from dataclasses import dataclass
from typing import Any

import websockets

from tests.support.services import ServiceProcess
from tests.support.stack import clip_b64, ws_url

CLIP = "sentence1.ogg"


@dataclass
class Sent:
    session: str
    text: str
    kind: str
    # "answered", "error <code>", "no answer", "wrong answer" or "connection <error>".
    outcome: str = "no answer"


class Load:
    """`sessions` WebSockets that each send one message after another until stopped,
    every `audio_every`-th a clip (0: text only).

    A typed message's answer must echo it (the wire server's echo mode); a clip's
    must carry `transcript`, what the wire server hears in every clip."""

    def __init__(
        self,
        gateway: ServiceProcess,
        *,
        sessions: int,
        pause_s: float,
        answer_timeout: float,
        prefix: str = "load",
        audio_every: int = 0,
        transcript: str = "",
    ) -> None:
        self._gateway = gateway
        self._sessions = sessions
        self._pause = pause_s
        self._timeout = answer_timeout
        self._prefix = prefix
        self._audio_every = audio_every
        self._transcript = transcript
        self._stop = asyncio.Event()
        self._tasks: list[asyncio.Task[None]] = []
        self.sent: list[Sent] = []
        # Messages that came after a message's answer and before the next was sent.
        self.extra: list[dict[str, Any]] = []

    def _judge(self, sent: Sent, answer: dict[str, Any]) -> str:
        if answer.get("type") == "error":
            return f"error {answer.get('code')}"
        if answer.get("type") != "response":
            return "wrong answer"
        if sent.kind == "audio":
            right = answer.get("user_text") == self._transcript
        else:
            right = answer.get("user_text") == sent.text and sent.text in answer["agent_text"]
        return "answered" if right else "wrong answer"

    async def _ask(self, ws: Any, sent: Sent) -> None:
        message = (
            {"type": "audio", "audio": clip_b64(CLIP)}
            if sent.kind == "audio"
            else {"type": "text", "text": sent.text}
        )
        await ws.send(json.dumps(message))
        try:
            answer = json.loads(await asyncio.wait_for(ws.recv(), self._timeout))
        except TimeoutError:
            return
        sent.outcome = self._judge(sent, answer)

    async def _drain(self, ws: Any) -> None:
        """Anything more on the connection is a second answer."""
        with contextlib.suppress(TimeoutError):
            while True:
                self.extra.append(json.loads(await asyncio.wait_for(ws.recv(), 1.0)))

    async def _run(self, n: int) -> None:
        session = f"{self._prefix}-{n}"
        count = 0
        while not self._stop.is_set():
            try:
                async with websockets.connect(ws_url(self._gateway, session)) as ws:
                    while not self._stop.is_set():
                        count += 1
                        audio = self._audio_every > 0 and count % self._audio_every == 0
                        sent = Sent(
                            session, f"{session} message {count}", "audio" if audio else "text"
                        )
                        self.sent.append(sent)
                        try:
                            await self._ask(ws, sent)
                        except (OSError, websockets.WebSocketException) as exc:
                            sent.outcome = f"connection {type(exc).__name__}"
                            raise
                        await asyncio.sleep(self._pause)
                    await self._drain(ws)
            except (OSError, websockets.WebSocketException):
                await asyncio.sleep(0.5)

    def start(self) -> None:
        self._tasks = [asyncio.create_task(self._run(n)) for n in range(self._sessions)]

    async def stop(self) -> Counter[str]:
        self._stop.set()
        await asyncio.wait_for(asyncio.gather(*self._tasks), self._timeout + 15)
        return Counter(sent.outcome for sent in self.sent)
