-- Every statement the store runs, by name. Parameters are :name. Tokens in braces are filled in
-- per database so both stores run the same statements:
--   {now}          the database clock, epoch seconds (PostgreSQL: clock_timestamp(); SQLite: the
--                  one machine's clock, passed in)
--   {next_token}   a new fencing token, larger than every token handed out before
--   {skip_locked}  FOR UPDATE SKIP LOCKED on PostgreSQL, nothing on SQLite (one writer at a time)
-- A block named "x@postgresql" or "x@sqlite" replaces "x" on that database; {include:x} stands
-- for the block "x" (a part shared by several statements).

-- name: clock
SELECT {now} AS now

-- name: node_upsert
INSERT INTO sluice_nodes (id, host, pid, grp, zone, concurrency, started_at, heartbeat_at, state, info)
VALUES (:id, :host, :pid, :grp, :zone, :concurrency, {now}, {now}, 'live', :info)
ON CONFLICT (id) DO UPDATE SET heartbeat_at = excluded.heartbeat_at, state = 'live', info = excluded.info

-- name: node_heartbeat
UPDATE sluice_nodes SET heartbeat_at = {now}, state = :state, info = :info WHERE id = :id
RETURNING heartbeat_at AS now

-- name: node_live
SELECT id, host, pid, grp, zone, concurrency, started_at, heartbeat_at, state, info,
       {now} - heartbeat_at AS age
  FROM sluice_nodes WHERE heartbeat_at >= {now} - :ttl ORDER BY id

-- name: node_delete
DELETE FROM sluice_nodes WHERE id = :id

-- name: node_delete_stale
DELETE FROM sluice_nodes WHERE heartbeat_at < {now} - :horizon

-- name: job_upsert
INSERT INTO sluice_jobs (name, kind, spec, next_fire_at, finish_delay, updated_at)
VALUES (:name, :kind, :spec, :next_fire_at, :finish_delay, {now})
ON CONFLICT (name) DO UPDATE SET kind = excluded.kind, spec = excluded.spec,
    next_fire_at = excluded.next_fire_at, finish_delay = excluded.finish_delay,
    overrides = '{}', updated_at = excluded.updated_at
WHERE sluice_jobs.spec <> excluded.spec

-- name: job_all
SELECT name, kind, spec, next_fire_at, finish_delay, paused, overrides, state, updated_at
  FROM sluice_jobs ORDER BY name

-- name: job_get
SELECT name, kind, spec, next_fire_at, finish_delay, paused, overrides, state, updated_at
  FROM sluice_jobs WHERE name = :name

-- name: job_due
SELECT name, next_fire_at, {now} AS now FROM sluice_jobs
 WHERE paused = 0 AND next_fire_at <= {now} ORDER BY next_fire_at LIMIT :limit

-- name: job_next_fire
SELECT min(next_fire_at) AS next_fire_at, {now} AS now FROM sluice_jobs WHERE paused = 0

-- name: job_advance
UPDATE sluice_jobs SET next_fire_at = :new_next WHERE name = :name AND next_fire_at = :expected

-- name: job_advance_any
UPDATE sluice_jobs SET next_fire_at = :new_next WHERE name = :name AND next_fire_at IS NOT NULL

-- name: job_lock
SELECT name FROM sluice_jobs WHERE name = :name FOR UPDATE

-- name: job_lock@sqlite
SELECT name FROM sluice_jobs WHERE name = :name

-- name: job_set_paused
UPDATE sluice_jobs SET paused = :paused, updated_at = {now} WHERE name = :name

-- name: job_set_schedule
UPDATE sluice_jobs SET overrides = :overrides, next_fire_at = :next_fire_at,
       finish_delay = :finish_delay, updated_at = {now}
 WHERE name = :name

-- name: job_set_overrides
UPDATE sluice_jobs SET overrides = :overrides, updated_at = {now} WHERE name = :name

-- name: job_save_state
UPDATE sluice_jobs SET state = :state WHERE name = :name

-- name: job_after_run
UPDATE sluice_jobs SET next_fire_at = {now} + finish_delay
 WHERE name = :name AND finish_delay IS NOT NULL

-- name: job_versions
SELECT name, paused, overrides, updated_at FROM sluice_jobs

-- name: job_overdue
SELECT name, next_fire_at FROM sluice_jobs WHERE paused = 0 AND next_fire_at < :before

-- name: job_fingerprint
SELECT count(*) AS n, max(updated_at) AS latest FROM sluice_jobs

-- name: run_insert
INSERT INTO sluice_runs (job, scheduled_at, trigger, state, created_at, started_at, open_tasks,
                         node, stats)
VALUES (:job, :scheduled_at, :trigger, :state, {now},
        CASE WHEN CAST(:state AS text) IN ('pending', 'running') THEN {now} END, :open_tasks, :node, :stats)
ON CONFLICT (job, scheduled_at) DO NOTHING
RETURNING id

-- name: run_active
SELECT id, state FROM sluice_runs
 WHERE job = :job AND state IN ('ready', 'queued', 'pending', 'running') ORDER BY id

-- name: run_cancel_active
UPDATE sluice_runs SET cancel_requested = 1
 WHERE job = :job AND state IN ('ready', 'pending', 'running')

-- name: run_get
SELECT * FROM sluice_runs WHERE id = :id

-- name: run_list
SELECT * FROM sluice_runs WHERE (CAST(:job AS text) IS NULL OR job = :job) ORDER BY id DESC LIMIT :limit

-- name: run_ready
SELECT id, job, scheduled_at, trigger FROM sluice_runs WHERE state = 'ready' ORDER BY id
 LIMIT :limit {skip_locked}

-- name: run_start
UPDATE sluice_runs SET state = 'pending', open_tasks = :open_tasks, started_at = {now}
 WHERE id = :id AND state = 'ready'

-- name: run_tally
-- The run's row is a hot spot: a transaction touches it once, with its counts and the tasks
-- it closed and opened, as the last statement before COMMIT, so the row lock is held as
-- briefly as possible (Store._tally). Child tasks are not counted open: their parent covers
-- them (Store._end_task).
UPDATE sluice_runs SET open_tasks = open_tasks - :closed + :opened,
       state = CASE WHEN state = 'pending' THEN 'running' ELSE state END,
       dead_tasks = dead_tasks + :dead,
       error = COALESCE(:error, error),
       shards = shards + :shards, loaded = loaded + :loaded,
       executed = executed + :executed, failed = failed + :failed, parked = parked + :parked,
       reexecuted = reexecuted + :reexecuted, stale = stale + :stale
 WHERE id = :id
RETURNING open_tasks, job, cancel_requested, dead_tasks, error

-- name: run_mark_running
UPDATE sluice_runs SET state = 'running' WHERE id = :id AND state = 'pending'

-- name: run_finish
UPDATE sluice_runs SET state = :state, finished_at = {now} WHERE id = :id

-- name: run_promote_queued
UPDATE sluice_runs SET state = 'ready'
 WHERE id = (SELECT min(id) FROM sluice_runs WHERE job = :job AND state = 'queued')

-- name: task_insert
INSERT INTO sluice_tasks (run_id, job, kind, state, target_node, grp, zone, parent_id, payload,
                          max_attempts, available_at, created_at, owner, token, lease_until,
                          attempt, claims)
VALUES (:run_id, :job, :kind, :state, :target_node, :grp, :zone, :parent_id, :payload,
        :max_attempts, {now} + :delay, {now}, :owner,
        CASE WHEN CAST(:owner AS text) IS NULL THEN 0 ELSE {next_token} END,
        CASE WHEN CAST(:owner AS text) IS NULL THEN NULL ELSE {now} + :lease_ttl END,
        CASE WHEN CAST(:owner AS text) IS NULL THEN 0 ELSE 1 END,
        CASE WHEN CAST(:owner AS text) IS NULL THEN 0 ELSE 1 END)
RETURNING id, token

-- name: task_claim
UPDATE sluice_tasks
   SET state = 'running', owner = :node, token = {next_token}, attempt = attempt + 1,
       claims = claims + 1,
       lease_until = {now} + :lease_ttl
 WHERE id IN (
    SELECT id FROM sluice_tasks
     WHERE state = 'pending' AND available_at <= {now}
       AND (target_node IS NULL OR target_node = :node)
       AND (grp IS NULL OR grp IN (SELECT value FROM json_each(:groups)))
       AND (zone IS NULL OR :zone IS NULL OR zone = :zone)
       AND NOT (kind = 'exec' AND job IN (SELECT value FROM json_each(:saturated)))
     ORDER BY available_at, id LIMIT :limit)
RETURNING id, run_id, job, kind, parent_id, grp, payload, progress, attempt, max_attempts, token,
          claims,
          (SELECT scheduled_at FROM sluice_runs r WHERE r.id = run_id) AS scheduled_at

-- name: task_claim@postgresql
-- = ANY(ARRAY(...)): the picked ids are looked up by primary key. As IN (...), a plan made
-- while the table was small joined them with a scan of the whole table. One statement (run in
-- autocommit): the claimed tasks' runs become running in it too (run_mark_running).
WITH claimed AS (
UPDATE sluice_tasks
   SET state = 'running', owner = :node, token = {next_token}, attempt = attempt + 1,
       claims = claims + 1,
       lease_until = {now} + :lease_ttl
 WHERE id = ANY(ARRAY(
    SELECT id FROM sluice_tasks
     WHERE state = 'pending' AND available_at <= {now}
       AND (target_node IS NULL OR target_node = :node)
       AND (grp IS NULL OR grp = ANY(:groups))
       AND (zone IS NULL OR CAST(:zone AS text) IS NULL OR zone = :zone)
       AND NOT (kind = 'exec' AND job = ANY(CAST(:saturated AS text[])))
     ORDER BY available_at, id LIMIT :limit {skip_locked}))
RETURNING id, run_id, job, kind, parent_id, grp, payload, progress, attempt, max_attempts, token,
          claims,
          (SELECT scheduled_at FROM sluice_runs r WHERE r.id = run_id) AS scheduled_at),
     started AS (
UPDATE sluice_runs SET state = 'running'
 WHERE id IN (SELECT run_id FROM claimed) AND state = 'pending')
SELECT * FROM claimed

-- name: task_renew
UPDATE sluice_tasks SET lease_until = {now} + :lease_ttl
 WHERE owner = :node AND state = 'running'
   AND id IN (SELECT json_extract(value, '$[0]') FROM json_each(:held)
               WHERE json_extract(value, '$[1]') = sluice_tasks.token)
RETURNING id, token, (SELECT cancel_requested FROM sluice_runs r WHERE r.id = run_id) AS cancel

-- name: task_renew@postgresql
-- Rows are locked in id order, like task_checkpoint_many: two writers never deadlock. They
-- are found by primary key whatever the statistics say: id = ANY(:ids) beside each join, and
-- (state = 'running') IS TRUE, which the partial index on running tasks cannot serve (plans
-- made while the table was small scanned all of it, or every running task, per call).
WITH h AS (SELECT * FROM unnest(CAST(:ids AS bigint[]), CAST(:tokens AS bigint[])) AS h(id, token)),
     locked AS (SELECT s.id FROM sluice_tasks s JOIN h ON s.id = h.id AND s.token = h.token
                 WHERE s.id = ANY(CAST(:ids AS bigint[])) AND s.owner = :node
                   AND (s.state = 'running') IS TRUE ORDER BY s.id FOR UPDATE OF s)
UPDATE sluice_tasks t SET lease_until = {now} + :lease_ttl
  FROM locked WHERE t.id = locked.id AND t.id = ANY(CAST(:ids AS bigint[]))
RETURNING t.id, t.token, (SELECT cancel_requested FROM sluice_runs r WHERE r.id = t.run_id) AS cancel

-- name: task_get
SELECT * FROM sluice_tasks WHERE id = :id

-- name: task_fenced
SELECT id, run_id, job, kind, parent_id, attempt, max_attempts FROM sluice_tasks
 WHERE id = :id AND token = :token AND state = 'running' FOR UPDATE

-- name: task_fenced@sqlite
SELECT id, run_id, job, kind, parent_id, attempt, max_attempts FROM sluice_tasks
 WHERE id = :id AND token = :token AND state = 'running'

-- name: task_set_state
UPDATE sluice_tasks SET state = :state, owner = NULL, lease_until = NULL, error = :error,
       finished_at = CASE WHEN CAST(:state AS text) IN ('done', 'dead', 'skipped') THEN {now} END,
       available_at = {now} + :delay
 WHERE id = :id

-- name: task_release
UPDATE sluice_tasks SET state = 'pending', owner = NULL, lease_until = NULL,
       attempt = attempt - 1, available_at = {now} + :delay
 WHERE id = :id AND token = :token AND state = 'running'

-- name: task_checkpoint
UPDATE sluice_tasks SET progress = :progress
 WHERE id = :id AND token = :token AND state = 'running'

-- name: task_checkpoint_many@postgresql
-- A group commit in one statement: several running tasks' progress (rows locked in id order)
-- and their runs' counters. A task whose token is stale adds only stale = 1 to its run. Rows
-- are found by primary key, as in task_renew.
WITH h AS (SELECT * FROM unnest(CAST(:ids AS bigint[]), CAST(:tokens AS bigint[]),
                                CAST(:progress AS text[]), CAST(:runs AS bigint[]),
                                CAST(:executed AS bigint[]), CAST(:stale AS bigint[]))
                    AS h(id, token, progress, run_id, executed, stale)),
     locked AS (SELECT s.id, h.progress FROM sluice_tasks s JOIN h ON s.id = h.id
                 AND s.token = h.token WHERE s.id = ANY(CAST(:ids AS bigint[]))
                 AND (s.state = 'running') IS TRUE ORDER BY s.id FOR UPDATE OF s),
     saved AS (UPDATE sluice_tasks t SET progress = locked.progress FROM locked
                WHERE t.id = locked.id AND t.id = ANY(CAST(:ids AS bigint[])) RETURNING t.id),
     totals AS (SELECT h.run_id,
                       sum(CASE WHEN saved.id IS NULL THEN 0 ELSE h.executed END) AS executed,
                       sum(CASE WHEN saved.id IS NULL THEN 1 ELSE h.stale END) AS stale
                  FROM h LEFT JOIN saved ON saved.id = h.id GROUP BY h.run_id),
     counted AS (UPDATE sluice_runs r SET executed = r.executed + totals.executed,
                        stale = r.stale + totals.stale
                   FROM totals WHERE r.id = totals.run_id RETURNING r.id)
SELECT id FROM saved

-- name: task_wait_children
UPDATE sluice_tasks SET state = 'waiting', owner = NULL, lease_until = NULL,
       waiting_on = waiting_on + :n, progress = :progress
 WHERE id = :id

-- name: task_add_children
UPDATE sluice_tasks SET waiting_on = waiting_on + :n WHERE id = :id

-- name: fenced_tally
-- Part of the one-statement task ends below: the run's counts, from a statement whose step
-- "fenced" found the task by its token (one row) or not (then only a stale call is counted).
tally AS (
UPDATE sluice_runs r
   SET state = CASE WHEN state = 'pending' THEN 'running' ELSE state END,
       shards = shards + CASE WHEN f.n = 1 THEN :shards ELSE 0 END,
       loaded = loaded + CASE WHEN f.n = 1 THEN :loaded ELSE 0 END,
       executed = executed + CASE WHEN f.n = 1 THEN :executed ELSE 0 END,
       failed = failed + CASE WHEN f.n = 1 THEN :failed ELSE 0 END,
       stale = stale + CASE WHEN f.n = 1 THEN :stale ELSE 1 END
  FROM (SELECT count(*) AS n FROM fenced) f
 WHERE r.id = (SELECT run_id FROM sluice_tasks WHERE id = :id) AND (f.n = 0 OR :tally = 1)
RETURNING r.id)

-- name: chunks_spawn@postgresql
-- Store.task_spawn in one statement (autocommit), for a loader dispatching its chunks: if its
-- token is still current it waits for them, they are inserted, and its counts go to the run
-- (or only a stale call, when the token was not current). Rows are locked loader, then run.
WITH fenced AS (
UPDATE sluice_tasks SET state = 'waiting', owner = NULL, lease_until = NULL,
       waiting_on = waiting_on + :n, progress = :progress
 WHERE id = :id AND token = :token AND state = 'running'
RETURNING run_id, job),
children AS (
INSERT INTO sluice_tasks (run_id, job, kind, state, grp, zone, parent_id, payload, max_attempts,
                          available_at, created_at, token, attempt, claims)
SELECT fenced.run_id, fenced.job, c.kind, 'pending', c.grp, c.zone, :id, c.payload,
       c.max_attempts, {now} + c.delay, {now}, 0, 0, 0
  FROM fenced, unnest(CAST(:kinds AS text[]), CAST(:grps AS text[]), CAST(:zones AS text[]),
                      CAST(:payloads AS text[]), CAST(:max_attempts AS int[]),
                      CAST(:delays AS float8[])) AS c(kind, grp, zone, payload, max_attempts, delay)
RETURNING id),
{include:fenced_tally}
SELECT (SELECT count(*) FROM fenced) AS fenced, (SELECT count(*) FROM children) AS children,
       (SELECT count(*) FROM tally) AS tally,
       (SELECT pg_notify('sluice', 'tasks') FROM fenced) AS notified

-- name: chunk_end@postgresql
-- Store.task_finish_chunk in one statement (autocommit), for a chunk under a loader with nothing
-- to retry or park: end it if its token is still current, then its loader's count of waiting
-- children, then the run's counts (or only a stale completion when the token was not current).
-- The select list reads the steps in that order, so rows are locked as in the multi-statement
-- path: chunk, loader, run. The nodes are woken when the loader's turn came, or always (:wake)
-- for a pipeline with a rate, whose nodes hold back from claiming while their limiter is busy.
WITH fenced AS (
UPDATE sluice_tasks SET state = 'done', owner = NULL, lease_until = NULL, error = NULL,
       finished_at = {now}, available_at = {now}
 WHERE id = :id AND token = :token AND state = 'running'
RETURNING run_id, parent_id),
parent AS (
UPDATE sluice_tasks p SET waiting_on = waiting_on - 1,
       state = CASE WHEN waiting_on - 1 = 0 AND state = 'waiting' THEN 'pending' ELSE state END,
       available_at = {now}, attempt = 0
  FROM fenced WHERE p.id = fenced.parent_id
RETURNING p.state),
{include:fenced_tally}
SELECT (SELECT count(*) FROM fenced) AS fenced, (SELECT count(*) FROM parent) AS parent,
       (SELECT count(*) FROM tally) AS tally,
       (SELECT pg_notify('sluice', 'tasks') FROM fenced
         WHERE :wake = 1 OR EXISTS (SELECT 1 FROM parent WHERE state = 'pending')) AS notified

-- name: task_child_done
UPDATE sluice_tasks SET waiting_on = waiting_on - 1,
       state = CASE WHEN waiting_on - 1 = 0 AND state = 'waiting' THEN 'pending' ELSE state END,
       available_at = {now}, attempt = 0
 WHERE id = :id
RETURNING state

-- name: task_expired
SELECT id, run_id, job, kind, parent_id, attempt, max_attempts, owner, token, payload, progress,
       (SELECT concurrency FROM sluice_nodes n WHERE n.id = t.owner) AS owner_concurrency
  FROM sluice_tasks t
 WHERE state = 'running' AND lease_until < {now} ORDER BY id LIMIT :limit {skip_locked}

-- name: reap_lock
SELECT 1 AS got

-- name: reap_lock@postgresql
SELECT pg_try_advisory_xact_lock(hashtext('sluice_reap')) AS got

-- name: task_held_by_dead
SELECT id, run_id, job, kind, parent_id, attempt, max_attempts, owner, token, payload, progress,
       (SELECT concurrency FROM sluice_nodes n WHERE n.id = t.owner) AS owner_concurrency
  FROM sluice_tasks t
 WHERE state = 'running' AND owner = :owner
   AND NOT EXISTS (SELECT 1 FROM sluice_nodes n
                    WHERE n.id = t.owner AND n.heartbeat_at >= {now} - :ttl)
 ORDER BY id {skip_locked}

-- name: task_orphaned
SELECT id, run_id, kind FROM sluice_tasks t
 WHERE state = 'pending' AND target_node IS NOT NULL
   AND NOT EXISTS (SELECT 1 FROM sluice_nodes n
                    WHERE n.id = t.target_node AND n.heartbeat_at >= {now} - :ttl)
 LIMIT :limit {skip_locked}

-- name: task_untarget
UPDATE sluice_tasks SET target_node = NULL WHERE id = :id AND state = 'pending'

-- name: task_by_run
SELECT id, kind, state, target_node, grp, payload, progress, attempt, claims, owner, error
  FROM sluice_tasks WHERE run_id = :run_id ORDER BY id

-- name: task_running_by_node
SELECT owner, count(*) AS n FROM sluice_tasks WHERE state = 'running' GROUP BY owner

-- name: lock_acquire
INSERT INTO sluice_locks (name, owner, token, lease_until, acquired_at)
VALUES (:name, :owner, {next_token}, {now} + :ttl, {now})
ON CONFLICT (name) DO UPDATE SET owner = excluded.owner, token = excluded.token,
    lease_until = excluded.lease_until, acquired_at = excluded.acquired_at
WHERE sluice_locks.owner IS NULL OR sluice_locks.lease_until < excluded.acquired_at
RETURNING token, lease_until

-- name: lock_renew
UPDATE sluice_locks SET lease_until = {now} + :ttl
 WHERE name = :name AND token = :token AND owner IS NOT NULL AND lease_until >= {now}
RETURNING lease_until

-- name: lock_release
UPDATE sluice_locks SET owner = NULL, lease_until = {now}
 WHERE name = :name AND token = :token AND owner IS NOT NULL

-- name: lock_check
SELECT token FROM sluice_locks
 WHERE name = :name AND token = :token AND owner IS NOT NULL AND lease_until >= {now}

-- name: dead_insert
INSERT INTO sluice_dead (job, run_id, shard, record, error, attempts, created_at)
VALUES (:job, :run_id, :shard, :record, :error, :attempts, {now})

-- name: dead_list
SELECT id, job, run_id, shard, record, error, attempts, created_at FROM sluice_dead
 WHERE job = :job AND retried_at IS NULL ORDER BY id LIMIT :limit

-- name: dead_take
UPDATE sluice_dead SET retried_at = {now}
 WHERE job = :job AND retried_at IS NULL AND (:all = 1 OR id IN (SELECT value FROM json_each(:ids)))
RETURNING id, shard, record

-- name: dead_take@postgresql
UPDATE sluice_dead SET retried_at = {now}
 WHERE job = :job AND retried_at IS NULL AND (:all = 1 OR id = ANY(:ids))
RETURNING id, shard, record

-- name: notify
SELECT pg_notify('sluice', :channel)

-- name: notify@sqlite
SELECT :channel

-- name: dead_of_run
SELECT record FROM sluice_dead WHERE run_id = :run_id AND shard = :shard

-- name: task_retry_later
UPDATE sluice_tasks SET state = 'pending', owner = NULL, lease_until = NULL,
       max_attempts = max_attempts + 1, available_at = {now} + :delay, error = :error
 WHERE id = :id AND token = :token AND state = 'running'

-- Read-only views for the dashboard, `sluice status` and the metrics (never on the hot path).

-- name: run_latest_by_job
SELECT * FROM sluice_runs WHERE id IN (SELECT max(id) FROM sluice_runs GROUP BY job)

-- name: run_count_by_state
SELECT job, state, count(*) AS n FROM sluice_runs GROUP BY job, state

-- name: run_totals_by_job
SELECT job, sum(loaded) AS loaded, sum(executed) AS executed, sum(failed) AS failed,
       sum(parked) AS parked FROM sluice_runs GROUP BY job

-- name: run_progress
-- The state list is the active-runs index's own predicate, so that index serves the query.
SELECT id, job, state, loaded, executed, failed, parked, started_at, finished_at, {now} AS now
  FROM sluice_runs
 WHERE (job IN (SELECT value FROM json_each(:jobs))
        AND state IN ('ready', 'queued', 'pending', 'running'))
    OR id IN (SELECT value FROM json_each(:ids))

-- name: run_progress@postgresql
SELECT id, job, state, loaded, executed, failed, parked, started_at, finished_at, {now} AS now
  FROM sluice_runs
 WHERE (job = ANY(:jobs) AND state IN ('ready', 'queued', 'pending', 'running'))
    OR id = ANY(:ids)

-- name: run_fire_lag
SELECT r.job, r.created_at - r.scheduled_at AS lag FROM sluice_runs r
 WHERE r.id IN (SELECT max(id) FROM sluice_runs WHERE trigger = 'schedule' GROUP BY job)

-- name: task_shard_progress
SELECT json_extract(payload, '$.shard') AS shard, kind, state, count(*) AS tasks,
       sum(CASE WHEN kind = 'exec' AND json_extract(payload, '$.attempts[0]') = 0
                THEN json_array_length(payload, '$.records') ELSE 0 END) AS loaded,
       sum(CASE WHEN kind = 'exec'
                THEN coalesce(json_array_length(progress, '$.done'), 0) ELSE 0 END) AS executed
  FROM sluice_tasks WHERE run_id = :run_id AND kind IN ('load', 'exec')
 GROUP BY json_extract(payload, '$.shard'), kind, state

-- name: task_shard_progress@postgresql
SELECT CAST(payload AS json)->>'shard' AS shard, kind, state, count(*) AS tasks,
       sum(CASE WHEN kind = 'exec' AND (CAST(payload AS json)->'attempts'->>0) = '0'
                THEN json_array_length(CAST(payload AS json)->'records') ELSE 0 END) AS loaded,
       sum(CASE WHEN kind = 'exec' AND json_typeof(CAST(progress AS json)->'done') = 'array'
                THEN json_array_length(CAST(progress AS json)->'done') ELSE 0 END) AS executed
  FROM sluice_tasks WHERE run_id = :run_id AND kind IN ('load', 'exec')
 GROUP BY 1, kind, state

-- name: dead_count_by_job
SELECT job, count(*) AS n FROM sluice_dead WHERE retried_at IS NULL GROUP BY job

-- name: rate_reserve
-- GCRA: tat = max(tat, now - catch_up) + cost; excluded.tat is now + cost.
INSERT INTO sluice_rate_buckets (name, tat) VALUES (:name, {now} + :cost)
ON CONFLICT (name) DO UPDATE
   SET tat = max(sluice_rate_buckets.tat, excluded.tat - :cost - :catch_up) + :cost
RETURNING tat - :cost AS base, {now} AS now

-- name: rate_reserve@postgresql
INSERT INTO sluice_rate_buckets (name, tat) VALUES (:name, {now} + :cost)
ON CONFLICT (name) DO UPDATE
   SET tat = GREATEST(sluice_rate_buckets.tat, excluded.tat - :cost - :catch_up) + :cost
RETURNING tat - :cost AS base, {now} AS now

-- name: rate_backlog
SELECT COALESCE(sum(loaded - executed - parked), 0) AS backlog
  FROM sluice_runs WHERE job = :job AND state IN ('pending', 'running')

-- name: rate_open_loaders
SELECT count(*) AS n FROM sluice_tasks
 WHERE kind = 'load' AND state IN ('pending', 'running', 'waiting')
   AND run_id IN (SELECT id FROM sluice_runs
                   WHERE job = :job AND state IN ('pending', 'running'))
