-- sluice schema v2 (PostgreSQL): one GCRA bucket per strictly limited job (rate_mode="global").
-- The bucket is its theoretical arrival time, epoch seconds on the database clock.
CREATE TABLE sluice_rate_buckets (
    name text PRIMARY KEY,
    tat double precision NOT NULL
);

-- The open loaders of a run, counted on every load of a rate-limited pipeline (the run's other
-- tasks, thousands of done chunks, stay out of it).
CREATE INDEX sluice_tasks_open_loads ON sluice_tasks (run_id)
    WHERE kind = 'load' AND state IN ('pending', 'running', 'waiting');

-- Running tasks are rewritten on every group commit of their records (progress): leave room
-- in each page so those updates stay HOT (no new index entries, pruned in place).
ALTER TABLE sluice_tasks SET (fillfactor = 50);
