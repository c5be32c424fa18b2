//! Real binaries as child processes: start on a free port, wait on `grpc.health.v1`, stop them
//! gracefully or kill them as a crash would.

use std::{net::SocketAddr, process::Stdio, time::Duration};

use sqlx::PgPool;
use tokio::process::{Child, Command};
pub use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::{HealthCheckRequest, health_client::HealthClient};

/// A running binary, killed when dropped.
pub struct Process(Child);

impl Process {
    /// Starts `binary` over `database_url`, logging warnings to the test's stderr.
    pub fn start(binary: &str, database_url: &str, args: &[&str]) -> Self {
        Self::spawn(binary, database_url, args, "warn", Stdio::inherit())
    }

    /// Starts `binary` logging everything down to `debug` into `log`.
    pub fn start_logging_to(binary: &str, database_url: &str, args: &[&str], log: &std::path::Path) -> Self {
        Self::start_with(binary, database_url, args, &[("RUST_LOG", "debug")], log)
    }

    /// Starts `binary` with the variables `env` set, logging into `log`.
    pub fn start_with(
        binary: &str,
        database_url: &str,
        args: &[&str],
        env: &[(&str, &str)],
        log: &std::path::Path,
    ) -> Self {
        let file = std::fs::File::create(log).expect("create the log file");
        let mut command = command(binary, database_url, "warn");
        command.args(args).envs(env.iter().copied()).stderr(Stdio::from(file));
        Self(command.spawn().expect("start binary"))
    }

    fn spawn(binary: &str, database_url: &str, args: &[&str], log_level: &str, stderr: Stdio) -> Self {
        let mut command = command(binary, database_url, log_level);
        command.args(args).stderr(stderr);
        Self(command.spawn().expect("start binary"))
    }

    /// Kills the process with SIGKILL, as a crash would, and waits for it.
    pub async fn kill_hard(&mut self) {
        self.0.kill().await.expect("kill -9");
    }

    /// Sends SIGTERM and waits: a graceful shutdown exits 0.
    pub async fn terminate(mut self) -> std::process::ExitStatus {
        let pid = self.0.id().expect("running").to_string();
        let sent = std::process::Command::new("kill").args(["-TERM", &pid]).status().expect("kill");
        assert!(sent.success());
        tokio::time::timeout(Duration::from_secs(10), self.0.wait()).await.expect("exit within 10 s").unwrap()
    }
}

/// `binary` over `database_url`, logging at `log_level`, killed when dropped.
fn command(binary: &str, database_url: &str, log_level: &str) -> Command {
    let mut command = Command::new(binary);
    command
        .env("DATABASE_URL", database_url)
        .env("JWT_SECRET", crate::helpers::TEST_SECRET)
        .env("RUST_LOG", log_level)
        .stdout(Stdio::null())
        .kill_on_drop(true);
    command
}

/// A port free right now on loopback.
pub async fn free_addr() -> SocketAddr {
    tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap().local_addr().unwrap()
}

/// The health the server at `addr` reports for itself, or `None` if it does not answer.
pub async fn health(addr: SocketAddr) -> Option<ServingStatus> {
    let endpoint = tonic::transport::Endpoint::from_shared(format!("http://{addr}")).ok()?;
    let channel = endpoint.connect_timeout(Duration::from_secs(1)).connect().await.ok()?;
    let reply = HealthClient::new(channel).check(HealthCheckRequest { service: String::new() }).await.ok()?;
    Some(reply.into_inner().status())
}

/// Waits until the server at `addr` reports `status` (for up to 15 s).
pub async fn wait_health(addr: SocketAddr, status: ServingStatus) {
    for _ in 0..150 {
        if health(addr).await == Some(status) {
            return;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("{addr} never reported {status:?}");
}

/// Waits until the server at `addr` reports SERVING.
pub async fn wait_serving(addr: SocketAddr) {
    wait_health(addr, ServingStatus::Serving).await;
}

/// The test database's URL: the configured server with this test's database.
pub fn database_url(pool: &PgPool) -> String {
    let base = std::env::var("DATABASE_URL").expect("DATABASE_URL");
    let database = pool.connect_options().get_database().expect("a database name").to_owned();
    let (without_query, query) = base.split_once('?').map_or((base.as_str(), ""), |(url, query)| (url, query));
    let server = without_query.rsplit_once('/').map_or(without_query, |(server, _)| server);
    if query.is_empty() { format!("{server}/{database}") } else { format!("{server}/{database}?{query}") }
}
