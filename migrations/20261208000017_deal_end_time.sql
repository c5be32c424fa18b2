-- The one definition in SQL of when a deal ends: its expire_time, or the daily reset after its start
-- (`daily_reset_time`, the first 00:00 UTC after start_time) if that comes first. Rust's is
-- `DealTerms::end_time`; tests/api/deals.rs checks the two agree. The sweep and the daily reset
-- write the same condition out as `expire_time <= $1 or daily_reset_time <= $1`, which the planner
-- can answer from the two partial indexes.
create function deal_end_time(deal deals) returns timestamptz
language sql immutable parallel safe
return least(deal.expire_time, deal.daily_reset_time);

-- What state a deal is in at an instant, now through deal_end_time.
create or replace function deal_state_at(deal deals, at timestamptz) returns text
language sql immutable parallel safe
return case
    when deal.state = 'expired' or deal_end_time(deal) <= at then 'expired'
    when deal.start_time <= at then 'active'
    else 'scheduled'
end;
