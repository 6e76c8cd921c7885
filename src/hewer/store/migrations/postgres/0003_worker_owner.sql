-- The token a worker registered with: only callers presenting it may act as that worker
-- (open its action stream, heartbeat, report for its attempts). NULL: registered before
-- this column existed; the first caller to open its stream takes it.
ALTER TABLE workers ADD COLUMN owner_token text COLLATE "C";
