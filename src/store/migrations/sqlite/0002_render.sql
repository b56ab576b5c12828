-- How an endpoint's request body is made: preset, body format and templates (json).
alter table endpoints add column render text not null default '{}';
