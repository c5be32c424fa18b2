//! TLS end to end: deal-service and order-service serve TLS with a certificate made here, and
//! order-service reaches deal-service over TLS, verifying it against that certificate.

use sqlx::PgPool;
use tokio::net::TcpListener;
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Identity, ServerTlsConfig};
use topkart::{
    order::placing::holds::{Credentials, DealsClient},
    proto::order as orderpb,
    shared::{
        auth::{Authenticator, Role, Signer},
        server::ServerSettings,
    },
};

use crate::helpers::*;

#[sqlx::test(migrator = "topkart::shared::db::MIGRATOR")]
async fn an_order_round_trips_over_tls(pool: PgPool) {
    let certified = rcgen::generate_simple_self_signed(vec!["localhost".to_owned()]).unwrap();
    let (cert_pem, key_pem) = (certified.cert.pem(), certified.signing_key.serialize_pem());
    let settings = || ServerSettings {
        tls: Some(ServerTlsConfig::new().identity(Identity::from_pem(&cert_pem, &key_pem))),
        ..ServerSettings::plaintext(Authenticator::hs256(TEST_SECRET.as_bytes()))
    };
    let client_tls =
        || ClientTlsConfig::new().ca_certificate(Certificate::from_pem(&cert_pem)).domain_name("localhost");

    let deal_listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let deal_port = deal_listener.local_addr().unwrap().port();
    let (stop_deals, deals_stopped) = tokio::sync::oneshot::channel::<()>();
    let deal_service =
        tokio::spawn(topkart::deal::run(deal_listener, deal_database(pool.clone()), settings(), async {
            let _ = deals_stopped.await;
        }));
    let credentials = Credentials::minted(Signer::hs256(TEST_SECRET.as_bytes()));
    let deals_client = DealsClient::connect_lazy(
        &format!("https://localhost:{deal_port}"),
        std::time::Duration::from_secs(5),
        credentials,
        Some(client_tls()),
    )
    .unwrap();
    let order_listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let order_port = order_listener.local_addr().unwrap().port();
    tokio::spawn(topkart::order::run(order_listener, pool.clone(), deals_client, settings(), std::future::pending()));

    let connect = |port: u16| async move {
        Channel::from_shared(format!("https://localhost:{port}"))
            .unwrap()
            .tls_config(client_tls())
            .unwrap()
            .connect()
            .await
            .unwrap()
    };
    let mut deals = deals_with(&connect(deal_port).await, Bearer::of(&token(Role::Admin, "admin")));
    let deal = deals
        .create_deal(topkart::proto::deal::CreateDealRequest { deal: Some(deal_request(5)) })
        .await
        .unwrap()
        .into_inner();
    let mut orders = orders_with(&connect(order_port).await, Bearer::of(&token(Role::Customer, "alice")));
    let request = orderpb::CreateOrderRequest {
        waitlist_entry: String::new(),
        order: Some(order_request(&deal.name, 2)),
        request_id: String::new(),
    };
    let order = orders.create_order(request).await.unwrap().into_inner();
    assert_eq!(order.state(), orderpb::order::State::PendingApproval);

    // A plain-text client gets nowhere.
    let plain = Channel::from_shared(format!("http://127.0.0.1:{order_port}")).unwrap().connect().await;
    if let Ok(plain) = plain {
        let mut orders = orders_with(&plain, Bearer::of(&token(Role::Customer, "alice")));
        assert!(orders.list_orders(orderpb::ListOrdersRequest::default()).await.is_err());
    }
    // A graceful stop closes the sale's connections before the test's database is dropped.
    drop(stop_deals);
    deal_service.await.unwrap().unwrap();
}
