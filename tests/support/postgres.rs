//! A PostgreSQL database of a test's own on the machine's server (127.0.0.1:5432, user
//! `postgres`), dropped when the test ends. Shared by the test binaries with `#[path]`.

const SERVER: &str = "postgres://postgres@127.0.0.1:5432";

pub struct TestDatabase {
    pub url: String,
    pub name: String,
}

impl TestDatabase {
    /// `None` when there is no server: the test reports that it was skipped. Under `CI=true`
    /// a missing server is a failure.
    pub async fn create() -> Option<Self> {
        let admin =
            match tokio_postgres::connect(&format!("{SERVER}/postgres"), tokio_postgres::NoTls)
                .await
            {
                Ok((client, connection)) => {
                    tokio::spawn(connection);
                    client
                }
                Err(e) => {
                    assert!(
                        std::env::var("CI").as_deref() != Ok("true"),
                        "CI=true and no PostgreSQL server at {SERVER}: {e}"
                    );
                    eprintln!("skipped: no PostgreSQL server at {SERVER} ({e})");
                    return None;
                }
            };
        let name = format!(
            "tradehook_test_{}",
            tradehook::domain::new_id("")
                .to_lowercase()
                .trim_start_matches('_')
        );
        admin
            .batch_execute(&format!("create database {name}"))
            .await
            .unwrap();
        Some(Self {
            url: format!("{SERVER}/{name}"),
            name,
        })
    }
}

impl Drop for TestDatabase {
    fn drop(&mut self) {
        let _ = std::process::Command::new("psql")
            .args(["-h", "127.0.0.1", "-U", "postgres", "-qc"])
            .arg(format!(
                "drop database if exists {} with (force)",
                self.name
            ))
            .output();
    }
}
