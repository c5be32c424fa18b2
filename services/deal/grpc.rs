//! The gRPC face of deal-service. Every handler reads the same: decode and validate the request,
//! call the domain and the store, map the error, encode the reply. order-service's calls
//! (HoldService) are in [`super::holds::grpc`].

use std::{pin::Pin, sync::Arc};

use chrono::Utc;
use sqlx::PgPool;
use tokio::sync::watch;
use tonic::{
    Request, Response, Status,
    codegen::tokio_stream::{Stream, StreamExt},
};
use uuid::Uuid;

use crate::{
    proto::deal::{self as pb, deal_service_server::DealService},
    shared::{
        auth::{self, Caller, Role},
        encoded::Reply,
        layers::Limits,
        names, paging, quantity,
        status::Violations,
    },
};

use super::{
    changes,
    convert::{Audience, deal_state_from_proto, deal_to_proto, entry_to_proto},
    domain::{self, Deal, DealState},
    error::DealError,
    live_deals::LiveDeals,
    store::{self, DealFilter},
    waitlist::{
        self,
        domain::{Join, WaitlistEntry},
    },
    watch::{DealStream, Watchers},
};

/// The deal API over its database pools.
pub struct DealApi {
    pool: PgPool,
    /// WatchDeal's streams.
    watchers: Arc<Watchers>,
    /// The first page of live deals.
    live_deals: LiveDeals,
}

impl DealApi {
    /// ListDeals, its reply sent as bytes when it is the first page of live deals.
    #[tracing::instrument(name = "list_deals", skip_all)]
    pub async fn list_deals_encoded(
        &self,
        request: Request<pb::ListDealsRequest>,
    ) -> Result<Response<Reply<pb::ListDealsResponse>>, Status> {
        let caller = authorize(&request, READERS)?;
        reply(self.list(request.get_ref(), caller).await)
    }

    /// WatchDeal, each version of the deal sent as bytes encoded once for all its watchers.
    #[tracing::instrument(name = "watch_deal", skip_all, fields(deal = %request.get_ref().name))]
    pub async fn watch_deal_encoded(
        &self,
        request: Request<pb::WatchDealRequest>,
    ) -> Result<Response<DealStream>, Status> {
        let audience = Audience::of(authorize(&request, READERS)?);
        let mut violations = Violations::default();
        let id = names::parse("name", names::DEALS, &request.get_ref().name, &mut violations);
        // Streams of one connection share their deal's channel, so a change is written to it at once.
        let connection = request.remote_addr();
        let watch = async {
            let id = violations.into_result(id)?.ok_or(DealError::DealNotFound)?;
            self.watchers.watch(id, audience, connection).await
        };
        reply(watch.await)
    }

    /// The API over `pool`, streaming WatchDeal calls within `limits` (at most
    /// `max_watchers`, changes read every `watch_refresh_interval` at most), which end when
    /// `shutdown` turns true.
    pub fn new(pool: PgPool, limits: &Limits, shutdown: watch::Receiver<bool>) -> Self {
        Self {
            live_deals: LiveDeals::new(pool.clone()),
            watchers: Watchers::start(pool.clone(), limits.max_watchers, limits.watch_refresh_interval, shutdown),
            pool,
        }
    }
}

#[tonic::async_trait]
impl DealService for DealApi {
    #[tracing::instrument(skip_all)]
    async fn create_deal(&self, request: Request<pb::CreateDealRequest>) -> Result<Response<pb::Deal>, Status> {
        authorize(&request, ADMINS)?;
        reply(self.create(request.into_inner()).await.map(|deal| deal_to_proto(&deal)))
    }

    #[tracing::instrument(skip_all, fields(deal = %request.get_ref().deal.as_ref().map_or("", |deal| deal.name.as_str())))]
    async fn update_deal(&self, request: Request<pb::UpdateDealRequest>) -> Result<Response<pb::Deal>, Status> {
        authorize(&request, ADMINS)?;
        reply(self.update(request.into_inner()).await.map(|deal| deal_to_proto(&deal)))
    }

    #[tracing::instrument(skip_all, fields(deal = %request.get_ref().name))]
    async fn get_deal(&self, request: Request<pb::GetDealRequest>) -> Result<Response<pb::Deal>, Status> {
        let audience = Audience::of(authorize(&request, READERS)?);
        reply(self.get(&request.get_ref().name).await.map(|deal| audience.deal(&deal)))
    }

    // ListDeals and WatchDeal are served by `routes::DealRoutes`, which sends their replies as
    // bytes encoded once; these two are their generated routes, reached only by a server built
    // without it, and decode what the others send as bytes.

    async fn list_deals(
        &self,
        request: Request<pb::ListDealsRequest>,
    ) -> Result<Response<pb::ListDealsResponse>, Status> {
        let page = self.list_deals_encoded(request).await?.into_inner();
        Ok(Response::new(page.into_message()?))
    }

    type WatchDealStream = Pin<Box<dyn Stream<Item = Result<pb::Deal, Status>> + Send>>;

    async fn watch_deal(
        &self,
        request: Request<pb::WatchDealRequest>,
    ) -> Result<Response<Self::WatchDealStream>, Status> {
        let stream = self.watch_deal_encoded(request).await?.into_inner();
        Ok(Response::new(Box::pin(stream.map(|message| message.and_then(Reply::into_message)))))
    }

    #[tracing::instrument(skip_all, fields(deal = %request.get_ref().deal))]
    async fn join_waitlist(
        &self,
        request: Request<pb::JoinWaitlistRequest>,
    ) -> Result<Response<pb::WaitlistEntry>, Status> {
        let caller = authorize(&request, CUSTOMERS)?;
        reply(self.join(request.get_ref(), caller).await.map(|entry| entry_to_proto(&entry)))
    }

    #[tracing::instrument(skip_all, fields(entry = %request.get_ref().name))]
    async fn get_waitlist_entry(
        &self,
        request: Request<pb::GetWaitlistEntryRequest>,
    ) -> Result<Response<pb::WaitlistEntry>, Status> {
        let caller = authorize(&request, READERS)?;
        let get = async {
            let (deal_id, entry_id) = entry_name(&request.get_ref().name)?;
            waitlist::get(&self.pool, deal_id, entry_id, caller.customer()).await
        };
        reply(get.await.map(|entry| entry_to_proto(&entry)))
    }

    #[tracing::instrument(skip_all, fields(entry = %request.get_ref().name))]
    async fn leave_waitlist(
        &self,
        request: Request<pb::LeaveWaitlistRequest>,
    ) -> Result<Response<pb::WaitlistEntry>, Status> {
        let caller = authorize(&request, CUSTOMERS)?;
        let leave = async {
            let (deal_id, entry_id) = entry_name(&request.get_ref().name)?;
            waitlist::leave(&self.pool, deal_id, entry_id, entry_owner(caller)?).await
        };
        reply(leave.await.map(|entry| entry_to_proto(&entry)))
    }

    #[tracing::instrument(skip_all, fields(deal = %request.get_ref().parent))]
    async fn list_waitlist_entries(
        &self,
        request: Request<pb::ListWaitlistEntriesRequest>,
    ) -> Result<Response<pb::ListWaitlistEntriesResponse>, Status> {
        let caller = authorize(&request, READERS)?;
        reply(self.list_entries(request.get_ref(), caller.customer()).await)
    }
}

fn reply<T>(result: Result<T, DealError>) -> Result<Response<T>, Status> {
    result.map(Response::new).map_err(Status::from)
}

/// Who may create and update deals, and see deals in any state.
const ADMINS: &[Role] = &[Role::Admin];
/// Who may read deals.
const READERS: &[Role] = &[Role::Customer, Role::Admin];
/// Who may join and leave waitlists.
const CUSTOMERS: &[Role] = &[Role::Customer];

/// The request's caller, if it has one of `roles`.
fn authorize<'r, T>(request: &'r Request<T>, roles: &'static [Role]) -> Result<&'r Caller, DealError> {
    Ok(auth::authorize(request, roles)?)
}

impl DealApi {
    async fn create(&self, request: pb::CreateDealRequest) -> Result<Deal, DealError> {
        let now = Utc::now();
        let terms = domain::new_deal(request.deal.as_ref(), now)?;
        changes::create(&self.pool, &self.live_deals, &terms, now).await
    }

    async fn update(&self, request: pb::UpdateDealRequest) -> Result<Deal, DealError> {
        let mut violations = Violations::default();
        let patch = request.deal.unwrap_or_default();
        let id = names::parse("deal.name", names::DEALS, &patch.name, &mut violations);
        let mask = request.update_mask.map(|mask| mask.paths).unwrap_or_default();
        domain::check_update_mask(&mask, &mut violations);
        let id = violations.into_result(id)?.ok_or(DealError::DealNotFound)?;
        changes::update(&self.pool, &self.live_deals, id, &patch, &mask).await
    }

    async fn get(&self, name: &str) -> Result<Deal, DealError> {
        let mut violations = Violations::default();
        let id = names::parse("name", names::DEALS, name, &mut violations);
        let id = violations.into_result(id)?.ok_or(DealError::DealNotFound)?;
        store::get_deal(&self.pool, id).await?.ok_or(DealError::DealNotFound)
    }

    async fn list(
        &self,
        request: &pb::ListDealsRequest,
        caller: &Caller,
    ) -> Result<Reply<pb::ListDealsResponse>, DealError> {
        let mut violations = Violations::default();
        let limit = paging::page_size("page_size", request.page_size, &mut violations);
        let filter = match pb::deal::State::try_from(request.state) {
            Ok(state) => deal_state_from_proto(state).map_or(DealFilter::Live, DealFilter::InState),
            Err(_) => {
                violations.add("state", "is not a Deal.State value");
                DealFilter::Live
            }
        };
        let filter_key = match filter {
            DealFilter::Live => "live",
            // Coming soon: customers may list the scheduled deals too, without their final price.
            DealFilter::InState(DealState::Scheduled) => DealState::Scheduled.as_str(),
            DealFilter::InState(state) => {
                caller.require(ADMINS)?;
                state.as_str()
            }
        };
        let after = paging::Cursor::from_token("page_token", &request.page_token, filter_key, &mut violations);
        violations.into_result(())?;

        if let (DealFilter::Live, None) = (filter, after)
            && let Some(page) = self.live_deals.first_page(limit as usize, |next| next.to_token(filter_key)).await?
        {
            return Ok(Reply::Framed(page));
        }
        let mut deals = store::list_deals(&self.pool, filter, after, limit + 1).await?;
        let next_page_token = paging::cut_page(&mut deals, limit, filter_key, |last| paging::Cursor {
            at: last.terms.expire_time,
            id: last.id,
        });
        let audience = Audience::of(caller);
        let page =
            pb::ListDealsResponse { deals: deals.iter().map(|deal| audience.deal(deal)).collect(), next_page_token };
        Ok(Reply::Message(page))
    }

    async fn join(&self, request: &pb::JoinWaitlistRequest, caller: &Caller) -> Result<WaitlistEntry, DealError> {
        let mut violations = Violations::default();
        let deal_id = names::parse("deal", names::DEALS, &request.deal, &mut violations);
        let quantity = quantity::quantity("quantity", request.quantity, &mut violations);
        let request_id = (!request.request_id.is_empty())
            .then(|| names::parse_uuid("request_id", &request.request_id, &mut violations))
            .flatten();
        let customer = entry_owner(caller)?;
        let (Some(deal_id), Some(quantity)) = (deal_id, quantity) else {
            return Err(violations.into());
        };
        violations.into_result(())?;
        let id = request_id.unwrap_or_else(Uuid::new_v4);
        waitlist::join(&self.pool, &Join { id, deal_id, customer: customer.to_owned(), quantity }).await
    }

    async fn list_entries(
        &self,
        request: &pb::ListWaitlistEntriesRequest,
        customer: Option<&str>,
    ) -> Result<pb::ListWaitlistEntriesResponse, DealError> {
        let mut violations = Violations::default();
        let deal_id = names::parse("parent", names::DEALS, &request.parent, &mut violations);
        let limit = paging::page_size("page_size", request.page_size, &mut violations);
        // A token is bound to its deal and to whose entries it lists.
        let filter_key = format!("{}|{}", request.parent, customer.unwrap_or("*"));
        let after = paging::Cursor::from_token("page_token", &request.page_token, &filter_key, &mut violations);
        let deal_id = violations.into_result(deal_id)?.ok_or(DealError::DealNotFound)?;
        let mut entries = waitlist::list(&self.pool, deal_id, customer, after, limit + 1).await?;
        let next_page_token = paging::cut_page(&mut entries, limit, &filter_key, |last| paging::Cursor {
            at: last.create_time,
            id: last.id,
        });
        Ok(pb::ListWaitlistEntriesResponse {
            waitlist_entries: entries.iter().map(entry_to_proto).collect(),
            next_page_token,
        })
    }
}

/// The deal and entry ids of a waitlist entry's name.
fn entry_name(name: &str) -> Result<(Uuid, Uuid), DealError> {
    let mut violations = Violations::default();
    let ids = names::parse_waitlist_entry("name", name, &mut violations);
    violations.into_result(ids)?.ok_or(DealError::WaitlistEntryNotFound)
}

/// The customer whose entry a join makes or a leave takes out: the caller's token's subject. A
/// server run with `--insecure-no-auth` has no customer to name.
fn entry_owner(caller: &Caller) -> Result<&str, DealError> {
    caller.customer().ok_or_else(|| {
        let mut violations = Violations::default();
        violations.add("authorization", "must be a customer's token: a waitlist entry belongs to a customer");
        violations.into()
    })
}
