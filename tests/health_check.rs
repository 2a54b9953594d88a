//! The worker binary's health check end to end: the shipped worker (`examples/worker.rs`)
//! against the local SQS server through a loopback proxy the test can cut, and its `health`
//! invocation as ECS runs it.

mod common;

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::net::{TcpSocket, TcpStream};
use tokio::process::{Child, Command};
use tokio::task::JoinSet;

/// A TCP proxy to the local SQS server that can be cut (connections refused, open ones
/// dropped) and restored on the same port.
struct Proxy {
    port: u16,
    target: String,
    running: Option<tokio::task::JoinHandle<()>>,
}

impl Proxy {
    async fn start(target: String) -> Self {
        let mut proxy = Self { port: 0, target, running: None };
        proxy.restore().await;
        proxy
    }

    async fn restore(&mut self) {
        let socket = TcpSocket::new_v4().unwrap();
        socket.set_reuseaddr(true).unwrap();
        socket.bind(format!("127.0.0.1:{}", self.port).parse().unwrap()).unwrap();
        let listener = socket.listen(64).unwrap();
        self.port = listener.local_addr().unwrap().port();
        let target = self.target.clone();
        self.running = Some(tokio::spawn(async move {
            let mut connections = JoinSet::new();
            loop {
                let Ok((mut inbound, _)) = listener.accept().await else { return };
                let target = target.clone();
                connections.spawn(async move {
                    if let Ok(mut outbound) = TcpStream::connect(&target).await {
                        let _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound).await;
                    }
                });
            }
        }));
    }

    /// Closes the listener and every open connection (dropping the task drops them all).
    async fn cut(&mut self) {
        if let Some(task) = self.running.take() {
            task.abort();
            let _ = task.await;
        }
    }
}

/// The worker example, built with the cargo running this test, in this test's profile.
fn worker_binary() -> PathBuf {
    static WORKER: std::sync::OnceLock<PathBuf> = std::sync::OnceLock::new();
    WORKER
        .get_or_init(|| {
            let cargo = std::env::var_os("CARGO").unwrap_or_else(|| env!("CARGO").into());
            let mut command = std::process::Command::new(&cargo);
            command.args([
                "build",
                "--example",
                "worker",
                "--message-format=json-render-diagnostics",
                "--manifest-path",
            ]);
            command.arg(concat!(env!("CARGO_MANIFEST_DIR"), "/Cargo.toml"));
            if !cfg!(debug_assertions) {
                command.arg("--release");
            }
            let output = command.stderr(Stdio::inherit()).output().expect("run cargo");
            assert!(output.status.success(), "`cargo build --example worker` failed");
            String::from_utf8_lossy(&output.stdout)
                .lines()
                .filter_map(|line| serde_json::from_str::<serde_json::Value>(line).ok())
                .filter(|m| m["reason"] == "compiler-artifact" && m["target"]["name"] == "worker")
                .filter(|m| m["target"]["kind"].as_array().is_some_and(|k| k.iter().any(|k| k == "example")))
                .find_map(|m| m["executable"].as_str().map(PathBuf::from))
                .expect("cargo names the worker executable")
        })
        .clone()
}

fn env(proxy_port: u16, queue_url: &str, health_file: &Path) -> Vec<(&'static str, String)> {
    vec![
        ("HOLDFAST_QUEUE_URL", queue_url.to_owned()),
        ("AWS_ENDPOINT_URL_SQS", format!("http://127.0.0.1:{proxy_port}")),
        ("AWS_REGION", "us-east-1".into()),
        ("AWS_ACCESS_KEY_ID", "test".into()),
        ("AWS_SECRET_ACCESS_KEY", "test".into()),
        ("AWS_EC2_METADATA_DISABLED", "true".into()),
        ("HOLDFAST_WAIT_TIME", "1".into()),
        ("HOLDFAST_PROTECTION", "off".into()),
        ("HOLDFAST_HEALTH_FILE", health_file.display().to_string()),
        ("HOLDFAST_HEALTH_THRESHOLD", "3s".into()),
    ]
}

/// Runs `worker health` as the ECS health check would: its exit code and its line.
async fn health(env: &[(&'static str, String)]) -> (bool, String) {
    let out = Command::new(worker_binary()).arg("health").envs(env.iter().cloned()).output().await.unwrap();
    (out.status.success(), String::from_utf8_lossy(&out.stdout).trim().to_owned())
}

/// Polls the health check until it answers `healthy`, for at most `limit`.
async fn wait_health(env: &[(&'static str, String)], healthy: bool, limit: Duration) -> Result<String, String> {
    let until = Instant::now() + limit;
    loop {
        let (ok, line) = health(env).await;
        if ok == healthy {
            return Ok(line);
        }
        if Instant::now() > until {
            return Err(format!("health check still says {line:?} after {limit:?}"));
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

fn spawn_worker(env: &[(&'static str, String)]) -> (Child, Arc<Mutex<Vec<String>>>) {
    let mut child = Command::new(worker_binary())
        .envs(env.iter().cloned())
        .env("RUST_LOG", "info")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let log = Arc::new(Mutex::new(Vec::new()));
    let lines = log.clone();
    let stderr = child.stderr.take().unwrap();
    tokio::spawn(async move {
        let mut reader = BufReader::new(stderr).lines();
        while let Ok(Some(line)) = reader.next_line().await {
            lines.lock().unwrap().push(line);
        }
    });
    (child, log)
}

#[tokio::test]
async fn unhealthy_while_the_sqs_server_is_unreachable_past_the_threshold_and_healthy_again_after() {
    let endpoint = common::endpoint();
    let target = endpoint.trim_start_matches("http://").trim_end_matches('/').to_owned();
    let client = common::sqs_client();
    let name = common::unique("health");
    let queue_url = client.create_queue().queue_name(&name).send().await.unwrap().queue_url.unwrap();
    let mut proxy = Proxy::start(target).await;
    let dir = std::env::temp_dir().join(common::unique("holdfast-health"));
    std::fs::create_dir_all(&dir).unwrap();
    let env = env(proxy.port, &queue_url, &dir.join("status.json"));

    tokio::task::spawn_blocking(worker_binary).await.unwrap();
    let (missing, line) = health(&env).await;
    assert!(!missing && line.contains("no health status"), "no worker yet: {line}");
    let (mut worker, log) = spawn_worker(&env);
    let line = wait_health(&env, true, Duration::from_secs(30)).await.unwrap();
    assert_eq!(line, "healthy (polling)");

    proxy.cut().await;
    let cut_at = Instant::now();
    let line = wait_health(&env, false, Duration::from_secs(30)).await.unwrap();
    assert!(line.contains("no successful receive") && line.contains("receives are failing"), "{line}");
    assert!(cut_at.elapsed() >= Duration::from_secs(3), "unhealthy only past the 3 s threshold");

    proxy.restore().await;
    let line = wait_health(&env, true, Duration::from_secs(60)).await.unwrap();
    assert_eq!(line, "healthy (polling)");

    nix::sys::signal::kill(nix::unistd::Pid::from_raw(worker.id().unwrap() as i32), nix::sys::signal::Signal::SIGTERM)
        .unwrap();
    let status = tokio::time::timeout(Duration::from_secs(20), worker.wait()).await.unwrap().unwrap();
    assert!(status.success(), "{status}");
    let (ok, line) = health(&env).await;
    assert!(!ok && line.contains("stopped"), "after exit: {line}");

    let log = log.lock().unwrap().join("\n");
    assert_eq!(log.matches("unhealthy").count(), 1, "one line for the transition:\n{log}");
    assert_eq!(log.matches("healthy again").count(), 1, "one line for the recovery:\n{log}");
    std::fs::remove_dir_all(&dir).unwrap();
    let _ = client.delete_queue().queue_url(&queue_url).send().await;
}
