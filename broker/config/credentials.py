"""Each credential kind's keys, read: secrets from files or the environment, the certificate
opened and checked, the token files' paths expanded. Which keys a kind has is its model's
business (`profile_schema.py`); what is required of them is checked here."""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import Any

from pydantic import BaseModel

from broker.config.pem import load_certificate_key
from broker.config.profile_schema import (
    CertificateProfile,
    ClientSecretProfile,
    ProfileCommon,
    RefreshTokenProfile,
)
from broker.config.read import Reader
from broker.config.secret import Secret, UnreadSecret

Path = tuple[str, ...]
_FILES = ("refresh_token_file", "federated_token_file", "static_token_file")


def set_values(model: BaseModel) -> dict[str, Any]:
    """The keys a table set, with their validated values."""
    return {k: getattr(model, k) for k in model.model_fields_set}


def credential_fields(
    r: Reader,
    p: ProfileCommon,
    kind: str,
    path: Path,
    at: Callable[[str], Path],
    failed: set[str],
) -> dict[str, Any]:
    """The settings fields of the profile's credential: `p` is the `Profile` kind `kind`.
    `failed`: keys whose values were refused already (not "required" again)."""
    values = set_values(p)
    v: dict[str, Any] = {}
    if isinstance(p, ClientSecretProfile | RefreshTokenProfile):
        given = bool({"client_secret", "client_secret_file", "client_secret_env"} & failed)
        v["client_secret"], v["secret_source"] = r.secret(
            values,
            path,
            "client_secret",
            required=isinstance(p, ClientSecretProfile) and not given,
        )
    if isinstance(p, CertificateProfile):
        v.update(_certificate(r, p, values, path, at, failed))
    if isinstance(p, RefreshTokenProfile):
        v["keep_alive_days"] = p.keep_alive_days
    for key in _FILES:
        if key not in type(p).model_fields:
            continue
        text = values.get(key)
        if text is None:
            if key not in failed:
                r.problem((*path, key), f"required by credential {kind!r}")
            continue
        file = r.expand(text, at(key))
        if file is None:
            continue
        v[key] = str(file)
        v["secret_source"] = f"file {file}"
        if r.offline:
            continue
        if key == "refresh_token_file" and not os.path.lexists(file):
            # A profile is set up before its user consents: the others serve meanwhile.
            r.warn(
                f"{'.'.join(at(key))}: {file} does not exist yet: the profile's tokens fail "
                f"until `pc-token-broker consent {path[-1]}` writes it"
            )
        elif key == "refresh_token_file" and not (
            file.is_file() and os.access(file, os.R_OK | os.W_OK)
        ):
            r.problem(
                at(key),
                f"{file} must exist and be readable and writable "
                "(the rotated refresh token is written back)",
            )
        elif key != "refresh_token_file" and not file.is_file():
            r.warn(f"{'.'.join(at(key))}: {file} does not exist yet")
    return v


def _certificate(
    r: Reader,
    p: CertificateProfile,
    values: dict[str, Any],
    path: Path,
    at: Callable[[str], Path],
    failed: set[str],
) -> dict[str, Any]:
    v: dict[str, Any] = {"signing_algorithm": p.signing_algorithm}
    password, _ = r.secret(values, path, "certificate_password", required=False)
    if p.certificate_file is None:
        if "certificate_file" not in failed:
            r.problem((*path, "certificate_file"), "required by credential 'certificate'")
        return v
    file = r.expand(p.certificate_file, at("certificate_file"))
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
