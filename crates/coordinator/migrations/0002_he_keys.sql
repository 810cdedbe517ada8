-- Homomorphic mode (issue 8): the parameter set of an he-bfv key, recorded
-- at registration after the public material was parsed (NULL for x25519),
-- and an index for the per-mode job counts in /confidential/stats.
ALTER TABLE client_keys ADD COLUMN params TEXT;
CREATE INDEX jobs_mode_state ON jobs(mode, state);
