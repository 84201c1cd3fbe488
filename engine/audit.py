"""Verify the hash chains of stored transitions.

Each transition row stores SHA-256 over its own content and the previous row's
hash (`engine.store.chain`). Verification recomputes every hash from the stored
content and reports, per execution, the first row whose hash does not match,
a gap in the sequence numbers, or a last row that disagrees with the
execution's state.

The chain makes changes evident, not impossible: anyone who can write to the
database can also rewrite every later hash. Keep a copy of the head hashes
(`engine audit verify --json`) elsewhere to detect that too.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable, Iterator, Sequence

from engine.records import ExecutionRecord, TransitionRecord
from engine.store import Store
from engine.store.chain import GENESIS, transition_hash


@dataclasses.dataclass(frozen=True, slots=True)
class ChainBreak:
    """The first broken link of one execution's chain."""

    execution_id: str
    # The row where verification failed; None when the execution has no rows.
    seq: int | None
    reason: str

    def __str__(self) -> str:
        where = f"seq {self.seq}" if self.seq is not None else "no rows"
        return f"execution {self.execution_id}, {where}: {self.reason}"


@dataclasses.dataclass(frozen=True, slots=True)
class ChainReport:
    """The result of verifying one execution's chain."""

    execution_id: str
    rows: int
    # The hash of the last row: it seals the whole history up to that row.
    head_hash: str | None
    broken: ChainBreak | None = None

    @property
    def intact(self) -> bool:
        return self.broken is None

    def as_dict(self) -> dict[str, object]:
        return {
            "execution_id": self.execution_id,
            "rows": self.rows,
            "head_hash": self.head_hash,
            "intact": self.intact,
            "broken_seq": self.broken.seq if self.broken else None,
            "reason": self.broken.reason if self.broken else None,
        }


def verify_chain(
    execution_id: str,
    rows: Sequence[TransitionRecord],
    *,
    state: str | None = None,
) -> ChainReport:
    """Recompute the chain of `rows`, which must be ordered by seq.

    `state`, the execution's stored state, is compared with the state that the
    last row enters, which catches a deleted last row.
    """
    head = rows[-1].hash if rows else None
    broken = _first_break(execution_id, rows, state)
    return ChainReport(execution_id, len(rows), head, broken)


def _first_break(
    execution_id: str, rows: Sequence[TransitionRecord], state: str | None
) -> ChainBreak | None:
    if not rows:
        return ChainBreak(execution_id, None, "the execution has no transition rows")
    previous_hash = GENESIS
    for expected_seq, row in enumerate(rows, start=1):
        if row.seq != expected_seq:
            return ChainBreak(
                execution_id,
                expected_seq,
                f"the row is missing (the next stored row is seq {row.seq}): "
                "rows were deleted",
            )
        recomputed = recompute_hash(previous_hash, row)
        if recomputed != row.hash:
            return ChainBreak(
                execution_id,
                row.seq,
                f"stored hash {row.hash[:16]}... does not match the recomputed "
                f"{recomputed[:16]}...: this row was changed, or the row before "
                "it was changed and its hash rewritten",
            )
        previous_hash = row.hash
    last = rows[-1]
    if state is not None and last.to_state != state:
        return ChainBreak(
            execution_id,
            last.seq,
            f"the execution is in state {state!r} but its last row enters "
            f"{last.to_state!r}: later rows were deleted or the execution row "
            "was changed",
        )
    return None


def recompute_hash(previous_hash: str, row: TransitionRecord) -> str:
    """Return the hash that `row` should store after `previous_hash`."""
    return transition_hash(
        previous_hash,
        execution_id=row.execution_id,
        seq=row.seq,
        from_state=row.from_state,
        to_state=row.to_state,
        trigger=row.trigger,
        at=row.at,
        duration=row.duration,
        attempt=row.attempt,
        worker=row.worker,
        details=row.details,
        span_id=row.span_id,
    )


def verify_store(
    store: Store, execution_ids: Iterable[str] | None = None
) -> Iterator[ChainReport]:
    """Verify the chains of `execution_ids`, or of every execution, oldest first."""
    if execution_ids is None:
        records: Iterable[ExecutionRecord] = reversed(store.list_executions(limit=None))
        execution_ids = [record.id for record in records]
    for execution_id in execution_ids:
        record = store.get_execution(execution_id, with_transitions=True)
        yield verify_chain(record.id, record.transitions, state=record.state.value)
