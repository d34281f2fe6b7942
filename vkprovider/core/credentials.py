"""Per-base heartbeat credentials: a token derived from the base identity with a cluster secret.

A shared token lets any holder speak for every base. A per-base token does not: ``base_token(secret, identity)``
is an HMAC-SHA256 of the identity under the operator's secret, so the token of one base says nothing about
another's, vkprovider needs no table of tokens (it derives the expected one from the identity in the heartbeat),
and ``vkprovider token <identity>`` prints the token to give a base. Pure (hmac/hashlib only).
"""

from __future__ import annotations

import base64
import hashlib
import hmac

TOKEN_PREFIX = "vkb1."
_CONTEXT = b"vkprovider base heartbeat token v1\x00"


def base_token(secret: bytes, identity: str) -> str:
    """The token base ``identity`` sends as ``Authorization: Bearer <token>``."""
    mac = hmac.new(secret, _CONTEXT + identity.encode("utf-8"), hashlib.sha256).digest()
    return TOKEN_PREFIX + base64.urlsafe_b64encode(mac).rstrip(b"=").decode("ascii")


def token_matches(secret: bytes, identity: str, presented: str) -> bool:
    """Constant-time check of a presented token against the one ``identity`` should have."""
    return hmac.compare_digest(base_token(secret, identity).encode(), presented.encode("utf-8", "replace"))
