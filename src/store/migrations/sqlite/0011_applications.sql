-- Applications (provider mode): a provider's customers, each with their own API keys and
-- endpoints. `settings` holds the metadata, quotas and rate limit (json). An endpoint or an API
-- token with an `application_id` belongs to that application; without one, to the operator.
-- An endpoint's `labels` (json) are the labels its events must carry.
create table applications (
    id          text primary key,
    uid         text unique,
    name        text not null,
    settings    text not null,
    created_at  integer not null,
    updated_at  integer not null
);
alter table api_tokens add column application_id text;
-- Tokens that stop working at a time: the portal's sessions.
alter table api_tokens add column expires_at integer;
alter table endpoints add column labels text not null default '{}';
alter table endpoints add column application_id text;
create index api_tokens_by_application on api_tokens (application_id)
    where application_id is not null;
create index endpoints_by_application on endpoints (application_id)
    where application_id is not null;

-- One-time links into an application's customer portal: stored hashed, used once, expiring.
create table portal_links (
    id              text primary key,
    application_id  text not null,
    token_hash      text not null unique,
    read_only       integer not null,
    expires_at      integer not null,
    used_at         integer,
    created_at      integer not null
);
create index portal_links_by_application on portal_links (application_id);
