"""The upstream side: the Azure AD and Partner Center client (`client.py`), what travels to and
from it (`wire.py`) and the forward proxy it goes through (`proxies.py`).

Both upstreams ride on one shared aiohttp ClientSession (passed in). Redirects are never
followed: a bearer or a client secret must not travel to wherever a 302 points.
"""

from broker.core.upstream.client import Upstream
from broker.core.upstream.proxies import Proxies
from broker.core.upstream.wire import MAX_BODY, Answer, RefreshIds, retry_after_seconds

__all__ = ["MAX_BODY", "Answer", "Proxies", "RefreshIds", "Upstream", "retry_after_seconds"]
