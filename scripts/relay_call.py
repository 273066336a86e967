"""A phone call in ConversationRelay mode without a phone: this speaks Twilio's side
of the relay WebSocket to a telephony service (TWILIO_MODE=relay), so the mode can
be tried under `make run` and measured by the benchmark.

    .venv/bin/python scripts/relay_call.py "I am learning how volcanoes form" goodbye

Each argument is one thing the caller says (a `prompt`); the reply's tokens are
printed as Twilio would speak them, as they come. `--interrupt-after N` talks over
each reply after its N-th token, as a caller who barges in. With TWILIO_AUTH_TOKEN
set (or --token), the handshake is signed for PUBLIC_BASE_URL as Twilio signs it.
"""

import argparse
import asyncio
import json
import logging
import sys
import time
import uuid
from dataclasses import dataclass, field
from types import TracebackType
from typing import Any, Self
from urllib.parse import urlencode, urlsplit

import websockets
from twilio.request_validator import RequestValidator
from websockets.asyncio.client import ClientConnection

from services.telephony.settings import TelephonySettings

log = logging.getLogger("relay_call")


@dataclass
class Spoken:
    """One reply as Twilio got it: its tokens, and when the first and last came."""

    tokens: list[str] = field(default_factory=list)
    first_token_s: float | None = None
    took_s: float = 0.0

    @property
    def text(self) -> str:
        return "".join(self.tokens)


class RelayClient:
    """Twilio's end of one ConversationRelay call."""

    def __init__(
        self,
        service_url: str,
        call_sid: str,
        *,
        token: str | None = None,
        public_base_url: str | None = None,
        caller: str = "+15550100000",
    ) -> None:
        query = urlencode({"session_id": f"twilio_{call_sid}"})
        self.url = f"{service_url.rstrip('/')}/twilio/relay?{query}"
        self.call_sid = call_sid
        self._caller = caller
        self._headers: dict[str, str] = {}
        if token:
            # Signed for the URL Twilio would call: PUBLIC_BASE_URL's host, as wss.
            base = urlsplit(public_base_url or service_url)
            scheme = "wss" if base.scheme in ("https", "wss") else "ws"
            signed = base._replace(scheme=scheme).geturl().rstrip("/") + "/twilio/relay?" + query
            self._headers["X-Twilio-Signature"] = RequestValidator(token).compute_signature(
                signed, {}
            )
        self._ws: ClientConnection | None = None

    async def __aenter__(self) -> Self:
        self._ws = await websockets.connect(self.url, additional_headers=self._headers)
        await self._send(
            {
                "type": "setup",
                "sessionId": "VX" + uuid.uuid4().hex,
                "callSid": self.call_sid,
                "from": self._caller,
                "to": "+15550199999",
                "direction": "inbound",
                "callStatus": "RINGING",
                "customParameters": {},
            }
        )
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if self._ws is not None:
            await self._ws.close()

    async def _send(self, message: dict[str, Any]) -> None:
        assert self._ws is not None, "use `async with`"
        await self._ws.send(json.dumps(message))

    async def receive(self, timeout: float = 60.0) -> dict[str, Any]:
        assert self._ws is not None, "use `async with`"
        message: dict[str, Any] = json.loads(await asyncio.wait_for(self._ws.recv(), timeout))
        return message

    async def say(
        self, text: str, *, interrupt_after: int | None = None, timeout: float = 60.0
    ) -> tuple[Spoken, dict[str, Any] | None]:
        """Say `text`; the reply up to its `last` token (or the interrupt), and an
        `end` message if the service ended the call after it."""
        began = time.perf_counter()
        await self._send({"type": "prompt", "voicePrompt": text, "lang": "en-US", "last": True})
        spoken = Spoken()
        while True:
            message = await self.receive(timeout)
            if message.get("type") == "end":
                return spoken, message
            if message.get("type") != "text":
                raise RuntimeError(f"unexpected message {message}")
            if spoken.first_token_s is None:
                spoken.first_token_s = time.perf_counter() - began
            spoken.tokens.append(str(message["token"]))
            if message.get("last"):
                break
            if interrupt_after is not None and len(spoken.tokens) >= interrupt_after:
                await self._send(
                    {
                        "type": "interrupt",
                        "utteranceUntilInterrupt": spoken.text,
                        "durationUntilInterruptMs": int((time.perf_counter() - began) * 1000),
                    }
                )
                break
        spoken.took_s = time.perf_counter() - began
        return spoken, None

    async def following(self, timeout: float) -> list[dict[str, Any]]:
        """Messages that come within `timeout` s (a summary, the `end`)."""
        messages: list[dict[str, Any]] = []
        try:
            while True:
                messages.append(await self.receive(timeout))
                if messages[-1].get("type") == "end":
                    return messages
        except (TimeoutError, websockets.ConnectionClosed):
            return messages


async def walk(args: argparse.Namespace) -> None:
    settings = TelephonySettings()
    token = args.token or settings.twilio_auth_token
    url = args.url or f"ws://127.0.0.1:{settings.telephony_port}"
    client = RelayClient(
        url,
        args.call_sid,
        token=token,
        public_base_url=args.public_base_url or settings.public_base_url,
    )
    async with client:
        for n, text in enumerate(args.say, 1):
            sys.stdout.write(f"caller: {text}\ncompanion: ")
            spoken, end = await client.say(text, interrupt_after=args.interrupt_after)
            for token_text in spoken.tokens:
                sys.stdout.write(token_text)
            first = f"{spoken.first_token_s * 1000:.0f} ms" if spoken.first_token_s else "-"
            sys.stdout.write(f"\n  (first words after {first})\n")
            if end is None:
                # After the last thing said, wait for what may end the call (after a
                # goodbye: the summary, then `end` once it is likely heard).
                messages = await client.following(args.linger if n == len(args.say) else 0.5)
            else:
                messages = [end]
            for message in messages:
                if message.get("type") == "text":
                    sys.stdout.write(f"companion: {message['token']}\n")
                elif message.get("type") == "end":
                    sys.stdout.write(f"(the call is ended: {message.get('handoffData')})\n")
                    return


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        description="A ConversationRelay call, from the caller's side."
    )
    parser.add_argument("say", nargs="+", help="what the caller says, one prompt each")
    parser.add_argument(
        "--url", help="telephony's ws:// base (default ws://127.0.0.1:TELEPHONY_PORT)"
    )
    parser.add_argument("--call-sid", default=f"CA{uuid.uuid4().hex}")
    parser.add_argument(
        "--interrupt-after", type=int, metavar="N", help="talk over each reply after N tokens"
    )
    parser.add_argument("--token", help="sign the handshake (default: TWILIO_AUTH_TOKEN)")
    parser.add_argument("--public-base-url", help="the URL Twilio calls (default: PUBLIC_BASE_URL)")
    parser.add_argument(
        "--linger",
        type=float,
        default=25.0,
        help="seconds to wait for the end after the last reply",
    )
    args = parser.parse_args(argv)
    sys.stdout.write(f"call {args.call_sid} (session twilio_{args.call_sid})\n")
    asyncio.run(walk(args))


if __name__ == "__main__":
    main()
