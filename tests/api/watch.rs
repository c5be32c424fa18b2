//! WatchDeal: a deal as it is, then every change, from whichever instance made it; the end of a
//! deal ends the stream; the watcher limit and a shutdown give clients a clear, retryable status;
//! changes made while Postgres was gone reach every watcher; a watcher that reads nothing holds up
//! no one else.

use std::time::Duration;

use sqlx::PgPool;
use tonic::{Code, Streaming, transport::Endpoint};
use tonic_types::StatusExt;
use topkart::{
    proto::deal as dealpb,
    shared::{auth::Role, layers::Limits, server::ServerSettings},
};

use crate::{cluster::Cluster, helpers::*, processes::*};

async fn watch(deals: &Deals, name: &str) -> Result<Streaming<dealpb::Deal>, tonic::Status> {
    deals.clone().watch_deal(dealpb::WatchDealRequest { name: name.into() }).await.map(tonic::Response::into_inner)
}

/// The next message of `stream` (10 s at the most: a change arrives in milliseconds).
async fn next(stream: &mut Streaming<dealpb::Deal>) -> Result<Option<dealpb::Deal>, tonic::Status> {
    tokio::time::timeout(Duration::from_secs(10), stream.message()).await.expect("a message within 10 s")
}

/// Reads `stream` until a message satisfies `wanted`.
async fn until(stream: &mut Streaming<dealpb::Deal>, mut wanted: impl FnMut(&dealpb::Deal) -> bool) -> dealpb::Deal {
    loop {
        let deal = next(stream).await.expect("no error").expect("the stream goes on");
        if wanted(&deal) {
            return deal;
        }
    }
}

#[sqlx::test(migrator = "topkart::shared::db::MIGRATOR")]
async fn a_watcher_sees_the_deal_then_every_change_made_through_another_instance(pool: PgPool) {
    let app = spawn_app(pool.clone()).await;
    let deal = app.create_deal(10).await;
    // Watched on a second deal-service; the orders go through the app's own.
    let (other, _stop_other) = spawn_deal_service(pool.clone()).await;
    let customer = deals_with(&channel(other).await, Bearer::of(&token(Role::Customer, "carol")));
    let mut stream = watch(&customer, &deal.name).await.expect("watching");
    let first = next(&mut stream).await.unwrap().unwrap();
    assert_eq!((first.available_units, first.claimed_percent, first.state()), (10, 0, dealpb::deal::State::Active));

    app.order(order_request(&deal.name, 3)).await.expect("an order");
    let after_order = until(&mut stream, |deal| deal.available_units == 7).await;
    assert_eq!(after_order.claimed_percent, 30);

    let mut admin = app.deals.clone();
    let patch = dealpb::Deal { name: deal.name.clone(), final_price: Some(inr(550)), ..Default::default() };
    let mask = prost_types::FieldMask { paths: vec!["final_price".into()] };
    admin.update_deal(dealpb::UpdateDealRequest { deal: Some(patch), update_mask: Some(mask) }).await.unwrap();
    let repriced = until(&mut stream, |deal| deal.final_price.as_ref().is_some_and(|price| price.units == 550)).await;
    assert_eq!(repriced.available_units, 7);
}

/// A deal-service keeps serving watchers after the last watcher of another deal has left: the
/// next deal watched gets its changes too.
#[sqlx::test(migrator = "topkart::shared::db::MIGRATOR")]
async fn a_deal_watched_after_another_deal_lost_its_watchers_gets_its_changes(pool: PgPool) {
    let app = spawn_app(pool.clone()).await;
    for units in [10, 20] {
        let deal = app.create_deal(units).await;
        let mut stream = watch(&app.deals, &deal.name).await.expect("watching");
        assert_eq!(next(&mut stream).await.unwrap().unwrap().available_units, units);
        app.order(order_request(&deal.name, 3)).await.expect("an order");
        until(&mut stream, |deal| deal.available_units == units - 3).await;
    }
}

/// A hot deal commits faster than one refresh per 50 ms: each refresh takes every notification that
/// has arrived, so a change of another deal is not held behind a backlog of the hot deal's.
#[sqlx::test(migrator = "topkart::shared::db::MIGRATOR")]
async fn a_change_is_not_held_behind_a_backlog_of_another_deals_notifications(pool: PgPool) {
    let app = spawn_app(pool.clone()).await;
    let hot = app.create_deal(10).await;
    let watched = app.create_deal(10).await;
    let mut stream = watch(&app.deals, &watched.name).await.expect("watching");
    assert_eq!(next(&mut stream).await.unwrap().unwrap().available_units, 10);
    // 2,000 commits, each changing the hot deal: 2,000 notifications, 100 s of them at one per
    // refresh.
    let burst = format!(
        "do $$ begin for i in 1..2000 loop
             update deals set product_name = 'hot ' || i where id = '{}'; commit;
         end loop; end $$",
        uuid(&hot.name)
    );
    let mut connection = pool.acquire().await.unwrap();
    sqlx::raw_sql("set synchronous_commit = off").execute(&mut *connection).await.unwrap();
    sqlx::raw_sql(sqlx::AssertSqlSafe(burst)).execute(&mut *connection).await.unwrap();
    app.order(order_request(&watched.name, 3)).await.expect("an order");
    // `next` gives each message 10 s.
    until(&mut stream, |deal| deal.available_units == 7).await;
}

/// `--watch-refresh-ms` spaces the reads of a changed deal: changes made within the interval after
/// a read reach a watcher together, as one message with the latest, and none is lost.
#[sqlx::test(migrator = "topkart::shared::db::MIGRATOR")]
async fn changes_within_the_refresh_interval_reach_a_watcher_as_one_message(pool: PgPool) {
    let app = spawn_app(pool.clone()).await;
    let deal = app.create_deal(10).await;
    let limits = Limits { watch_refresh_interval: Duration::from_secs(2), ..Limits::default() };
    let (addr, _stop) = spawn_deal_service_with(pool.clone(), ServerSettings { limits, ..test_settings() }).await;
    let deals = deals_with(&channel(addr).await, Bearer::of(&token(Role::Customer, "carol")));
    let mut stream = watch(&deals, &deal.name).await.expect("watching");
    assert_eq!(next(&mut stream).await.unwrap().unwrap().available_units, 10);
    let take_one = async || {
        sqlx::query("update deals set available_units = available_units - 1 where id = $1")
            .bind(uuid(&deal.name))
            .execute(&pool)
            .await
            .unwrap();
    };
    take_one().await;
    assert_eq!(next(&mut stream).await.unwrap().unwrap().available_units, 9);
    // Just read: the next two changes wait for the interval. Apart by more than the default
    // interval, they would be read and sent apart.
    take_one().await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    take_one().await;
    assert_eq!(next(&mut stream).await.unwrap().unwrap().available_units, 7, "one message with the latest");
}

#[sqlx::test(migrator = "topkart::shared::db::MIGRATOR")]
async fn the_end_of_a_deal_is_its_last_message_and_the_stream_ends_ok(pool: PgPool) {
    let app = spawn_app(pool.clone()).await;
    let deal = app.create_deal(5).await;
    let mut stream = watch(&app.deals, &deal.name).await.expect("watching");
    assert_eq!(next(&mut stream).await.unwrap().unwrap().state(), dealpb::deal::State::Active);
    // The deal now ends a second from now; no sweep runs in this test.
    sqlx::query("update deals set expire_time = now() + interval '1 second' where id = $1")
        .bind(uuid(&deal.name))
        .execute(&pool)
        .await
        .unwrap();
    let last = until(&mut stream, |deal| deal.state() == dealpb::deal::State::Expired).await;
    assert_eq!(last.available_units, 5);
    assert_eq!(next(&mut stream).await.expect("ends with OK"), None);
}

#[sqlx::test(migrator = "topkart::shared::db::MIGRATOR")]
async fn a_statement_changing_more_deals_than_a_notification_names_reaches_every_watcher(pool: PgPool) {
    let app = spawn_app(pool.clone()).await;
    let (first, second) = (app.create_deal(5).await, app.create_deal(7).await);
    let mut streams = [watch(&app.deals, &first.name).await.unwrap(), watch(&app.deals, &second.name).await.unwrap()];
    for stream in &mut streams {
        next(stream).await.unwrap().unwrap();
    }
    // 150 more deals, so that one statement changes 152 of them (a sweep or the daily reset would).
    sqlx::query(
        "insert into deals (id, product_name, currency_code, actual_price_micros, final_price_micros, total_units,
                            available_units, start_time, expire_time, state)
         select gen_random_uuid(), product_name, currency_code, actual_price_micros, final_price_micros, total_units,
                available_units, start_time, expire_time, state
           from deals, generate_series(1, 150) where id = $1",
    )
    .bind(uuid(&first.name))
    .execute(&pool)
    .await
    .unwrap();
    sqlx::query("update deals set total_units = total_units + 10, available_units = available_units + 10")
        .execute(&pool)
        .await
        .unwrap();

    let [mut a, mut b] = streams;
    assert_eq!(until(&mut a, |deal| deal.total_units == 15).await.available_units, 15);
    assert_eq!(until(&mut b, |deal| deal.total_units == 17).await.available_units, 17);
}

#[sqlx::test(migrator = "topkart::shared::db::MIGRATOR")]
async fn watchers_beyond_the_limit_are_refused_and_a_shutdown_ends_the_streams_unavailable(pool: PgPool) {
    let app = spawn_app(pool.clone()).await;
    let deal = app.create_deal(5).await;
    let settings = ServerSettings { limits: Limits { max_watchers: 2, ..Limits::default() }, ..test_settings() };
    let (addr, stop) = spawn_deal_service_with(pool.clone(), settings).await;
    let deals = deals_with(&channel(addr).await, Bearer::of(&token(Role::Customer, "carol")));

    let unknown = watch(&deals, &format!("deals/{}", uuid::Uuid::new_v4())).await.expect_err("no such deal");
    assert_eq!(unknown.code(), Code::NotFound, "and it holds no place");
    let mut first = watch(&deals, &deal.name).await.expect("the first watcher");
    let second = watch(&deals, &deal.name).await.expect("the second watcher");
    let refused = watch(&deals, &deal.name).await.expect_err("a third is one too many");
    assert_eq!(refused.code(), Code::ResourceExhausted);
    let details = refused.get_error_details();
    assert_eq!(details.error_info().map(|info| info.reason.as_str()), Some("TOO_MANY_WATCHERS"));
    assert!(details.retry_info().is_some(), "the refusal says when to retry");

    // A watcher that goes away frees its place.
    drop(second);
    let mut third = None;
    for _ in 0..100 {
        if let Ok(stream) = watch(&deals, &deal.name).await {
            third = Some(stream);
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let mut third = third.expect("a place freed by the watcher that left");

    assert!(next(&mut first).await.unwrap().is_some());
    drop(stop);
    for stream in [&mut first, &mut third] {
        let ended = loop {
            match next(stream).await {
                Ok(Some(_)) => continue,
                Ok(None) => panic!("a shutdown must not end a watch with OK"),
                Err(status) => break status,
            }
        };
        assert_eq!(ended.code(), Code::Unavailable, "{ended:?}");
    }
}

#[sqlx::test(migrator = "topkart::shared::db::MIGRATOR")]
async fn coming_soon_deals_show_customers_their_times_and_their_price_only_once_they_start(pool: PgPool) {
    let app = spawn_app(pool.clone()).await;
    let start = chrono::Utc::now() + chrono::TimeDelta::seconds(2);
    let request = dealpb::Deal {
        start_time: Some(topkart::shared::time::to_proto(start)),
        expire_time: Some(topkart::shared::time::to_proto(start + chrono::TimeDelta::hours(1))),
        ..deal_request(5)
    };
    let mut admin = app.deals.clone();
    let scheduled = admin.create_deal(dealpb::CreateDealRequest { deal: Some(request) }).await.unwrap().into_inner();
    assert_eq!(scheduled.state(), dealpb::deal::State::Scheduled);
    let customer = deals_with(&app.deal_channel, Bearer::of(&token(Role::Customer, "carol")));

    let coming_soon = dealpb::ListDealsRequest { state: dealpb::deal::State::Scheduled.into(), ..Default::default() };
    let listed = customer.clone().list_deals(coming_soon.clone()).await.expect("customers see what comes").into_inner();
    assert_eq!(listed.deals.len(), 1);
    let shown = &listed.deals[0];
    assert_eq!((shown.start_time, shown.expire_time), (scheduled.start_time, scheduled.expire_time));
    assert_eq!(shown.final_price, None, "the price is revealed at the start");
    assert!(shown.actual_price.is_some());
    let admins_view = admin.list_deals(coming_soon).await.unwrap().into_inner();
    assert_eq!(admins_view.deals[0].final_price, scheduled.final_price, "admins see it");
    let read = customer.clone().get_deal(dealpb::GetDealRequest { name: scheduled.name.clone() }).await.unwrap();
    assert_eq!(read.get_ref().final_price, None);

    // A watcher sees it go live, and its price with it.
    let mut stream = watch(&customer, &scheduled.name).await.expect("watching");
    let first = next(&mut stream).await.unwrap().unwrap();
    assert_eq!((first.state(), first.final_price), (dealpb::deal::State::Scheduled, None));
    let live = until(&mut stream, |deal| deal.state() == dealpb::deal::State::Active).await;
    assert_eq!(live.final_price, scheduled.final_price);

    // Other states stay the admins' view.
    let expired = dealpb::ListDealsRequest { state: dealpb::deal::State::Expired.into(), ..Default::default() };
    assert_eq!(customer.clone().list_deals(expired).await.unwrap_err().code(), Code::PermissionDenied);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn after_a_postgres_restart_every_watcher_holds_the_deal_as_it_is_now() {
    let cluster = Cluster::start().await;
    let pool = cluster.topkart_database(10).await;
    let (addr, _stop) = spawn_deal_service(pool.clone()).await;
    wait_serving(addr).await;
    let channel = channel(addr).await;
    let admin = deals_with(&channel, Bearer::of(&token(Role::Admin, "admin")));
    let customer = deals_with(&channel, Bearer::of(&token(Role::Customer, "carol")));
    let mut streams = Vec::new();
    for units in [10, 20] {
        let request = dealpb::CreateDealRequest { deal: Some(deal_request(units)) };
        let deal = admin.clone().create_deal(request).await.unwrap().into_inner();
        for _ in 0..3 {
            let mut stream = watch(&customer, &deal.name).await.expect("watching");
            assert_eq!(next(&mut stream).await.unwrap().unwrap().available_units, units);
            streams.push((deal.name.clone(), stream));
        }
    }

    cluster.pg_ctl("stop");
    wait_health(addr, ServingStatus::NotServing).await;
    // Back, but refusing the service's connections: the deals change where its listener cannot hear.
    cluster.refuse_tcp(true);
    cluster.pg_ctl("start");
    let behind_its_back = PgPool::connect(&cluster.socket_url("topkart")).await.unwrap();
    sqlx::query("update deals set available_units = available_units - 4, update_time = now()")
        .execute(&behind_its_back)
        .await
        .unwrap();
    behind_its_back.close().await;
    cluster.refuse_tcp(false);
    cluster.pg_ctl("reload");
    wait_serving(addr).await;

    for (name, stream) in &mut streams {
        let now = customer.clone().get_deal(dealpb::GetDealRequest { name: name.clone() }).await.unwrap().into_inner();
        let seen = until(stream, |deal| deal.available_units == now.available_units).await;
        assert_eq!(seen, now, "the watcher holds the deal as it is");
    }
}

#[sqlx::test(migrator = "topkart::shared::db::MIGRATOR")]
async fn a_watcher_that_stops_reading_does_not_delay_the_others(pool: PgPool) {
    let app = spawn_app(pool.clone()).await;
    let deal = app.create_deal(100).await;
    let carol = Bearer::of(&token(Role::Customer, "carol"));
    // Their connection grants each stream 1 KiB and they are never read: a few messages fill it,
    // after which the server's sends to them wait on HTTP/2 flow control.
    let stalled_channel = Endpoint::from_shared(format!("http://{}", app.deal_addr))
        .unwrap()
        .initial_stream_window_size(1024)
        .connect()
        .await
        .unwrap();
    let stalled_client = deals_with(&stalled_channel, carol.clone());
    let mut stalled = Vec::new();
    for _ in 0..3 {
        stalled.push(watch(&stalled_client, &deal.name).await.expect("watching"));
    }
    let reading = deals_with(&app.deal_channel, carol);
    let mut readers = Vec::new();
    for _ in 0..2 {
        let mut stream = watch(&reading, &deal.name).await.expect("watching");
        assert_eq!(next(&mut stream).await.unwrap().unwrap().available_units, 100);
        readers.push(stream);
    }

    // Each change reaches the readers (within `next`'s 10 s) before the next one is made.
    const CHANGES: i32 = 40;
    for change in 1..=CHANGES {
        sqlx::query("update deals set available_units = available_units - 1 where id = $1")
            .bind(uuid(&deal.name))
            .execute(&pool)
            .await
            .unwrap();
        for stream in &mut readers {
            until(stream, |deal| deal.available_units == 100 - change).await;
        }
    }

    // Read at last, a stalled watcher gets the latest version, having skipped most of the others:
    // its sends had been held up, not queued.
    for stream in &mut stalled {
        let mut received = 0;
        let last = until(stream, |deal| {
            received += 1;
            deal.available_units == 100 - CHANGES
        })
        .await;
        assert_eq!(last.available_units, 100 - CHANGES);
        assert!(received < CHANGES, "{received} of {} versions: the watcher's sends were never held up", CHANGES + 1);
    }
}

/// A deal's watchers have a channel per connection (`deal::watch`), sent to one after the other,
/// with other tasks let in after every few hundred watchers: every watcher, on every connection,
/// gets every change, also once a connection's watchers have all left, and a shutdown ends them all.
#[sqlx::test(migrator = "topkart::shared::db::MIGRATOR")]
async fn a_change_reaches_every_watcher_of_a_deal_watched_over_many_connections(pool: PgPool) {
    use std::net::SocketAddr;

    use tonic::{codegen::tokio_stream::StreamExt, transport::server::TcpConnectInfo};
    use topkart::{
        deal::grpc::DealApi,
        proto::deal::deal_service_server::DealService,
        shared::auth::{Caller, Role},
    };

    // More watchers than one yield's worth, joining from their connections in turn, as a client
    // spreading its streams over its connections does; a few with no address known.
    const WATCHERS: usize = 2 * topkart::deal::watch::WATCHERS_PER_YIELD + 88;
    const CONNECTIONS: usize = 5;
    let app = spawn_app(pool.clone()).await;
    let deal = app.create_deal(10).await;
    let (stop, stopping) = tokio::sync::watch::channel(false);
    let api = DealApi::new(pool.clone(), &Limits { max_watchers: WATCHERS + 1, ..Limits::default() }, stopping);
    let watch = async |i: usize, connection: Option<usize>| {
        let mut request = tonic::Request::new(dealpb::WatchDealRequest { name: deal.name.clone() });
        request.extensions_mut().insert(Caller::Token { subject: format!("watcher-{i}"), role: Role::Customer });
        if let Some(connection) = connection {
            let port = 40_000 + u16::try_from(connection).unwrap();
            let remote_addr = Some(SocketAddr::from(([127, 0, 0, 1], port)));
            request.extensions_mut().insert(TcpConnectInfo { local_addr: None, remote_addr });
        }
        api.watch_deal(request).await.expect("watching").into_inner()
    };
    let connection_of = |i: usize| (i >= 8).then_some(i % CONNECTIONS);
    let mut streams = Vec::new();
    for i in 0..WATCHERS {
        streams.push((connection_of(i), watch(i, connection_of(i)).await));
    }
    async fn next_of<S: tonic::codegen::tokio_stream::Stream + Unpin>(stream: &mut S) -> Option<S::Item> {
        tokio::time::timeout(Duration::from_secs(10), StreamExt::next(stream)).await.expect("a message within 10 s")
    }
    for (_, stream) in &mut streams {
        assert_eq!(next_of(stream).await.unwrap().unwrap().available_units, 10);
    }

    app.order(order_request(&deal.name, 4)).await.expect("an order");
    for (_, stream) in &mut streams {
        let changed = next_of(stream).await.unwrap().unwrap();
        assert_eq!((changed.available_units, changed.claimed_percent), (6, 40));
    }

    // Every watcher of one connection leaves; the others go on, and so does one who comes back
    // over it once a refresh has dropped its channel.
    streams.retain(|(connection, _)| *connection != Some(0));
    app.order(order_request(&deal.name, 1)).await.expect("an order");
    for (_, stream) in &mut streams {
        until_units(stream, 5).await;
    }
    let mut back = watch(WATCHERS, Some(0)).await;
    assert_eq!(next_of(&mut back).await.unwrap().unwrap().available_units, 5);
    app.order(order_request(&deal.name, 1)).await.expect("an order");
    until_units(&mut back, 4).await;
    for (_, stream) in &mut streams {
        until_units(stream, 4).await;
    }

    stop.send(true).unwrap();
    for (_, stream) in &mut streams {
        let ended = next_of(stream).await.expect("an end, not OK").expect_err("UNAVAILABLE");
        assert_eq!(ended.code(), Code::Unavailable);
    }
    // Once the shutdown has begun, a new watcher is told to go elsewhere rather than joined.
    let mut request = tonic::Request::new(dealpb::WatchDealRequest { name: deal.name.clone() });
    request.extensions_mut().insert(Caller::Token { subject: "late".into(), role: Role::Customer });
    let refused = api.watch_deal(request).await.err().expect("a watcher refused during the shutdown");
    assert_eq!(refused.code(), Code::Unavailable);
    assert_eq!(refused.get_error_details().error_info().map(|info| info.reason.as_str()), Some("SHUTTING_DOWN"));
}

/// Reads `stream` (the API's own, not a client's) until it shows `units` left.
async fn until_units<S>(stream: &mut S, units: i32)
where
    S: tonic::codegen::tokio_stream::Stream<Item = Result<dealpb::Deal, tonic::Status>> + Unpin,
{
    use tonic::codegen::tokio_stream::StreamExt;
    loop {
        let deal = tokio::time::timeout(Duration::from_secs(10), StreamExt::next(stream))
            .await
            .expect("a message within 10 s")
            .expect("the stream goes on")
            .expect("no error");
        if deal.available_units == units {
            return;
        }
    }
}
