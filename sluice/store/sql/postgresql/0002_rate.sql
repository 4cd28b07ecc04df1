-- sluice schema v2 (PostgreSQL): one GCRA bucket per strictly limited job (rate_mode="global").
-- The bucket is its theoretical arrival time, epoch seconds on the database clock.
CREATE TABLE sluice_rate_buckets (
    name text PRIMARY KEY,
    tat double precision NOT NULL
);
