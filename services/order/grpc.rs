//! The gRPC face of order-service. Every handler reads the same: decode and validate the request,
//! call the domain, deal-service and the store, map the error, encode the reply.

use sqlx::PgPool;
use tonic::{Request, Response, Status};
use uuid::Uuid;

use crate::{
    proto::order::{self as pb, order_service_server::OrderService},
    shared::{
        auth::{self, Caller, Role},
        call::CallContext,
        customers,
        layers::admission::stock::StockBoard,
        names, paging,
        status::Violations,
    },
};

use super::{
    convert::{order_state_from_proto, order_to_proto},
    deciding::{Deciding, visible_to},
    domain::{self, Decision, Order, OrderState},
    error::OrderError,
    placing::{Placing, holds::DealsClient},
    store,
};

/// The order API over one database pool and a client of deal-service.
pub struct OrderApi {
    pool: PgPool,
    placing: Placing,
    deciding: Deciding,
}

impl OrderApi {
    /// The API over `pool`, reserving through `deals`, marking on `stock` the deals it finds sold
    /// out or ended.
    pub fn new(pool: PgPool, deals: DealsClient, stock: StockBoard) -> Self {
        let placing = Placing::new(pool.clone(), deals.clone(), stock);
        Self { deciding: Deciding { pool: pool.clone(), deals }, pool, placing }
    }
}

#[tonic::async_trait]
impl OrderService for OrderApi {
    #[tracing::instrument(skip_all)]
    async fn create_order(&self, request: Request<pb::CreateOrderRequest>) -> Result<Response<pb::Order>, Status> {
        let caller = authorize(&request, BUYERS)?;
        let context = CallContext::of(&request);
        reply(self.create(&context, request.get_ref(), caller.customer()).await.map(|order| order_to_proto(&order)))
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
        reply(self.decide(&request.get_ref().name, Decision::Approve, None).await)
    }

    #[tracing::instrument(skip_all, fields(order = %request.get_ref().name))]
    async fn reject_order(&self, request: Request<pb::RejectOrderRequest>) -> Result<Response<pb::Order>, Status> {
        authorize(&request, ADMINS)?;
        reply(self.decide(&request.get_ref().name, Decision::Reject, None).await)
    }

    #[tracing::instrument(skip_all, fields(order = %request.get_ref().name))]
    async fn cancel_order(&self, request: Request<pb::CancelOrderRequest>) -> Result<Response<pb::Order>, Status> {
        let caller = authorize(&request, BUYERS)?;
        let owner = caller.customer();
        reply(self.decide(&request.get_ref().name, Decision::Cancel, owner).await)
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
fn authorize<'r, T>(request: &'r Request<T>, roles: &'static [Role]) -> Result<&'r Caller, OrderError> {
    Ok(auth::authorize(request, roles)?)
}

impl OrderApi {
    /// Places an order ([`Placing`]). `buyer` is the customer the caller's token names; without
    /// authentication, the request's `customer_id`.
    async fn create(
        &self,
        context: &CallContext,
        request: &pb::CreateOrderRequest,
        buyer: Option<&str>,
    ) -> Result<Order, OrderError> {
        let new = domain::new_order(request, buyer)?;
        let id = new.request_id.unwrap_or_else(Uuid::new_v4);
        self.placing.place(context, id, &new).await
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
                .then(|| customers::customer_id("customer_id", &request.customer_id, &mut violations))
                .flatten(),
        };
        let state = match pb::order::State::try_from(request.state) {
            Ok(state) => order_state_from_proto(state),
            Err(_) => {
                violations.add("state", "is not an Order.State value");
                None
            }
        };
        let filter_key =
            format!("{}|{}", state.map_or("any", OrderState::as_str), customer_id.as_deref().unwrap_or(""));
        let after = paging::Cursor::from_token("page_token", &request.page_token, &filter_key, &mut violations);
        violations.into_result(())?;

        let mut orders = store::list_orders(&self.pool, customer_id.as_deref(), state, after, limit + 1).await?;
        let next_page_token = paging::cut_page(&mut orders, limit, &filter_key, |last| paging::Cursor {
            at: last.create_time,
            id: last.id,
        });
        Ok(pb::ListOrdersResponse { orders: orders.iter().map(order_to_proto).collect(), next_page_token })
    }
}

impl OrderApi {
    async fn decide(&self, name: &str, decision: Decision, owner: Option<&str>) -> Result<pb::Order, OrderError> {
        let order = self.deciding.decide(order_id(name)?, decision, owner).await?;
        Ok(order_to_proto(&order))
    }
}

fn order_id(name: &str) -> Result<Uuid, OrderError> {
    let mut violations = Violations::default();
    let id = names::parse("name", names::ORDERS, name, &mut violations);
    violations.into_result(id)?.ok_or(OrderError::OrderNotFound)
}
