"""`make mutation`: mutmut over the core modules, one module at a time, then a score per module.

    python tools/mutation.py run [--jobs N] [--keep] [MODULE ...]   # fresh run (or resume: --keep)
    python tools/mutation.py again [--jobs N]                        # re-test only the survivors
    python tools/mutation.py report                                  # the table from mutants/

The modules are `[tool.mutmut] only_mutate` in pyproject.toml. mutmut traces
the whole suite once to learn which tests call which function, then runs, for each mutant, only
those tests (stopping at the first failure). Results stay in mutants/ (git-ignored); `report`
reads them. A module passes at 90 % killed, not counting the equivalent mutants listed below
(mutants that change no behaviour any test could see; each with its reason). `report` exits 1
when a module is under 90 % or a mutant was never run.
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import time
import tomllib
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
MUTANTS = ROOT / "mutants"
THRESHOLD = 90.0

# mutmut's exit codes per mutant (mutmut/stats.py): what counts as caught.
KILLED = {1, 3, 24, -24, 36, 152, 255, 37}  # a test failed, timed out or the type check caught it
NOT_RUN = {None}
NO_TESTS = {5, 33}  # no test in the run's selection calls the function

# Equivalent mutants: no test can tell them from the original because no behaviour differs.
# Each is named by what it changes, not by mutmut's number (which any edit above it renumbers):
# the function (its qualified name in the module: `retry_delay`, `TenantCache._check`), the
# source line(s) the mutant changes and what mutmut makes of them, and, where the same change
# can be made at two places in one function, which of them (`nth`, in source order). An entry
# follows its function when the code moves between modules; `report` names an entry that
# matches no surviving mutant any more (the code moved on: check the reason, then fix or drop).


@dataclass(frozen=True)
class Equivalent:
    function: str
    before: str
    after: str
    reason: str
    nth: int = 1

    @property
    def key(self) -> tuple[str, str, str, int]:
        return (self.function, self.before, self.after, self.nth)


EQUIVALENT: list[Equivalent] = [
    # -- broker/core/cache/ ------------------------------------------------------------------------
    Equivalent(
        "Entry.__init__",
        "self.token_correlation_id: str | None = None  # of the refresh that produced `token`",
        'self.token_correlation_id: str | None = ""  # of the refresh that produced `token`',
        (
            "token_correlation_id '' for None before the first token: audit lines write "
            "`correlation_id or ''`, and it is set with the first token"
        ),
    ),
    Equivalent(
        "Entry.__init__",
        "self.retry_at = 0.0  # monotonic: no caller-driven attempt before this after a failure",
        "self.retry_at = None  # monotonic: no caller-driven attempt before this after a failure",
        ("retry_at None for 0.0: read only once last_error is set, outcomes.failed sets both"),
    ),
    Equivalent(
        "Entry.__init__",
        "self.retry_at = 0.0  # monotonic: no caller-driven attempt before this after a failure",
        "self.retry_at = 1.0  # monotonic: no caller-driven attempt before this after a failure",
        ("retry_at 1.0 for 0.0: read only once last_error is set, outcomes.failed sets both"),
    ),
    Equivalent(
        "Entry.__init__",
        "self.next_at: float | None = None  # monotonic: when the timer fires next",
        'self.next_at: float | None = ""  # monotonic: when the timer fires next',
        ("next_at '' for None: only ever read for its truth (status, token_refreshed's `or`)"),
    ),
    Equivalent(
        "Entry.__init__",
        "self._closed = False",
        "self._closed = None",
        ("_closed None for False: only ever read for its truth"),
    ),
    # -- broker/core/guards.py -------------------------------------------------------------------
    Equivalent(
        "strip_port",
        'if end < 0 or (rest and not (rest[0] == ":" and _is_port(rest[1:]))):',
        'if end <= 0 or (rest and not (rest[0] == ":" and _is_port(rest[1:]))):',
        (
            "`end < 0` -> `end <= 0`: only '[]' differs ('' for '[]'): an empty bracket names "
            "no host, allowed by no configuration that means one"
        ),
    ),
    Equivalent(
        "strip_port",
        'if end < 0 or (rest and not (rest[0] == ":" and _is_port(rest[1:]))):',
        'if end < 1 or (rest and not (rest[0] == ":" and _is_port(rest[1:]))):',
        (
            "`end < 0` -> `end < 1`: only '[]' differs ('' for '[]'): an empty bracket names "
            "no host, allowed by no configuration that means one"
        ),
    ),
    Equivalent(
        "target_host",
        'authority = target.split("://", 1)[1].split("/", 1)[0].split("?", 1)[0]',
        'authority = target.split("://", 1)[1].split("/", 1)[0].split("?", )[0]',
        ("split('?') without maxsplit: element [0] is the same"),
    ),
    Equivalent(
        "target_host",
        'authority = target.split("://", 1)[1].split("/", 1)[0].split("?", 1)[0]',
        'authority = target.split("://", 1)[1].split("/", )[0].split("?", 1)[0]',
        ("split('/') without maxsplit: element [0] is the same"),
    ),
    Equivalent(
        "target_host",
        'authority = target.split("://", 1)[1].split("/", 1)[0].split("?", 1)[0]',
        'authority = target.split("://", 1)[1].split("/", 2)[0].split("?", 1)[0]',
        ("split('/', 2) for split('/', 1): element [0] is the same"),
    ),
    Equivalent(
        "target_host",
        'authority = target.split("://", 1)[1].split("/", 1)[0].split("?", 1)[0]',
        'authority = target.split("://", 1)[1].split("/", 1)[0].split("?", 2)[0]',
        ("split('?', 2) for split('?', 1): element [0] is the same"),
    ),
    Equivalent(
        "OriginGuard.origin",
        "",
        "",
        (
            "default target '/' -> 'XX/XX': both name the Host header (no '://'), and every "
            "caller passes the request's raw path"
        ),
    ),
    Equivalent(
        "OriginGuard.v1",
        "",
        "",
        (
            "default target '/' -> 'XX/XX': both name the Host header (no '://'), and every "
            "caller passes the request's raw path"
        ),
    ),
    Equivalent(
        "OriginGuard.origin",
        "allowed = self._hosts.get(host)",
        "allowed = None",
        (
            "memo lookup dropped: the Host memo is only a shortcut: with nothing usable "
            "remembered the answer is worked out again from allowed_hosts, the same"
        ),
    ),
    Equivalent(
        "OriginGuard.origin",
        "allowed = self._hosts.get(host)",
        "allowed = self._hosts.get(None)",
        (
            "memo looked up under None: the Host memo is only a shortcut: with nothing usable "
            "remembered the answer is worked out again from allowed_hosts, the same"
        ),
    ),
    Equivalent(
        "OriginGuard.origin",
        "self._hosts[host] = allowed",
        "self._hosts[host] = None",
        (
            "memo stores None: the Host memo is only a shortcut: with nothing usable "
            "remembered the answer is worked out again from allowed_hosts, the same"
        ),
    ),
    Equivalent(
        "OriginGuard.v1",
        "return self.origin(headers, target)",
        "return self.origin(headers, None)",
        (
            "proxy branch calls origin(headers, None): origin() answers from its proxy-header "
            "loop (the same three headers) before it reads the target"
        ),
    ),
    Equivalent(
        "OriginGuard.v1",
        "return self.origin(headers, target)",
        "return self.origin(headers, )",
        (
            "proxy branch calls origin(headers) (target '/'): origin() answers from its "
            "proxy-header loop before it reads the target"
        ),
    ),
    Equivalent(
        "OriginGuard.v1",
        'allowed = self._hosts.get(headers.get("Host", "")) if target[:1] == "/" else None',
        "allowed = None",
        (
            "v1's fast path skipped (the Host memo not looked up, or looked up under a key "
            "that holds nothing): origin() then works out the same answer"
        ),
    ),
    Equivalent(
        "OriginGuard.v1",
        'allowed = self._hosts.get(headers.get("Host", "")) if target[:1] == "/" else None',
        (
            'allowed = self._hosts.get(headers.get("Host", "")) if (target[:1] == "/") '
            "and False else None"
        ),
        (
            "v1's fast path skipped (the Host memo not looked up, or looked up under a key "
            "that holds nothing): origin() then works out the same answer"
        ),
    ),
    Equivalent(
        "OriginGuard.v1",
        'allowed = self._hosts.get(headers.get("Host", "")) if target[:1] == "/" else None',
        'allowed = self._hosts.get(None) if target[:1] == "/" else None',
        (
            "v1's fast path skipped (the Host memo not looked up, or looked up under a key "
            "that holds nothing): origin() then works out the same answer"
        ),
    ),
    Equivalent(
        "OriginGuard.v1",
        'allowed = self._hosts.get(headers.get("Host", "")) if target[:1] == "/" else None',
        'allowed = self._hosts.get(headers.get("Host", None)) if target[:1] == "/" else None',
        (
            "v1's fast path skipped (the Host memo not looked up, or looked up under a key "
            "that holds nothing): origin() then works out the same answer"
        ),
    ),
    Equivalent(
        "OriginGuard.v1",
        'allowed = self._hosts.get(headers.get("Host", "")) if target[:1] == "/" else None',
        'allowed = self._hosts.get(headers.get("")) if target[:1] == "/" else None',
        (
            "v1's fast path skipped (the Host memo not looked up, or looked up under a key "
            "that holds nothing): origin() then works out the same answer"
        ),
    ),
    Equivalent(
        "OriginGuard.v1",
        'allowed = self._hosts.get(headers.get("Host", "")) if target[:1] == "/" else None',
        'allowed = self._hosts.get(headers.get("Host", )) if target[:1] == "/" else None',
        (
            "v1's fast path skipped (the Host memo not looked up, or looked up under a key "
            "that holds nothing): origin() then works out the same answer"
        ),
    ),
    Equivalent(
        "OriginGuard.v1",
        'allowed = self._hosts.get(headers.get("Host", "")) if target[:1] == "/" else None',
        'allowed = self._hosts.get(headers.get("Host", "")) if target[:2] == "/" else None',
        (
            "v1's fast path skipped (the Host memo not looked up, or looked up under a key "
            "that holds nothing): origin() then works out the same answer"
        ),
    ),
    Equivalent(
        "OriginGuard.v1",
        'allowed = self._hosts.get(headers.get("Host", "")) if target[:1] == "/" else None',
        ('allowed = self._hosts.get(headers.get("Host", "")) if target[:1] == "XX/XX" else None'),
        (
            "v1's fast path skipped (the Host memo not looked up, or looked up under a key "
            "that holds nothing): origin() then works out the same answer"
        ),
    ),
    Equivalent(
        "OriginGuard.v1",
        "if allowed is None or not allowed:",
        "if allowed is not None or not allowed:",
        (
            "`allowed is None` -> `is not None`: every request takes the slow path through "
            "origin(), which gives the same answer"
        ),
    ),
    # -- broker/core/upstream/pcformat.py ----------------------------------------------------------
    Equivalent(
        "_xml_grant",
        'if element.tag.rsplit("}", 1)[-1] == "grant_type":',
        'if element.tag.rsplit("}", )[-1] == "grant_type":',
        (
            "rsplit('}') without maxsplit: a tag holds at most one '}' (`{uri}local`: expat "
            "refuses a '}' in a namespace URI, and '}' is no name character), so the last "
            "part is the same"
        ),
    ),
    Equivalent(
        "_xml_grant",
        'if element.tag.rsplit("}", 1)[-1] == "grant_type":',
        'if element.tag.split("}", 1)[-1] == "grant_type":',
        (
            "split for rsplit: a tag holds at most one '}' (`{uri}local`: expat refuses a '}' "
            "in a namespace URI, and '}' is no name character), so the last part is the same"
        ),
    ),
    Equivalent(
        "_xml_grant",
        'if element.tag.rsplit("}", 1)[-1] == "grant_type":',
        'if element.tag.rsplit("}", 2)[-1] == "grant_type":',
        (
            "maxsplit 1 -> 2: a tag holds at most one '}' (`{uri}local`: expat refuses a '}' "
            "in a namespace URI, and '}' is no name character), so the last part is the same"
        ),
    ),
    Equivalent(
        "parse_token_answer",
        'name = element.tag.rsplit("}", 1)[-1]',
        'name = element.tag.rsplit("}", )[-1]',
        (
            "rsplit('}') without maxsplit: a tag holds at most one '}' (`{uri}local`: expat "
            "refuses a '}' in a namespace URI, and '}' is no name character), so the last "
            "part is the same"
        ),
    ),
    Equivalent(
        "parse_token_answer",
        'name = element.tag.rsplit("}", 1)[-1]',
        'name = element.tag.split("}", 1)[-1]',
        (
            "split for rsplit: a tag holds at most one '}' (`{uri}local`: expat refuses a '}' "
            "in a namespace URI, and '}' is no name character), so the last part is the same"
        ),
    ),
    Equivalent(
        "parse_token_answer",
        'name = element.tag.rsplit("}", 1)[-1]',
        'name = element.tag.rsplit("}", 2)[-1]',
        (
            "maxsplit 1 -> 2: a tag holds at most one '}' (`{uri}local`: expat refuses a '}' "
            "in a namespace URI, and '}' is no name character), so the last part is the same"
        ),
    ),
    Equivalent(
        "grant_type",
        'text = body.decode("utf-8-sig")',
        'text = body.decode("UTF-8-SIG")',
        ("'utf-8-sig' -> 'UTF-8-SIG': Python codec names are case-insensitive"),
    ),
    Equivalent(
        "parse_xml",
        "return xml_fromstring(body, forbid_dtd=True, forbid_entities=True, forbid_external=True)",
        "return xml_fromstring(body, forbid_dtd=True, forbid_entities=None, forbid_external=True)",
        (
            "forbid_entities=None: defusedxml with forbid_dtd=True refuses the DOCTYPE before "
            "any entity, internal or external, can be declared: this flag is never reached"
        ),
    ),
    Equivalent(
        "parse_xml",
        "return xml_fromstring(body, forbid_dtd=True, forbid_entities=True, forbid_external=True)",
        "return xml_fromstring(body, forbid_dtd=True, forbid_external=True)",
        (
            "forbid_entities dropped (default True): defusedxml with forbid_dtd=True refuses "
            "the DOCTYPE before any entity, internal or external, can be declared: this flag "
            "is never reached"
        ),
    ),
    Equivalent(
        "parse_xml",
        "return xml_fromstring(body, forbid_dtd=True, forbid_entities=True, forbid_external=True)",
        "return xml_fromstring(body, forbid_dtd=True, forbid_entities=False, forbid_external=True)",
        (
            "forbid_entities=False: defusedxml with forbid_dtd=True refuses the DOCTYPE "
            "before any entity, internal or external, can be declared: this flag is never "
            "reached"
        ),
    ),
    Equivalent(
        "parse_xml",
        "return xml_fromstring(body, forbid_dtd=True, forbid_entities=True, forbid_external=True)",
        "return xml_fromstring(body, forbid_dtd=True, forbid_entities=True, forbid_external=None)",
        (
            "forbid_external=None: defusedxml with forbid_dtd=True refuses the DOCTYPE before "
            "any entity, internal or external, can be declared: this flag is never reached"
        ),
    ),
    Equivalent(
        "parse_xml",
        "return xml_fromstring(body, forbid_dtd=True, forbid_entities=True, forbid_external=True)",
        "return xml_fromstring(body, forbid_dtd=True, forbid_entities=True, )",
        (
            "forbid_external dropped (default True): defusedxml with forbid_dtd=True refuses "
            "the DOCTYPE before any entity, internal or external, can be declared: this flag "
            "is never reached"
        ),
    ),
    Equivalent(
        "parse_xml",
        "return xml_fromstring(body, forbid_dtd=True, forbid_entities=True, forbid_external=True)",
        "return xml_fromstring(body, forbid_dtd=True, forbid_entities=True, forbid_external=False)",
        (
            "forbid_external=False: defusedxml with forbid_dtd=True refuses the DOCTYPE "
            "before any entity, internal or external, can be declared: this flag is never "
            "reached"
        ),
    ),
    # -- broker/core/tokens/schedule.py ------------------------------------------------------------
    Equivalent(
        "retry_delay",
        "exponent = min(max(failures - 1, 0), 16)",
        "exponent = min(max(failures - 1, 0), 17)",
        (
            "exponent cap 16 -> 17: both keep 2**n far above the 60 s cap / 15 s base; the "
            "cap only stops float overflow at thousands of failures"
        ),
    ),
    # -- broker/core/cache/shared/cache.py ---------------------------------------------------------
    Equivalent(
        "SharedCache._wait_for_lease",
        "waited = False",
        "waited = None",
        ("waited = None instead of False: only ever tested with 'not'"),
    ),
    # -- broker/core/cache/shared/link.py ----------------------------------------------------------
    Equivalent(
        "make_client",
        "decode_responses=False,",
        "decode_responses=None,",
        (
            "decode_responses=None instead of False: redis-py only tests it for truth; bytes "
            "either way"
        ),
    ),
    Equivalent(
        "make_client",
        "decode_responses=False,\n)",
        ")",
        ("decode_responses=False dropped: False is redis-py's default"),
    ),
    Equivalent(
        "make_client",
        "socket_connect_timeout=timeout,",
        "socket_connect_timeout=None,",
        ("socket_connect_timeout=None: redis-py then uses socket_timeout, the same value"),
    ),
    Equivalent(
        "make_client",
        "retry=Retry(NoBackoff(), 0),",
        "retry=None,",
        ("retry=None: a from_url client's connections then default to Retry(NoBackoff(), 0)"),
    ),
    Equivalent(
        "make_client",
        "retry=Retry(NoBackoff(), 0),",
        "",
        ("retry dropped: a from_url client's connections then default to Retry(NoBackoff(), 0)"),
    ),
    Equivalent(
        "RedisLink.start",
        "self.redis = make_client(s, s.timeout)",
        "self.redis = make_client(s, None)",
        (
            "the link's client without socket timeouts: every call it makes is under "
            "asyncio.wait_for(timeout) (RedisLink.call, the reconnect ping), whose timer of "
            "the same length is armed first and fires first (check-config's ping, with longer "
            "timeouts, is tested)"
        ),
    ),
    Equivalent(
        "RedisLink.close",
        "await asyncio.gather(self._reconnect, return_exceptions=True)",
        "await asyncio.gather(return_exceptions=True)",
        (
            "gather() without the cancelled reconnect task: the client's aclose() right after "
            "always yields to the loop (its pool gathers the disconnects), so the task has "
            "finished when close() returns either way"
        ),
    ),
    # -- broker/core/cache/shared/sealer.py --------------------------------------------------------
    Equivalent(
        "Sealer.__init__",
        'self._name_key = hmac.new(key, NAME_LABEL, "sha256").digest()',
        'self._name_key = hmac.new(key, NAME_LABEL, "SHA256").digest()',
        ("hmac digest 'sha256' -> 'SHA256': hashlib looks digest names up case-insensitively"),
    ),
    # -- broker/core/cache/shared/store.py ---------------------------------------------------------
    Equivalent(
        "TokenStore.read",
        "token = None if plain is None else self.token(plain)",
        "token = None if (plain is None) and False else self.token(plain)",
        (
            "token(None) instead of None for an undecryptable value: json.loads(None) raises "
            "TypeError, which token() turns into None"
        ),
    ),
    Equivalent(
        "TokenStore.token",
        "if not (math.isfinite(expires) and math.isfinite(lifetime) and 0 < lifetime <= 86400):",
        "if not (math.isfinite(expires) and math.isfinite(lifetime) and 0 <= lifetime <= 86400):",
        ("lifetime 0 admitted: time left is min(expiry - now, 0) <= 0, refused two lines on"),
    ),
    Equivalent(
        "TokenStore.get_versioned",
        'return None if plain is None else (number, plain.decode("utf-8", "replace"))',
        'return None if plain is None else (number, plain.decode("UTF-8", "replace"))',
        ("codec 'UTF-8' for 'utf-8': codec names are looked up case-insensitively"),
    ),
    # -- broker/core/tenants/aadsts.py -----------------------------------------------------------
    Equivalent(
        "TenantRefused.again",
        "retry_after=max(1.0, retry_after),",
        "retry_after=max(2.0, retry_after),",
        (
            "retry_after floor 1.0 -> 2.0: the told-again error's retry_after is read only by "
            "outcomes.failed's retry_delay, whose result is at least FAILURE_MEMORY (2 s) and "
            "at least retry_after, so max(2, max(1, r)) == max(2, max(2, r)); it then "
            "replaces it"
        ),
    ),
    # -- broker/core/tenants/cache.py ------------------------------------------------------------
    Equivalent(
        "TenantCache.__init__",
        "self._policy = replace(policy_for(profile), warm=False, idle_after=TENANT_IDLE_AFTER)",
        "self._policy = replace(policy_for(profile), warm=None, idle_after=TENANT_IDLE_AFTER)",
        (
            "warm=False -> warm=None: Entry reads policy.warm only as a truth value (entry.py "
            "due and start); None and False are both false"
        ),
    ),
    Equivalent(
        "TenantCache._bound_tenants",
        "break",
        "return",
        ("break -> return: the loop is the function's last statement, nothing follows it"),
    ),
    Equivalent(
        "TenantCache._drop",
        "state.entries.pop(key[1], None)",
        "state.entries.pop(key[1], )",
        (
            "pop(scope, None) -> pop(scope): every key in _lru has its entry in its tenant's "
            "entries (entry() adds both, _drop removes both, invalidate pops the tenant "
            "first, _bound_tenants forgets only tenants with no entries), so the default is "
            "never used"
        ),
    ),
    # -- broker/core/tenants/memory.py -----------------------------------------------------------
    Equivalent(
        "FailureMemory.check",
        "continue",
        "break",
        (
            "continue -> break after lifting a profile block whose refresh token file "
            "changed: Fetcher.fetch calls check again after the fan-out limiter, where the "
            "tenant's own block raises the same error; at most the wait for a limiter slot "
            "(only when it is full) differs"
        ),
        nth=2,
    ),
    # -- broker/core/tenants/views.py ------------------------------------------------------------
    Equivalent(
        "describe",
        "next_attempt = min(next_attempt or 1e12, s.next_attempt_in)",
        "next_attempt = min(next_attempt or 1000000000001.0, s.next_attempt_in)",
        (
            "min seed 1e12 -> 1e12+1: the seed only stands for 'none yet'; next_attempt_in of "
            "an entry with an error is a retry delay (at most minutes), never near 1e12 s"
        ),
    ),
    Equivalent(
        "tenant_state",
        "worst: str | None = None",
        'worst: str | None = ""',
        ('worst = None -> "": read only as `worst or code` once an entry fails; both are false'),
    ),
    Equivalent(
        "tenant_state",
        "servable += 1",
        "servable = 1",
        ("servable += 1 -> = 1: the count is only read as a truth value (non-zero either way)"),
    ),
    Equivalent(
        "tenant_state",
        "servable += 1",
        "servable -= 1",
        ("servable += 1 -> -= 1: the count is only read as a truth value (non-zero either way)"),
    ),
    Equivalent(
        "tenant_state",
        "servable += 1",
        "servable += 2",
        ("servable += 1 -> += 2: the count is only read as a truth value (non-zero either way)"),
    ),
    Equivalent(
        "tenant_state",
        "failing += 1",
        "failing = 1",
        ("failing += 1 -> = 1: the count is only read as a truth value (non-zero either way)"),
    ),
    Equivalent(
        "tenant_state",
        "failing += 1",
        "failing -= 1",
        ("failing += 1 -> -= 1: the count is only read as a truth value (non-zero either way)"),
    ),
    Equivalent(
        "tenant_state",
        "failing += 1",
        "failing += 2",
        ("failing += 1 -> += 2: the count is only read as a truth value (non-zero either way)"),
    ),
    # -- broker/core/tokens/token.py ---------------------------------------------------------------
    Equivalent(
        "jwt_seconds_left",
        "if at is not None and at > start:",
        "if at is not None and at >= start:",
        (
            "`at > start` -> `at >= start`: when iat/nbf equals the start, moving the start "
            "to it changes nothing"
        ),
    ),
    # -- broker/observe/redact.py ----------------------------------------------------------------
    Equivalent(
        "Redactor.__init__",
        "self._all_pinned: frozenset[str] = frozenset()",
        "self._all_pinned: frozenset[str] = None",
        ("_all_pinned = None before pin(): pin() assigns it before anything reads it"),
    ),
    Equivalent(
        "Redactor.__init__",
        'self.pin("initial", known)',
        "self.pin(None, known)",
        (
            "the constructor's owner name None for 'initial': only a key, and no one else "
            "pins under either name"
        ),
    ),
    Equivalent(
        "Redactor.__init__",
        'self.pin("initial", known)',
        'self.pin("XXinitialXX", known)',
        ("the constructor's owner name 'XXinitialXX': only a key no one else uses"),
    ),
    Equivalent(
        "Redactor.__init__",
        'self.pin("initial", known)',
        'self.pin("INITIAL", known)',
        ("the constructor's owner name 'INITIAL': only a key no one else uses"),
    ),
    Equivalent(
        "Redactor.text",
        "if any(hint in lowered for hint in _SHAPE_HINTS):  # C substring search first",
        "if any(hint not in lowered for hint in _SHAPE_HINTS):  # C substring search first",
        (
            "`hint not in` for `hint in`: the shape hints only skip a regex pass that finds "
            "nothing without them; the output is the same"
        ),
    ),
    Equivalent(
        "Redactor.truncate",
        'cut = cut[:end] if end > 0 else ""',
        'cut = cut[:end] if end >= 0 else ""',
        ("`end > 0` -> `end >= 0`: at end == 0 the cut is cut[:0], the same empty string"),
    ),
    Equivalent(
        "_keep_prefix",
        'return (m.group(1) if m else "") + REDACTED',
        'return (m.group(1) if (m) or True else "") + REDACTED',
        (
            "`if m` -> `if m or True`: _SHAPES only matches 'bearer'+space or one of its six "
            "key names+[=:], all of which the prefix pattern matches too: m is never None"
        ),
    ),
    Equivalent(
        "_keep_prefix",
        'return (m.group(1) if m else "") + REDACTED',
        'return (m.group(1) if m else "XXXX") + REDACTED',
        (
            "the no-prefix fallback '' -> 'XXXX': _SHAPES only matches 'bearer'+space or one "
            "of its six key names+[=:], all of which the prefix pattern matches too: m is "
            "never None"
        ),
    ),
    Equivalent(
        "_redact_jwts",
        'if run.count(".") < 2 or "eyJ" not in run:',
        'if run.count(".") < 2 and "eyJ" not in run:',
        (
            "the early return `or` -> `and`: a run with fewer than 3 parts or no 'eyJ' finds "
            "no JWT in the loop either and is joined back unchanged (only a shortcut)"
        ),
    ),
    Equivalent(
        "Redactor._remember",
        "self._known[value] = None",
        'self._known[value] = ""',
        ("the OrderedDict's values are never read, only its keys and their order"),
    ),
    Equivalent(
        "Redactor._remember",
        "self._known.popitem(last=False)",
        "self._known.popitem(last=None)",
        ("popitem(last=None): None is false like False, the oldest still goes first"),
    ),
]


def modules() -> list[Path]:
    """only_mutate from pyproject.toml, smallest file first."""
    config = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["mutmut"]
    paths = [ROOT / p for p in config["only_mutate"]]
    return sorted(paths, key=lambda p: (len(p.read_text().splitlines()), p.name))


def dotted(path: Path) -> str:
    return ".".join(path.relative_to(ROOT).with_suffix("").parts)


def describe(path: Path) -> dict[str, tuple[str, str, str, int]]:
    """mutmut's name of each mutant of `path` (as in its results) -> what it changes: the
    function's qualified name, the changed source line(s) before and after, and which of the
    function's identical changes it is. Made with mutmut's own generator (pinned, 3.8.1) on the
    current source, so it names the same mutants as a run of this code."""
    import ast
    import difflib

    from mutmut.mutation.file_mutation import mutate_file_contents

    relative = path.relative_to(ROOT).as_posix()
    mutated = mutate_file_contents(relative, path.read_text())
    tree = ast.parse(mutated.code)
    sources = {
        node.name: ast.get_source_segment(mutated.code, node) or ""
        for node in ast.walk(tree)
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef)
    }
    out: dict[str, tuple[str, str, str, int]] = {}
    counted: Counter[tuple[str, str, str]] = Counter()
    for name in mutated.mutant_names:  # in source order within each function
        base = name.rsplit("__mutmut_", 1)[0]
        before = sources[base + "__mutmut_orig"].splitlines()[1:]  # without the def line
        after = sources[name].splitlines()[1:]
        diff = list(difflib.ndiff(before, after))
        change = (
            base.split("ǁ", 1)[1].replace("ǁ", ".") if base.startswith("xǁ") else base[2:],
            "\n".join(line[2:].strip() for line in diff if line.startswith("- ")),
            "\n".join(line[2:].strip() for line in diff if line.startswith("+ ")),
        )
        counted[change] += 1
        out[f"{dotted(path)}.{name}"] = (*change, counted[change])
    return out


def equivalents(path: Path) -> dict[str, Equivalent]:
    """The mutants of `path` that EQUIVALENT lists, by mutmut's name."""
    listed = {e.key: e for e in EQUIVALENT}
    return {name: listed[key] for name, key in describe(path).items() if key in listed}


def mutmut(*args: str) -> list[str]:
    return [str(Path(sys.executable).parent / "mutmut"), *args]


def run(names: list[str], jobs: int, keep: bool) -> None:
    """One mutmut process over every module (it runs the mutants whose tests are quickest
    first: the small pure modules before the cache); with MODULE names, only those, in turn,
    smallest first."""
    if not keep:
        shutil.rmtree(MUTANTS, ignore_errors=True)
    MUTANTS.mkdir(exist_ok=True)
    started = time.monotonic()
    if names:
        chosen = [p for p in modules() if dotted(p) in names or p.stem in names]
        batches = [(dotted(p), [f"{dotted(p)}.*"]) for p in chosen]
    else:
        batches = [("all", [])]
    for label, globs in batches:
        log = MUTANTS / f"run-{label}.log"
        t0 = time.monotonic()
        print(f"mutation: {label} ... (log: {log.relative_to(ROOT)})", flush=True)
        with log.open("w") as out:
            code = subprocess.call(
                mutmut("run", "--max-children", str(jobs), *globs),
                cwd=ROOT,
                stdout=out,
                stderr=subprocess.STDOUT,
            )
        if code != 0:
            sys.exit(f"mutation: mutmut failed on {label} (exit {code}); see {log}")
        print(f"mutation: {label} done in {time.monotonic() - t0:.0f} s", flush=True)
    print(f"mutation: all done in {(time.monotonic() - started) / 60:.1f} min")


def results() -> dict[Path, dict[str, int | None]]:
    out = {}
    for path in modules():
        meta = MUTANTS / path.relative_to(ROOT).with_suffix(".py.meta")
        data = json.loads(meta.read_text()) if meta.exists() else {"exit_code_by_key": {}}
        out[path] = data["exit_code_by_key"]
    return out


def again(jobs: int) -> None:
    """Re-test the survivors (after adding tests): mutmut keeps a verdict until the function
    changes, so new tests alone would never be tried on them. Only for new tests: mutants/
    keeps its copy of unmutated modules, so after any change under broker/ run afresh."""
    for path, codes in results().items():
        listed = equivalents(path)
        survivors = [k for k, v in codes.items() if v not in KILLED and k not in listed]
        if survivors:
            print(f"mutation: re-testing {len(survivors)} survivors of {dotted(path)}", flush=True)
            with (MUTANTS / f"again-{dotted(path)}.log").open("w") as out:
                subprocess.call(
                    mutmut("run", "--max-children", str(jobs), *survivors),
                    cwd=ROOT,
                    stdout=out,
                    stderr=subprocess.STDOUT,
                )


def report() -> int:
    status = 0
    print(
        f"{'module':<34} {'mutants':>7} {'killed':>6} {'equiv':>5} {'survived':>8} "
        f"{'no tests':>8} {'not run':>7} {'score':>7}"
    )
    survivors: list[str] = []
    seen_equivalent: set[tuple[str, str, str, int]] = set()
    for path, codes in results().items():
        listed = equivalents(path)
        counts = Counter(
            "equivalent"
            if k in listed and v not in KILLED
            else "killed"
            if v in KILLED
            else "not run"
            if v in NOT_RUN
            else "no tests"
            if v in NO_TESTS
            else "survived"
            for k, v in codes.items()
        )
        seen_equivalent |= {e.key for k, e in listed.items() if codes.get(k) not in KILLED}
        survivors += sorted(
            f"{k} (exit {v})"
            for k, v in codes.items()
            if v not in KILLED | NOT_RUN | NO_TESTS and k not in listed
        )
        scored = len(codes) - counts["equivalent"]
        score = 100.0 * counts["killed"] / scored if scored else 0.0
        if not codes or score < THRESHOLD or counts["not run"]:
            status = 1
        print(
            f"{path.relative_to(ROOT).as_posix():<34} {len(codes):>7} {counts['killed']:>6} "
            f"{counts['equivalent']:>5} {counts['survived']:>8} {counts['no tests']:>8} "
            f"{counts['not run']:>7} "
            f"{score:>6.1f}%"
        )
    for e in EQUIVALENT:
        if e.key not in seen_equivalent:
            print(
                f"note: {e.function}: {e.before!r} -> {e.after!r} is listed as equivalent "
                "but is no surviving mutant any more"
            )
    if survivors:
        print("\nsurvivors (exit 0: every test passed; `.venv/bin/mutmut show NAME` shows it):")
        for line in survivors:
            print(f"  {line}")
    return status


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    p_run = sub.add_parser("run")
    p_run.add_argument("--jobs", type=int, default=2)
    p_run.add_argument("--keep", action="store_true", help="resume from mutants/")
    p_run.add_argument("module", nargs="*")
    p_again = sub.add_parser("again")
    p_again.add_argument("--jobs", type=int, default=2)
    sub.add_parser("report")
    args = parser.parse_args()
    if args.command == "run":
        run(args.module, args.jobs, args.keep)
    elif args.command == "again":
        again(args.jobs)
    sys.exit(report())


if __name__ == "__main__":
    main()
