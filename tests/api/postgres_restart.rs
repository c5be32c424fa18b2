//! A Postgres restart in the middle of a load of orders, on a throwaway cluster this test owns: the
//! services report NOT_SERVING while it is gone, recover by themselves, and keep every invariant.

use std::{
    path::{Path, PathBuf},
    process::Command,
    time::Duration,
};

use topkart::{
    proto::deal as dealpb,
    shared::{auth::Role, db},
};

use crate::{crashes::*, helpers::*, processes::*};

/// A Postgres cluster in a temporary folder, on its own port, removed when dropped.
struct Cluster {
    dir: PathBuf,
    port: u16,
    bin: PathBuf,
}

impl Cluster {
    /// initdb and start a cluster. As root, the cluster runs as the `postgres` user (initdb refuses
    /// root).
    async fn start() -> Self {
        let bin = postgres_bin_dir();
        let dir = std::env::temp_dir().join(format!("topkart-pg-test-{}", uuid::Uuid::new_v4()));
        std::fs::create_dir_all(&dir).unwrap();
        let port = free_addr().await.port();
        let cluster = Self { dir, port, bin };
        if is_root() {
            run(Command::new("chown").arg("postgres").arg(&cluster.dir));
        }
        let data = cluster.dir.join("data");
        run(cluster.as_owner("initdb").arg("-D").arg(&data).args(["-U", "postgres", "--auth=trust", "-E", "UTF8"]));
        cluster.pg_ctl("start");
        cluster
    }

    fn as_owner(&self, tool: &str) -> Command {
        let program = self.bin.join(tool);
        if is_root() {
            let mut command = Command::new("runuser");
            command.args(["-u", "postgres", "--"]).arg(program);
            command
        } else {
            Command::new(program)
        }
    }

    fn pg_ctl(&self, action: &str) {
        let options = format!("-p {} -k {} -c listen_addresses=127.0.0.1", self.port, self.dir.display());
        let log = self.dir.join("postgres.log");
        run(self
            .as_owner("pg_ctl")
            .arg("-D")
            .arg(self.dir.join("data"))
            .arg("-l")
            .arg(log)
            .args(["-w", "-m", "fast", "-o", &options, action]));
    }

    fn url(&self, database: &str) -> String {
        format!("postgres://postgres@127.0.0.1:{}/{database}", self.port)
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        let _ = self.as_owner("pg_ctl").arg("-D").arg(self.dir.join("data")).args(["-m", "immediate", "stop"]).output();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn is_root() -> bool {
    Command::new("id").arg("-u").output().is_ok_and(|out| out.stdout.starts_with(b"0"))
}

fn run(command: &mut Command) {
    let output = command.output().unwrap_or_else(|err| panic!("{command:?}: {err}"));
    assert!(output.status.success(), "{command:?} failed: {}", String::from_utf8_lossy(&output.stderr));
}

/// Where initdb and pg_ctl are: on the PATH, or in Debian's versioned folder.
fn postgres_bin_dir() -> PathBuf {
    let on_path = std::env::var_os("PATH")
        .into_iter()
        .flat_map(|paths| std::env::split_paths(&paths).collect::<Vec<_>>())
        .find(|dir| dir.join("initdb").is_file() && dir.join("pg_ctl").is_file());
    let debian = std::fs::read_dir("/usr/lib/postgresql")
        .into_iter()
        .flatten()
        .flatten()
        .map(|entry| entry.path().join("bin"))
        .find(|dir| Path::new(dir).join("initdb").is_file());
    on_path.or(debian).expect("initdb and pg_ctl (apt-get install postgresql)")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_postgres_restart_mid_load_is_survived_without_a_service_restart() {
    let cluster = Cluster::start().await;
    let admin = sqlx::PgPool::connect(&cluster.url("postgres")).await.unwrap();
    sqlx::query("create database topkart").execute(&admin).await.unwrap();
    admin.close().await;
    let pool = db::connect_and_migrate(&cluster.url("topkart"), 20).await.unwrap();
    let (deal_addr, _stop_deal) = spawn_deal_service(pool.clone()).await;
    let (order_addr, _stop_order) = spawn_order_service(pool.clone(), deals_client(deal_addr)).await;
    wait_serving(deal_addr).await;
    wait_serving(order_addr).await;
    let mut deals = deals_with(&channel(deal_addr).await, Bearer::of(&token(Role::Admin, "admin")));
    let deal =
        deals.create_deal(dealpb::CreateDealRequest { deal: Some(deal_request(150)) }).await.unwrap().into_inner();

    let load = tokio::spawn({
        let deal = deal.name.clone();
        async move { retrying_buyers(order_addr, &deal, 200, Duration::from_secs(60)).await }
    });
    wait_for_orders(&pool, 30).await;
    cluster.pg_ctl("stop");
    wait_health(deal_addr, ServingStatus::NotServing).await;
    wait_health(order_addr, ServingStatus::NotServing).await;
    cluster.pg_ctl("start");
    wait_serving(deal_addr).await;
    wait_serving(order_addr).await;

    let outcomes = load.await.unwrap();
    assert_settled(&pool, &outcomes, 150).await;
}
