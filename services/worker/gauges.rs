//! What the expiry worker reads from the database at each scrape of its `/metrics`: the units left
//! of the live deals selling most (a dashboard's "units left per hot deal"), and the age of the
//! oldest hold not yet settled, which the worker itself must keep under `HOLD_TIMEOUT` plus a
//! sweep (an alert's "holds older than the timeout"). Read from the tables rather than recorded,
//! so they are right whichever process sold the units, and a deal that ends leaves the set.

use std::{future::Future, pin::Pin};

use sqlx::PgPool;
use uuid::Uuid;

use crate::shared::metrics::GaugeFamily;

/// The live deals shown: the most units sold first.
const HOT_DEALS: i64 = 20;

/// The gauges, read now. A [`crate::shared::metrics::DatabaseGauges`].
pub fn scraped_gauges(pool: PgPool) -> Pin<Box<dyn Future<Output = Result<Vec<GaugeFamily>, sqlx::Error>> + Send>> {
    Box::pin(async move {
        let deals = hot_deals(&pool).await?;
        let oldest_hold = oldest_hold_seconds(&pool).await?;
        let labels = |id: &Uuid, product: &str| vec![("deal", id.to_string()), ("product", product.to_owned())];
        Ok(vec![
            GaugeFamily {
                name: "topkart_deal_units_available",
                help: "Units left of the live deals that sold the most units.",
                samples: deals
                    .iter()
                    .map(|(id, product, _, available)| (labels(id, product), f64::from(*available)))
                    .collect(),
            },
            GaugeFamily {
                name: "topkart_deal_units_offered",
                help: "Units offered by the live deals that sold the most units.",
                samples: deals.iter().map(|(id, product, total, _)| (labels(id, product), f64::from(*total))).collect(),
            },
            GaugeFamily {
                name: "topkart_holds_oldest_seconds",
                help: "Age of the oldest hold neither confirmed nor released (0 when there is none).",
                samples: vec![(Vec::new(), oldest_hold)],
            },
        ])
    })
}

/// The live deals (active now) with the most units sold, most first.
async fn hot_deals(pool: &PgPool) -> Result<Vec<(Uuid, String, i32, i32)>, sqlx::Error> {
    // `state <> 'expired' and expire_time > now()` is a range of the partial index of unexpired
    // deals (an active deal is before its expire time); deal_state_at decides the rest.
    sqlx::query_as(
        "select id, product_name, total_units, available_units
           from deals d
          where state <> 'expired' and expire_time > now() and deal_state_at(d, now()) = 'active'
          order by total_units - available_units desc, id
          limit $1",
    )
    .bind(HOT_DEALS)
    .fetch_all(pool)
    .await
}

/// Seconds since the oldest unsettled hold was made, by the database clock.
async fn oldest_hold_seconds(pool: &PgPool) -> Result<f64, sqlx::Error> {
    sqlx::query_scalar(
        "select coalesce(extract(epoch from now() - min(create_time)), 0)::float8
           from reservations where state = 'reserved'",
    )
    .fetch_one(pool)
    .await
}
