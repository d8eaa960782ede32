//! A real OpenID Provider for login tests: the `oidc-provider` npm package, run by Node.js
//! from `tests/op/` (installed on first use with `npm install`, under a lock so parallel
//! test processes install it once).

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

pub struct OpenIdProvider {
    child: Child,
    pub issuer: String,
}

fn op_directory() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/op")
}

/// Installs the provider's npm packages once (across test processes).
fn ensure_installed() {
    let directory = op_directory();
    let marker = directory.join("node_modules/.renraku-installed");
    if marker.exists() {
        return;
    }
    let lock = directory.join(".install-lock");
    let started = Instant::now();
    loop {
        match std::fs::OpenOptions::new().write(true).create_new(true).open(&lock) {
            Ok(_) => break,
            Err(_) if marker.exists() => return,
            Err(_) if started.elapsed() > Duration::from_secs(180) => {
                let _ = std::fs::remove_file(&lock);
            }
            Err(_) => std::thread::sleep(Duration::from_millis(200)),
        }
    }
    if !marker.exists() {
        let status = Command::new("npm")
            .args(["install", "--no-audit", "--no-fund", "--prefix"])
            .arg(&directory)
            .stdout(Stdio::null())
            .status()
            .expect("npm runs (Node.js is needed for the login tests)");
        assert!(status.success(), "npm install in tests/op failed");
        std::fs::write(&marker, b"").expect("marker");
    }
    let _ = std::fs::remove_file(&lock);
}

impl OpenIdProvider {
    /// Starts a provider whose one client (`renraku` / `renraku-test-secret`) may redirect
    /// to `redirect_uri`.
    pub async fn start(redirect_uri: &str) -> OpenIdProvider {
        tokio::task::spawn_blocking(ensure_installed).await.expect("install");
        let port = std::net::TcpListener::bind("127.0.0.1:0").and_then(|l| l.local_addr()).expect("free port").port();
        let child = Command::new("node")
            .arg(op_directory().join("provider.mjs"))
            .arg(port.to_string())
            .arg(redirect_uri)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("node starts the provider");
        let issuer = format!("http://127.0.0.1:{port}");
        let provider = OpenIdProvider { child, issuer };
        let started = Instant::now();
        let discovery = format!("{}/.well-known/openid-configuration", provider.issuer);
        while reqwest::get(&discovery).await.map(|r| r.status().is_success()).ok() != Some(true) {
            assert!(started.elapsed() < Duration::from_secs(20), "the OpenID Provider did not start");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        provider
    }
}

impl Drop for OpenIdProvider {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
