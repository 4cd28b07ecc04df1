-- sluice schema v3: how many times a task was claimed. Unlike attempt, a hand-back (drain)
-- does not lower it, so a chunk knows whether anyone held it before: only then must it fence
-- its rows before running them (sluice.pipeline.runtime.run_exec).
ALTER TABLE sluice_tasks ADD COLUMN claims integer NOT NULL DEFAULT 0;
