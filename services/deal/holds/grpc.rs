//! HoldService, deal-service's calls for order-service: ReserveUnits, ConfirmUnits and
//! ReleaseUnits, one at a time or in batch calls, validated here and handed to the per-deal
//! batches ([`super::batching`]) or, for a claim of a waitlist offer, to the waitlist.

use std::{
    collections::HashMap,
    time::{Duration, Instant},
};

use sqlx::PgPool;
use tonic::{Request, Response, Status};
use uuid::Uuid;

use crate::{
    deal::{
        convert::{reservation_results_to_proto, reservation_to_proto},
        domain::Reservation,
        error::DealError,
        waitlist::{self, domain::Claim},
    },
    proto::holds::{self as pb, hold_service_server::HoldService},
    shared::{
        auth::{self, Role},
        customers,
        money::Price,
        names, quantity,
        status::Violations,
    },
};

use super::{
    allocation::UnitRequest,
    batching::{AnswerFuture, Batches, MAX_BATCH, Sale},
    store,
};

/// The hold service over deal-service's pool and its sale's batches.
pub struct HoldApi {
    pool: PgPool,
    /// Reservations and confirmations, coalesced per deal.
    batches: Batches,
}

impl HoldApi {
    /// The service over `pool`, its batches on `sale`.
    pub fn new(pool: PgPool, sale: &Sale) -> Self {
        Self { pool, batches: Batches::new(sale) }
    }
}

/// Who may hold, confirm and release units: order-service.
const SERVICES: &[Role] = &[Role::Service];

fn reply<T>(result: Result<T, DealError>) -> Result<Response<T>, Status> {
    result.map(Response::new).map_err(Status::from)
}

fn authorize<T>(request: &Request<T>) -> Result<(), DealError> {
    auth::authorize(request, SERVICES)?;
    Ok(())
}

#[tonic::async_trait]
impl HoldService for HoldApi {
    #[tracing::instrument(skip_all, fields(deal = %request.get_ref().deal, reservation = %request.get_ref().reservation_id))]
    async fn reserve_units(
        &self,
        request: Request<pb::ReserveUnitsRequest>,
    ) -> Result<Response<pb::Reservation>, Status> {
        authorize(&request)?;
        reply(self.reserve(request.get_ref()).await.map(|reservation| reservation_to_proto(&reservation)))
    }

    #[tracing::instrument(skip_all, fields(reservation = %request.get_ref().reservation_id))]
    async fn confirm_units(
        &self,
        request: Request<pb::ConfirmUnitsRequest>,
    ) -> Result<Response<pb::Reservation>, Status> {
        authorize(&request)?;
        reply(
            self.confirm(&request.get_ref().reservation_id).await.map(|reservation| reservation_to_proto(&reservation)),
        )
    }

    #[tracing::instrument(skip_all, fields(requests = request.get_ref().requests.len()))]
    async fn batch_reserve_units(
        &self,
        request: Request<pb::BatchReserveUnitsRequest>,
    ) -> Result<Response<pb::BatchReserveUnitsResponse>, Status> {
        authorize(&request)?;
        let results = self.reserve_batch(&request.get_ref().requests).await;
        reply(results.map(|results| pb::BatchReserveUnitsResponse { results: reservation_results_to_proto(results) }))
    }

    #[tracing::instrument(skip_all, fields(requests = request.get_ref().requests.len()))]
    async fn batch_confirm_units(
        &self,
        request: Request<pb::BatchConfirmUnitsRequest>,
    ) -> Result<Response<pb::BatchConfirmUnitsResponse>, Status> {
        authorize(&request)?;
        let results = self.confirm_batch(&request.get_ref().requests).await;
        reply(results.map(|results| pb::BatchConfirmUnitsResponse { results: reservation_results_to_proto(results) }))
    }

    #[tracing::instrument(skip_all, fields(reservation = %request.get_ref().reservation_id))]
    async fn release_units(
        &self,
        request: Request<pb::ReleaseUnitsRequest>,
    ) -> Result<Response<pb::Reservation>, Status> {
        authorize(&request)?;
        reply(
            self.release(&request.get_ref().reservation_id).await.map(|reservation| reservation_to_proto(&reservation)),
        )
    }
}

impl HoldApi {
    async fn reserve(&self, request: &pb::ReserveUnitsRequest) -> Result<Reservation, DealError> {
        let mut answers = self.reserve_all(std::slice::from_ref(request));
        answers.pop().ok_or(DealError::Internal("a reservation went unanswered"))?.await
    }

    /// BatchReserveUnits: every request answered as ReserveUnits would answer it alone.
    async fn reserve_batch(
        &self,
        requests: &[pb::ReserveUnitsRequest],
    ) -> Result<Vec<Result<Reservation, DealError>>, DealError> {
        batch_size(requests.len())?;
        let mut results = Vec::with_capacity(requests.len());
        for answer in self.reserve_all(requests) {
            results.push(answer.await);
        }
        Ok(results)
    }

    /// Starts every reservation of `requests` at once: those of one deal go together into its next
    /// batch, each with its own deadline; claims of waitlist offers run each in its own transaction.
    fn reserve_all(&self, requests: &[pb::ReserveUnitsRequest]) -> Vec<AnswerFuture> {
        let received = Instant::now();
        let mut answers: Vec<Option<AnswerFuture>> = (0..requests.len()).map(|_| None).collect();
        let mut by_deal: HashMap<Uuid, Vec<(usize, UnitRequest, Option<Instant>)>> = HashMap::new();
        for (index, request) in requests.iter().enumerate() {
            let (reserve, timeout) = match reserve_request(request) {
                Ok(parsed) => parsed,
                Err(err) => {
                    answers[index] = Some(Box::pin(std::future::ready(Err(err))));
                    continue;
                }
            };
            let deadline = timeout.map(|timeout| received + timeout);
            match reserve {
                Reserve::Units(deal_id, units) => by_deal.entry(deal_id).or_default().push((index, units, deadline)),
                Reserve::Claim(deal_id, claim) => answers[index] = Some(self.claim_by(deal_id, claim, deadline)),
            }
        }
        for (deal_id, group) in by_deal {
            let (indexes, group): (Vec<usize>, Vec<_>) =
                group.into_iter().map(|(index, units, deadline)| (index, (units, deadline))).unzip();
            for (index, answer) in indexes.into_iter().zip(self.batches.reserve_all(deal_id, group)) {
                answers[index] = Some(answer);
            }
        }
        answers
            .into_iter()
            .map(|answer| {
                answer.unwrap_or_else(|| Box::pin(std::future::ready(Err(DealError::Internal("unanswered")))))
            })
            .collect()
    }

    /// A claim of a waitlist offer, under way at once, given up at `deadline`.
    fn claim_by(&self, deal_id: Uuid, claim: Claim, deadline: Option<Instant>) -> AnswerFuture {
        let pool = self.pool.clone();
        let claiming = tokio::spawn(async move {
            let claim = waitlist::claim(&pool, deal_id, &claim);
            match deadline {
                Some(deadline) => {
                    tokio::time::timeout_at(deadline.into(), claim).await.unwrap_or(Err(DealError::DeadlineExceeded))
                }
                None => claim.await,
            }
        });
        Box::pin(async move { claiming.await.unwrap_or(Err(DealError::Internal("a claim crashed"))) })
    }

    async fn confirm(&self, reservation_id: &str) -> Result<Reservation, DealError> {
        self.batches.confirm(reservation_uuid(reservation_id)?).await
    }

    /// BatchConfirmUnits: the holds confirmed in one statement, each answered as ConfirmUnits would.
    async fn confirm_batch(
        &self,
        requests: &[pb::ConfirmUnitsRequest],
    ) -> Result<Vec<Result<Reservation, DealError>>, DealError> {
        batch_size(requests.len())?;
        let ids: Vec<Result<Uuid, DealError>> =
            requests.iter().map(|request| reservation_uuid(&request.reservation_id)).collect();
        let mut confirming = self.batches.confirm_all(ids.iter().filter_map(|id| id.as_ref().ok()).copied().collect());
        confirming.reverse();
        let mut results = Vec::with_capacity(requests.len());
        for id in ids {
            results.push(match (id, confirming.pop()) {
                (Err(err), _) => Err(err),
                (Ok(_), Some(answer)) => answer.await,
                (Ok(_), None) => Err(DealError::Internal("a confirmation went unanswered")),
            });
        }
        Ok(results)
    }

    async fn release(&self, reservation_id: &str) -> Result<Reservation, DealError> {
        let id = reservation_uuid(reservation_id)?;
        let (reservation, released_now) =
            store::release(&self.pool, id).await?.ok_or(DealError::ReservationNotFound)?;
        if released_now {
            tracing::info!(reservation = %id, units = reservation.quantity, "units released");
        }
        // Released before, the reservation is answered the same: a retry gives nothing back twice.
        Ok(reservation)
    }
}

/// A ReserveUnits request, validated: units from its deal's batch, or a claim of a waitlist offer.
enum Reserve {
    Units(Uuid, UnitRequest),
    Claim(Uuid, Claim),
}

/// `request` validated, with its own timeout if it has one.
fn reserve_request(request: &pb::ReserveUnitsRequest) -> Result<(Reserve, Option<Duration>), DealError> {
    let mut violations = Violations::default();
    let deal_id = names::parse("deal", names::DEALS, &request.deal, &mut violations);
    let id = names::parse_uuid("reservation_id", &request.reservation_id, &mut violations);
    let quantity = quantity::quantity("quantity", request.quantity, &mut violations);
    let expected_price = request
        .expected_unit_price
        .as_ref()
        .map(|price| Price::parse("expected_unit_price", Some(price), &mut violations));
    let customer = (!request.customer_id.is_empty())
        .then(|| customers::customer_id("customer_id", &request.customer_id, &mut violations))
        .flatten();
    let entry = (!request.waitlist_entry.is_empty())
        .then(|| names::parse_waitlist_entry("waitlist_entry", &request.waitlist_entry, &mut violations))
        .flatten();
    if let (Some(deal_id), Some((entry_deal, _))) = (deal_id, entry)
        && entry_deal != deal_id
    {
        violations.add("waitlist_entry", "must be an entry of the waitlist of `deal`");
    }
    if entry.is_some() && request.customer_id.is_empty() {
        violations.add("customer_id", "is required to claim a waitlist offer");
    }
    let timeout = request.timeout.map(Duration::try_from).transpose().unwrap_or_else(|_| {
        violations.add("timeout", "must not be negative");
        None
    });
    let (Some(deal_id), Some(id), Some(quantity)) = (deal_id, id, quantity) else {
        return Err(violations.into());
    };
    violations.into_result(())?;
    let expected_price = expected_price.flatten();
    let reserve = match (entry, customer) {
        (Some((_, entry_id)), Some(customer)) => {
            Reserve::Claim(deal_id, Claim { id, entry_id, customer, quantity, expected_price })
        }
        (_, customer) => Reserve::Units(deal_id, UnitRequest { id, quantity, expected_price, customer }),
    };
    Ok((reserve, timeout))
}

/// A batch call carries 1 to [`MAX_BATCH`] requests, so that they fit one batch.
fn batch_size(requests: usize) -> Result<(), DealError> {
    if (1..=MAX_BATCH).contains(&requests) {
        return Ok(());
    }
    let mut violations = Violations::default();
    violations.add("requests", format!("must hold 1 to {MAX_BATCH} requests"));
    Err(violations.into())
}

fn reservation_uuid(reservation_id: &str) -> Result<Uuid, DealError> {
    let mut violations = Violations::default();
    let id = names::parse_uuid("reservation_id", reservation_id, &mut violations);
    violations.into_result(id)?.ok_or(DealError::ReservationNotFound)
}
