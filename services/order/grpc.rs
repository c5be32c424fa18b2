//! The gRPC face of order-service. Every handler reads the same: decode and validate the request,
//! call the domain, deal-service and the store, map the error, encode the reply.

use sqlx::PgPool;
use tonic::{Request, Response, Status};
use uuid::Uuid;

use crate::{
    proto::order::{self as pb, order_service_server::OrderService},
    shared::{names, paging, status::Violations, time},
};

use super::{
    deals::DealsClient,
    domain::{self, Decision, Order, OrderState},
    error::OrderError,
    store::{self, OrderInsert},
};

/// The order API over one database pool and a client of deal-service.
pub struct OrderApi {
    pool: PgPool,
    deals: DealsClient,
}

impl OrderApi {
    /// The API over `pool`, reserving through `deals`.
    pub fn new(pool: PgPool, deals: DealsClient) -> Self {
        Self { pool, deals }
    }
}

#[tonic::async_trait]
impl OrderService for OrderApi {
    #[tracing::instrument(skip_all)]
    async fn create_order(&self, request: Request<pb::CreateOrderRequest>) -> Result<Response<pb::Order>, Status> {
        reply(self.create(request.get_ref()).await.map(|order| order_to_proto(&order)))
    }

    #[tracing::instrument(skip_all, fields(order = %request.get_ref().name))]
    async fn get_order(&self, request: Request<pb::GetOrderRequest>) -> Result<Response<pb::Order>, Status> {
        reply(self.get(&request.get_ref().name).await.map(|order| order_to_proto(&order)))
    }

    #[tracing::instrument(skip_all)]
    async fn list_orders(
        &self,
        request: Request<pb::ListOrdersRequest>,
    ) -> Result<Response<pb::ListOrdersResponse>, Status> {
        reply(self.list(request.get_ref()).await)
    }

    #[tracing::instrument(skip_all, fields(order = %request.get_ref().name))]
    async fn approve_order(&self, request: Request<pb::ApproveOrderRequest>) -> Result<Response<pb::Order>, Status> {
        reply(self.decide(&request.get_ref().name, Decision::Approve).await.map(|order| order_to_proto(&order)))
    }

    #[tracing::instrument(skip_all, fields(order = %request.get_ref().name))]
    async fn reject_order(&self, request: Request<pb::RejectOrderRequest>) -> Result<Response<pb::Order>, Status> {
        reply(self.decide(&request.get_ref().name, Decision::Reject).await.map(|order| order_to_proto(&order)))
    }

    #[tracing::instrument(skip_all, fields(order = %request.get_ref().name))]
    async fn cancel_order(&self, request: Request<pb::CancelOrderRequest>) -> Result<Response<pb::Order>, Status> {
        reply(self.decide(&request.get_ref().name, Decision::Cancel).await.map(|order| order_to_proto(&order)))
    }
}

fn reply<T>(result: Result<T, OrderError>) -> Result<Response<T>, Status> {
    result.map(Response::new).map_err(Status::from)
}

impl OrderApi {
    async fn create(&self, request: &pb::CreateOrderRequest) -> Result<Order, OrderError> {
        let new = domain::new_order(request.order.as_ref())?;
        // The order's id names its reservation, so the units can always be traced to the order.
        let id = Uuid::new_v4();
        let reserved = self.deals.reserve(id, new.deal_id, new.quantity, new.shown_unit_price.as_ref()).await?;
        let total_price = reserved
            .unit_price
            .times(new.quantity)
            .ok_or_else(|| OrderError::Internal("order total overflows".into()))?;
        let insert = OrderInsert {
            id,
            deal_id: new.deal_id,
            customer_id: &new.customer_id,
            quantity: new.quantity,
            unit_price: &reserved.unit_price,
            total_price: &total_price,
        };
        match store::insert_order(&self.pool, insert).await {
            Ok(order) => {
                tracing::info!(order = %order.id, deal = %order.deal_id, quantity = order.quantity, "order placed");
                Ok(order)
            }
            Err(err) => {
                // No order, so no units held for it.
                if let Err(release) = self.deals.release(id).await {
                    tracing::error!(order = %id, error = ?release, "could not release the units of an order that was not recorded");
                }
                Err(err.into())
            }
        }
    }

    async fn get(&self, name: &str) -> Result<Order, OrderError> {
        let id = order_id(name)?;
        store::get_order(&self.pool, id).await?.ok_or(OrderError::OrderNotFound)
    }

    async fn list(&self, request: &pb::ListOrdersRequest) -> Result<pb::ListOrdersResponse, OrderError> {
        let mut violations = Violations::default();
        let limit = paging::page_size("page_size", request.page_size, &mut violations);
        let customer_id = (!request.customer_id.is_empty())
            .then(|| domain::customer_id("customer_id", &request.customer_id, &mut violations))
            .flatten();
        let state = match pb::order::State::try_from(request.state) {
            Ok(state) => OrderState::from_proto(state),
            Err(_) => {
                violations.add("state", "is not an Order.State value");
                None
            }
        };
        let filter_key = format!("{}|{}", state.map_or("any", OrderState::as_str), request.customer_id);
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
    /// statement, so concurrent decisions cannot both pass and no lock is held across the call to
    /// deal-service; if the units cannot be given back, the order returns to pending and the error
    /// goes to the caller, who may retry (a release is idempotent).
    async fn decide(&self, name: &str, decision: Decision) -> Result<Order, OrderError> {
        let id = order_id(name)?;
        let outcome = decision.outcome();
        let Some(order) = store::decide(&self.pool, id, outcome).await? else {
            let current = store::get_order(&self.pool, id).await?.ok_or(OrderError::OrderNotFound)?;
            decision.check(current.state)?;
            // Pending again: a failed release was just undone. Let the caller retry.
            return Err(OrderError::DealServiceUnavailable { code: tonic::Code::Unavailable });
        };
        if decision.releases_units() {
            if let Err(err) = self.deals.release(id).await {
                store::undo_decision(&self.pool, id, outcome).await?;
                return Err(err);
            }
        }
        tracing::info!(order = %id, state = order.state.as_str(), "order decided");
        Ok(order)
    }
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
