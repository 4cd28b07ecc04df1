-- sluice schema v1 (SQLite). Times are epoch seconds (real) from the one machine's clock that
-- every process sharing the file reads; the token counter stands in for a sequence.
CREATE TABLE sluice_counters (name text PRIMARY KEY, value integer NOT NULL);
INSERT INTO sluice_counters VALUES ('token', 0);

CREATE TABLE sluice_meta (key text PRIMARY KEY, value text NOT NULL);

CREATE TABLE sluice_nodes (
    id text PRIMARY KEY,
    host text NOT NULL,
    pid integer NOT NULL,
    grp text,
    zone text,
    concurrency integer NOT NULL,
    started_at real NOT NULL,
    heartbeat_at real NOT NULL,
    state text NOT NULL DEFAULT 'live',
    info text NOT NULL DEFAULT '{}'
);

CREATE TABLE sluice_jobs (
    name text PRIMARY KEY,
    kind text NOT NULL,
    spec text NOT NULL,
    next_fire_at real,
    finish_delay real,
    paused integer NOT NULL DEFAULT 0,
    overrides text NOT NULL DEFAULT '{}',
    state text NOT NULL DEFAULT '{}',
    updated_at real NOT NULL
);
CREATE INDEX sluice_jobs_due ON sluice_jobs (next_fire_at) WHERE paused = 0;

CREATE TABLE sluice_runs (
    id integer PRIMARY KEY,
    job text NOT NULL,
    scheduled_at real NOT NULL,
    trigger text NOT NULL,
    state text NOT NULL,
    created_at real NOT NULL,
    started_at real,
    finished_at real,
    open_tasks integer NOT NULL DEFAULT 0,
    cancel_requested integer NOT NULL DEFAULT 0,
    dead_tasks integer NOT NULL DEFAULT 0,
    shards integer NOT NULL DEFAULT 0,
    loaded integer NOT NULL DEFAULT 0,
    executed integer NOT NULL DEFAULT 0,
    failed integer NOT NULL DEFAULT 0,
    parked integer NOT NULL DEFAULT 0,
    reexecuted integer NOT NULL DEFAULT 0,
    stale integer NOT NULL DEFAULT 0,
    node text,
    error text,
    stats text NOT NULL DEFAULT '{}',
    UNIQUE (job, scheduled_at)
);
CREATE INDEX sluice_runs_job ON sluice_runs (job, id DESC);
CREATE INDEX sluice_runs_active ON sluice_runs (job, state)
    WHERE state IN ('ready', 'queued', 'pending', 'running');

CREATE TABLE sluice_tasks (
    id integer PRIMARY KEY,
    run_id integer NOT NULL REFERENCES sluice_runs (id) ON DELETE CASCADE,
    job text NOT NULL,
    kind text NOT NULL,
    state text NOT NULL,
    target_node text,
    grp text,
    zone text,
    parent_id integer,
    waiting_on integer NOT NULL DEFAULT 0,
    payload text NOT NULL DEFAULT '{}',
    progress text NOT NULL DEFAULT '[]',
    attempt integer NOT NULL DEFAULT 0,
    max_attempts integer NOT NULL DEFAULT 1,
    owner text,
    token integer NOT NULL DEFAULT 0,
    lease_until real,
    available_at real NOT NULL,
    error text,
    created_at real NOT NULL,
    finished_at real
);
CREATE INDEX sluice_tasks_claim ON sluice_tasks (available_at, id) WHERE state = 'pending';
CREATE INDEX sluice_tasks_lease ON sluice_tasks (lease_until) WHERE state = 'running';
CREATE INDEX sluice_tasks_run ON sluice_tasks (run_id);

CREATE TABLE sluice_locks (
    name text PRIMARY KEY,
    owner text,
    token integer NOT NULL,
    lease_until real NOT NULL,
    acquired_at real NOT NULL
);

CREATE TABLE sluice_dead (
    id integer PRIMARY KEY,
    job text NOT NULL,
    run_id integer,
    shard text,
    record text NOT NULL,
    error text,
    attempts integer NOT NULL,
    created_at real NOT NULL,
    retried_at real
);
CREATE INDEX sluice_dead_job ON sluice_dead (job, id) WHERE retried_at IS NULL;
