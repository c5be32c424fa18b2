-- The units each customer holds of each deal that has a per-customer limit: what the limit counts
-- (held and confirmed reservations, waiting and offered waitlist entries), kept up to date by
-- triggers, so the check of a reservation batch reads one row per customer instead of summing all of
-- that customer's holds under the deal's row lock (11 ms a batch for a buyer with 34,000 holds).
-- Kept for limited deals only, so unlimited ones pay nothing: setting a limit fills a deal's rows in,
-- removing it deletes them. Every change to them is made under the deal's row lock, which orders
-- them against each other and against the fill.
-- Writers of holds wait until this migration commits: a hold taken or released by a running
-- service between the fill below and the triggers' creation would otherwise be missed by both, and
-- the total off for good (and, too low, make a later release fail the `units >= 0` check).
lock table deals, reservations, waitlist_entries in share row exclusive mode;

create table customer_holdings (
    deal_id     uuid not null references deals (id),
    customer_id text not null,
    units       integer not null check (units >= 0),
    primary key (deal_id, customer_id)
);

-- What a deal's customers hold now, counted from the holds themselves.
create function counted_holdings(of_deal uuid)
returns table (customer_id text, units integer)
language sql stable
as $$
    select customer_id, sum(quantity)::integer
      from (select customer_id, quantity from reservations
             where deal_id = of_deal and customer_id is not null and state in ('reserved', 'confirmed')
            union all
            select customer_id, quantity from waitlist_entries
             where deal_id = of_deal and state in ('waiting', 'offered')) holds
     group by customer_id
$$;

insert into customer_holdings (deal_id, customer_id, units)
select d.id, c.customer_id, c.units
  from deals d cross join lateral counted_holdings(d.id) c
 where d.max_units_per_customer is not null;

-- A limit set fills the deal's rows in; a limit removed deletes them. The update holds the deal's
-- row lock, and each statement here reads the holds committed before it.
create function deal_limit_changed() returns trigger
language plpgsql as $$
begin
    if new.max_units_per_customer is null then
        delete from customer_holdings where deal_id = new.id;
    else
        insert into customer_holdings (deal_id, customer_id, units)
        select new.id, c.customer_id, c.units from counted_holdings(new.id) c
        on conflict (deal_id, customer_id) do update set units = excluded.units;
    end if;
    return null;
end
$$;

create trigger deals_fill_customer_holdings
    after update of max_units_per_customer on deals
    for each row
    when ((old.max_units_per_customer is null) <> (new.max_units_per_customer is null))
    execute function deal_limit_changed();

-- Reservations are inserted by the statements that take units and claim offers, which hold the
-- deal's row lock.
create function reservations_inserted() returns trigger
language plpgsql as $$
begin
    insert into customer_holdings (deal_id, customer_id, units)
    select n.deal_id, n.customer_id, sum(n.quantity)::integer
      from new_rows n join deals d on d.id = n.deal_id
     where d.max_units_per_customer is not null and n.customer_id is not null
       and n.state in ('reserved', 'confirmed')
     group by n.deal_id, n.customer_id
     order by n.deal_id, n.customer_id
    on conflict (deal_id, customer_id) do update set units = customer_holdings.units + excluded.units;
    return null;
end
$$;

create trigger reservations_count_holdings
    after insert on reservations
    referencing new table as new_rows
    for each statement
    execute function reservations_inserted();

-- As before (20261201000011_waitlist.sql), and each deal's released units come off its customers'
-- holdings, under the deal's row lock, taken first.
create or replace function reservations_released() returns trigger
language plpgsql as $$
declare
    back record;
    reopened integer;
    limited boolean;
begin
    for back in
        select n.deal_id, sum(n.quantity)::integer as units,
               array_agg(n.id) filter (where n.waitlist_entry_id is not null) as claims
          from new_rows n join old_rows o on o.id = n.id
         where n.state = 'released' and o.state <> 'released'
         group by n.deal_id
         order by n.deal_id
    loop
        select max_units_per_customer is not null into limited from deals where id = back.deal_id for update;
        if limited then
            update customer_holdings h set units = h.units - r.units
              from (select n.customer_id, sum(n.quantity)::integer as units
                      from new_rows n join old_rows o on o.id = n.id
                     where n.deal_id = back.deal_id and n.state = 'released' and o.state <> 'released'
                       and n.customer_id is not null
                     group by n.customer_id) r
             where h.deal_id = back.deal_id and h.customer_id = r.customer_id;
        end if;
        reopened := 0;
        if back.claims is not null then
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

-- A waitlist entry counts its quantity while it waits or is offered. Entries are joined, left,
-- claimed, reopened and expired under the deal's row lock.
create function waitlist_entry_counted() returns trigger
language plpgsql as $$
declare
    delta integer := case when new.state in ('waiting', 'offered') then new.quantity else 0 end
                     - case when tg_op = 'UPDATE' and old.state in ('waiting', 'offered') then old.quantity else 0 end;
begin
    if delta <> 0 and exists (select from deals where id = new.deal_id and max_units_per_customer is not null) then
        insert into customer_holdings (deal_id, customer_id, units) values (new.deal_id, new.customer_id, delta)
        on conflict (deal_id, customer_id) do update set units = customer_holdings.units + excluded.units;
    end if;
    return null;
end
$$;

create trigger waitlist_entries_count_holdings
    after insert or update of state on waitlist_entries
    for each row
    execute function waitlist_entry_counted();
