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
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
MUTANTS = ROOT / "mutants"
THRESHOLD = 90.0

# mutmut's exit codes per mutant (mutmut/stats.py): what counts as caught.
KILLED = {1, 3, 24, -24, 36, 152, 255, 37}  # a test failed, timed out or the type check caught it
NOT_RUN = {None}
NO_TESTS = {5, 33}  # no test in the run's selection calls the function

# Equivalent mutants: no test can tell them from the original because no behaviour differs.
# Keyed by mutmut's mutant name; `report` warns about an entry that is no longer a survivor
# (the code moved on: delete or renumber it).
EQUIVALENT: dict[str, str] = {
    "broker.core.schedule.x_retry_delay__mutmut_13": (
        "exponent cap 16 -> 17: both keep 2**n far above the 60 s cap / 15 s base; the cap only "
        "stops float overflow at thousands of failures"
    ),
    # -- broker/core/tenants/ -----------------------------------------------------------------
    "broker.core.tenants.cache.xǁTenantCacheǁ__init____mutmut_12": (
        "warm=False -> warm=None: Entry reads policy.warm only as a truth value (cache.py "
        "_on_timer and start); None and False are both false"
    ),
    "broker.core.tenants.cache.xǁTenantCacheǁ_bound_tenants__mutmut_4": (
        "break -> return: the loop is the function's last statement, nothing follows it"
    ),
    "broker.core.tenants.memory.xǁFailureMemoryǁcheck__mutmut_11": (
        "continue -> break after lifting a profile block whose refresh token file changed: "
        "Fetcher.fetch calls check again after the fan-out limiter, where the tenant's own block "
        "raises the same error; at most the wait for a limiter slot (only when it is full) differs"
    ),
    "broker.core.tenants.cache.xǁTenantCacheǁ_drop__mutmut_9": (
        "pop(scope, None) -> pop(scope): every key in _lru has its entry in its tenant's "
        "entries (entry() adds both, _drop removes both, invalidate pops the tenant first, "
        "_bound_tenants forgets only tenants with no entries), so the default is never used"
    ),
    "broker.core.tenants.views.x_describe__mutmut_19": (
        "min seed 1e12 -> 1e12+1: the seed only stands for 'none yet'; next_attempt_in of an "
        "entry with an error is a retry delay (at most minutes), never near 1e12 s"
    ),
    "broker.core.tenants.views.x_tenant_state__mutmut_9": (
        'worst = None -> "": read only as `worst or code` once an entry fails; both are false'
    ),
    "broker.core.tenants.views.x_tenant_state__mutmut_17": (
        "servable += 1 -> = 1: the count is only read as a truth value (non-zero either way)"
    ),
    "broker.core.tenants.views.x_tenant_state__mutmut_18": (
        "servable += 1 -> -= 1: the count is only read as a truth value (non-zero either way)"
    ),
    "broker.core.tenants.views.x_tenant_state__mutmut_19": (
        "servable += 1 -> += 2: the count is only read as a truth value (non-zero either way)"
    ),
    "broker.core.tenants.views.x_tenant_state__mutmut_21": (
        "failing += 1 -> = 1: the count is only read as a truth value (non-zero either way)"
    ),
    "broker.core.tenants.views.x_tenant_state__mutmut_22": (
        "failing += 1 -> -= 1: the count is only read as a truth value (non-zero either way)"
    ),
    "broker.core.tenants.views.x_tenant_state__mutmut_23": (
        "failing += 1 -> += 2: the count is only read as a truth value (non-zero either way)"
    ),
    "broker.core.tenants.aadsts.xǁTenantRefusedǁagain__mutmut_21": (
        "retry_after floor 1.0 -> 2.0: the told-again error's retry_after is read only by "
        "Entry._failed's retry_delay, whose result is at least FAILURE_MEMORY (2 s) and at "
        "least retry_after, so max(2, max(1, r)) == max(2, max(2, r)); it then replaces it"
    ),
    # core/cache.py (mut-core)
    "broker.core.cache.xǁEntryǁ__init____mutmut_13": (
        "token_correlation_id '' for None before the first token: audit lines write "
        "`correlation_id or ''`, and it is set with the first token"
    ),
    "broker.core.cache.xǁEntryǁ__init____mutmut_19": (
        "retry_at None for 0.0: read only when last_error is set, after _failed assigns it"
    ),
    "broker.core.cache.xǁEntryǁ__init____mutmut_20": (
        "retry_at 1.0 for 0.0: read only when last_error is set, after _failed assigns it"
    ),
    "broker.core.cache.xǁEntryǁ__init____mutmut_21": (
        "next_at '' for None: only ever read for its truth (status, token_refreshed's `or`)"
    ),
    "broker.core.cache.xǁEntryǁ__init____mutmut_27": (
        "_closed None for False: only ever read for its truth"
    ),
    "broker.core.cache.xǁEntryǁ_on_timer__mutmut_2": (
        "next_at = '' for None while the timer runs: next_at is only ever read for its truth "
        "(status, token_refreshed) and _arm overwrites it"
    ),
    # observe/redact.py (mut-core)
    "broker.observe.redact.xǁRedactorǁ__init____mutmut_3": (
        "_all_pinned = None before pin(): pin() assigns it before anything reads it"
    ),
    "broker.observe.redact.xǁRedactorǁ__init____mutmut_4": (
        "the constructor's owner name None for 'initial': only a key, and no one else pins "
        "under either name"
    ),
    "broker.observe.redact.xǁRedactorǁ__init____mutmut_8": (
        "the constructor's owner name 'XXinitialXX': only a key no one else uses"
    ),
    "broker.observe.redact.xǁRedactorǁ__init____mutmut_9": (
        "the constructor's owner name 'INITIAL': only a key no one else uses"
    ),
    "broker.observe.redact.xǁRedactorǁtext__mutmut_20": (
        "`hint not in` for `hint in`: the shape hints only skip a regex pass that finds "
        "nothing without them; the output is the same"
    ),
    "broker.observe.redact.xǁRedactorǁtruncate__mutmut_11": (
        "`end > 0` -> `end >= 0`: at end == 0 the cut is cut[:0], the same empty string"
    ),
    "broker.observe.redact.x__keep_prefix__mutmut_13": (
        "`if m` -> `if m or True`: "
        "_SHAPES only matches 'bearer'+space or one of its six key names+[=:], "
        "all of which the prefix pattern matches too: m is never None"
    ),
    "broker.observe.redact.x__keep_prefix__mutmut_16": (
        "the no-prefix fallback '' -> 'XXXX': "
        "_SHAPES only matches 'bearer'+space or one of its six key names+[=:], "
        "all of which the prefix pattern matches too: m is never None"
    ),
    "broker.observe.redact.x__redact_jwts__mutmut_4": (
        "the early return `or` -> `and`: a run with fewer than 3 parts or no 'eyJ' "
        "finds no JWT in the loop either and is joined back unchanged (only a shortcut)"
    ),
    "broker.observe.redact.xǁRedactorǁ_remember__mutmut_2": (
        "the OrderedDict's values are never read, only its keys and their order"
    ),
    "broker.observe.redact.xǁRedactorǁ_remember__mutmut_4": (
        "popitem(last=None): None is false like False, the oldest still goes first"
    ),
    # core/guards.py (mut-core)
    "broker.core.guards.x_strip_port__mutmut_13": (
        "`end < 0` -> `end <= 0`: only '[]' differs ('' for '[]'): an empty "
        "bracket names no host, allowed by no configuration that means one"
    ),
    "broker.core.guards.x_strip_port__mutmut_14": (
        "`end < 0` -> `end < 1`: only '[]' differs ('' for '[]'): an empty "
        "bracket names no host, allowed by no configuration that means one"
    ),
    "broker.core.guards.x_target_host__mutmut_19": (
        "split('?') without maxsplit: element [0] is the same"
    ),
    "broker.core.guards.x_target_host__mutmut_24": (
        "split('/') without maxsplit: element [0] is the same"
    ),
    "broker.core.guards.x_target_host__mutmut_35": (
        "split('/', 2) for split('/', 1): element [0] is the same"
    ),
    "broker.core.guards.x_target_host__mutmut_38": (
        "split('?', 2) for split('?', 1): element [0] is the same"
    ),
    "broker.core.guards.xǁOriginGuardǁorigin__mutmut_1": (
        "default target '/' -> 'XX/XX': both name the Host header "
        "(no '://'), and every caller passes the request's raw path"
    ),
    "broker.core.guards.xǁOriginGuardǁv1__mutmut_1": (
        "default target '/' -> 'XX/XX': both name the Host header "
        "(no '://'), and every caller passes the request's raw path"
    ),
    "broker.core.guards.xǁOriginGuardǁorigin__mutmut_21": (
        "memo lookup dropped: "
        "the Host memo is only a shortcut: with nothing usable remembered the answer is "
        "worked out again from allowed_hosts, the same"
    ),
    "broker.core.guards.xǁOriginGuardǁorigin__mutmut_22": (
        "memo looked up under None: "
        "the Host memo is only a shortcut: with nothing usable remembered the answer is "
        "worked out again from allowed_hosts, the same"
    ),
    "broker.core.guards.xǁOriginGuardǁorigin__mutmut_28": (
        "memo stores None: "
        "the Host memo is only a shortcut: with nothing usable remembered the answer is "
        "worked out again from allowed_hosts, the same"
    ),
    "broker.core.guards.xǁOriginGuardǁv1__mutmut_17": (
        "proxy branch calls origin(headers, None): origin() answers from "
        "its proxy-header loop (the same three headers) before it reads the target"
    ),
    "broker.core.guards.xǁOriginGuardǁv1__mutmut_19": (
        "proxy branch calls origin(headers) (target '/'): origin() "
        "answers from its proxy-header loop before it reads the target"
    ),
    "broker.core.guards.xǁOriginGuardǁv1__mutmut_20": (
        "v1's fast path skipped (the Host memo not looked up, or looked up under a key that "
        "holds nothing): origin() then works out the same answer"
    ),
    "broker.core.guards.xǁOriginGuardǁv1__mutmut_21": (
        "v1's fast path skipped (the Host memo not looked up, or looked up under a key that "
        "holds nothing): origin() then works out the same answer"
    ),
    "broker.core.guards.xǁOriginGuardǁv1__mutmut_23": (
        "v1's fast path skipped (the Host memo not looked up, or looked up under a key that "
        "holds nothing): origin() then works out the same answer"
    ),
    "broker.core.guards.xǁOriginGuardǁv1__mutmut_25": (
        "v1's fast path skipped (the Host memo not looked up, or looked up under a key that "
        "holds nothing): origin() then works out the same answer"
    ),
    "broker.core.guards.xǁOriginGuardǁv1__mutmut_26": (
        "v1's fast path skipped (the Host memo not looked up, or looked up under a key that "
        "holds nothing): origin() then works out the same answer"
    ),
    "broker.core.guards.xǁOriginGuardǁv1__mutmut_27": (
        "v1's fast path skipped (the Host memo not looked up, or looked up under a key that "
        "holds nothing): origin() then works out the same answer"
    ),
    "broker.core.guards.xǁOriginGuardǁv1__mutmut_32": (
        "v1's fast path skipped (the Host memo not looked up, or looked up under a key that "
        "holds nothing): origin() then works out the same answer"
    ),
    "broker.core.guards.xǁOriginGuardǁv1__mutmut_34": (
        "v1's fast path skipped (the Host memo not looked up, or looked up under a key that "
        "holds nothing): origin() then works out the same answer"
    ),
    "broker.core.guards.xǁOriginGuardǁv1__mutmut_36": (
        "`allowed is None` -> `is not None`: every request takes "
        "the slow path through origin(), which gives the same answer"
    ),
    # core/pcformat.py (mut-core)
    "broker.core.pcformat.x__xml_grant__mutmut_22": (
        "rsplit('}') without maxsplit: "
        "a tag holds at most one '}' (`{uri}local`: expat refuses a '}' in a namespace URI, "
        "and '}' is no name character), so the last part is the same"
    ),
    "broker.core.pcformat.x__xml_grant__mutmut_23": (
        "split for rsplit: "
        "a tag holds at most one '}' (`{uri}local`: expat refuses a '}' in a namespace URI, "
        "and '}' is no name character), so the last part is the same"
    ),
    "broker.core.pcformat.x__xml_grant__mutmut_25": (
        "maxsplit 1 -> 2: "
        "a tag holds at most one '}' (`{uri}local`: expat refuses a '}' in a namespace URI, "
        "and '}' is no name character), so the last part is the same"
    ),
    "broker.core.pcformat.x_parse_token_answer__mutmut_27": (
        "rsplit('}') without maxsplit: "
        "a tag holds at most one '}' (`{uri}local`: expat refuses a '}' in a namespace URI, "
        "and '}' is no name character), so the last part is the same"
    ),
    "broker.core.pcformat.x_parse_token_answer__mutmut_28": (
        "split for rsplit: "
        "a tag holds at most one '}' (`{uri}local`: expat refuses a '}' in a namespace URI, "
        "and '}' is no name character), so the last part is the same"
    ),
    "broker.core.pcformat.x_parse_token_answer__mutmut_30": (
        "maxsplit 1 -> 2: "
        "a tag holds at most one '}' (`{uri}local`: expat refuses a '}' in a namespace URI, "
        "and '}' is no name character), so the last part is the same"
    ),
    "broker.core.pcformat.x_grant_type__mutmut_31": (
        "'utf-8-sig' -> 'UTF-8-SIG': Python codec names are case-insensitive"
    ),
    "broker.core.pcformat.x_parse_xml__mutmut_3": (
        "forbid_entities=None: "
        "defusedxml with forbid_dtd=True refuses the DOCTYPE before any entity, internal or "
        "external, can be declared: this flag is never reached"
    ),
    "broker.core.pcformat.x_parse_xml__mutmut_7": (
        "forbid_entities dropped (default True): "
        "defusedxml with forbid_dtd=True refuses the DOCTYPE before any entity, internal or "
        "external, can be declared: this flag is never reached"
    ),
    "broker.core.pcformat.x_parse_xml__mutmut_10": (
        "forbid_entities=False: "
        "defusedxml with forbid_dtd=True refuses the DOCTYPE before any entity, internal or "
        "external, can be declared: this flag is never reached"
    ),
    "broker.core.pcformat.x_parse_xml__mutmut_4": (
        "forbid_external=None: "
        "defusedxml with forbid_dtd=True refuses the DOCTYPE before any entity, internal or "
        "external, can be declared: this flag is never reached"
    ),
    "broker.core.pcformat.x_parse_xml__mutmut_8": (
        "forbid_external dropped (default True): "
        "defusedxml with forbid_dtd=True refuses the DOCTYPE before any entity, internal or "
        "external, can be declared: this flag is never reached"
    ),
    "broker.core.pcformat.x_parse_xml__mutmut_11": (
        "forbid_external=False: "
        "defusedxml with forbid_dtd=True refuses the DOCTYPE before any entity, internal or "
        "external, can be declared: this flag is never reached"
    ),
    # core/tokens.py (mut-core)
    "broker.core.tokens.x_jwt_seconds_left__mutmut_29": (
        "`at > start` -> `at >= start`: when iat/nbf equals the start, moving the start to it "
        "changes nothing"
    ),
    # -- core/shared/ (renamed for the split; the entries whose code is gone are dropped) -----
    "broker.core.shared.link.x_make_client__mutmut_8": (
        "decode_responses=None instead of False: redis-py only tests it for truth; bytes either way"
    ),
    "broker.core.shared.link.x_make_client__mutmut_16": (
        "decode_responses=False dropped: False is redis-py's default"
    ),
    "broker.core.shared.link.x_make_client__mutmut_5": (
        "socket_connect_timeout=None: redis-py then uses socket_timeout, the same value"
    ),
    "broker.core.shared.link.x_make_client__mutmut_6": (
        "retry=None: a from_url client's connections then default to Retry(NoBackoff(), 0)"
    ),
    "broker.core.shared.link.x_make_client__mutmut_14": (
        "retry dropped: a from_url client's connections then default to Retry(NoBackoff(), 0)"
    ),
    "broker.core.shared.sealer.xǁSealerǁ__init____mutmut_11": (
        "hmac digest 'sha256' -> 'SHA256': hashlib looks digest names up case-insensitively"
    ),
    "broker.core.shared.store.xǁTokenStoreǁread__mutmut_11": (
        "token(None) instead of None for an undecryptable value: json.loads(None) raises "
        "TypeError, which token() turns into None"
    ),
    "broker.core.shared.store.xǁTokenStoreǁtoken__mutmut_25": (
        "lifetime 0 admitted: time left is min(expiry - now, 0) <= 0, refused two lines on"
    ),
    "broker.core.shared.cache.xǁSharedCacheǁ_wait_for_lease__mutmut_9": (
        "waited = None instead of False: only ever tested with 'not'"
    ),
    "broker.core.shared.store.xǁTokenStoreǁget_versioned__mutmut_40": (
        "codec 'UTF-8' for 'utf-8': codec names are looked up case-insensitively"
    ),
    "broker.core.shared.link.xǁRedisLinkǁstart__mutmut_4": (
        "the link's client without socket timeouts: every call it makes is under "
        "asyncio.wait_for(timeout) (RedisLink.call, the reconnect ping), whose timer of the same "
        "length is armed first and fires first (check-config's ping, with longer timeouts, is "
        "tested)"
    ),
    "broker.core.shared.link.xǁRedisLinkǁclose__mutmut_4": (
        "gather() without the cancelled reconnect task: the client's aclose() right after "
        "always yields to the loop (its pool gathers the disconnects), so the task has "
        "finished when close() returns either way"
    ),
}


def modules() -> list[Path]:
    """only_mutate from pyproject.toml, smallest file first."""
    config = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["mutmut"]
    paths = [ROOT / p for p in config["only_mutate"]]
    return sorted(paths, key=lambda p: (len(p.read_text().splitlines()), p.name))


def dotted(path: Path) -> str:
    return ".".join(path.relative_to(ROOT).with_suffix("").parts)


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
        survivors = [k for k, v in codes.items() if v not in KILLED and k not in EQUIVALENT]
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
    seen_equivalent: set[str] = set()
    for path, codes in results().items():
        counts = Counter(
            "equivalent"
            if k in EQUIVALENT and v not in KILLED
            else "killed"
            if v in KILLED
            else "not run"
            if v in NOT_RUN
            else "no tests"
            if v in NO_TESTS
            else "survived"
            for k, v in codes.items()
        )
        seen_equivalent |= {k for k in codes if k in EQUIVALENT and codes[k] not in KILLED}
        survivors += sorted(
            f"{k} (exit {v})"
            for k, v in codes.items()
            if v not in KILLED | NOT_RUN | NO_TESTS and k not in EQUIVALENT
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
    for name in sorted(set(EQUIVALENT) - seen_equivalent):
        print(f"note: {name} is listed as equivalent but is not a survivor any more")
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
