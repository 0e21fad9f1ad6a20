//! The real binary on a real hardening.yaml, for the reload tests: signalled with SIGHUP, its
//! file saved as editors do, its JSON log collected.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use palisade::auth::secret::HmacSecret;
use serde_json::{Map, Value, json};

use crate::helpers::{Binary, WsClient, start_binary, ws_to};

/// A secret as long as production needs (32 bytes or more).
const SECRET: &str = "hostile-config-test-secret-of-32-bytes-or-more";

/// The binary, with its log lines collected as they come (the pipe must be drained).
pub struct Server {
    child: tokio::process::Child,
    address: String,
    logs: Arc<Mutex<Vec<Value>>>,
    pub dir: tempfile::TempDir,
}

impl Server {
    pub async fn start(config: &str) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let Binary {
            child,
            address,
            logged,
            mut lines,
        } = start_binary(dir.path(), config, &[("PALISADE_JWT_SECRET", SECRET)]).await;
        let logs = Arc::new(Mutex::new(logged));
        let sink = logs.clone();
        // Drains the log pipe (a full pipe would block the server) into `logs`.
        tokio::spawn(async move {
            while let Ok(Some(line)) = lines.next_line().await {
                if let Ok(entry) = serde_json::from_str(&line) {
                    sink.lock().unwrap().push(entry);
                }
            }
        });
        Self {
            child,
            address,
            logs,
            dir,
        }
    }

    pub fn config_path(&self) -> std::path::PathBuf {
        self.dir.path().join("hardening.yaml")
    }

    pub fn hangup(&self) {
        let pid = self.child.id().unwrap().to_string();
        let status = std::process::Command::new("kill")
            .args(["-HUP", &pid])
            .status()
            .unwrap();
        assert!(status.success());
    }

    /// Saves `text` as an editor does: into a temporary file in the same directory, in two
    /// writes, then renamed over the configuration.
    pub async fn save_through_rename(&self, text: &str) {
        let temporary = self.dir.path().join(".hardening.yaml.swp");
        let (first, rest) = text.split_at(text.len() / 2);
        std::fs::write(&temporary, first).unwrap();
        tokio::time::sleep(Duration::from_millis(700)).await;
        let mut all = std::fs::read_to_string(&temporary).unwrap();
        all.push_str(rest);
        std::fs::write(&temporary, all).unwrap();
        std::fs::rename(&temporary, self.config_path()).unwrap();
    }

    pub async fn metrics(&self) -> String {
        reqwest::get(format!("http://{}/metrics", self.address))
            .await
            .unwrap()
            .text()
            .await
            .unwrap()
    }

    pub async fn until_metric(&self, line: &str) {
        for _ in 0..100 {
            if self.metrics().await.lines().any(|l| l == line) {
                return;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        panic!("`{line}` never appeared in\n{}", self.metrics().await);
    }

    /// The value of a counter, 0 when the series does not exist yet.
    pub async fn counter(&self, series: &str) -> u64 {
        self.metrics()
            .await
            .lines()
            .find_map(|l| l.strip_prefix(series)?.trim().parse().ok())
            .unwrap_or(0)
    }

    pub async fn until_logged(&self, wanted: impl Fn(&Value) -> bool) -> Value {
        for _ in 0..100 {
            if let Some(entry) = self.logs.lock().unwrap().iter().find(|e| wanted(e)) {
                return entry.clone();
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        panic!("never logged; got {:#?}", self.logs.lock().unwrap());
    }

    pub async fn client(&self, sub: &str) -> WsClient {
        let secret = HmacSecret {
            bytes: SECRET.as_bytes().to_vec(),
            development: false,
        };
        let token = palisade::auth::jwt::mint(
            &secret,
            &Default::default(),
            sub,
            Map::new(),
            Duration::from_secs(600),
        )
        .unwrap();
        let mut client = ws_to(&self.address, "graphql-transport-ws").await;
        client
            .send(json!({ "type": "connection_init", "payload": { "token": token } }))
            .await;
        assert_eq!(client.recv().await["type"], "connection_ack");
        client
    }
}
