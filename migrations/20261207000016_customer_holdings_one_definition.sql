-- The per-customer total (customer_holdings), defined in this one file: what a hold counts, the one
-- function every change goes through, and the triggers that call it. It replaces migration 12's
-- arithmetic, repeated in each trigger, whose waitlist path subtracted with `insert … on conflict do
-- update`: Postgres checks the proposed row, a negative count, against `units >= 0` before it looks
-- for the conflict, so every leave, claim and expiry of an entry of a limited deal failed.
--
-- The total of a customer of a deal with a limit is the sum, over the customer's rows of that deal,
-- of `reservation_counted_units` and `entry_counted_units`. Every change to those rows is made under
-- the deal's row lock (taken by the statement, or first thing by the trigger), so the totals change
-- one deal at a time and in the order of the changes. invariant-check recomputes them from the rows.

-- Writers of holds wait until this migration commits, as in migration 12.
lock table deals, reservations, waitlist_entries in share row exclusive mode;

-- What a reservation counts against its customer's limit: its units while it holds them.
create function reservation_counted_units(state text, customer_id text, quantity integer) returns integer
immutable parallel safe language sql
return case when customer_id is not null and state in ('reserved', 'confirmed') then quantity else 0 end;

-- What a waitlist entry counts: the units it asks for while it waits or holds an offer.
create function entry_counted_units(state text, quantity integer) returns integer
immutable parallel safe language sql
return case when state in ('waiting', 'offered') then quantity else 0 end;

-- What a deal's customers hold now, counted from the rows themselves.
create or replace function counted_holdings(of_deal uuid)
returns table (customer_id text, units integer)
language sql stable
as $$
    select customer_id, sum(units)::integer
      from (select customer_id, reservation_counted_units(state, customer_id, quantity) as units
              from reservations where deal_id = of_deal and customer_id is not null
            union all
            select customer_id, entry_counted_units(state, quantity)
              from waitlist_entries where deal_id = of_deal) holds
     where units > 0
     group by customer_id
$$;

-- Moves the totals of deal `of_deal`'s `customers` by `changes` (one each, either sign), if the deal
-- has a limit. The only writer of customer_holdings besides the fill when a limit is set. A
-- customer's row, once made, is kept at zero rather than deleted while the deal has a limit, so a
-- decrease always finds the row its units were added to; one that does not is a bug, and fails the
-- statement instead of leaving a total the limit would trust.
create function move_holdings(of_deal uuid, customers text[], changes integer[]) returns void
language plpgsql as $$
declare
    decreased integer;
    found_rows integer;
begin
    if not exists (select from deals where id = of_deal and max_units_per_customer is not null) then
        return;
    end if;
    insert into customer_holdings (deal_id, customer_id, units)
    select of_deal, moved.customer_id, moved.units
      from unnest(customers, changes) as moved (customer_id, units)
     where moved.units > 0
     order by moved.customer_id
    on conflict (deal_id, customer_id) do update set units = customer_holdings.units + excluded.units;
    select count(*) into decreased from unnest(changes) as change where change < 0;
    if decreased > 0 then
        update customer_holdings h set units = h.units + moved.units
          from unnest(customers, changes) as moved (customer_id, units)
         where moved.units < 0 and h.deal_id = of_deal and h.customer_id = moved.customer_id;
        get diagnostics found_rows = row_count;
        if found_rows <> decreased then
            raise exception 'customer_holdings of deal % has no row for a customer whose units went down', of_deal
                using errcode = 'data_exception';
        end if;
    end if;
end
$$;

-- Reservations inserted (taking units, claiming offers: statements that hold the deal's row lock).
create or replace function reservations_inserted() returns trigger
language plpgsql as $$
declare
    deal record;
begin
    for deal in
        select n.deal_id, array_agg(n.customer_id) as customers, array_agg(n.units) as changes
          from (select deal_id, customer_id, sum(reservation_counted_units(state, customer_id, quantity))::integer as units
                  from new_rows where customer_id is not null
                 group by deal_id, customer_id) n
         where n.units <> 0
         group by n.deal_id
         order by n.deal_id
    loop
        perform move_holdings(deal.deal_id, deal.customers, deal.changes);
    end loop;
    return null;
end
$$;

-- Reservations updated: confirmed (nothing moves) or released. Each deal's changes are made under
-- its row lock, taken first, deals in id order (two statements releasing units of the same deals
-- lock them in the same order); the released units go back to the deal and its waitlist, except
-- those of a claim whose offer is reopened.
create or replace function reservations_released() returns trigger
language plpgsql as $$
declare
    back record;
    reopened integer;
begin
    for back in
        select n.deal_id,
               sum(n.quantity) filter (where n.state = 'released' and o.state <> 'released')::integer as units,
               array_agg(n.id) filter (where n.state = 'released' and o.state <> 'released'
                                         and n.waitlist_entry_id is not null) as claims
          from new_rows n join old_rows o on o.id = n.id
         where n.state is distinct from o.state
         group by n.deal_id
         order by n.deal_id
    loop
        continue when back.units is null;
        perform from deals where id = back.deal_id for update;
        perform move_holdings(back.deal_id, array_agg(moved.customer_id), array_agg(moved.units))
           from (select n.customer_id,
                        sum(reservation_counted_units(n.state, n.customer_id, n.quantity)
                            - reservation_counted_units(o.state, o.customer_id, o.quantity))::integer as units
                   from new_rows n join old_rows o on o.id = n.id
                  where n.deal_id = back.deal_id and n.customer_id is not null
                  group by n.customer_id) moved
          where moved.units <> 0
         having count(*) > 0;
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

-- Waitlist entries joined, left, offered, claimed, reopened and expired (each under the deal's row
-- lock).
create or replace function waitlist_entry_counted() returns trigger
language plpgsql as $$
declare
    change integer := entry_counted_units(new.state, new.quantity)
                      - case when tg_op = 'UPDATE' then entry_counted_units(old.state, old.quantity) else 0 end;
begin
    if change <> 0 then
        perform move_holdings(new.deal_id, array[new.customer_id], array[change]);
    end if;
    return null;
end
$$;

-- A decrease now fails its statement when it finds no row: recount every total once, under the
-- lock taken above, so that no total made before this migration can trip it.
with counted as (
    select d.id as deal_id, c.customer_id, c.units
      from deals d cross join lateral counted_holdings(d.id) c
     where d.max_units_per_customer is not null
), recounted as (
    insert into customer_holdings (deal_id, customer_id, units)
    select deal_id, customer_id, units from counted
    on conflict (deal_id, customer_id) do update set units = excluded.units
)
update customer_holdings h set units = 0
 where not exists (select from counted c where c.deal_id = h.deal_id and c.customer_id = h.customer_id);
