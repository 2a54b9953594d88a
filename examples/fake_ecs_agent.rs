//! A local fake ECS agent task-protection endpoint, task metadata endpoint v4 and ECS API,
//! for running a worker outside ECS as if it were inside.
//!
//! ```text
//! cargo run --example fake_ecs_agent -- 8765        # or FAKE_ECS_PORT=8765; 0 picks a port
//! ```
//!
//! It prints the variables to give the worker (`ECS_AGENT_URI`, `ECS_CONTAINER_METADATA_URI_V4`,
//! and the endpoint URL for an ECS API client), then serves on 127.0.0.1 until Ctrl-C.
//! Script it over HTTP:
//!
//! ```text
//! curl -X POST localhost:8765/_fake/replies -d '[{"reply":"failure","reason":"DEPLOYMENT_BLOCKED"}]'
//! curl -X PUT  localhost:8765/_fake/default -d '{"reply":"error","status":500,"code":"ServerException"}'
//! curl localhost:8765/_fake/calls
//! ```

#[path = "../tests/support/fake_ecs.rs"]
mod fake_ecs;

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let port = match std::env::args().nth(1).or_else(|| std::env::var("FAKE_ECS_PORT").ok()) {
        Some(text) => text.parse::<u16>().map_err(|e| format!("port {text:?}: {e}"))?,
        None => 0,
    };
    let fake = fake_ecs::FakeEcs::start_on(port).await?;
    println!("fake ECS listening on http://{}", fake.addr());
    println!("ECS_AGENT_URI={}", fake.agent_uri());
    println!("ECS_CONTAINER_METADATA_URI_V4={}", fake.metadata_uri());
    println!("ECS API endpoint URL: {}", fake.endpoint_url());
    tokio::signal::ctrl_c().await?;
    println!("{} calls received", fake.calls().len());
    Ok(())
}
