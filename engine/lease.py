"""Leases: which worker may drive an execution, and when another may take over.

A worker owns an execution through its lease: the owner (host:pid:start time),
an expiry that the owner's heartbeat renews, and a token that grows on every
claim. Every state write carries the token, so after a takeover the old owner's
writes fail with `LeaseLostError` (fencing).

Another worker may claim the lease when no worker owns it, when it expired, or
when its owner's process is gone from this host. An owner on another host is only
taken over after its lease expires, because its liveness cannot be checked.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Collection
from datetime import datetime

from engine.exceptions import LeaseHeldError
from engine.records import ClaimBasis, LeaseRecord
from engine.store import Store, utcnow
from engine.worker import WorkerIdentity, is_alive_on_this_host

logger = logging.getLogger(__name__)

# Returns whether a worker runs: True, False, or None when it is on another host.
Liveness = Callable[[WorkerIdentity], bool | None]


def owner_alive(
    owner: str | None, liveness: Liveness = is_alive_on_this_host
) -> bool | None:
    """Return whether the worker named `owner` runs, or None if that is unknown."""
    if owner is None:
        return None
    identity = WorkerIdentity.parse(owner)
    if identity is None:
        return None
    return liveness(identity)


def claim_basis(
    lease: LeaseRecord, now: datetime, liveness: Liveness = is_alive_on_this_host
) -> ClaimBasis | None:
    """Return why `lease` may be taken over at `now`, or None while it is held."""
    if lease.state.is_terminal:
        return None
    if lease.owner is None:
        return ClaimBasis.NO_OWNER
    if lease.expires_at is None or lease.expires_at < now:
        return ClaimBasis.EXPIRED
    if owner_alive(lease.owner, liveness) is False:
        return ClaimBasis.OWNER_GONE
    return None


def claim(
    store: Store,
    execution_id: str,
    worker: str,
    lease_seconds: float,
    liveness: Liveness = is_alive_on_this_host,
) -> None:
    """Take over the lease of `execution_id` for `worker`.

    Raises LeaseHeldError while a live worker holds the lease, including when
    another claimer won the race for it.
    """
    now = utcnow()
    lease = store.get_lease(execution_id)
    basis = claim_basis(lease, now, liveness)
    if basis is None or not store.claim_execution(
        lease, basis, worker, lease_seconds, now=now
    ):
        current = store.get_lease(execution_id)
        raise LeaseHeldError(execution_id, current.owner, current.expires_at)
    _log_claim(lease, basis, worker)


def claim_next(
    store: Store,
    worker: str,
    lease_seconds: float,
    *,
    exclude: Collection[str] = (),
    liveness: Liveness = is_alive_on_this_host,
) -> str | None:
    """Claim the oldest unfinished execution that may be taken over; return its id."""
    decided: dict[str, tuple[LeaseRecord, ClaimBasis]] = {}

    def decide(lease: LeaseRecord, now: datetime) -> ClaimBasis | None:
        basis = claim_basis(lease, now, liveness)
        if basis is not None:
            decided[lease.execution_id] = (lease, basis)
        return basis

    execution_id = store.claim_next(
        worker, lease_seconds, decide, now=utcnow(), exclude=exclude
    )
    if execution_id is not None:
        _log_claim(*decided[execution_id], worker)
    return execution_id


def _log_claim(lease: LeaseRecord, basis: ClaimBasis, worker: str) -> None:
    logger.info(
        "claimed the lease of an execution from %s (%s)",
        lease.owner,
        basis.value,
        extra={
            "action": "claimed",
            "execution_id": lease.execution_id,
            "state": lease.state.value,
        },
    )
