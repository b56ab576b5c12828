-- Trading accounts: where orders go. `settings` is the venue's settings (json), `halted` why
-- and since when the kill switch is on (json), null while it is off.
create table accounts (
    id          text primary key,
    name        text not null unique,
    venue       text not null,
    settings    text not null,
    halted      text,
    created_at  integer not null,
    updated_at  integer not null
);
