//! order-service's client of deal-service: reserve and release units over gRPC, with a deadline on
//! every call, and deal-service's answers mapped onto order-service's errors.

use std::time::Duration;

use tonic::{Code, Request, Status, transport::Channel};
use uuid::Uuid;

use crate::{
    proto::deal::{self as pb, deal_service_client::DealServiceClient},
    shared::{money::Price, names, status::Violations},
};

use super::error::OrderError;

/// Units reserved for an order, at the price they were reserved at.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReservedUnits {
    pub unit_price: Price,
}

/// A cheap-to-clone handle on deal-service.
#[derive(Debug, Clone)]
pub struct DealsClient {
    client: DealServiceClient<Channel>,
    deadline: Duration,
}

impl DealsClient {
    /// A client that connects to `url` on first use and gives each call `deadline`.
    pub fn connect_lazy(url: &str, deadline: Duration) -> Result<Self, tonic::codegen::http::uri::InvalidUri> {
        let channel = Channel::from_shared(url.to_owned())?.connect_timeout(deadline).tcp_nodelay(true).connect_lazy();
        Ok(Self { client: DealServiceClient::new(channel), deadline })
    }

    /// Reserves `quantity` units of `deal_id` under `reservation_id` (the order id).
    pub async fn reserve(
        &self,
        reservation_id: Uuid,
        deal_id: Uuid,
        quantity: i32,
        shown_unit_price: Option<&Price>,
    ) -> Result<ReservedUnits, OrderError> {
        let request = pb::ReserveUnitsRequest {
            deal: names::format(names::DEALS, deal_id),
            reservation_id: reservation_id.to_string(),
            quantity,
            expected_unit_price: shown_unit_price.map(Price::to_proto),
        };
        let reservation =
            self.call(request, |mut client, request| async move { client.reserve_units(request).await }).await?;
        let mut violations = Violations::default();
        let unit_price = Price::parse("unit_price", reservation.unit_price.as_ref(), &mut violations)
            .ok_or_else(|| OrderError::Internal(format!("deal-service sent an invalid unit price: {violations:?}")))?;
        Ok(ReservedUnits { unit_price })
    }

    /// Gives the units of `reservation_id` back; a retry gives nothing back twice.
    pub async fn release(&self, reservation_id: Uuid) -> Result<(), OrderError> {
        let request = pb::ReleaseUnitsRequest { reservation_id: reservation_id.to_string() };
        self.call(request, |mut client, request| async move { client.release_units(request).await }).await?;
        Ok(())
    }

    /// Sends one call with the deadline, both as `grpc-timeout` for the server and as a local timer
    /// for a server that never answers.
    async fn call<Req, Resp, Fut>(
        &self,
        message: Req,
        send: impl FnOnce(DealServiceClient<Channel>, Request<Req>) -> Fut,
    ) -> Result<Resp, OrderError>
    where
        Fut: Future<Output = Result<tonic::Response<Resp>, Status>>,
    {
        let mut request = Request::new(message);
        request.set_timeout(self.deadline);
        match tokio::time::timeout(self.deadline, send(self.client.clone(), request)).await {
            Ok(Ok(response)) => Ok(response.into_inner()),
            Ok(Err(status)) => Err(from_deal_status(status)),
            Err(_elapsed) => Err(OrderError::DealServiceUnavailable { code: Code::DeadlineExceeded }),
        }
    }
}

/// A refusal passes through with its details; a transport failure is UNAVAILABLE or
/// DEADLINE_EXCEEDED; anything else is ours to log.
fn from_deal_status(status: Status) -> OrderError {
    match status.code() {
        Code::NotFound | Code::FailedPrecondition | Code::AlreadyExists => OrderError::DealRefused(status),
        Code::Unavailable | Code::DeadlineExceeded | Code::Cancelled => {
            tracing::warn!(code = ?status.code(), message = status.message(), "deal-service unavailable");
            OrderError::DealServiceUnavailable {
                code: if status.code() == Code::DeadlineExceeded { Code::DeadlineExceeded } else { Code::Unavailable },
            }
        }
        code => OrderError::Internal(format!("deal-service answered {code:?}: {}", status.message())),
    }
}
