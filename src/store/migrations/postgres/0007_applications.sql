-- Applications (provider mode): a provider's customers, each with their own API keys and
-- endpoints. `settings` holds the metadata, quotas and rate limit (json). An endpoint or an API
-- token with an `application_id` belongs to that application; without one, to the operator.
-- An endpoint's `labels` (json) are the labels its events must carry.
create table applications (
    id          text collate "C" primary key,
    uid         text unique,
    name        text not null,
    settings    text not null,
    created_at  bigint not null,
    updated_at  bigint not null
);
alter table api_tokens add column application_id text collate "C";
-- Tokens that stop working at a time: the portal's sessions.
alter table api_tokens add column expires_at bigint;
alter table endpoints add column labels text not null default '{}';
alter table endpoints add column application_id text collate "C";
create index api_tokens_by_application on api_tokens (application_id)
    where application_id is not null;
create index endpoints_by_application on endpoints (application_id)
    where application_id is not null;

-- One-time links into an application's customer portal: stored hashed, used once, expiring.
create table portal_links (
    id              text collate "C" primary key,
    application_id  text collate "C" not null,
    token_hash      text not null unique,
    read_only       bigint not null,
    expires_at      bigint not null,
    used_at         bigint,
    created_at      bigint not null
);
create index portal_links_by_application on portal_links (application_id);

-- Applications' events per day, counted by every node in one place.
create table quota_counts (
    application_id  text collate "C" not null,
    day             bigint not null,
    count           bigint not null,
    primary key (application_id, day)
);
