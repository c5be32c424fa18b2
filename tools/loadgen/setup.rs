//! The deals a scenario runs on, created through the API as an admin, and the checks of their units
//! after the load.

use std::time::Duration;

use chrono::{TimeDelta, Utc};
use tonic::{Request, transport::Channel};

use topkart::{
    proto::{
        Money,
        deal::{self as pb, deal_service_client::DealServiceClient},
    },
    shared::{auth::Signer, time},
};

use crate::{
    options::{self, Authorization, LoadError, Scenario, authorization},
    report::Check,
};

/// The admin's client of deal-service.
pub(super) struct Admin {
    deals: DealServiceClient<Channel>,
    authorization: Option<Authorization>,
    deadline: Duration,
}

impl Admin {
    pub(super) fn new(channel: Channel, signer: Option<&Signer>, deadline: Duration) -> Result<Self, LoadError> {
        let authorization = signer
            .map(|signer| authorization(signer, topkart::shared::auth::Role::Admin, "loadgen-admin"))
            .transpose()?;
        Ok(Self { deals: DealServiceClient::new(channel), authorization, deadline })
    }

    fn request<T>(&self, message: T) -> Request<T> {
        options::request(message, self.deadline, self.authorization.as_ref())
    }

    /// A live deal with `units` units, running for two hours or until the daily reset, if sooner.
    pub(super) async fn create_deal(&self, product_name: &str, units: i32) -> Result<pb::Deal, LoadError> {
        let now = Utc::now();
        let midnight = (now + TimeDelta::days(1)).date_naive().and_time(chrono::NaiveTime::MIN).and_utc();
        let expire = (now + TimeDelta::hours(2)).min(midnight);
        if expire - now < TimeDelta::minutes(5) {
            tracing::warn!("the daily reset at 00:00 UTC is minutes away: the deals end then");
        }
        let deal = pb::Deal {
            product_name: product_name.to_owned(),
            actual_price: Some(usd(100)),
            final_price: Some(usd(10)),
            total_units: units,
            start_time: Some(time::to_proto(now)),
            expire_time: Some(time::to_proto(expire)),
            ..Default::default()
        };
        let created = self.deals.clone().create_deal(self.request(pb::CreateDealRequest { deal: Some(deal) })).await?;
        Ok(created.into_inner())
    }

    /// `count` live deals.
    pub(super) async fn create_deals(&self, count: usize, units: i32) -> Result<Vec<pb::Deal>, LoadError> {
        let mut deals = Vec::with_capacity(count);
        for n in 0..count {
            deals.push(self.create_deal(&format!("deal {n}"), units).await?);
        }
        Ok(deals)
    }

    /// The deals as they are now.
    pub(super) async fn reread(&self, deals: &[pb::Deal]) -> Result<Vec<pb::Deal>, LoadError> {
        let mut now = Vec::with_capacity(deals.len());
        for deal in deals {
            let request = self.request(pb::GetDealRequest { name: deal.name.clone() });
            now.push(self.deals.clone().get_deal(request).await?.into_inner());
        }
        Ok(now)
    }
}

fn usd(units: i64) -> Money {
    Money { currency_code: "USD".into(), units, nanos: 0 }
}

/// Every order placed has its unit, and no deal gave out more units than it had. A call that failed
/// may still have taken a unit (a hold the worker releases later), so units taken may exceed orders.
pub(super) fn unit_checks(
    scenario: Scenario,
    before: &[pb::Deal],
    after: &[pb::Deal],
    ordered_units: i64,
) -> Vec<Check> {
    let total: i64 = before.iter().map(|deal| i64::from(deal.total_units)).sum();
    let available: i64 = after.iter().map(|deal| i64::from(deal.available_units)).sum();
    let taken = total - available;
    let mut checks = vec![Check {
        name: "not oversold".into(),
        passed: ordered_units <= taken && taken <= total && available >= 0,
        detail: format!("{ordered_units} units ordered, {taken} taken, of {total}"),
    }];
    if scenario == Scenario::HotDealSellOut {
        checks.push(Check {
            name: "sold out".into(),
            passed: available == 0 && ordered_units == total,
            detail: format!("{available} units left, {ordered_units} of {total} ordered"),
        });
    }
    checks
}
