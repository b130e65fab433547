"""Where new tokens come from: wires each profile's credential and Partner Center exchange into
the cache as two entries, `aad` and `partner`. The partner entry gets its Azure AD token through
the aad entry, so both share its cache and its single flight.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import replace
from typing import Any

from broker.config.settings import ProfileSettings
from broker.core.cache import Entry, Fetch, Policy, TokenCache
from broker.core.cache.shared import SharedCache, shared_key
from broker.core.credentials import Credential, make_credential
from broker.core.errors import UpstreamRefused
from broker.core.resources import CAE_MAX_LIFETIME, CP1_CLAIMS
from broker.core.tokens import Kind, Token
from broker.core.tokens.token import MAX_LIFETIME
from broker.core.upstream import RefreshIds, Upstream

KINDS = tuple(Kind)  # what `?kind=` may name
# How often a static token file is checked for a new token placed by another system.
STATIC_POLL = 10.0


def policy_for(profile: ProfileSettings) -> Policy:
    return Policy(
        refresh_ahead=profile.refresh_ahead,
        min_refresh_margin=profile.min_refresh_margin,
        min_remaining=profile.min_remaining,
        wait_timeout=profile.upstream_timeout,
        warm=profile.warm,
        poll_interval=STATIC_POLL if profile.credential == "static_token_file" else None,
    )


def profile_entries(
    cache: TokenCache,
    profile: ProfileSettings,
    upstream: Upstream,
    log: Any,
    credential: Credential | None = None,
    shared: SharedCache | None = None,
) -> list[Entry]:
    """The profile's two entries, built but not yet in the cache (see `TokenCache.install`).
    With a shared cache both fetches go through it (see `shared_keys`)."""
    credential = credential or make_credential(profile, log, shared)
    policy = policy_for(profile)
    keys = None
    if shared is not None and shared.enabled:
        keys = shared_keys(profile, shared.credential_of(credential))

    def share(fetch: Fetch, kind: str) -> Fetch:
        if shared is None or keys is None:
            return fetch
        return shared.wrap(fetch, keys[kind], policy)

    async def fetch_aad(ids: RefreshIds) -> Token:
        try:
            return await credential.acquire(upstream, ids)
        except UpstreamRefused as e:
            if e.endpoint == "aad":  # the credential itself was refused: it will not heal
                upstream.credential_refused(profile.name, profile.credential)
            raise

    aad = cache.make_entry(profile.name, Kind.AAD, share(fetch_aad, Kind.AAD), policy)

    async def fetch_partner(ids: RefreshIds) -> Token:
        aad_token, _ = await aad.get()
        try:
            return await upstream.generate_token(
                profile.generatetoken_url,
                aad_token.value,
                timeout=profile.upstream_timeout,
                ids=ids,
            )
        except UpstreamRefused as e:
            if e.upstream_status == 401:  # Partner Center no longer takes this AAD token
                aad.invalidate(aad_token)
            raise

    partner = cache.make_entry(
        profile.name, Kind.PARTNER, share(fetch_partner, Kind.PARTNER), policy
    )
    return [aad, partner]


def shared_keys(profile: ProfileSettings, credential: str) -> dict[str, tuple[str, ...]] | None:
    """What a profile's tokens are shared under (see `shared_key`): its Azure AD token and
    the Partner Center token it is exchanged for, named with the profile and its credential
    id. A static token file is local and never shared."""
    if profile.credential == "static_token_file":
        return None
    return {
        kind: shared_key(profile, kind, credential=credential) for kind in (Kind.AAD, Kind.PARTNER)
    }


def scoped_entries(
    cache: TokenCache,
    profile: ProfileSettings,
    upstream: Upstream,
    credential: Credential,
) -> Callable[[str, bool], Entry]:
    """How a profile makes the entry of one more scope of its own tenant (`scopes`), or of a
    CAE token (`cae`: it asked Azure AD for client capability cp1). Made when first asked,
    never warm, never in the fleet's cache: each is fetched with the profile's own grant."""
    policy = replace(policy_for(profile), warm=False)

    def make(scope: str, cae: bool) -> Entry:
        async def fetch(ids: RefreshIds) -> Token:
            return await fetch_own_scope(profile, credential, upstream, scope, cae, ids)

        return cache.make_entry(profile.name, Kind.AAD, fetch, policy)

    return make


async def fetch_own_scope(
    profile: ProfileSettings,
    credential: Credential,
    upstream: Upstream,
    scope: str,
    cae: bool,
    ids: RefreshIds,
) -> Token:
    """THE place a token of the profile's own tenant for another scope, or a CAE token, is
    fetched: the profile's grant for `scope`, with `claims` asking for cp1 when `cae` (then a
    lifetime up to 28 h is accepted)."""
    await credential.before(upstream)
    form = credential.form(upstream, profile.token_url, scope)
    if cae:
        form["claims"] = CP1_CLAIMS
    token, body = await upstream.azure_ad_token(
        profile.token_url,
        form,
        timeout=profile.upstream_timeout,
        ids=ids,
        max_lifetime=CAE_MAX_LIFETIME if cae else MAX_LIFETIME,
    )
    await credential.answered(upstream, body, ids, coalesce=True)
    return token
