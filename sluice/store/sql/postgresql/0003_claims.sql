-- sluice schema v3: how many times a task was claimed. Unlike attempt, a hand-back (drain)
-- does not lower it, so a chunk knows whether anyone held it before: only then must it fence
-- its rows before running them (sluice.pipeline.runtime.run_exec).
ALTER TABLE sluice_tasks ADD COLUMN claims integer NOT NULL DEFAULT 0;

-- A chunk's payload (its records) is written once and read once or twice: keep it out of line
-- but uncompressed, which costs the server less CPU than compressing and decompressing it.
ALTER TABLE sluice_tasks ALTER COLUMN payload SET STORAGE EXTERNAL;
