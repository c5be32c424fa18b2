//! The invariants of a live database, checked in one consistent snapshot: what tests assert after
//! breaking things on purpose, and what operators run (`invariant-check`) when in doubt.

use sqlx::PgPool;

/// One broken invariant, with the rows that break it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Violation {
    /// Which invariant.
    pub invariant: &'static str,
    /// The offending row, described.
    pub detail: String,
}

impl std::fmt::Display for Violation {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}: {}", self.invariant, self.detail)
    }
}

/// Each invariant and the query that lists the rows breaking it (one text column each).
const CHECKS: [(&str, &str); 11] = [
    (
        "every unit is available, held or offered: total_units = available_units + units of live reservations \
         + units offered to the waitlist",
        "select format('deal %s: total %s, available %s, held %s, offered %s', d.id, d.total_units,
                       d.available_units, held, offered)
           from deals d
           cross join lateral (
               select coalesce(sum(r.quantity), 0) as held
                 from reservations r
                where r.deal_id = d.id and r.state in ('reserved', 'confirmed')
           ) h
           cross join lateral (
               select coalesce(sum(w.offered_units), 0) as offered
                 from waitlist_entries w
                where w.deal_id = d.id and w.state = 'offered'
           ) o
          where d.total_units <> d.available_units + held + offered",
    ),
    (
        "no waitlist entry was offered units while an entry that joined before it still waited",
        "select format('entry %s of deal %s was offered at %s while entry %s, ahead of it, waited', e.id, e.deal_id,
                       e.waited_until, ahead.id)
           from waitlist_entries e
           join waitlist_entries ahead on ahead.deal_id = e.deal_id and ahead.join_seq < e.join_seq
          where e.offered_units is not null
            and (ahead.waited_until is null or ahead.waited_until > e.waited_until)",
    ),
    (
        "no customer holds more of a deal than its per-customer limit allowed (held and confirmed units, and \
         waiting and offered waitlist entries; a limit lowered later binds only what was taken after)",
        "with counted as (
             select r.deal_id, r.customer_id, r.quantity, coalesce(w.create_time, r.create_time) as taken_at
               from reservations r left join waitlist_entries w on w.id = r.waitlist_entry_id
              where r.state in ('reserved', 'confirmed') and r.customer_id is not null
             union all
             select deal_id, customer_id, quantity, create_time
               from waitlist_entries where state in ('waiting', 'offered')
         )
         select format('customer %s holds %s units of deal %s, whose limit is %s', c.customer_id, sum(c.quantity),
                       d.id, d.max_units_per_customer)
           from counted c join deals d on d.id = c.deal_id
          where d.max_units_per_customer is not null
          group by d.id, c.customer_id
         having sum(c.quantity) > greatest(d.max_units_per_customer,
                    coalesce(sum(c.quantity) filter (where c.taken_at < d.max_units_per_customer_since), 0))",
    ),
    (
        "the per-customer totals that the limit is checked against (customer_holdings) are what each \
         customer of a limited deal holds, and unlimited deals have none",
        "with counted as (
             select d.id as deal_id, h.customer_id, sum(h.units) as units
               from deals d
               join (select deal_id, customer_id, quantity as units from reservations
                      where state in ('reserved', 'confirmed') and customer_id is not null
                     union all
                     select deal_id, customer_id, quantity from waitlist_entries
                      where state in ('waiting', 'offered')) h on h.deal_id = d.id
              where d.max_units_per_customer is not null
              group by d.id, h.customer_id
         )
         select format('customer %s of deal %s: total %s, holds %s', coalesce(t.customer_id, c.customer_id),
                       coalesce(t.deal_id, c.deal_id), coalesce(t.units, 0), coalesce(c.units, 0))
           from counted c full join customer_holdings t on t.deal_id = c.deal_id and t.customer_id = c.customer_id
          where coalesce(t.units, 0) <> coalesce(c.units, 0)",
    ),
    (
        "every claimed waitlist entry names a reservation of its deal and customer for its claimed units, and \
         every reservation that claims an entry is of that entry's deal and customer",
        "select format('entry %s of deal %s (%s, customer %s) claimed %s units with reservation %s: %s', e.id, e.deal_id,
                       e.state, e.customer_id, e.claimed_units, coalesce(e.claim_reservation_id, r.id),
                       coalesce(format('%s units of deal %s for %s, naming entry %s', r.quantity, r.deal_id,
                                       r.customer_id, r.waitlist_entry_id), 'missing'))
           from waitlist_entries e
           full join reservations r on r.id = e.claim_reservation_id
          where (e.state = 'claimed'
                 and (r.id is null or r.deal_id <> e.deal_id or r.customer_id is distinct from e.customer_id
                      or r.quantity <> e.claimed_units or r.waitlist_entry_id is distinct from e.id))
             or (r.waitlist_entry_id is not null and e.id is null
                 and not exists (select from waitlist_entries w
                                  where w.id = r.waitlist_entry_id and w.deal_id = r.deal_id
                                    and w.customer_id = r.customer_id))",
    ),
    (
        "every reservation belongs to a deal",
        "select format('reservation %s of deal %s, which does not exist', r.id, r.deal_id)
           from reservations r where not exists (select from deals d where d.id = r.deal_id)",
    ),
    (
        "0 <= available_units <= total_units",
        "select format('deal %s: available %s of %s', id, available_units, total_units)
           from deals where available_units < 0 or available_units > total_units",
    ),
    (
        "every pending or approved order holds its units, and a finished one gave them back",
        "select format('order %s (%s): reservation %s', o.id, o.state, coalesce(r.state || ' of ' || r.quantity, 'missing'))
           from orders o left join reservations r on r.id = o.id
          where (o.state in ('pending_approval', 'approved')
                 and (r.id is null or r.state = 'released' or r.quantity <> o.quantity or r.deal_id <> o.deal_id))
             or (o.state in ('rejected', 'cancelled', 'expired') and o.units_released and r.state is distinct from 'released')",
    ),
    (
        "no two orders share a request_id (an order's id is its request_id)",
        "select format('order id %s appears %s times', id, count(*)) from orders group by id having count(*) > 1",
    ),
    (
        "no unit was sold outside its deal's window (start_time to expire_time or the daily reset)",
        "select format('reservation %s of deal %s made at %s', r.id, d.id, r.create_time)
           from reservations r join deals d on d.id = r.deal_id
          where r.create_time < d.start_time or r.create_time >= deal_end_time(d)",
    ),
    (
        "no order reads as placed outside its deal's window (an order's create_time is its units' reservation)",
        "select format('order %s placed at %s, deal %s runs %s to %s', o.id, o.create_time, d.id, d.start_time,
                       deal_end_time(d))
           from orders o join deals d on d.id = o.deal_id
          where o.create_time < d.start_time or o.create_time >= deal_end_time(d)",
    ),
];

/// Every violation in the database, read in one repeatable-read snapshot.
pub async fn check(pool: &PgPool) -> Result<Vec<Violation>, sqlx::Error> {
    let mut tx = pool.begin().await?;
    sqlx::query("set transaction isolation level repeatable read, read only").execute(&mut *tx).await?;
    let mut violations = Vec::new();
    for (invariant, query) in CHECKS {
        let rows: Vec<String> = sqlx::query_scalar(query).fetch_all(&mut *tx).await?;
        violations.extend(rows.into_iter().map(|detail| Violation { invariant, detail }));
    }
    tx.commit().await?;
    Ok(violations)
}
