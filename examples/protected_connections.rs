//! Keeps the ECS task protected while clients are connected: a small websocket server, after
//! the websocket sample of the aws-containers task-protection examples.
//!
//! Every open connection holds a [`ProtectionGuard`]: the first connection protects the task,
//! the last one to close starts the maintain window, after which the task may be scaled in.
//! Clients get a greeting with the number of connected clients and their messages echoed.
//!
//! ```text
//! # next to a local fake agent (see examples/fake_ecs_agent.rs):
//! cargo run --example fake_ecs_agent -- 8765 &
//! ECS_AGENT_URI=http://127.0.0.1:8765/api/fake-container HOLDFAST_PROTECTION_MAINTAIN=5s \
//!     cargo run --example protected_connections
//! # then connect with any websocket client to ws://127.0.0.1:8080/ws
//! ```
//!
//! `LISTEN_ADDR` sets the address (default `127.0.0.1:8080`; `0.0.0.0:8080` in a container).
//! In ECS the agent endpoint is found through `ECS_AGENT_URI`, which ECS sets; outside ECS
//! protection is off and the server works the same.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use axum::Router;
use axum::extract::State;
use axum::extract::ws::{Message, WebSocket, WebSocketUpgrade};
use axum::response::IntoResponse;
use axum::routing::get;
use holdfast::{Protection, ProtectionConfig};

#[derive(Clone)]
struct App {
    protection: Protection,
    connections: Arc<AtomicUsize>,
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()))
        .init();
    let protection = Protection::from_config(&ProtectionConfig::from_env()?).await?;
    let app = App { protection: protection.clone(), connections: Arc::default() };
    let router = Router::new()
        .route("/", get(|| async { "connect a websocket client to /ws\n" }))
        .route("/ws", get(upgrade))
        .with_state(app);
    let addr = std::env::var("LISTEN_ADDR").unwrap_or_else(|_| "127.0.0.1:8080".into());
    let listener = tokio::net::TcpListener::bind(&addr).await?;
    tracing::info!("listening on ws://{}/ws", listener.local_addr()?);
    axum::serve(listener, router).with_graceful_shutdown(stop_signal()).await?;
    // Open connections end with the process; protection goes with them.
    protection.shutdown().await;
    Ok(())
}

async fn upgrade(ws: WebSocketUpgrade, State(app): State<App>) -> impl IntoResponse {
    ws.on_upgrade(move |socket| serve(socket, app))
}

async fn serve(mut socket: WebSocket, app: App) {
    // Protected before the client is told it is connected.
    let guard = match app.protection.hold().await {
        Ok(guard) => guard,
        Err(error) => {
            // Strict mode: this task is being drained (for example DEPLOYMENT_BLOCKED); the
            // client should reconnect and land on another task.
            tracing::warn!(%error, "refusing a connection: the task cannot be protected");
            let _ = socket.send(Message::Close(None)).await;
            return;
        }
    };
    let connected = app.connections.fetch_add(1, Ordering::SeqCst) + 1;
    tracing::info!(connected, "client connected");
    let greeting = format!(
        "connected; {connected} client(s) on this task; task protected: {}",
        app.protection.state().is_protected()
    );
    if socket.send(Message::Text(greeting.into())).await.is_ok() {
        while let Some(Ok(message)) = socket.recv().await {
            let echo = match message {
                Message::Text(text) => Message::Text(text),
                Message::Close(_) => break,
                _ => continue,
            };
            if socket.send(echo).await.is_err() {
                break;
            }
        }
    }
    let connected = app.connections.fetch_sub(1, Ordering::SeqCst) - 1;
    tracing::info!(connected, "client disconnected");
    drop(guard);
}

async fn stop_signal() {
    let ctrl_c = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        let mut term =
            tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()).expect("SIGTERM handler");
        tokio::select! {
            _ = ctrl_c => {}
            _ = term.recv() => {}
        }
    }
    #[cfg(not(unix))]
    let _ = ctrl_c.await;
}
