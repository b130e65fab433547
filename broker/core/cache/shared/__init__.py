"""The fleet's shared cache: tokens in Redis, encrypted, with a renewed lease so that one broker
of the fleet fetches while the others wait. `[shared]` absent: `SharedCache.wrap()` is the
identity.

- `cache.py`: `SharedCache`, the wrapped fetch (Redis first, then the lease, then upstream).
- `link.py`: `RedisLink`, the client and THE one place that decides Redis is `Unavailable`
  (any exception out of the client, or no answer within `timeout`); degraded and reconnecting.
- `lease.py`: `Lease`, redis-py's asyncio `Lock` (SET NX PX, compare-and-extend,
  compare-and-delete), renewed while the fetch runs, released however it ends.
- `store.py`: `TokenStore`, sealed tokens with a TTL of their remaining life, and rotated
  refresh tokens by version (newest wins).
- `sealer.py`: the published format: `shared_key` (what a token is shared under, computed
  there only), key names (HMAC) and values (AES-256-GCM, the key name as associated data).
"""

from __future__ import annotations

from broker.core.cache.shared.cache import (
    LEASE_WAIT_SHARE,
    POLL_FIRST,
    POLL_MAX,
    SHARED_BUDGET_SHARE,
    SharedCache,
    SharedStatus,
)
from broker.core.cache.shared.lease import Lease
from broker.core.cache.shared.link import (
    KeyFault,
    NotRedis,
    RedisLink,
    Unavailable,
    describe,
    ping,
    where,
)
from broker.core.cache.shared.sealer import FORMAT, NONCE_BYTES, Sealer, shared_key
from broker.core.cache.shared.store import TokenStore

__all__ = [
    "FORMAT",
    "LEASE_WAIT_SHARE",
    "NONCE_BYTES",
    "POLL_FIRST",
    "POLL_MAX",
    "SHARED_BUDGET_SHARE",
    "KeyFault",
    "Lease",
    "NotRedis",
    "RedisLink",
    "Sealer",
    "SharedCache",
    "SharedStatus",
    "TokenStore",
    "Unavailable",
    "describe",
    "ping",
    "shared_key",
    "where",
]
