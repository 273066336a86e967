"""Print the X-Twilio-Signature Twilio would send with a webhook, to try a telephony
service that checks signatures (TWILIO_AUTH_TOKEN set) with curl:

    .venv/bin/python scripts/twilio_sign.py https://abc.ngrok.app/twilio/voice \\
        CallSid=CA0123 From=+15551234567

The URL is the one Twilio calls (PUBLIC_BASE_URL, the path and the query); the
parameters are the form, exactly as posted. The token is --token, else
TWILIO_AUTH_TOKEN (from the environment or .env).
"""

import argparse
import sys

from starlette.datastructures import FormData, UploadFile
from twilio.request_validator import RequestValidator

from services.telephony.settings import TelephonySettings


def signature(token: str, url: str, params: list[tuple[str, str]]) -> str:
    # A multidict, as the service reads the form: a repeated parameter signs each value.
    pairs: list[tuple[str, str | UploadFile]] = list(params)
    return str(RequestValidator(token).compute_signature(url, FormData(pairs)))


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        description="Print the X-Twilio-Signature of a webhook request."
    )
    parser.add_argument("url", help="the URL Twilio calls: PUBLIC_BASE_URL + path + query")
    parser.add_argument(
        "params", nargs="*", metavar="NAME=VALUE", help="the form parameters, as posted"
    )
    parser.add_argument("--token", help="the Auth Token (default: TWILIO_AUTH_TOKEN)")
    args = parser.parse_args(argv)
    token = args.token or TelephonySettings().twilio_auth_token
    if not token:
        parser.error("no token: pass --token or set TWILIO_AUTH_TOKEN")
    params: list[tuple[str, str]] = []
    for param in args.params:
        name, equals, value = param.partition("=")
        if not equals:
            parser.error(f"{param!r} is not NAME=VALUE")
        params.append((name, value))
    sys.stdout.write(signature(token, args.url, params) + "\n")


if __name__ == "__main__":
    main()
