"""Customer-tenant records: the memory one remembered tenant costs once its entries are gone
(what a flood of unknown tenants leaves behind), measured with tracemalloc.

    .venv/bin/python bench/tenant_records.py [--records 20000]

Each record is made as a refused fetch makes it: a `TenantState` under its tenant id in the
cache's dict, its refusal (a `TenantRefused` for AADSTS90002 with Azure AD's message, ids and
codes, raised and caught, then remembered by `FailureMemory.remember` as the tenant's last
error and its tenant-wide block). Prints bytes per record; the bound on records
(max_customer_tokens) times this is what records can cost.
"""

from __future__ import annotations

import argparse
import tracemalloc
import uuid
from typing import Any

from broker.core.tenants.aadsts import TENANT_NOT_FOUND, TenantRefused
from broker.core.tenants.memory import FailureMemory, TenantState
from broker.core.tokens.clock import SystemClock


class _Profile:
    refresh_token_file = None


class _Log:
    def warning(self, *args: Any, **kwargs: Any) -> None:
        pass


def _refused(i: int) -> TenantRefused:
    tenant = str(uuid.UUID(int=i))
    message = (
        f"AADSTS90002: Tenant '{tenant}' not found. Check to make sure you have the correct "
        "tenant ID and are signing into the correct cloud."
    )
    return TenantRefused(
        TENANT_NOT_FOUND,
        message,
        aadsts=90002,
        endpoint="aad",
        upstream_status=400,
        retry_after=TENANT_NOT_FOUND.cooldown,
        correlation_id=str(uuid.uuid4()),
        trace_id=str(uuid.uuid4()),
    )


def _fetch(i: int) -> None:
    raise _refused(i)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--records", type=int, default=20000)
    args = parser.parse_args()
    memory = FailureMemory(_Profile(), clock=SystemClock(), log=_Log())  # type: ignore[arg-type]
    tenants: dict[str, TenantState] = {}
    tracemalloc.start()
    before = tracemalloc.take_snapshot()
    for i in range(args.records):
        name = str(uuid.UUID(int=0x10000 + i))
        state = tenants[name] = TenantState(name)
        try:
            _fetch(i)
        except TenantRefused as e:
            memory.remember(state, e)
    after = tracemalloc.take_snapshot()
    grown = sum(s.size_diff for s in after.compare_to(before, "filename"))
    print(f"{args.records} records: {grown / args.records:,.0f} bytes per record")


if __name__ == "__main__":
    main()
