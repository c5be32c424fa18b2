//! Recording placed orders, coalesced ([`crate::shared::coalesce`]): the orders whose units were
//! reserved while the previous batch was being written go together in one statement and one commit,
//! each with its own outcome. A lightning deal's buyers all arrive in the same second; one commit per
//! order would make each wait for its own disk flush.

use std::{
    collections::{HashMap, HashSet},
    sync::Arc,
};

use sqlx::PgPool;
use uuid::Uuid;

use crate::shared::{coalesce::Coalescer, metrics};

use crate::order::{
    domain::Order,
    error::OrderError,
    store::{self, OrderInsert},
};

/// The most orders one statement records.
const MAX_BATCH: usize = 500;

/// What became of one order to record.
#[derive(Debug, Clone)]
pub enum Recorded {
    /// Recorded now.
    New(Order),
    /// An order with this id was recorded before (a retry, or a concurrent attempt): this is it.
    Existing(Order),
    /// Its write window had passed, or its attempt was abandoned, and no order with its id exists.
    TooLate,
}

type Outcome = Result<Recorded, Arc<sqlx::Error>>;

/// The queue of orders waiting for the next batch.
pub struct Recorder {
    batches: Arc<Coalescer<(), OrderInsert, Outcome>>,
}

impl Recorder {
    pub fn new(pool: PgPool) -> Self {
        let batches = Coalescer::new(MAX_BATCH, move |(), orders: Vec<OrderInsert>| {
            let pool = pool.clone();
            Box::pin(async move { record_batch(&pool, &orders).await })
        });
        Self { batches }
    }

    /// Records `order` with the next batch.
    pub async fn record(&self, order: OrderInsert) -> Result<Recorded, OrderError> {
        match self.batches.submit((), order).await {
            Some(outcome) => Ok(outcome?),
            None => Err(OrderError::Internal("the batch recording this order crashed".into())),
        }
    }
}

async fn record_batch(pool: &PgPool, orders: &[OrderInsert]) -> Vec<Outcome> {
    metrics::order_insert_batch(orders.len());
    match try_record_batch(pool, orders).await {
        Ok(outcomes) => {
            for outcome in &outcomes {
                metrics::order_inserts(
                    match outcome {
                        Recorded::New(_) => "recorded",
                        Recorded::Existing(_) => "existing",
                        Recorded::TooLate => "too_late",
                    },
                    1,
                );
            }
            outcomes.into_iter().map(Ok).collect()
        }
        Err(err) => {
            metrics::order_inserts("failed", orders.len());
            let err = Arc::new(err);
            orders.iter().map(|_| Err(Arc::clone(&err))).collect()
        }
    }
}

async fn try_record_batch(pool: &PgPool, orders: &[OrderInsert]) -> Result<Vec<Recorded>, sqlx::Error> {
    let recorded: HashMap<Uuid, Order> =
        store::insert_orders(pool, orders).await?.into_iter().map(|order| (order.id, order)).collect();
    let missing: Vec<Uuid> = orders.iter().map(|order| order.id).filter(|id| !recorded.contains_key(id)).collect();
    let existing: HashMap<Uuid, Order> = if missing.is_empty() {
        HashMap::new()
    } else {
        store::get_orders(pool, &missing).await?.into_iter().map(|order| (order.id, order)).collect()
    };
    // Of several attempts of one id in a batch, the first was inserted; the others find its order.
    let mut answered = HashSet::new();
    Ok(orders
        .iter()
        .map(|order| match (recorded.get(&order.id), existing.get(&order.id)) {
            (Some(new), _) if answered.insert(order.id) => Recorded::New(new.clone()),
            (Some(first), _) => Recorded::Existing(first.clone()),
            (None, Some(existing)) => Recorded::Existing(existing.clone()),
            (None, None) => Recorded::TooLate,
        })
        .collect())
}
