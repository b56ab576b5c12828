-- State several nodes share: each endpoint's rate-limit bucket and its pause.
create table rate_buckets (
    endpoint_id  text collate "C" primary key,
    tokens       double precision not null,
    at           bigint not null,
    taken        boolean not null
);

create table endpoint_pauses (
    endpoint_id  text collate "C" primary key,
    until_at     bigint not null
);
