-- One row per UTC day whose 00:00 reset has been performed. Its primary key is what makes the reset
-- happen exactly once, however many workers run and however late one starts.

create table daily_resets (
    day             date primary key,
    performed_time  timestamptz not null,
    deals_ended     bigint not null,
    deals_started   bigint not null
);
