-- sluice schema v4: a run counts only its tasks without a parent as open. A child (an execute
-- chunk) is covered by its parent, which waits for it, so a chunk's end no longer touches the
-- run's row (sluice.store.Store._end_task). Recount the runs still going.
UPDATE sluice_runs SET open_tasks = (
    SELECT count(*) FROM sluice_tasks t
     WHERE t.run_id = sluice_runs.id AND t.parent_id IS NULL
       AND t.state NOT IN ('done', 'dead', 'skipped'))
 WHERE state IN ('pending', 'running');
