-- sluice schema v2 (SQLite): one GCRA bucket per strictly limited job (rate_mode="global").
-- The bucket is its theoretical arrival time, epoch seconds on the one machine's clock.
CREATE TABLE sluice_rate_buckets (
    name text PRIMARY KEY,
    tat real NOT NULL
);
