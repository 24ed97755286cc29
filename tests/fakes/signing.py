"""Build the headers Slack puts on HTTP requests it sends to an app (slash commands, interactivity)."""

from __future__ import annotations

import time

from slack_sdk.signature import SignatureVerifier


def sign_slack_request(
    body: str | bytes, signing_secret: str, timestamp: int | None = None
) -> dict[str, str]:
    """Headers for ``body`` signed the way Slack signs: v0=HMAC_SHA256(secret, f"v0:{ts}:{body}").

    ``timestamp`` defaults to now; pass an old one to exercise replay protection (Slack apps must
    reject requests more than five minutes old).
    """
    ts = str(int(time.time()) if timestamp is None else timestamp)
    # Reuse slack_sdk's implementation so the fake cannot drift from what Bolt verifies.
    signature = SignatureVerifier(signing_secret).generate_signature(timestamp=ts, body=body)
    if signature is None:  # only happens for a None timestamp, which cannot occur here
        raise RuntimeError("slack_sdk returned no signature")
    return {
        "X-Slack-Request-Timestamp": ts,
        "X-Slack-Signature": signature,
        "Content-Type": "application/x-www-form-urlencoded",
    }
