//! `holdfast-sqs-server`: a local SQS server for trying and testing workers.

use std::net::SocketAddr;

use clap::{Arg, ArgAction, Command, value_parser};
use holdfast_sqs_server::{Options, SqsServer};

fn command() -> Command {
    Command::new("holdfast-sqs-server")
        .about(
            "A local SQS server (AWS JSON 1.0 protocol, as current AWS SDKs and the AWS CLI speak it), \
             in memory. Requests are not authenticated: any credentials are accepted.",
        )
        .arg(Arg::new("host").long("host").default_value("127.0.0.1").help("Address to listen on"))
        .arg(
            Arg::new("port")
                .long("port")
                .default_value("9324")
                .value_parser(value_parser!(u16))
                .help("Port to listen on (0: any free port)"),
        )
        .arg(
            Arg::new("queue").long("queue").action(ArgAction::Append).value_name("NAME").help(
                "Create this queue at start (NAME.fifo: a FIFO queue with content-based deduplication); repeatable",
            ),
        )
        .arg(Arg::new("region").long("region").default_value("us-east-1").help("Region in queue ARNs"))
}

#[tokio::main]
async fn main() -> std::process::ExitCode {
    let args = command().get_matches();
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()))
        .with_writer(std::io::stderr)
        .init();
    let host: &String = args.get_one("host").expect("defaulted");
    let port: u16 = *args.get_one("port").expect("defaulted");
    let region: &String = args.get_one("region").expect("defaulted");
    let mut options = Options::default();
    options.region.clone_from(region);
    let server = SqsServer::new(options);
    let mut paths = Vec::new();
    for name in args.get_many::<String>("queue").into_iter().flatten() {
        match server.create_queue(name) {
            Ok(path) => paths.push(path),
            Err(e) => {
                eprintln!("holdfast-sqs-server: --queue: {e}");
                return std::process::ExitCode::from(2);
            }
        }
    }
    let listener = match tokio::net::TcpListener::bind((host.as_str(), port)).await {
        Ok(l) => l,
        Err(e) => {
            eprintln!("holdfast-sqs-server: cannot listen on {host}:{port}: {e}");
            return std::process::ExitCode::from(1);
        }
    };
    let addr: SocketAddr = listener.local_addr().expect("bound");
    let endpoint = format!("http://{addr}");
    println!("holdfast-sqs-server: SQS at {endpoint} (AWS JSON 1.0; in memory, nothing kept after exit)");
    for path in &paths {
        println!("  queue {endpoint}{path}");
    }
    println!();
    println!("Point AWS SDKs, the AWS CLI and holdfast workers at it (any credentials are accepted):");
    println!("  export AWS_ENDPOINT_URL_SQS={endpoint}");
    println!("  export AWS_REGION={region} AWS_DEFAULT_REGION={region}");
    println!("  export AWS_ACCESS_KEY_ID=test AWS_SECRET_ACCESS_KEY=test");
    println!("Create a queue and send to it (AWS CLI v1 ignores AWS_ENDPOINT_URL_SQS: keep --endpoint-url):");
    println!("  aws sqs create-queue --endpoint-url {endpoint} --queue-name jobs");
    println!(
        "  aws sqs send-message --endpoint-url {endpoint} --queue-url {endpoint}/000000000000/jobs --message-body '{{\"id\":\"j1\"}}'"
    );
    println!("Stop with Ctrl-C.");
    tokio::select! {
        served = server.serve(listener) => match served {
            Ok(()) => std::process::ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("holdfast-sqs-server: {e}");
                std::process::ExitCode::from(1)
            }
        },
        _ = tokio::signal::ctrl_c() => std::process::ExitCode::SUCCESS,
    }
}
