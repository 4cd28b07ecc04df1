"""The store: every read and write sluice makes to its coordination database.

One class for both databases; the drivers differ only in connections and in the few statement
variants in ``sql/queries.sql``. Methods are named entity then verb. Each public method is one
short transaction. Every write that ends or extends a claim is fenced: it names the task's
fencing token, and a token that is no longer current changes nothing and is reported as stale.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable
from importlib import resources
from typing import Any
from urllib.parse import urlparse

from sluice.errors import ConfigError, SchemaError
from sluice.store.drivers import Driver, PostgresDriver, Row, SQLiteDriver, Tx
from sluice.store.rows import ClaimedTask, Counts, Firing, Outcome, TaskPlan, dumps
from sluice.store.views import ReadViews

log = logging.getLogger("sluice.store")

ACTIVE_RUN_STATES = ("ready", "queued", "pending", "running")


def open_driver(url: str, pool_size: int = 4) -> Driver:
    scheme = urlparse(url).scheme.split("+")[0]
    if scheme == "sqlite":
        path = url.split("://", 1)[1]
        path = path[1:] if path.startswith("/") else path  # sqlite:///rel.db, sqlite:////abs.db
        if not path:
            raise ConfigError("database url: sqlite:/// needs a file name, e.g. sqlite:///sluice.db")
        return SQLiteDriver(path)
    if scheme in ("postgresql", "postgres"):
        return PostgresDriver(url.replace("postgresql+psycopg://", "postgresql://"), pool_size)
    raise ConfigError(
        f"database url {url!r}: unsupported scheme {scheme!r}; use sqlite:///FILE or postgresql://…"
    )


def _scripts(dialect: str) -> list[tuple[int, str]]:
    folder = resources.files("sluice.store").joinpath("sql", dialect)
    files = sorted(f.name for f in folder.iterdir() if f.name.endswith(".sql"))
    return [(int(name.split("_", 1)[0]), folder.joinpath(name).read_text()) for name in files]


SCHEMA_VERSION = 4


class Store(ReadViews):
    """The narrow port between the runtime and the database."""

    def __init__(self, driver: Driver) -> None:
        self.db = driver
        self.dialect = driver.dialect

    @classmethod
    def open(cls, url: str, *, migrate: bool = True, pool_size: int = 4) -> Store:
        store = cls(open_driver(url, pool_size))
        if migrate:
            try:
                store.migrate()
            except BaseException:
                store.close()  # its connection pool must not outlive the failed open
                raise
        return store

    def migrate(self) -> int:
        scripts = _scripts(self.dialect)
        version = self.db.migrate(scripts)
        if version > scripts[-1][0]:
            raise SchemaError(
                f"the database schema is version {version}, newer than this sluice knows "
                f"({scripts[-1][0]}): upgrade sluice on this machine"
            )
        return version

    def close(self) -> None:
        self.db.close()

    def clock(self) -> float:
        with self.db.read() as tx:
            row = tx.one("clock")
        assert row is not None
        return float(row["now"])

    # -- nodes ---------------------------------------------------------------------------

    def node_register(self, node: dict[str, Any]) -> None:
        with self.db.transaction() as tx:
            tx.run("node_upsert", **node)
            tx.notify("nodes")

    def node_heartbeat(self, node_id: str, state: str, info: dict[str, Any]) -> float | None:
        """Refresh a node; the database time, or None if the node was forgotten (re-register)."""
        with self.db.transaction() as tx:
            row = tx.one("node_heartbeat", id=node_id, state=state, info=dumps(info))
        return float(row["now"]) if row else None

    def node_list_live(self, ttl: float) -> list[Row]:
        with self.db.transaction() as tx:
            rows = tx.all("node_live", ttl=ttl)
        for row in rows:
            row["info"] = json.loads(row["info"])
        return rows

    def node_deregister(self, node_id: str) -> None:
        with self.db.transaction() as tx:
            tx.run("node_delete", id=node_id)
            tx.notify("nodes")

    # -- jobs ----------------------------------------------------------------------------

    def job_register(self, name: str, kind: str, spec: dict[str, Any], next_fire_at: float | None,
                     finish_delay: float | None) -> bool:
        """Insert or update a job's declaration; True when it changed (its schedule restarts)."""
        with self.db.transaction() as tx:
            changed = tx.run("job_upsert", name=name, kind=kind, spec=dumps(spec),
                             next_fire_at=next_fire_at, finish_delay=finish_delay) > 0
            if changed:
                tx.notify("jobs")
        return changed

    def job_list(self) -> list[Row]:
        with self.db.transaction() as tx:
            return [_job(r) for r in tx.all("job_all")]

    def job_get(self, name: str) -> Row | None:
        with self.db.transaction() as tx:
            row = tx.one("job_get", name=name)
        return _job(row) if row else None

    def job_due(self, limit: int = 100) -> list[Row]:
        with self.db.transaction() as tx:
            return tx.all("job_due", limit=limit)

    def job_next_fire(self) -> tuple[float | None, float]:
        """The earliest next firing of any unpaused job, and the database time now."""
        with self.db.transaction() as tx:
            row = tx.one("job_next_fire")
        assert row is not None
        return row["next_fire_at"], float(row["now"])

    def job_set_paused(self, name: str, paused: bool,
                       next_fire_at: float | None = None) -> bool:
        """Pause or resume; a resumed job restarts from ``next_fire_at`` (instants that passed
        while paused are not fired)."""
        with self.db.transaction() as tx:
            found = tx.run("job_set_paused", name=name, paused=int(paused)) > 0
            if not paused and next_fire_at is not None:
                tx.run("job_advance_any", name=name, new_next=next_fire_at)
            tx.notify("jobs")
        return found

    def job_set_schedule(self, name: str, overrides: dict[str, Any], next_fire_at: float | None,
                         finish_delay: float | None) -> None:
        with self.db.transaction() as tx:
            tx.run("job_set_schedule", name=name, overrides=dumps(overrides),
                   next_fire_at=next_fire_at, finish_delay=finish_delay)
            tx.notify("jobs")

    def job_set_overrides(self, name: str, overrides: dict[str, Any]) -> None:
        with self.db.transaction() as tx:
            tx.run("job_set_overrides", name=name, overrides=dumps(overrides))
            tx.notify("jobs")

    def job_save_state(self, name: str, state: dict[str, Any]) -> None:
        with self.db.transaction() as tx:
            tx.run("job_save_state", name=name, state=dumps(state))

    def job_overdue(self, before: float) -> list[Row]:
        """Unpaused jobs whose next firing is due before ``before`` (through the due index)."""
        with self.db.transaction() as tx:
            return tx.all("job_overdue", before=before)

    def job_fingerprint(self) -> tuple[int, float | None]:
        """Changes whenever a job is registered, paused, resumed or changed (one row read,
        however many jobs there are)."""
        with self.db.transaction() as tx:
            row = tx.one("job_fingerprint")
        return (row["n"], row["latest"]) if row else (0, None)

    def job_versions(self) -> dict[str, Row]:
        with self.db.transaction() as tx:
            return {r["name"]: r for r in tx.all("job_versions")}

    # -- runs ----------------------------------------------------------------------------

    def run_fire(self, job: str, expected: float, new_next: float | None, firings: list[Firing],
                 overlap: str, plan: Callable[[Firing], list[TaskPlan]]
                 ) -> list[tuple[int, list[ClaimedTask]]] | None:
        """Record the firings of one due job and advance its next firing, atomically.

        Returns None when another node fired this instant first (the compare-and-set on the
        job's next firing failed); otherwise the runs created, with the tasks this node claimed
        in the same transaction. The unique key on (job, scheduled instant) makes a second
        firing of one instant impossible even if that check were bypassed.
        """
        with self.db.transaction() as tx:
            if not tx.run("job_advance", name=job, expected=expected, new_next=new_next):
                return None
            active = [r["state"] for r in tx.all("run_active", job=job)]
            created: list[tuple[int, list[ClaimedTask]]] = []
            for firing in firings:
                result = self._record_firing(tx, job, firing, overlap, active, plan)
                if result is not None:
                    created.append(result)
            tx.notify("tasks")
        return created

    def _record_firing(self, tx: Tx, job: str, firing: Firing, overlap: str, active: list[str],
                       plan: Callable[[Firing], list[TaskPlan]]
                       ) -> tuple[int, list[ClaimedTask]] | None:
        if firing.missed:
            state = "missed"
        elif not active or overlap == "concurrent":
            state = "pending"
        elif overlap == "replace":
            tx.run("run_cancel_active", job=job)
            state = "pending"
        elif overlap == "queue" and "queued" not in active:
            state = "queued"
        else:
            state = "skipped"
        tasks = plan(firing) if state == "pending" else []
        row = tx.one("run_insert", job=job, scheduled_at=firing.scheduled_at,
                     trigger=firing.trigger, state=state, open_tasks=len(tasks), node=None,
                     stats=dumps(firing.stats))
        if row is None:
            log.error("run %s@%s already exists; firing ignored", job, firing.scheduled_at)
            return None
        if state in ACTIVE_RUN_STATES and firing.trigger != "catch_up":
            active.append(state)  # catch-up firings are deliberate: they don't block each other
        claimed = self._insert_tasks(tx, row["id"], job, tasks)
        for task in claimed:
            task.scheduled_at = firing.scheduled_at
        return row["id"], claimed

    def _insert_tasks(self, tx: Tx, run_id: int, job: str, tasks: list[TaskPlan],
                      lease_ttl: float = 30.0) -> list[ClaimedTask]:
        claimed: list[ClaimedTask] = []
        for t in tasks:
            row = tx.one("task_insert", run_id=run_id, job=job, kind=t.kind,
                         state="running" if t.owner else "pending", target_node=t.target_node,
                         grp=t.grp, zone=t.zone, parent_id=t.parent_id, payload=dumps(t.payload),
                         max_attempts=t.max_attempts, delay=t.delay, owner=t.owner,
                         lease_ttl=lease_ttl)
            assert row is not None
            if t.owner:
                claimed.append(ClaimedTask(
                    id=row["id"], run_id=run_id, job=job, kind=t.kind, token=row["token"],
                    attempt=1, max_attempts=t.max_attempts, payload=t.payload, progress=[],
                    parent_id=t.parent_id, grp=t.grp))
        if claimed:
            tx.run("run_mark_running", id=run_id)
        return claimed

    def run_trigger(self, job: str, scheduled_at: float | None = None,
                    trigger: str = "manual") -> int | None:
        """Create a run to be planned by the next worker that looks (state ``ready``)."""
        with self.db.transaction() as tx:
            when = scheduled_at if scheduled_at is not None else float(tx.one("clock")["now"])  # type: ignore[index]
            row = tx.one("run_insert", job=job, scheduled_at=when, trigger=trigger,
                         state="ready", open_tasks=0, node=None, stats="{}")
            tx.notify("runs")
        return row["id"] if row else None

    def run_ready(self, limit: int = 10) -> list[Row]:
        with self.db.transaction() as tx:
            return tx.all("run_ready", limit=limit)

    def run_start(self, run_id: int, job: str, tasks: list[TaskPlan]) -> bool:
        """Give a ``ready`` run its tasks; False if another node started it first."""
        with self.db.transaction() as tx:
            if not tx.run("run_start", id=run_id, open_tasks=len(tasks)):
                return False
            self._insert_tasks(tx, run_id, job, tasks)
            if not tasks:
                self._finish_run(tx, run_id, job, cancel=False, dead=0, error=None)
            tx.notify("tasks")
        return True

    def run_list(self, job: str | None = None, limit: int = 20) -> list[Row]:
        with self.db.transaction() as tx:
            rows = tx.all("run_list", job=job, limit=limit)
        for row in rows:
            row["stats"] = json.loads(row["stats"])
        return rows

    def run_get(self, run_id: int) -> Row | None:
        with self.db.transaction() as tx:
            row = tx.one("run_get", id=run_id)
        if row:
            row["stats"] = json.loads(row["stats"])
        return row

    def run_tasks(self, run_id: int) -> list[Row]:
        with self.db.transaction() as tx:
            return tx.all("task_by_run", run_id=run_id)

    def _finish_run(self, tx: Tx, run_id: int, job: str, cancel: bool, dead: int,
                    error: str | None) -> str:
        if dead:
            state = "lost" if (error or "").startswith("lost") else "failed"
        else:
            state = "cancelled" if cancel else "succeeded"
        tx.run("run_finish", id=run_id, state=state)
        tx.run("job_after_run", name=job)
        tx.run("run_promote_queued", job=job)
        tx.notify("runs")
        return state

    def _end_task(self, tx: Tx, task: Row, state: str, error: str | None,
                  counts: Counts | None = None, opened: int = 0) -> str | None:
        """Close a task (done, dead or skipped), adding ``counts`` and ``opened`` new tasks to
        its run; close the run when it was the last one open. Wakes the nodes when this made
        work claimable (the parent loader's turn came).

        A run counts only its tasks without a parent as open: a child (an execute chunk) is
        covered by its parent, which waits for it. So a chunk's end touches its parent's row
        and, unless it has something to count, not the run's: the run's row would otherwise
        be a lock every chunk of every node queues on."""
        dead = state == "dead"
        tx.run("task_set_state", id=task["id"], state=state, error=error, delay=0.0)
        parent_id = task.get("parent_id")
        if parent_id:
            parent = tx.one("task_child_done", id=parent_id)
            if parent is not None and parent["state"] == "pending":
                tx.notify("tasks")
        run = self._tally(tx, task["run_id"], counts, closed=0 if parent_id else 1,
                          opened=opened, dead=dead, error=error if dead else None)
        if run is None or run["open_tasks"] > 0:
            return None
        return self._finish_run(tx, task["run_id"], run["job"], bool(run["cancel_requested"]),
                                run["dead_tasks"], run["error"])

    def _tally(self, tx: Tx, run_id: int, counts: Counts | None, closed: int = 0,
               opened: int = 0, dead: bool = False, error: str | None = None) -> Row | None:
        """Add to the run's row: counts, tasks closed and opened, a dead task. Callers make it
        their last statement, since the row stays locked until COMMIT and every node's tasks
        queue on it. Returns the run's row after, or None when there was nothing to add."""
        counts = counts or Counts()
        if not (closed or opened or dead or counts.any()):
            return None
        return tx.one("run_tally", id=run_id, closed=closed, opened=opened, dead=int(dead),
                      error=error, **vars(counts))

    # -- tasks ---------------------------------------------------------------------------

    def task_claim(self, node: str, limit: int, groups: list[str], zone: str | None,
                   lease_ttl: float, saturated: list[str] | None = None) -> list[ClaimedTask]:
        """Claim up to ``limit`` due tasks this node may run; each gets a new fencing token.
        No execute chunks of the ``saturated`` jobs (this node has enough of them)."""
        if limit <= 0:
            return []
        pg = self.dialect == "postgresql"
        saturated = saturated or []
        # PostgreSQL: one statement that also marks the runs running, in autocommit
        with self.db.single() if pg else self.db.transaction() as tx:
            rows = tx.all("task_claim", node=node, limit=limit, zone=zone, lease_ttl=lease_ttl,
                          groups=groups if pg else dumps(groups),
                          saturated=saturated if pg else dumps(saturated))
            if not pg:
                for run_id in {r["run_id"] for r in rows}:
                    tx.run("run_mark_running", id=run_id)
        return [ClaimedTask.from_row(r) for r in rows]

    def task_renew(self, node: str, held: list[tuple[int, int]],
                   lease_ttl: float) -> dict[int, tuple[int, bool]]:
        """Extend the leases this node still works on, named by (task id, token): a claim it
        abandoned is not renewed, so it lapses and is retried. Returns the ones still held:
        {task id: (token, run cancel requested)}."""
        if not held:
            return {}
        with self.db.transaction() as tx:
            if self.dialect == "postgresql":
                rows = tx.all("task_renew", node=node, lease_ttl=lease_ttl,
                              ids=[h[0] for h in held], tokens=[h[1] for h in held])
            else:
                rows = tx.all("task_renew", node=node, lease_ttl=lease_ttl, held=dumps(held))
        return {r["id"]: (r["token"], bool(r["cancel"])) for r in rows}

    def _fenced(self, tx: Tx, task_id: int, token: int) -> Row | None:
        """The running task if ``token`` is still its token (locked); None when it is stale."""
        return tx.one("task_fenced", id=task_id, token=token)

    def task_complete(self, task_id: int, token: int, counts: Counts | None = None,
                      job_state: dict[str, Any] | None = None) -> Outcome:
        with self.db.transaction() as tx:
            task = self._fenced(tx, task_id, token)
            if task is None:
                return self._stale(tx, task_id)
            if job_state is not None:
                tx.run("job_save_state", name=task["job"], state=dumps(job_state))
            finished = self._end_task(tx, task, "done", None, counts)
        return Outcome(run_finished=finished)

    def task_fail(self, task_id: int, token: int, error: str, retry_delay: float,
                  counts: Counts | None = None, final: bool = False) -> Outcome:
        """Record a failed attempt: retried after ``retry_delay`` while attempts remain."""
        with self.db.transaction() as tx:
            task = self._fenced(tx, task_id, token)
            if task is None:
                return self._stale(tx, task_id)
            if task["attempt"] < task["max_attempts"] and not final:
                tx.run("task_set_state", id=task_id, state="pending", error=error,
                       delay=retry_delay)
                tx.notify("tasks")
                self._tally(tx, task["run_id"], counts)
                return Outcome(retried=True)
            finished = self._end_task(tx, task, "dead", error, counts)
        return Outcome(dead=True, run_finished=finished)

    def _stale(self, tx: Tx, task_id: int) -> Outcome:
        row = tx.one("task_get", id=task_id)
        if row is not None:
            self._tally(tx, row["run_id"], Counts(stale=1))
        return Outcome(stale=True)

    def task_release(self, task_id: int, token: int, delay: float = 0.0) -> bool:
        """Hand a claimed task back unfinished, to run again after ``delay`` seconds (a draining
        node, or ``sluice.Retry``); the attempt is not counted."""
        with self.db.transaction() as tx:
            released = tx.run("task_release", id=task_id, token=token, delay=delay) > 0
            tx.notify("tasks")
        return released

    def task_retry_later(self, task_id: int, token: int, delay: float, reason: str) -> bool:
        """Run the task again after ``delay`` (``sluice.Retry``): the next attempt is counted,
        and the task gets one more attempt in exchange, so asking to retry never fails it."""
        with self.db.transaction() as tx:
            done = tx.run("task_retry_later", id=task_id, token=token, delay=delay,
                          error=reason) > 0
            tx.notify("tasks")
        return done

    def task_checkpoint(self, items: list[tuple[int, int, Any, int, Counts]]) -> set[int]:
        """Save the progress of running tasks in one transaction, each with the counts it adds
        to its run: ``(task id, token, progress, run id, counts)``. Counts of a task whose token
        is stale are not applied (its records will be executed by the new owner); the stale
        task ids are returned."""
        stale: set[int] = set()
        totals: dict[int, dict[str, int]] = {}
        group_commit = all(Counts(executed=c.executed, stale=c.stale) == c
                           for *_, c in items)  # what the record acker sends
        if self.dialect == "postgresql" and group_commit:  # one statement, one round trip
            with self.db.single() as tx:
                kept = {r["id"] for r in tx.all(
                    "task_checkpoint_many", ids=[i[0] for i in items],
                    tokens=[i[1] for i in items], progress=[dumps(i[2]) for i in items],
                    runs=[i[3] for i in items], executed=[i[4].executed for i in items],
                    stale=[i[4].stale for i in items])}
            return {i[0] for i in items} - kept
        with self.db.transaction() as tx:
            for task_id, token, progress, run_id, counts in items:
                if not tx.run("task_checkpoint", id=task_id, token=token,
                              progress=dumps(progress)):
                    stale.add(task_id)
                if task_id in stale:
                    counts = Counts(stale=1)
                total = totals.setdefault(run_id, dict.fromkeys(vars(Counts()), 0))
                for key, value in vars(counts).items():
                    total[key] += value
            for run_id, total in totals.items():
                self._tally(tx, run_id, Counts(**total))
        return stale

    def task_spawn(self, task_id: int, token: int, children: list[TaskPlan],
                   counts: Counts | None = None, wait: bool = True, complete: bool = False,
                   progress: Any = None) -> Outcome:
        """Create child tasks of a running task (fenced). With ``wait``, the parent sleeps in
        state ``waiting`` until its last child ends, then becomes pending again; with
        ``complete`` it ends now (done), in the same transaction."""
        fenced = _fenced_counts(counts or Counts())
        if self.dialect == "postgresql" and fenced is not None and wait and not complete and \
                children and all(c.parent_id == task_id and c.owner is None and
                                 c.target_node is None for c in children):
            return self._spawn_chunks(task_id, token, children, fenced, progress)
        with self.db.transaction() as tx:
            task = self._fenced(tx, task_id, token)
            if task is None:
                return self._stale(tx, task_id)
            parented = sum(1 for c in children if c.parent_id == task_id)
            if parented and (complete or not wait):
                raise ValueError("task_spawn: a task's own children need wait=True and "
                                 "complete=False (a parent outlives its children, which are "
                                 "therefore not counted open on the run)")
            self._insert_tasks(tx, task["run_id"], task["job"], children)
            tx.notify("tasks")  # sent at COMMIT; before the run's row is locked by the tally
            opened = len(children) - parented
            finished = None
            if complete:
                finished = self._end_task(tx, task, "done", None, counts, opened=opened)
            else:
                if wait:
                    tx.run("task_wait_children", id=task_id, n=parented,
                           progress=dumps(progress))
                self._tally(tx, task["run_id"], counts, opened=opened)
        return Outcome(run_finished=finished)

    def _spawn_chunks(self, task_id: int, token: int, children: list[TaskPlan],
                      counts: dict[str, int], progress: Any) -> Outcome:
        """PostgreSQL: a loader's chunks dispatched in one statement (``chunks_spawn``), so
        the run's row is locked for that statement only, not for the round trips of a
        transaction."""
        with self.db.single() as tx:
            row = tx.one("chunks_spawn", id=task_id, token=token, n=len(children),
                         progress=dumps(progress), kinds=[c.kind for c in children],
                         grps=[c.grp for c in children], zones=[c.zone for c in children],
                         payloads=[dumps(c.payload) for c in children],
                         max_attempts=[c.max_attempts for c in children],
                         delays=[float(c.delay) for c in children], **counts)
        return Outcome(stale=not (row and row["fenced"]))

    def task_finish_chunk(self, task_id: int, token: int, counts: Counts,
                          retry: TaskPlan | None, parked: list[tuple[Any, str, int]],
                          shard: str | None, parent_id: int | None = None,
                          wake: bool = True) -> Outcome:
        """End an execute chunk (fenced): count it, queue its failed records for another
        attempt (a sibling chunk under the same loader), park those out of attempts.
        ``parent_id``: its loader's task (``ClaimedTask.parent_id``); with one, and nothing to
        retry or park, PostgreSQL does it all in one statement (a chunk's end cannot end the
        run: its loader still waits). ``wake=False``: wake the nodes only if this made work
        claimable (the loader's turn, a retry)."""
        fenced = _fenced_counts(counts)
        if self.dialect == "postgresql" and parent_id and retry is None and not parked and \
                fenced is not None:
            with self.db.single() as tx:
                row = tx.one("chunk_end", id=task_id, token=token, wake=int(wake), **fenced)
            return Outcome(stale=not (row and row["fenced"]))
        with self.db.transaction() as tx:
            task = self._fenced(tx, task_id, token)
            if task is None:
                return self._stale(tx, task_id)
            if retry is not None:
                self._insert_tasks(tx, task["run_id"], task["job"], [retry])
                if retry.parent_id:
                    tx.run("task_add_children", id=retry.parent_id, n=1)
            for record, error, attempts in parked:
                tx.run("dead_insert", job=task["job"], run_id=task["run_id"], shard=shard,
                       record=dumps(record), error=error, attempts=attempts)
            # a chunk end of a rate-limited pipeline wakes the nodes: without it the rate
            # dipped by up to a third for seconds at a time (bench rate_curve, 2,000/s)
            if wake or retry is not None:
                tx.notify("tasks")
            finished = self._end_task(tx, task, "done", None, counts,
                                      opened=int(retry is not None and not retry.parent_id))
        return Outcome(run_finished=finished)

    def run_create(self, job: str, trigger: str, tasks: list[TaskPlan]) -> int:
        """A run that starts with the given tasks (e.g. parked records sent back)."""
        with self.db.transaction() as tx:
            now = float(tx.one("clock")["now"])  # type: ignore[index]
            row = tx.one("run_insert", job=job, scheduled_at=now, trigger=trigger,
                         state="pending", open_tasks=len(tasks), node=None, stats="{}")
            assert row is not None
            self._insert_tasks(tx, row["id"], job, tasks)
            tx.notify("tasks")
        return int(row["id"])

    def task_reap(self, node_ttl: float, limit: int = 200) -> list[Row]:
        """Recover work from dead nodes: expired leases go back to pending (or dead once out of
        attempts); pending tasks aimed at a dead node are re-aimed or skipped. Returns the tasks
        that died, for alerts."""
        died: list[Row] = []
        with self.db.transaction() as tx:
            # one reaper at a time (SQLite has one writer anyway): a dead node's work is then
            # taken back, and its re-runs bounded, in one pass rather than split between nodes
            lock = tx.one("reap_lock")
            if not lock or not lock["got"]:
                return died
            expired = tx.all("task_expired", limit=limit)
            # Once one lease of a dead node lapsed, take all its work back in this pass: its
            # in-flight window is then bounded once (see _rerun_bound), and recovery is sooner.
            seen = {t["id"] for t in expired}
            for owner in {t["owner"] for t in expired if t["owner"]}:
                more = tx.all("task_held_by_dead", owner=owner, ttl=node_ttl)
                expired += [t for t in more if t["id"] not in seen]
            for task in expired:
                error = f"lost: lease expired on node {task['owner']} (attempt {task['attempt']})"
                if task["kind"] == "exec" or task["attempt"] < task["max_attempts"]:
                    tx.run("task_set_state", id=task["id"], state="pending", error=error,
                           delay=0.0)
                else:
                    self._end_task(tx, task, "dead", error)
                    died.append({**task, "error": error, "payload": None, "progress": None})
            for task in tx.all("task_orphaned", ttl=node_ttl, limit=limit):
                if task["kind"] == "broadcast":
                    self._end_task(tx, task, "skipped", "target node left before it ran")
                else:
                    tx.run("task_untarget", id=task["id"])
            tx.run("node_delete_stale", horizon=max(60.0, node_ttl * 10))
            tx.notify("tasks")
            # last: every node's checkpoints queue on a run's row while this holds it
            for run_id, n in _rerun_bound(expired).items():
                self._tally(tx, run_id, Counts(reexecuted=n))
        return died

    def task_running_by_node(self) -> dict[str, int]:
        with self.db.transaction() as tx:
            return {r["owner"]: r["n"] for r in tx.all("task_running_by_node")}

    # -- rate ----------------------------------------------------------------------------

    def rate_reserve(self, name: str, permits: int, emission: float, burst: float = 0.0,
                     catch_up: float = 0.0) -> float:
        """Book ``permits`` on the shared GCRA bucket ``name`` (one per strictly limited job);
        returns the seconds until the first of them is due: positive, wait that long;
        negative (down to ``-catch_up``), they were due that long ago. ``emission`` is the
        interval per permit (1 / rate); ``burst`` the seconds of permits that may be handed
        out at once; ``catch_up`` how far back a bucket nobody booked may still be booked
        (the slots of the last ``catch_up`` seconds are not lost). Same arithmetic as
        ``sluice.rate.limiter.gcra_reserve``, which has ``catch_up = 0``."""
        with self.db.transaction() as tx:
            row = tx.one("rate_reserve", name=name, cost=permits * emission, catch_up=catch_up)
        assert row is not None
        return float(row["base"]) - burst - float(row["now"])

    def rate_backlog(self, job: str) -> tuple[int, int]:
        """Records of ``job``'s active runs loaded and not yet executed (nor parked), and the
        number of its load tasks still open (pending, running or waiting on their chunks)."""
        with self.db.transaction() as tx:
            row = tx.one("rate_backlog", job=job)
            loaders = tx.one("rate_open_loaders", job=job)
        assert row is not None and loaders is not None
        return max(0, int(row["backlog"])), int(loaders["n"])

    # -- locks ---------------------------------------------------------------------------

    def lock_acquire(self, name: str, owner: str, ttl: float) -> tuple[int, float] | None:
        with self.db.transaction() as tx:
            row = tx.one("lock_acquire", name=name, owner=owner, ttl=ttl)
        return (row["token"], row["lease_until"]) if row else None

    def lock_renew(self, name: str, token: int, ttl: float) -> float | None:
        with self.db.transaction() as tx:
            row = tx.one("lock_renew", name=name, token=token, ttl=ttl)
        return row["lease_until"] if row else None

    def lock_release(self, name: str, token: int) -> bool:
        with self.db.transaction() as tx:
            return tx.run("lock_release", name=name, token=token) > 0

    def lock_check(self, name: str, token: int) -> bool:
        with self.db.transaction() as tx:
            return tx.one("lock_check", name=name, token=token) is not None

    # -- parked (dead) records -----------------------------------------------------------

    def dead_park(self, job: str, run_id: int, shard: str | None,
                  records: list[tuple[Any, str, int]]) -> None:
        with self.db.transaction() as tx:
            for record, error, attempts in records:
                tx.run("dead_insert", job=job, run_id=run_id, shard=shard, record=dumps(record),
                       error=error, attempts=attempts)

    def dead_of_run(self, run_id: int, shard: str) -> set[str]:
        """Canonical JSON of the records of ``shard`` parked during ``run_id``."""
        with self.db.transaction() as tx:
            return {r["record"] for r in tx.all("dead_of_run", run_id=run_id, shard=shard)}

    def dead_list(self, job: str, limit: int = 100) -> list[Row]:
        with self.db.transaction() as tx:
            rows = tx.all("dead_list", job=job, limit=limit)
        for row in rows:
            row["record"] = json.loads(row["record"])
        return rows

    def dead_take(self, job: str, ids: list[int] | None) -> list[Row]:
        """Mark parked records as retried and return them (all of the job's when ids is None)."""
        with self.db.transaction() as tx:
            id_param: Any = ids or []
            if self.dialect == "sqlite":
                id_param = dumps(id_param)
            rows = tx.all("dead_take", job=job, all=int(ids is None), ids=id_param)
        for row in rows:
            row["record"] = json.loads(row["record"])
        return rows


def _job(row: Row) -> Row:
    for key in ("spec", "overrides", "state"):
        row[key] = json.loads(row[key])
    row["paused"] = bool(row["paused"])
    return row


def _rerun_bound(expired: list[Row]) -> dict[int, int]:
    """How many records of each run may run twice because these chunk leases lapsed: the ones
    their node had started but not acknowledged. A node holds at most ``concurrency`` records
    in flight, so per (run, node) that is at most its concurrency, and never more than the
    chunks' unfinished records."""
    todo: dict[tuple[int, str], int] = {}
    window: dict[str, int] = {}
    for t in expired:
        if t["kind"] != "exec":
            continue
        records = len(json.loads(t["payload"]).get("records", []))
        progress = json.loads(t["progress"]) if t["progress"] else {}
        done = len(progress.get("done", [])) if isinstance(progress, dict) else 0
        key = (t["run_id"], t["owner"] or "")
        todo[key] = todo.get(key, 0) + max(0, records - done)
        if t["owner_concurrency"]:
            window[t["owner"]] = t["owner_concurrency"]
    bound: dict[int, int] = {}
    for (run_id, owner), n in todo.items():
        n = min(n, window.get(owner, n))
        if n:
            bound[run_id] = bound.get(run_id, 0) + n
    return bound


def _fenced_counts(counts: Counts) -> dict[str, int] | None:
    """Parameters of the one-statement ends' run tally (``fenced_tally`` in queries.sql);
    None for counts it does not carry (parked, re-executed: those go the transaction's way)."""
    if counts.parked or counts.reexecuted:
        return None
    return {"shards": counts.shards, "loaded": counts.loaded, "executed": counts.executed,
            "failed": counts.failed, "stale": counts.stale, "tally": int(counts.any())}
