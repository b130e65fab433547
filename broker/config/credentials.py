"""Validation of each credential kind's keys: what it needs, what it refuses."""

from __future__ import annotations

import os
from typing import Any

from broker.config.pem import load_certificate_key
from broker.config.read import Reader
from broker.config.secret import Secret, UnreadSecret

CREDENTIALS = (
    "client_secret",
    "certificate",
    "refresh_token",
    "federated_token_file",
    "static_token_file",
)

_SECRET_KEYS = frozenset({"client_secret", "client_secret_file", "client_secret_env"})
# The keys each credential uses; set in a profile for another credential, they are errors.
CREDENTIAL_KEYS: dict[str, frozenset[str]] = {
    "client_secret": _SECRET_KEYS,
    "certificate": frozenset(
        {
            "certificate_file",
            "certificate_password_file",
            "certificate_password_env",
            "signing_algorithm",
        }
    ),
    "refresh_token": frozenset({"refresh_token_file", *_SECRET_KEYS}),
    "federated_token_file": frozenset({"federated_token_file"}),
    "static_token_file": frozenset({"static_token_file"}),
}
ALL_CREDENTIAL_KEYS = frozenset().union(*CREDENTIAL_KEYS.values())


def credential_fields(
    r: Reader,
    credential: str,
    merged: dict[str, Any],
    own: dict[str, Any],
    path: tuple[str, ...],
    at: Any,
) -> dict[str, Any]:
    """The fields of one credential kind; its keys checked, other kinds' keys refused."""
    used = CREDENTIAL_KEYS[credential]
    for key in sorted(set(own) & (ALL_CREDENTIAL_KEYS - used)):
        r.problem((*path, key), f"not used by credential {credential!r}")
    # Inherited [defaults] keys that belong to another credential are simply not used.
    mine = {k: v for k, v in merged.items() if k in used}
    v: dict[str, Any] = {}
    if credential in ("client_secret", "refresh_token"):
        v["client_secret"], v["secret_source"] = r.secret(
            mine, path, "client_secret", required=credential == "client_secret"
        )
    if credential == "certificate":
        v.update(_certificate(r, mine, path, at))
    for key in ("refresh_token_file", "federated_token_file", "static_token_file"):
        if key not in used:
            continue
        if key not in mine:
            r.problem((*path, key), f"required by credential {credential!r}")
            continue
        text = r.string(mine[key], at(key))
        file = r.expand(text, at(key)) if text else None
        if file is None:
            continue
        v[key] = str(file)
        v["secret_source"] = f"file {file}"
        if r.offline:
            continue
        if key == "refresh_token_file" and not (
            file.is_file() and os.access(file, os.R_OK | os.W_OK)
        ):
            r.problem(
                at(key),
                f"{file} must exist and be readable and writable "
                "(the rotated refresh token is written back)",
            )
        elif key != "refresh_token_file" and not file.is_file():
            r.warnings.append(f"{'.'.join(at(key))}: {file} does not exist yet")
    return v


def _certificate(r: Reader, mine: dict[str, Any], path: tuple[str, ...], at: Any) -> dict[str, Any]:
    v: dict[str, Any] = {}
    v["signing_algorithm"] = (
        r.string(
            mine.get("signing_algorithm", "RS256"),
            at("signing_algorithm"),
            choices=("RS256", "PS256"),
        )
        or "RS256"
    )
    password, _ = r.secret(mine, path, "certificate_password", required=False)
    if "certificate_file" not in mine:
        r.problem((*path, "certificate_file"), "required by credential 'certificate'")
        return v
    text = r.string(mine["certificate_file"], at("certificate_file"))
    file = r.expand(text, at("certificate_file")) if text else None
    if file is None:
        return v
    if r.offline:
        v.update(certificate_pem=UnreadSecret(), secret_source=f"file {file}")
        return v
    try:
        pem = file.read_bytes()
        load_certificate_key(pem, password.reveal().encode() if password else None)
    except OSError as e:
        r.problem(at("certificate_file"), f"cannot read {file}: {e.strerror}")
        return v
    except ValueError as e:
        r.problem(at("certificate_file"), f"{file}: {e}")
        return v
    r.private_file(file, at("certificate_file"))
    v.update(
        certificate_pem=Secret(pem.decode("ascii", "replace")),
        certificate_password=password,
        secret_source=f"file {file}",
    )
    return v
