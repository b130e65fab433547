"""The token cache: the only mutable token state in the broker.

One `Entry` per (profile, kind). Everything runs on the event loop, so no locks: what would be
guarded by a mutex is guarded by "only the loop touches it", and upstream calls are guarded by
the single in-flight task (`Entry.flight`): every caller who needs a token while one is being
fetched awaits that same task, shielded, so a caller that goes away never cancels it.

Timeline of an entry:
    cold → flight → token (FRESH) → timer at refresh_at → flight → new token ...
                  ↘ failure: remembered until retry_at (backoff); callers get the error at once
"""

from broker.core.cache.entry import Entry
from broker.core.cache.policy import IDLE_AFTER, EntryState, EntryStatus, Fetch, Policy
from broker.core.cache.table import TokenCache

__all__ = ["IDLE_AFTER", "Entry", "EntryState", "EntryStatus", "Fetch", "Policy", "TokenCache"]
