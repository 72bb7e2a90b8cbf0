//! nginx as the delivery section's receiver and forwarding proxy: a bare HTTP server whose
//! cost is known, so what Rivulet adds between two hops can be told apart from the hops.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

/// The nginx executable: `RIVULET_BENCH_NGINX`, else `nginx` on the PATH or in `/usr/sbin`.
pub fn executable() -> Option<PathBuf> {
    if let Some(path) = std::env::var_os("RIVULET_BENCH_NGINX") {
        return Some(PathBuf::from(path));
    }
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .chain([PathBuf::from("/usr/sbin"), PathBuf::from("/usr/local/sbin")])
        .map(|dir| dir.join("nginx"))
        .find(|candidate| candidate.is_file())
}

/// One nginx master with `workers` worker processes, serving on `addr`, with its request
/// count on a second loopback port (the `stub_status` module).
pub struct Nginx {
    child: Child,
    pub addr: SocketAddr,
    status_addr: SocketAddr,
    /// Status requests made so far: nginx counts them among its requests.
    status_polls: AtomicU64,
    client: reqwest::Client,
    _dir: tempfile::TempDir,
}

/// What a server of the configuration does with a request.
enum Role {
    /// Answers `202 Accepted` with no body.
    Receiver,
    /// Forwards to the upstream over kept-alive HTTP/1.1 connections.
    Proxy { upstream: SocketAddr },
}

impl Nginx {
    /// A receiver answering every request with `202`.
    pub async fn receiver(binary: &Path, workers: usize) -> Result<Self, String> {
        Self::start(binary, workers, Role::Receiver).await
    }

    /// A forwarding proxy to `upstream`, keeping connections to it alive.
    pub async fn proxy(
        binary: &Path,
        workers: usize,
        upstream: SocketAddr,
    ) -> Result<Self, String> {
        Self::start(binary, workers, Role::Proxy { upstream }).await
    }

    async fn start(binary: &Path, workers: usize, role: Role) -> Result<Self, String> {
        let dir = tempfile::tempdir().map_err(|e| format!("no temporary folder: {e}"))?;
        let addr = SocketAddr::from(([127, 0, 0, 1], free_port()));
        let status_addr = SocketAddr::from(([127, 0, 0, 1], free_port()));
        let config = configuration(dir.path(), workers, addr, status_addr, &role);
        let config_path = dir.path().join("nginx.conf");
        std::fs::write(&config_path, config)
            .map_err(|e| format!("cannot write {}: {e}", config_path.display()))?;
        let child = Command::new(binary)
            .arg("-p")
            .arg(dir.path())
            .arg("-c")
            .arg(&config_path)
            .arg("-e")
            .arg("stderr")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .spawn()
            .map_err(|e| format!("cannot start {}: {e}", binary.display()))?;
        let mut nginx = Nginx {
            child,
            addr,
            status_addr,
            status_polls: AtomicU64::new(0),
            client: reqwest::Client::new(),
            _dir: dir,
        };
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            if let Ok(Some(status)) = nginx.child.try_wait() {
                return Err(format!(
                    "nginx exited at start ({status}); its log is above"
                ));
            }
            let listening = tokio::net::TcpStream::connect(addr).await.is_ok();
            if listening && nginx.requests().await.is_ok() {
                return Ok(nginx);
            }
            if Instant::now() > deadline {
                return Err("nginx did not listen within 10 s".into());
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Requests served so far on the main port (the status requests left out).
    pub async fn requests(&self) -> Result<u64, String> {
        let url = format!("http://{}/", self.status_addr);
        let polls_before = self.status_polls.fetch_add(1, Ordering::Relaxed) + 1;
        let text = self
            .client
            .get(&url)
            .send()
            .await
            .map_err(|e| format!("nginx status: {e}"))?
            .text()
            .await
            .map_err(|e| format!("nginx status: {e}"))?;
        // "Active connections: N\nserver accepts handled requests\n A H R\n..."
        let total = text
            .lines()
            .nth(2)
            .and_then(|line| line.split_whitespace().nth(2))
            .and_then(|n| n.parse::<u64>().ok())
            .ok_or_else(|| format!("nginx status answered {text:?}"))?;
        Ok(total.saturating_sub(polls_before))
    }
}

impl Drop for Nginx {
    fn drop(&mut self) {
        // SIGKILL reaches the master only; its workers leave when it is gone.
        let _ = Command::new("kill")
            .arg("-QUIT")
            .arg(self.child.id().to_string())
            .status();
        let deadline = Instant::now() + Duration::from_secs(5);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn configuration(
    dir: &Path,
    workers: usize,
    addr: SocketAddr,
    status_addr: SocketAddr,
    role: &Role,
) -> String {
    let dir = dir.display();
    // Run as root, the workers would become `nobody` and could not use this folder.
    let user = if running_as_root() { "user root;" } else { "" };
    let (upstream, location) = match role {
        Role::Receiver => (String::new(), "return 202;".to_owned()),
        Role::Proxy { upstream } => (
            format!(
                "upstream receiver {{ server {upstream}; keepalive 256; keepalive_requests 1000000; }}"
            ),
            "proxy_pass http://receiver; proxy_http_version 1.1; \
             proxy_set_header Connection \"\";"
                .to_owned(),
        ),
    };
    format!(
        "worker_processes {workers};
daemon off;
pid {dir}/nginx.pid;
error_log stderr warn;
{user}
events {{ worker_connections 4096; }}
http {{
    access_log off;
    client_body_temp_path {dir}/body;
    proxy_temp_path {dir}/proxy;
    client_body_buffer_size 1m;
    client_max_body_size 4m;
    keepalive_requests 1000000;
    keepalive_timeout 300s;
    {upstream}
    server {{ listen {addr}; location / {{ {location} }} }}
    server {{ listen {status_addr}; location / {{ stub_status; }} }}
}}
"
    )
}

fn running_as_root() -> bool {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|status| {
            status
                .lines()
                .find(|line| line.starts_with("Uid:"))
                .and_then(|line| line.split_whitespace().nth(1).map(|uid| uid == "0"))
        })
        .unwrap_or(false)
}

fn free_port() -> u16 {
    std::net::TcpListener::bind(SocketAddr::from(([127, 0, 0, 1], 0)))
        .and_then(|listener| listener.local_addr())
        .map(|address| address.port())
        .expect("a free port")
}
