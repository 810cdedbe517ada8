-- The job path's indexes on `jobs` cover only the rows their queries read.
--
-- `jobs_island (island_id, state)` held an entry for every job an island
-- had ever run, and the claim's capacity count (`island_id = ? AND state IN
-- ('assigned', 'running')`) and the settlement's lookup walked all of them:
-- the cost of a claim and of a settlement grew with the island's history
-- (≈ 400 rows filtered per statement after 3,000 jobs on 8 islands).
-- `jobs_active` holds only leased jobs, so those scans read about as many
-- entries as the island has jobs in hand.
--
-- `jobs_lease` is read only by the lease sweep (`state IN ('assigned',
-- 'running') AND lease_expires_at < ?`), and `jobs_queue (state,
-- created_at)` by no query since the claim moved to `jobs_queued`; the
-- deadline sweep (`state = 'queued' AND deadline_at <= ?`) now has
-- `jobs_deadline`. Every index also costs an insertion on each update that
-- changes an indexed column (on PostgreSQL, on each non-HOT update): a job
-- now enters, over its life, the primary key and `jobs_account` three times
-- each, but the partial indexes only while it is in their state.
DROP INDEX jobs_queue;
DROP INDEX jobs_island;
DROP INDEX jobs_lease;
CREATE INDEX jobs_active ON jobs(island_id) WHERE state IN ('assigned', 'running');
CREATE INDEX jobs_lease ON jobs(lease_expires_at) WHERE state IN ('assigned', 'running');
CREATE INDEX jobs_deadline ON jobs(deadline_at) WHERE state = 'queued';
