//! A Postgres cluster this test owns, in a temporary folder on its own port, for the tests that stop
//! and start Postgres under running services (postgres_restart.rs, watch.rs).

use std::{
    path::{Path, PathBuf},
    process::Command,
};

use sqlx::PgPool;
use topkart::shared::db;

use crate::processes::free_addr;

/// A Postgres cluster in a temporary folder, on its own port, removed when dropped.
pub struct Cluster {
    dir: PathBuf,
    port: u16,
    bin: PathBuf,
}

impl Cluster {
    /// initdb and start a cluster. As root, the cluster runs as the `postgres` user (initdb refuses
    /// root).
    pub async fn start() -> Self {
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

    /// `pg_ctl ACTION` (start, stop, restart, reload), waiting for it to complete.
    pub fn pg_ctl(&self, action: &str) {
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

    /// The URL of `database` over TCP, the way the services connect.
    pub fn url(&self, database: &str) -> String {
        format!("postgres://postgres@127.0.0.1:{}/{database}", self.port)
    }

    /// The URL of `database` over the cluster's Unix socket, which [`Self::refuse_tcp`] leaves open.
    pub fn socket_url(&self, database: &str) -> String {
        format!("postgres://postgres@localhost/{database}?host={}&port={}", self.dir.display(), self.port)
    }

    /// Creates the database `topkart` and returns a pool of `connections` on it, migrated.
    pub async fn topkart_database(&self, connections: u32) -> PgPool {
        let admin = PgPool::connect(&self.url("postgres")).await.unwrap();
        sqlx::query("create database topkart").execute(&admin).await.unwrap();
        admin.close().await;
        db::connect_and_migrate(&self.url("topkart"), connections).await.unwrap()
    }

    /// Refuses new connections over TCP (the services') while `refused`, from the next start or
    /// reload; the Unix socket stays open, so a test can change data the services cannot see.
    pub fn refuse_tcp(&self, refused: bool) {
        let method = if refused { "reject" } else { "trust" };
        let rules = format!("local all all trust\nhost all all 127.0.0.1/32 {method}\nhost all all ::1/128 {method}\n");
        std::fs::write(self.dir.join("data").join("pg_hba.conf"), rules).unwrap();
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
