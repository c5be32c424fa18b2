-- Deals and the units reserved from them. Owned by deal-service; the expiry worker changes `state`.

create table deals (
    id                   uuid primary key,
    product_name         text not null check (char_length(product_name) between 1 and 200),
    currency_code        text not null check (currency_code ~ '^[A-Z]{3}$'),
    -- Prices in micros (millionths of a unit): exact, and wide enough for any price we accept.
    actual_price_micros  bigint not null check (actual_price_micros > 0),
    final_price_micros   bigint not null check (final_price_micros > 0 and final_price_micros <= actual_price_micros),
    total_units          integer not null check (total_units >= 1),
    available_units      integer not null,
    start_time           timestamptz not null,
    expire_time          timestamptz not null,
    -- Every day's deals end at 00:00 UTC: this is the first 00:00 UTC after the deal's start.
    daily_reset_time     timestamptz not null
        generated always as ((date_trunc('day', start_time at time zone 'UTC') + interval '1 day') at time zone 'UTC') stored,
    -- 'expired' is final. 'scheduled' and 'active' are the worker's bookkeeping: what a deal really is
    -- at any instant is `deal_state_at(deal, instant)`, which also honours the times.
    state                text not null check (state in ('scheduled', 'active', 'expired')),
    create_time          timestamptz not null default now(),
    update_time          timestamptz not null default now(),
    constraint units_within_total check (available_units between 0 and total_units),
    constraint window_at_most_12_hours check (expire_time > start_time and expire_time <= start_time + interval '12 hours')
);

-- Live deals by expiry: ListDeals' default view and the sweep.
create index deals_unexpired_by_expire_time on deals (expire_time, id) where state <> 'expired';
-- Scheduled deals by start: activation by the sweep and the daily reset.
create index deals_scheduled_by_start_time on deals (start_time) where state = 'scheduled';

-- The one definition of what state a deal is in at an instant. A deal past its expire_time, or past
-- the 00:00 UTC after its start, is expired even before the worker marks it so.
create function deal_state_at(deal deals, at timestamptz) returns text
language sql immutable parallel safe
return case
    when deal.state = 'expired' or deal.expire_time <= at or deal.daily_reset_time <= at then 'expired'
    when deal.start_time <= at then 'active'
    else 'scheduled'
end;

create table reservations (
    -- Chosen by the caller (order-service uses the order id), which makes a retried reserve a no-op.
    id                 uuid primary key,
    deal_id            uuid not null references deals (id),
    quantity           integer not null check (quantity > 0),
    currency_code      text not null,
    unit_price_micros  bigint not null check (unit_price_micros > 0),
    state              text not null default 'reserved' check (state in ('reserved', 'released')),
    create_time        timestamptz not null default now(),
    update_time        timestamptz not null default now()
);

create index reservations_by_deal on reservations (deal_id);
