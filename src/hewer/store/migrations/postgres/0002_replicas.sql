-- Engine replicas sharing one database.

-- Who schedules: one row per lease. The token grows by one at every change of hands; the
-- holder's write transactions check it (fencing), so a replica that lost the lease while
-- paused or cut off cannot commit decisions afterwards. Times are the database's clock,
-- the one clock every replica shares.
CREATE TABLE engine_leases (
    name         text COLLATE "C" PRIMARY KEY,
    holder       text NOT NULL,
    token        bigint NOT NULL,
    grpc_address text NOT NULL,
    api_address  text NOT NULL,
    acquired_at  timestamptz NOT NULL,
    expires_at   timestamptz NOT NULL
);

-- Every replica, as last seen: where it listens and whether it schedules.
CREATE TABLE engine_replicas (
    id           text COLLATE "C" PRIMARY KEY,
    grpc_address text NOT NULL,
    api_address  text NOT NULL,
    scheduling   boolean NOT NULL,
    started_at   timestamptz NOT NULL,
    seen_at      timestamptz NOT NULL
);
