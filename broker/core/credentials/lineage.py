"""The lineage of a profile's refresh token: what names it in the fleet's shared keys.

Azure AD rotates a refresh token with every answer, so no one token names the credential for
long. Its lineage does: named after the first token the profile loaded (an HMAC under the
fleet's key, never the token), and recorded beside the token file (`<file>.lineage`, mode
0600) with the fingerprint of the token the file holds. Every write-back of a rotated token
records the new fingerprint, so the lineage survives rotations and restarts; a file that holds
a token we never recorded (an operator placed a new user's refresh token) starts a new lineage.
Brokers of a fleet given the same refresh token name the same lineage and share; another
user's refresh token never does.
"""

from __future__ import annotations

import json
import secrets
from collections.abc import Callable
from typing import Any

from broker.config.files import read_text, write_private

LINEAGE_SUFFIX = ".lineage"


def load_lineage(token_path: str, fingerprint: Callable[[str], str], log: Any) -> str:
    """The lineage of the refresh token in `token_path` (see the module's docstring). An
    unreadable token file gets a lineage of its own, shared with no one."""
    try:
        token = read_text(token_path)
    except (OSError, ValueError):
        return "unknown " + secrets.token_hex(16)
    held = fingerprint(token)
    try:
        record = json.loads(read_text(token_path + LINEAGE_SUFFIX))
        if isinstance(record, dict) and record.get("token") == held:
            lineage = record.get("lineage")
            if isinstance(lineage, str) and lineage:
                return lineage
    except (OSError, ValueError):
        pass  # none yet, or unreadable: a new lineage, named after the file's token
    record_lineage(token_path, held, held, log)
    return held


def record_lineage(token_path: str, lineage: str, held: str, log: Any) -> None:
    """Record that the token file holds the token fingerprinted `held`, of `lineage`. Not
    recorded (logged): the next start names a new lineage and shares nothing stale."""
    text = json.dumps({"lineage": lineage, "token": held}) + "\n"
    try:
        write_private(token_path + LINEAGE_SUFFIX, text)
    except OSError as e:
        log.warning(
            "refresh_token_lineage_not_recorded",
            file=token_path + LINEAGE_SUFFIX,
            error=e.strerror,
            note="the next start shares this profile's refresh token under a new name",
        )
