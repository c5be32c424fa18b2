//! order-service's reservations and confirmations, coalesced ([`crate::shared::coalesce`]) into
//! batch calls to deal-service: the reservations of one deal that arrive while that deal's previous
//! BatchReserveUnits call is in flight go together in the next one; confirmations, of any deal,
//! likewise in BatchConfirmUnits. No request waits for a timer: an idle deal's first reservation
//! goes at once, alone.
//!
//! Every reservation keeps what a unary ReserveUnits call had: its own id (the order's, which makes
//! a resent batch harmless), its own deadline (sent as the request's `timeout`: deal-service leaves
//! it out of its database batch once it has passed), its own answer and the per-customer limit,
//! which deal-service decides per request. A caller that gives up while its reservation waits here
//! is left out of the next call; one that gives up while its call is in flight may still get a
//! hold, which its abandoned attempt releases ([`super::abandon`]).

use std::{
    sync::Arc,
    time::{Duration, Instant},
};

use tonic::Code;
use tracing::Instrument;
use uuid::Uuid;

use crate::{
    order::{domain::NewOrder, error::OrderError},
    proto::holds as pb,
    shared::{call::CallContext, coalesce::Coalescer, metrics},
};

use super::holds::{self as deals, DealsClient, ReservedUnits};

/// The most reservations (or confirmations) one call carries: order-service's in-flight limit by
/// default, so under a surge one deal's waiting orders go in one call; and well within
/// deal-service's 64 KiB request limit (about 120 bytes each).
pub const MAX_BATCH: usize = 256;
/// How long a background confirmation may take.
const CONFIRM_DEADLINE: Duration = Duration::from_secs(2);

/// One reservation waiting for its deal's next call.
struct Waiting {
    request: pb::ReserveUnitsRequest,
    /// When its caller stops waiting for deal-service's answer.
    give_up_at: Instant,
    /// Its call's request id and trace context, and its span; a batch call carries its first
    /// request's, and runs in its span (so that, with `otel`, its `traceparent` is that order's).
    context: CallContext,
    span: tracing::Span,
}

/// A reservation's answer, and whether the item alone failed in a way worth resending it.
type Answer = (Result<ReservedUnits, OrderError>, bool);

/// Reservations per deal, and confirmations, coalesced into batch calls.
#[derive(Clone)]
pub struct Reserving {
    deals: DealsClient,
    reservations: Arc<Coalescer<Uuid, Waiting, Answer>>,
    confirmations: Arc<Coalescer<(), Uuid, Result<(), OrderError>>>,
}

impl Reserving {
    /// Batch calls through `deals`.
    pub fn new(deals: DealsClient) -> Self {
        let reserving = deals.clone();
        let reservations = Coalescer::new(MAX_BATCH, move |_deal, waiting: Vec<Waiting>| {
            let deals = reserving.clone();
            Box::pin(async move { reserve_batch(&deals, waiting).await })
        });
        let confirming = deals.clone();
        let confirmations = Coalescer::new(MAX_BATCH, move |(), ids: Vec<Uuid>| {
            let deals = confirming.clone();
            Box::pin(async move { confirm_batch(&deals, &ids).await })
        });
        Self { deals, reservations, confirmations }
    }

    /// Reserves the units of `order` under `reservation_id` (the order id), for its customer,
    /// within the caller's deadline less [`deals::MARGIN`], with its deal's next batch call. A
    /// reservation the database could not make (UNAVAILABLE for it alone) is sent again with a
    /// later batch while time allows; a call that failed in transit was resent already.
    pub async fn reserve(
        &self,
        context: &CallContext,
        reservation_id: Uuid,
        order: &NewOrder,
    ) -> Result<ReservedUnits, OrderError> {
        let give_up_at = Instant::now() + context.remaining().saturating_sub(deals::MARGIN).min(self.deals.deadline());
        let request = deals::reserve_request(reservation_id, order);
        let mut backoff = deals::FIRST_BACKOFF;
        for attempt in 1..=deals::ATTEMPTS {
            let waiting = Waiting {
                request: request.clone(),
                give_up_at,
                context: context.clone(),
                span: tracing::Span::current(),
            };
            let answer = tokio::time::timeout_at(give_up_at.into(), self.reservations.submit(order.deal_id, waiting));
            let (result, resend) = match answer.await {
                Ok(Some(answer)) => answer,
                Ok(None) => return Err(OrderError::Internal("the batch call of this reservation crashed".into())),
                Err(_elapsed) => return Err(OrderError::DealServiceUnavailable { code: Code::DeadlineExceeded }),
            };
            if !resend || attempt == deals::ATTEMPTS || give_up_at <= Instant::now() + backoff {
                return result;
            }
            tokio::time::sleep(backoff).await;
            backoff *= 2;
        }
        Err(OrderError::DealServiceUnavailable { code: Code::Unavailable })
    }

    /// Confirms the hold of `id` off the customer's path, with the next batch of confirmations: the
    /// expiry worker confirms holds whose order exists, so nothing waits for this.
    pub fn confirm_later(&self, id: Uuid) {
        let confirmations = Arc::clone(&self.confirmations);
        tokio::spawn(async move {
            let confirmed = confirmations.submit((), id).await;
            if let Some(Err(err)) = confirmed {
                tracing::debug!(order = %id, error = ?err, "hold not confirmed; the expiry worker will confirm it");
            }
        });
    }
}

/// One BatchReserveUnits call for `waiting`, one answer each, in order.
async fn reserve_batch(deals: &DealsClient, waiting: Vec<Waiting>) -> Vec<Answer> {
    metrics::deal_call_batch("reserve", waiting.len());
    let Some((context, span)) = waiting.first().map(|first| (first.context.clone(), first.span.clone())) else {
        return Vec::new();
    };
    let requests: Vec<(pb::ReserveUnitsRequest, Instant)> =
        waiting.into_iter().map(|waiting| (waiting.request, waiting.give_up_at)).collect();
    match deals.reserve_batch(&context, &requests).instrument(span).await {
        Ok(results) => results
            .into_iter()
            .map(|result| {
                let resend = matches!(result, Err(OrderError::DealServiceUnavailable { code: Code::Unavailable }));
                (result, resend)
            })
            .collect(),
        // The call failed as a whole, after it was resent as often as time allowed.
        Err(err) => requests.iter().map(|_| (Err(err.clone()), false)).collect(),
    }
}

/// One BatchConfirmUnits call for `ids`, one answer each, in order.
async fn confirm_batch(deals: &DealsClient, ids: &[Uuid]) -> Vec<Result<(), OrderError>> {
    metrics::deal_call_batch("confirm", ids.len());
    match deals.confirm_batch(&CallContext::detached(CONFIRM_DEADLINE), ids).await {
        Ok(results) => results,
        Err(err) => ids.iter().map(|_| Err(err.clone())).collect(),
    }
}
