-- sluice schema v2 (SQLite): one GCRA bucket per strictly limited job (rate_mode="global").
-- The bucket is its theoretical arrival time, epoch seconds on the one machine's clock.
CREATE TABLE sluice_rate_buckets (
    name text PRIMARY KEY,
    tat real NOT NULL
);

-- The open loaders of a run, counted on every load of a rate-limited pipeline (the run's other
-- tasks, thousands of done chunks, stay out of it).
CREATE INDEX sluice_tasks_open_loads ON sluice_tasks (run_id)
    WHERE kind = 'load' AND state IN ('pending', 'running', 'waiting');
