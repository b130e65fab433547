"""[defaults] and [profiles.NAME] → `ProfileSettings`.

Each table's keys were checked one by one against `ProfileKeys` (`load.py`). Here a profile is
[defaults] merged with its own table (explicit keys win over a cloud's; a profile's cloud over
what [defaults] set), validated as its credential's kind, and read: secrets, files, user and
group names, and the checks across keys. A key is reported where it is written: in the profile,
else in [defaults].
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, get_args

from pydantic import TypeAdapter, ValidationError

from broker.config.clouds import cloud_keys
from broker.config.credentials import credential_fields, set_values
from broker.config.problems import Path, key_path, message
from broker.config.profile_schema import (
    ALL_CREDENTIAL_KEYS,
    CREDENTIAL_KEYS,
    CREDENTIAL_MODELS,
    Profile,
    ProfileCommon,
    ProfileKeys,
)
from broker.config.read import Reader
from broker.config.settings import ProfileSettings

TYPICAL_LIFETIME = 3600.0  # s: Azure AD's shortest usual token life, and Partner Center's
_PROFILE: TypeAdapter[ProfileCommon] = TypeAdapter(Profile)
_KIND = {
    get_args(kind.model_fields["credential"].annotation)[0]: kind for kind in CREDENTIAL_MODELS
}
_DEFAULT_CREDENTIAL = str(ProfileKeys.model_fields["credential"].default)


def read_profiles(r: Reader, data: dict[str, Any], failed: set[Path]) -> dict[str, ProfileSettings]:
    """Every profile that reads without a problem, by name (the problems go to `r`)."""
    raw_defaults = data.get("defaults")
    raw_defaults = raw_defaults if isinstance(raw_defaults, dict) else {}
    raw_profiles = data.get("profiles")
    profiles: dict[str, ProfileSettings] = {}
    for name, raw in (raw_profiles if isinstance(raw_profiles, dict) else {}).items():
        if not isinstance(raw, dict):
            continue  # "must be a table", said already
        path = ("profiles", name)
        merged = {
            **cloud_keys(raw_defaults.get("cloud")),
            **raw_defaults,
            **cloud_keys(raw.get("cloud")),
            **raw,
        }
        # A key whose written value failed is left out (and not taken from [defaults] either).
        bad = {k for k in merged if ((*path, k) if k in raw else ("defaults", k)) in failed}
        valid = {k: v for k, v in merged.items() if k not in bad}
        profile = _profile(r, name, valid, set(raw), bad)
        if profile is not None:
            profiles[name] = profile
    _shared_client_ids(r, profiles)
    return profiles


def _validate(r: Reader, merged: dict[str, Any], own: set[str], path: Path) -> ProfileCommon | None:
    """The merged profile as its credential's kind: a profile's own keys of another credential
    are problems; inherited ones ([defaults] serves every kind) are left out."""
    kind = str(merged.get("credential", _DEFAULT_CREDENTIAL))
    others = ALL_CREDENTIAL_KEYS - CREDENTIAL_KEYS[kind]
    mine = {k: v for k, v in merged.items() if k in own or k not in others}
    try:
        return _PROFILE.validate_python({**mine, "credential": kind})
    except ValidationError as e:
        refused = set()
        for item in e.errors():
            loc = item["loc"][1:]  # after the union's tag
            text = message(
                {**item, "loc": loc}, _KIND[kind], lambda _: f"not used by credential {kind!r}"
            )
            if text is not None:
                r.problem((*path, *key_path(loc)), text)
            refused.add(key_path(loc)[0])
    try:
        return _PROFILE.validate_python(
            {**{k: v for k, v in mine.items() if k not in refused}, "credential": kind}
        )
    except ValidationError:
        return None


def _profile(
    r: Reader,
    name: str,
    merged: dict[str, Any],
    own: set[str],
    failed: set[str],
) -> ProfileSettings | None:
    """`merged`: the keys that passed; `failed`: those that did not (said already)."""
    before = len(r.problems)
    written = set(merged) | failed
    credential_failed = "credential" in failed
    path = ("profiles", name)

    def at(key: str) -> Path:
        # Report a key where it was written: in the profile, else in [defaults].
        return (*path, key) if key in own else ("defaults", key)

    kind = str(merged.get("credential", _DEFAULT_CREDENTIAL))
    p: ProfileCommon | None
    if credential_failed:  # said already; the rest is still checked, as no credential's
        p = ProfileKeys.model_validate({k: v for k, v in merged.items() if k != "credential"})
    else:
        p = _validate(r, merged, own, path)
    if p is None:
        return None
    v: dict[str, Any] = {}
    # A static token needs no app registration of ours: tenant and client are informational.
    for key in ("tenant_id", "client_id"):
        v[key] = getattr(p, key) or ""
        if key not in written and (credential_failed or kind != "static_token_file"):
            r.problem((*path, key), "required")
    for key in ("generatetoken_url", "authority"):
        r.url(getattr(p, key), at(key), allow_insecure=p.allow_insecure_upstream)
    if p.min_remaining > TYPICAL_LIFETIME / 2:
        r.warn(
            f"{'.'.join(at('min_remaining'))}: {p.min_remaining:g} s leaves less than half "
            f"of a typical token servable (Azure AD and Partner Center tokens live about "
            f"{TYPICAL_LIFETIME:g} s); a token that lives less than min_remaining can never be "
            "served and counts as a failure"
        )
    if not credential_failed:
        v.update(credential_fields(r, p, kind, path, at, failed))
    if p.allowed_uids is not None:
        v["allowed_uids"] = tuple(r.ids(p.allowed_uids, at("allowed_uids"), "user"))
    if p.allowed_gids is not None:
        v["allowed_gids"] = tuple(r.ids(p.allowed_gids, at("allowed_gids"), "group"))
    v["access_key"], _ = r.secret(set_values(p), path, "access_key", required=False)
    v.update(_customers(r, p, kind, written, path, at))
    if p.scopes is not None:
        if kind == "static_token_file":
            r.problem(
                at("scopes"),
                "a static token file holds one token for one resource: more scopes need a "
                "credential that can ask Azure AD (client_secret, certificate, refresh_token, "
                "federated_token_file)",
            )
        v["scopes"] = tuple(p.scopes)
    if len(r.problems) > before:
        return None
    return ProfileSettings(
        name=name,
        credential=kind,
        generatetoken_url=p.generatetoken_url,
        authority=p.authority,
        scope=p.scope,
        cloud=p.cloud,
        refresh_ahead=p.refresh_ahead,
        min_refresh_margin=p.min_refresh_margin,
        min_remaining=p.min_remaining,
        upstream_timeout=p.upstream_timeout,
        warm=p.warm,
        allow_insecure_upstream=p.allow_insecure_upstream,
        object_id=p.object_id or "",
        resource_id=p.resource_id or "",
        max_customer_tokens=p.max_customer_tokens,
        upstream_concurrency=p.upstream_concurrency,
        customer_fetch_rate=p.customer_fetch_rate,
        customer_fetch_burst=p.customer_fetch_burst,
        **v,
    )


def _customers(
    r: Reader,
    p: ProfileCommon,
    kind: str,
    written: set[str],
    path: Path,
    at: Callable[[str], Path],
) -> dict[str, Any]:
    """customer_tenants and customer_scopes: on together, and not for a static token."""
    if "customer_tenants" not in written:
        if "customer_scopes" in written:
            r.problem(at("customer_scopes"), "needs customer_tenants (the feature is off)")
        return {}
    if "customer_scopes" not in written:
        r.problem((*path, "customer_scopes"), "required with customer_tenants")
    if kind == "static_token_file":
        r.problem(
            at("customer_tenants"),
            "a static token file cannot be used for customer tenants: "
            "use refresh_token, client_secret, certificate or federated_token_file",
        )
    return {
        "customer_tenants": tuple(t.lower() for t in p.customer_tenants or ()),
        "customer_scopes": tuple(p.customer_scopes or ()),
    }


def _shared_client_ids(r: Reader, profiles: dict[str, ProfileSettings]) -> None:
    """Two profiles with one client_id are legal (one app, two tenants or scopes), but an Azure
    SDK that names the identity by client_id cannot tell them apart: say so."""
    by_id: dict[str, list[str]] = {}
    for name, p in profiles.items():
        if p.client_id:
            by_id.setdefault(p.client_id.lower(), []).append(name)
    for client_id, names in by_id.items():
        if len(names) > 1:
            r.warn(
                f"profiles {', '.join(names)} share client_id {client_id}: /msi callers that "
                "select by client_id get a 400; give each an object_id or resource_id to "
                "select by"
            )
