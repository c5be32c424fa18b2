//! The gRPC face of order-service. Every handler reads the same: decode and validate the request,
//! call the domain, deal-service and the store, map the error, encode the reply.

use sqlx::PgPool;
use tonic::{Request, Response, Status};
use tonic_types::StatusExt;
use uuid::Uuid;

use crate::{
    proto::order::{self as pb, order_service_server::OrderService},
    shared::{
        auth::{self, Caller, Role},
        names, paging,
        reservations::ORDER_WRITE_WINDOW,
        status::Violations,
        time,
    },
};

use super::{
    deals::DealsClient,
    domain::{self, Decision, Order, OrderState},
    error::OrderError,
    faults::Faults,
    recording::{Recorded, Recorder},
    store::{self, OrderInsert},
};

/// The order API over one database pool and a client of deal-service.
pub struct OrderApi {
    pool: PgPool,
    deals: DealsClient,
    /// Order inserts, coalesced.
    recorder: Recorder,
    faults: Faults,
}

impl OrderApi {
    /// The API over `pool`, reserving through `deals`, with `faults` injected (tests only).
    pub fn new(pool: PgPool, deals: DealsClient, faults: Faults) -> Self {
        Self { recorder: Recorder::new(pool.clone()), pool, deals, faults }
    }
}

#[tonic::async_trait]
impl OrderService for OrderApi {
    #[tracing::instrument(skip_all)]
    async fn create_order(&self, request: Request<pb::CreateOrderRequest>) -> Result<Response<pb::Order>, Status> {
        let caller = authorize(&request, BUYERS)?;
        reply(self.create(request.get_ref(), caller.customer()).await.map(|order| order_to_proto(&order)))
    }

    #[tracing::instrument(skip_all, fields(order = %request.get_ref().name))]
    async fn get_order(&self, request: Request<pb::GetOrderRequest>) -> Result<Response<pb::Order>, Status> {
        let caller = authorize(&request, READERS)?;
        reply(self.get(&request.get_ref().name, caller.customer()).await.map(|order| order_to_proto(&order)))
    }

    #[tracing::instrument(skip_all)]
    async fn list_orders(
        &self,
        request: Request<pb::ListOrdersRequest>,
    ) -> Result<Response<pb::ListOrdersResponse>, Status> {
        let caller = authorize(&request, READERS)?;
        reply(self.list(request.get_ref(), caller.customer()).await)
    }

    #[tracing::instrument(skip_all, fields(order = %request.get_ref().name))]
    async fn approve_order(&self, request: Request<pb::ApproveOrderRequest>) -> Result<Response<pb::Order>, Status> {
        authorize(&request, ADMINS)?;
        reply(self.decide(&request.get_ref().name, Decision::Approve, None).await.map(|order| order_to_proto(&order)))
    }

    #[tracing::instrument(skip_all, fields(order = %request.get_ref().name))]
    async fn reject_order(&self, request: Request<pb::RejectOrderRequest>) -> Result<Response<pb::Order>, Status> {
        authorize(&request, ADMINS)?;
        reply(self.decide(&request.get_ref().name, Decision::Reject, None).await.map(|order| order_to_proto(&order)))
    }

    #[tracing::instrument(skip_all, fields(order = %request.get_ref().name))]
    async fn cancel_order(&self, request: Request<pb::CancelOrderRequest>) -> Result<Response<pb::Order>, Status> {
        let caller = authorize(&request, BUYERS)?;
        let owner = caller.customer();
        reply(self.decide(&request.get_ref().name, Decision::Cancel, owner).await.map(|order| order_to_proto(&order)))
    }
}

fn reply<T>(result: Result<T, OrderError>) -> Result<Response<T>, Status> {
    result.map(Response::new).map_err(Status::from)
}

/// Who may approve and reject orders.
const ADMINS: &[Role] = &[Role::Admin];
/// Who may place and cancel orders (their own).
const BUYERS: &[Role] = &[Role::Customer];
/// Who may read orders: customers their own, admins all.
const READERS: &[Role] = &[Role::Customer, Role::Admin];

/// The request's caller, if it has one of `roles`.
fn authorize<'r, T>(request: &'r Request<T>, roles: &'static [Role]) -> Result<&'r Caller, Status> {
    auth::authorize(request, roles, super::DOMAIN)
}

/// Another customer's order is NOT_FOUND, so order ids reveal nothing.
fn visible_to(order: Order, customer: Option<&str>) -> Result<Order, OrderError> {
    match customer {
        Some(customer) if customer != order.customer_id => Err(OrderError::OrderNotFound),
        _ => Ok(order),
    }
}

impl OrderApi {
    /// Places an order by the protocol of docs/reservations.md: reserve (a hold, named by the order
    /// id), record the order within the write window, confirm the hold. A failure after the hold
    /// leaves it to the expiry worker, which releases it unless the order was recorded.
    /// `buyer` is the customer the caller's token names; without authentication, the request's
    /// `customer_id`.
    async fn create(&self, request: &pb::CreateOrderRequest, buyer: Option<&str>) -> Result<Order, OrderError> {
        let new = domain::new_order(request, buyer)?;
        let id = new.request_id.unwrap_or_else(Uuid::new_v4);
        let reserved = match self.deals.reserve(id, new.deal_id, new.quantity, new.shown_unit_price.as_ref()).await {
            Ok(reserved) => reserved,
            Err(err) => {
                // A retry of an order placed before gets that order, whatever deal-service says now
                // (its hold released by a cancel, the deal expired, deal-service down).
                if new.request_id.is_some() {
                    if let Some(existing) = store::get_order(&self.pool, id).await? {
                        return placed_by(&new, existing);
                    }
                }
                return Err(match err {
                    OrderError::DealRefused(status) => match refusal_reason(&status).as_deref() {
                        // A retry after the first attempt was given up and its hold released.
                        Some("RESERVATION_RELEASED") => OrderError::OrderAbandoned,
                        // The request id's hold was made for another deal or quantity.
                        Some("RESERVATION_ID_REUSED") => OrderError::RequestIdReused,
                        _ => OrderError::DealRefused(status),
                    },
                    other => other,
                });
            }
        };
        self.faults.after_reserve()?;
        let total_price = reserved
            .unit_price
            .times(new.quantity)
            .ok_or_else(|| OrderError::Internal("order total overflows".into()))?;
        let insert = OrderInsert {
            id,
            deal_id: new.deal_id,
            customer_id: new.customer_id.clone(),
            quantity: new.quantity,
            unit_price: reserved.unit_price,
            total_price,
            write_by: reserved.hold_time + ORDER_WRITE_WINDOW,
        };
        // If this fails, whether the order was written is unknown: the expiry worker settles the hold
        // either way.
        match self.recorder.record(insert).await? {
            Recorded::New(order) => {
                // Best effort, off the customer's path: the expiry worker confirms holds whose order
                // exists, so the reply need not wait for this.
                let deals = self.deals.clone();
                tokio::spawn(async move {
                    if let Err(err) = deals.confirm(id).await {
                        tracing::warn!(order = %id, error = ?err, "hold not confirmed; the expiry worker will confirm it");
                    }
                });
                tracing::info!(order = %order.id, deal = %order.deal_id, quantity = order.quantity, "order placed");
                Ok(order)
            }
            // A retry, or a concurrent attempt with the same request id, recorded it first.
            Recorded::Existing(existing) => placed_by(&new, existing),
            // Too late to record it. The hold is the worker's to release: releasing here could race a
            // retry whose insert is still committing.
            Recorded::TooLate => Err(OrderError::OrderAbandoned),
        }
    }

    async fn get(&self, name: &str, customer: Option<&str>) -> Result<Order, OrderError> {
        let id = order_id(name)?;
        let order = store::get_order(&self.pool, id).await?.ok_or(OrderError::OrderNotFound)?;
        visible_to(order, customer)
    }

    /// A customer sees only its own orders, whatever the filter says.
    async fn list(
        &self,
        request: &pb::ListOrdersRequest,
        customer: Option<&str>,
    ) -> Result<pb::ListOrdersResponse, OrderError> {
        let mut violations = Violations::default();
        let limit = paging::page_size("page_size", request.page_size, &mut violations);
        let customer_id = match customer {
            Some(customer) => Some(customer.to_owned()),
            None => (!request.customer_id.is_empty())
                .then(|| domain::customer_id("customer_id", &request.customer_id, &mut violations))
                .flatten(),
        };
        let state = match pb::order::State::try_from(request.state) {
            Ok(state) => OrderState::from_proto(state),
            Err(_) => {
                violations.add("state", "is not an Order.State value");
                None
            }
        };
        let filter_key =
            format!("{}|{}", state.map_or("any", OrderState::as_str), customer_id.as_deref().unwrap_or(""));
        let after = paging::Cursor::from_token("page_token", &request.page_token, &filter_key, &mut violations);
        violations.into_result(())?;

        // One row more than the page tells whether another page follows.
        let mut orders = store::list_orders(&self.pool, customer_id.as_deref(), state, after, limit + 1).await?;
        let next_page_token = if orders.len() as i64 > limit {
            orders.truncate(limit as usize);
            orders
                .last()
                .map(|last| paging::Cursor { at: last.create_time, id: last.id }.to_token(&filter_key))
                .unwrap_or_default()
        } else {
            String::new()
        };
        Ok(pb::ListOrdersResponse { orders: orders.iter().map(order_to_proto).collect(), next_page_token })
    }

    /// Approves, rejects or cancels a pending order. The state moves first, in one conditional
    /// statement, so of concurrent decisions exactly one passes and no lock is held across the call
    /// to deal-service. Rejected and cancelled orders then give their units back; if that call
    /// fails, the decision stands and the expiry worker completes the release (a release is
    /// idempotent, so it happens exactly once).
    ///
    /// With an `owner`, only that customer's order can be decided; another's is NOT_FOUND.
    async fn decide(&self, name: &str, decision: Decision, owner: Option<&str>) -> Result<Order, OrderError> {
        let id = order_id(name)?;
        let mut attempts = 0;
        let order = loop {
            if let Some(order) = store::decide(&self.pool, id, decision.outcome(), owner).await? {
                break order;
            }
            let current = store::get_order(&self.pool, id).await?.ok_or(OrderError::OrderNotFound)?;
            let current = visible_to(current, owner)?;
            decision.check(current.state)?;
            // Pending after all: the order was recorded between the two statements. Decide again.
            attempts += 1;
            if attempts == 3 {
                return Err(OrderError::Internal("order kept changing while being decided".into()));
            }
        };
        if decision.releases_units() {
            match self.deals.release(id).await {
                Ok(()) => store::mark_units_released(&self.pool, id).await?,
                Err(err) => {
                    tracing::warn!(order = %id, error = ?err, "units not released; the expiry worker will release them")
                }
            }
        }
        tracing::info!(order = %id, state = order.state.as_str(), "order decided");
        Ok(order)
    }
}

/// A retry gets the order its request id placed; another order under that id is refused.
fn placed_by(new: &domain::NewOrder, existing: Order) -> Result<Order, OrderError> {
    if new.placed(&existing) { Ok(existing) } else { Err(OrderError::RequestIdReused) }
}

/// The `ErrorInfo` reason of a refusal from deal-service.
fn refusal_reason(status: &Status) -> Option<String> {
    status.get_error_details().error_info().map(|info| info.reason.clone())
}

fn order_id(name: &str) -> Result<Uuid, OrderError> {
    let mut violations = Violations::default();
    let id = names::parse("name", names::ORDERS, name, &mut violations);
    violations.into_result(id)?.ok_or(OrderError::OrderNotFound)
}

/// An order as the API shows it.
pub fn order_to_proto(order: &Order) -> pb::Order {
    pb::Order {
        name: names::format(names::ORDERS, order.id),
        deal: names::format(names::DEALS, order.deal_id),
        customer_id: order.customer_id.clone(),
        quantity: order.quantity,
        unit_price: Some(order.unit_price.to_proto()),
        total_price: Some(order.total_price.to_proto()),
        state: order.state.to_proto().into(),
        create_time: Some(time::to_proto(order.create_time)),
        update_time: Some(time::to_proto(order.update_time)),
    }
}
