-- The nodes working on this database and when each last said it was alive (the database's
-- own clock, in milliseconds, so that the nodes' clocks need not agree). A delivery leased to
-- a node that has gone silent is claimed by the others at once, without waiting for its lease.
create table nodes (
    id            text collate "C" primary key,
    heartbeat_at  bigint not null
);
