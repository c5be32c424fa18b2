-- The waitlist (docs/reservations.md, "The waitlist"). A customer who asked for more units than a
-- deal had left waits in join order; units that come back to the deal are offered to waiting
-- customers first, in the transaction that frees them, by `return_units`. Triggers call it, so no
-- statement that releases a reservation or ends an offer can forget it.

-- How long a customer has to claim an offer (never past the deal's end). Added without a default,
-- then filled and constrained: Postgres refuses to add a column with a default to a table whose row
-- type a SQL-bodied function (deal_state_at) takes.
alter table deals add column offer_window_seconds integer check (offer_window_seconds between 60 and 3600);
update deals set offer_window_seconds = 300;
alter table deals alter column offer_window_seconds set default 300, alter column offer_window_seconds set not null;

-- When the per-customer limit last changed (by the clock, under the deal's row lock): the
-- invariant checker holds units taken since to the limit as it is, and earlier ones to the limit of
-- their time, which lowering it does not change.
alter table deals add column max_units_per_customer_since timestamptz;
update deals set max_units_per_customer_since = now();
alter table deals
    alter column max_units_per_customer_since set default now(),
    alter column max_units_per_customer_since set not null;

create table waitlist_entries (
    -- The customer's request_id when it sent one, which makes a retried join a no-op.
    id                   uuid primary key,
    deal_id              uuid not null references deals (id),
    customer_id          text not null check (char_length(customer_id) between 1 and 128),
    quantity             integer not null check (quantity between 1 and 100),
    state                text not null default 'waiting'
                         check (state in ('waiting', 'offered', 'claimed', 'left', 'expired')),
    -- Join order. Joins take the deal's row lock, so within a deal it is also commit order.
    join_seq             bigint generated always as identity,
    -- While offered: the units held for the entry (up to its quantity; more are added as units come
    -- back) and until when. Kept afterwards, as a record of the offer.
    offered_units        integer check (offered_units between 1 and quantity),
    offer_expire_time    timestamptz,
    -- When the entry stopped waiting (offered, left or expired), read from the clock under the
    -- deal's row lock, so the invariant checker can tell that no entry was offered while an earlier
    -- one still waited.
    waited_until         timestamptz,
    -- The claim: the reservation (order) that took the offer, and how many of its units.
    claim_reservation_id uuid,
    claimed_units        integer check (claimed_units between 1 and offered_units),
    create_time          timestamptz not null default clock_timestamp(),
    update_time          timestamptz not null default clock_timestamp(),
    constraint an_offer_has_units_and_an_end
        check (state <> 'offered' or (offered_units is not null and offer_expire_time is not null)),
    constraint a_claim_names_its_reservation
        check ((state = 'claimed') = (claim_reservation_id is not null and claimed_units is not null))
);

-- Waiting entries and unfinished offers of a deal, in join order: the hand-out and positions.
create index waitlist_entries_open_by_join on waitlist_entries (deal_id, join_seq)
    where state in ('waiting', 'offered');
-- Offers by their end, for the worker.
create index waitlist_entries_offered_by_end on waitlist_entries (offer_expire_time) where state = 'offered';
-- A customer's entries of a deal: ListWaitlistEntries and the per-customer limit.
create index waitlist_entries_by_customer on waitlist_entries (deal_id, customer_id, create_time, id);

-- The state of an entry at an instant: an offer past its end, and an open entry of a deal that has
-- ended, are expired even before the worker marks them so (as a deal past its expire_time is).
create function waitlist_entry_state_at(entry_state text, offer_end timestamptz, entry_deal uuid, at timestamptz)
returns text
language sql stable
return case
    when entry_state = 'offered' and offer_end <= at then 'expired'
    when entry_state in ('waiting', 'offered')
         and (select deal_state_at(d, at) from deals d where d.id = entry_deal) = 'expired' then 'expired'
    else entry_state
end;

-- Reservations made by claiming an offer name the entry.
alter table reservations add column waitlist_entry_id uuid references waitlist_entries (id);

-- Offers up to `units` of deal `offered_from`'s available units to its waitlist, strictly in join
-- order: each waiting entry, and each live offer smaller than what its entry asked for, gets up to
-- what it asked for (the head is offered what there is, even fewer units than it asked for, and more
-- as they come back while its offer lasts). An offer past its end gets nothing more: the worker
-- expires it and its units go on. What no entry takes stays available, and so do the units that
-- were on sale when a customer joined: only units that come back are offered. A deal that is not
-- live offers nothing. Takes the deal's row lock first, as joins, leaves and claims do.
create function offer_to_waitlist(offered_from uuid, units integer) returns void
language plpgsql as $$
declare
    deal deals;
    entry record;
    pool integer;
    given integer;
    offered integer := 0;
    at timestamptz;
begin
    select * into deal from deals where id = offered_from for update;
    -- The clock, not the transaction's start: the lock may have been waited for.
    at := clock_timestamp();
    pool := least(units, deal.available_units);
    if pool <= 0 or deal_state_at(deal, at) <> 'active' then
        return;
    end if;
    for entry in
        select id, quantity, state, coalesce(offered_units, 0) as offered
          from waitlist_entries
         where deal_id = offered_from
           and (state = 'waiting' or (state = 'offered' and offered_units < quantity and offer_expire_time > at))
         order by join_seq
    loop
        exit when pool = 0;
        given := least(entry.quantity - entry.offered, pool);
        if entry.state = 'waiting' then
            update waitlist_entries
               set state = 'offered', offered_units = given, waited_until = at, update_time = at,
                   offer_expire_time = least(at + make_interval(secs => deal.offer_window_seconds),
                                             deal.expire_time, deal.daily_reset_time)
             where id = entry.id;
        else
            update waitlist_entries set offered_units = offered_units + given, update_time = at
             where id = entry.id;
        end if;
        pool := pool - given;
        offered := offered + given;
    end loop;
    if offered > 0 then
        update deals set available_units = available_units - offered, update_time = now() where id = offered_from;
    end if;
end
$$;

-- Gives `units` back to deal `returned_to` and offers them to its waitlist.
create function return_units(returned_to uuid, units integer) returns void
language plpgsql as $$
begin
    if units > 0 then
        update deals set available_units = available_units + units, update_time = now() where id = returned_to;
        perform offer_to_waitlist(returned_to, units);
    end if;
end
$$;

-- Every statement that releases reservations (ReleaseUnits, abandoned attempts, the worker's
-- settling and expiries) gives their units back before it ends: once per deal, deals in id order, so
-- that two statements releasing units of the same deals lock them in the same order. A claim's hold
-- released without its order (the attempt was abandoned or never recorded) goes back to the entry's
-- offer instead while that offer lasts, so the customer can claim it again.
create function reservations_released() returns trigger
language plpgsql as $$
declare
    back record;
    reopened integer;
begin
    for back in
        select n.deal_id, sum(n.quantity)::integer as units,
               array_agg(n.id) filter (where n.waitlist_entry_id is not null) as claims
          from new_rows n join old_rows o on o.id = n.id
         where n.state = 'released' and o.state <> 'released'
         group by n.deal_id
         order by n.deal_id
    loop
        reopened := 0;
        if back.claims is not null then
            perform from deals where id = back.deal_id for update;
            with reopened_offers as (
                update waitlist_entries e
                   set state = 'offered', offered_units = e.claimed_units, claim_reservation_id = null,
                       claimed_units = null, update_time = clock_timestamp()
                  from deals d
                 where d.id = e.deal_id and e.claim_reservation_id = any(back.claims) and e.state = 'claimed'
                   and e.offer_expire_time > clock_timestamp() and deal_state_at(d, clock_timestamp()) = 'active'
                   and not exists (select from orders where orders.id = e.claim_reservation_id)
                returning e.offered_units
            )
            select coalesce(sum(offered_units), 0) into reopened from reopened_offers;
        end if;
        perform return_units(back.deal_id, back.units - reopened);
    end loop;
    return null;
end
$$;

create trigger reservations_return_units
    after update on reservations
    referencing old table as old_rows new table as new_rows
    for each statement
    execute function reservations_released();

-- An offer that ends (expired, left, or claimed for fewer units than it held) gives back what it
-- held and nobody claimed. Row by row: every statement that ends offers ends those of one deal,
-- under that deal's lock.
create function offer_ended() returns trigger
language plpgsql as $$
begin
    perform return_units(new.deal_id, old.offered_units - coalesce(new.claimed_units, 0));
    return null;
end
$$;

create trigger waitlist_entries_return_offer
    after update of state on waitlist_entries
    for each row
    when (old.state = 'offered' and new.state <> 'offered'
          and old.offered_units > coalesce(new.claimed_units, 0))
    execute function offer_ended();

-- WatchDeal shows the offer window too.
drop trigger deals_notify_change on deals;
create trigger deals_notify_change
    after update on deals
    for each row
    when (old.available_units is distinct from new.available_units
          or old.state is distinct from new.state
          or old.total_units is distinct from new.total_units
          or old.currency_code is distinct from new.currency_code
          or old.final_price_micros is distinct from new.final_price_micros
          or old.actual_price_micros is distinct from new.actual_price_micros
          or old.product_name is distinct from new.product_name
          or old.start_time is distinct from new.start_time
          or old.expire_time is distinct from new.expire_time
          or old.max_units_per_customer is distinct from new.max_units_per_customer
          or old.approval_window_seconds is distinct from new.approval_window_seconds
          or old.offer_window_seconds is distinct from new.offer_window_seconds)
    execute function notify_deal_changed();
