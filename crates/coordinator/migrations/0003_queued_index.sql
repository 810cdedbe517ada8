-- The claim takes the oldest queued jobs, `ORDER BY created_at, id LIMIT n`.
-- `jobs_queued` holds exactly the rows it wants, in its order, so a claim
-- reads n entries instead of scanning (and on PostgreSQL sorting) the
-- backlog. The planner used to pick `jobs_mode_state` for plain jobs,
-- whose deduplicated (mode, state) entries keep every claimed job's dead
-- version in the scan's way until a vacuum; it now covers only the modes
-- the /confidential/stats counts read (`mode <> 'plain'`).
DROP INDEX jobs_mode_state;
CREATE INDEX jobs_mode_state ON jobs(mode, state) WHERE mode <> 'plain';
CREATE INDEX jobs_queued ON jobs(created_at, id) WHERE state = 'queued';
