"""Every statement the outbox runs, once per dialect, as named-parameter SQL text.

Both dialects share the shape of each statement; they differ in how "now" is spelled (database
time, never the client's clock), how an interval is added, and how a list parameter is passed
(a PostgreSQL array, a JSON array in SQLite). Rows are always addressed as (id, lease owner)
pairs, so a relay whose lease was taken over cannot complete rows it no longer owns.
"""

from __future__ import annotations

from dataclasses import dataclass

from sluice.outbox.schema import SQLITE_NOW

# Columns of a claimed message, in the order ``OutboxStore`` reads them.
_ROW = (
    "t.id, t.aggregatetype, t.aggregateid, t.type, {payload}, {headers}, t.ordered, t.attempts,"
    " t.created_at"
)


# The rows an ordered claim takes from its ready keys: every key's head first, then every key's
# second row, and so on, so a batch is shared fairly and each key's run is contiguous from its
# head. Rows after a head are all pending: only a head is ever attempted.
_TAKE = """
    SELECT x.id FROM x JOIN ok USING (aggregateid) WHERE x.status = 'pending'
    ORDER BY x.rn, x.id LIMIT :limit"""


@dataclass(frozen=True)
class Queries:
    dialect: str
    lock_key: str  # serialises puts of one ordering key until commit (PostgreSQL only)
    insert: str
    claim_unordered: str
    lock_ready_keys: str  # PostgreSQL only: step 1 of the ordered claim
    claim_ordered: str
    fetch: str
    mark_sent: str
    mark_failed: str
    release: str
    delete_sent: str
    status: str
    blocked_keys: str
    retry_ids: str
    retry_all: str


def _common(
    t: str, now: str, plus: str, ordered: str, unordered: str, pairs: str, ret: str
) -> dict[str, str]:
    """Statements whose text differs between dialects only by the fragments passed in.

    ``ret`` qualifies RETURNING columns: SQLite rejects qualified names there.
    """
    unleased = f"(t.lease_until IS NULL OR t.lease_until < {now})"
    return {
        "mark_sent": f"""
            UPDATE {t} AS t SET status = 'sent', sent_at = {now}, lease_owner = NULL,
                lease_until = NULL, last_error = NULL, attempts = t.attempts + :bump
            FROM {pairs} WHERE t.id = f.id AND t.lease_owner = f.owner AND t.status = 'pending'""",
        "mark_failed": f"""
            UPDATE {t} AS t SET attempts = t.attempts + :bump,
                status = CASE WHEN t.attempts + :bump >= :max_attempts
                              THEN 'parked' ELSE 'pending' END,
                next_attempt_at = {plus.format("f.delay")}, last_error = f.err,
                lease_owner = NULL, lease_until = NULL
            FROM {pairs} WHERE t.id = f.id AND t.lease_owner = f.owner AND t.status = 'pending'
            RETURNING {ret}id, {ret}status, {ret}aggregatetype, {ret}aggregateid, {ret}attempts""",
        "release": f"""
            UPDATE {t} AS t SET lease_owner = NULL, lease_until = NULL,
                attempts = t.attempts - :unbump
            FROM {pairs} WHERE t.id = f.id AND t.lease_owner = f.owner AND t.status = 'pending'""",
        "delete_sent": f"""
            DELETE FROM {t} WHERE id IN (
                SELECT id FROM {t} AS t WHERE status = 'sent'
                AND sent_at < {plus.format("-1 * :retention")} ORDER BY sent_at LIMIT :limit)""",
        "status": f"""
            SELECT t.aggregatetype, t.status, count(*),
                {{age}} AS oldest_age,
                sum(CASE WHEN t.lease_until > {now} THEN 1 ELSE 0 END) AS in_flight,
                sum(CASE WHEN t.next_attempt_at > {now} THEN 1 ELSE 0 END) AS backing_off
            FROM {t} AS t WHERE t.status <> 'sent' GROUP BY t.aggregatetype, t.status""",
        "retry_ids": f"""
            UPDATE {t} AS t SET status = 'pending', next_attempt_at = {now},
                attempts = CASE WHEN t.status = 'parked' THEN 0 ELSE t.attempts END
            WHERE t.id IN ({{ids}}) AND t.status <> 'sent' AND {unleased}""",
        "retry_all": f"""
            UPDATE {t} AS t SET status = 'pending', next_attempt_at = {now},
                attempts = CASE WHEN t.status = 'parked' THEN 0 ELSE t.attempts END
            WHERE (t.status = 'parked' OR (t.status = 'pending' AND t.next_attempt_at > {now}))
              AND {unleased}""",
        "claim_where": f"""
            t.status = 'pending' AND t.next_attempt_at <= {now} AND {unleased}""",
        "heads": f"""
            SELECT t.id, t.aggregateid, t.aggregatetype, t.status, t.attempts, t.last_error,
                t.next_attempt_at, t.lease_until,
                row_number() OVER (PARTITION BY t.aggregateid ORDER BY t.id) AS rn
            FROM {t} AS t WHERE {ordered} AND t.status <> 'sent'""",
        "unordered": unordered,
    }


def postgres(t: str) -> Queries:
    now = "clock_timestamp()"
    plus = now + " + make_interval(secs => {})"
    pairs = (
        "unnest(CAST(:ids AS bigint[]), CAST(:owners AS text[]), CAST(:delays AS float8[]),"
        " CAST(:errors AS text[])) AS f(id, owner, delay, err)"
    )
    c = _common(t, now, plus, "t.ordered", "NOT t.ordered", pairs, "t.")
    row = _ROW.format(payload="t.payload::text", headers="t.headers::text")
    take = _TAKE
    lease = plus.format("CAST(:lease AS float8)")
    claim_set = f"lease_owner = :owner, lease_until = {lease}, attempts = t.attempts + 1"
    return Queries(
        dialect="postgresql",
        lock_key="SELECT pg_advisory_xact_lock(hashtextextended(CAST(:lock AS text), 1))",
        insert=f"""
            INSERT INTO {t} (aggregatetype, aggregateid, type, payload, headers, ordered,
                             lease_owner, lease_until)
            VALUES (:topic, :key, :type, CAST(:payload AS jsonb), CAST(:headers AS jsonb),
                    :ordered, :owner, {lease})
            RETURNING id""",
        claim_unordered=f"""
            WITH c AS (
                SELECT t.id FROM {t} AS t WHERE {c["unordered"]} AND {c["claim_where"]}
                ORDER BY t.id LIMIT :limit FOR UPDATE SKIP LOCKED)
            UPDATE {t} AS t SET {claim_set} FROM c WHERE t.id = c.id AND t.status = 'pending'
            RETURNING {row}""",
        # Step 1 of the ordered claim: lock keys whose head row is claimable, in a random
        # order per pass so that relay nodes spread over different keys. The lock lives until
        # this claim commits; step 2 then reads a fresh snapshot, so a key another relay
        # claimed meanwhile shows up as leased.
        lock_ready_keys=f"""
            WITH h AS MATERIALIZED (
                SELECT aggregateid FROM ({c["heads"]}) AS t
                WHERE t.rn = 1 AND {c["claim_where"]}
                ORDER BY hashtextextended(t.aggregateid, :seed))
            SELECT aggregateid FROM h
            WHERE pg_try_advisory_xact_lock(hashtextextended(CAST(:ns AS text) || aggregateid, 2))
            LIMIT :keys""",
        claim_ordered=f"""
            WITH x AS ({c["heads"]} AND t.aggregateid = ANY(CAST(:keys AS text[]))),
            ok AS (SELECT t.aggregateid FROM x AS t WHERE t.rn = 1 AND {c["claim_where"]})
            UPDATE {t} AS t SET {claim_set}
            WHERE t.id IN ({take}) AND t.status = 'pending'
            RETURNING {row}""",
        fetch=f"""
            SELECT {row} FROM {t} AS t JOIN {pairs} ON t.id = f.id AND t.lease_owner = f.owner
            WHERE t.status = 'pending'""",
        mark_sent=c["mark_sent"],
        mark_failed=c["mark_failed"],
        release=c["release"],
        delete_sent=c["delete_sent"],
        status=c["status"].format(age=f"EXTRACT(EPOCH FROM {now} - min(t.created_at))"),
        blocked_keys=f"""
            SELECT t.aggregateid, t.id, t.aggregatetype, t.attempts, t.last_error
            FROM ({c["heads"]}) AS t WHERE t.rn = 1 AND t.status = 'parked'
            ORDER BY t.id LIMIT :limit""",
        retry_ids=c["retry_ids"].format(ids="SELECT unnest(CAST(:ids AS bigint[]))"),
        retry_all=c["retry_all"],
    )


def sqlite(t: str) -> Queries:
    now = SQLITE_NOW
    plus = now + " + {}"
    pairs = (
        "(SELECT value ->> 0 AS id, value ->> 1 AS owner, value ->> 2 AS delay,"
        " value ->> 3 AS err FROM json_each(:rows)) AS f"
    )
    c = _common(t, now, plus, "t.ordered = 1", "t.ordered = 0", pairs, "")
    row = _ROW.format(payload="t.payload", headers="t.headers")
    returning = row.replace("t.", "")
    take = _TAKE
    # SQLite has one writer: a claim is one UPDATE inside BEGIN IMMEDIATE, so no locks are
    # needed to keep two relays off the same rows or keys.
    claim_set = f"lease_owner = :owner, lease_until = {now} + :lease, attempts = attempts + 1"
    return Queries(
        dialect="sqlite",
        lock_key="",
        insert=f"""
            INSERT INTO {t} (aggregatetype, aggregateid, type, payload, headers, ordered,
                             lease_owner, lease_until)
            VALUES (:topic, :key, :type, :payload, :headers, :ordered, :owner, {now} + :lease)
            RETURNING id""",
        claim_unordered=f"""
            UPDATE {t} AS t SET {claim_set} WHERE t.id IN (
                SELECT t.id FROM {t} AS t WHERE {c["unordered"]} AND {c["claim_where"]}
                ORDER BY t.id LIMIT :limit)
            RETURNING {returning}""",
        lock_ready_keys="",
        claim_ordered=f"""
            WITH x AS ({c["heads"]}),
            ok AS (SELECT t.aggregateid FROM x AS t WHERE t.rn = 1 AND {c["claim_where"]}
                   ORDER BY random() LIMIT :keys)
            UPDATE {t} AS t SET {claim_set} WHERE t.id IN ({take})
            RETURNING {returning}""",
        fetch=f"""
            SELECT {row} FROM {t} AS t JOIN {pairs} ON t.id = f.id AND t.lease_owner = f.owner
            WHERE t.status = 'pending'""",
        mark_sent=c["mark_sent"],
        mark_failed=c["mark_failed"],
        release=c["release"],
        delete_sent=c["delete_sent"],
        status=c["status"].format(age=f"{now} - min(t.created_at)"),
        blocked_keys=f"""
            SELECT t.aggregateid, t.id, t.aggregatetype, t.attempts, t.last_error
            FROM ({c["heads"]}) AS t WHERE t.rn = 1 AND t.status = 'parked'
            ORDER BY t.id LIMIT :limit""",
        retry_ids=c["retry_ids"].format(ids="SELECT value FROM json_each(:ids)"),
        retry_all=c["retry_all"],
    )
