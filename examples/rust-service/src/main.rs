//! A small HTTP service: `GET /greet?name=NAME` answers JSON, `GET /health` answers `ok`.
//!
//! `--self-test` starts the server on a free loopback port, sends it one request and prints the
//! answer, so that a container started with `--network none` can show that it works.

mod config;

use std::io::{Read, Write};
use std::net::TcpStream;

use anyhow::{Context, Result};
use clap::Parser;
use serde::Serialize;
use tiny_http::{Header, Method, Response, Server};

use crate::config::Config;

/// A greeting service.
#[derive(Debug, Parser)]
#[command(name = "rust-service", version, about)]
struct Args {
    /// Address to listen on.
    #[arg(long, default_value = "127.0.0.1:8080")]
    listen: String,
    /// A TOML file with `greeting = "..."`.
    #[arg(long)]
    config: Option<std::path::PathBuf>,
    /// Serve one request from this process itself over loopback, print the answer, exit.
    #[arg(long)]
    self_test: bool,
}

/// The answer to `/greet`.
#[derive(Debug, Serialize)]
struct Greeting<'a> {
    greeting: String,
    service: &'a str,
    version: &'a str,
}

fn main() -> Result<()> {
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_target(false)
        .init();
    let args = Args::parse();
    let config = match &args.config {
        Some(path) => Config::read(path)?,
        None => Config::default(),
    };
    if args.self_test {
        return self_test(&config);
    }
    let server = Server::http(&args.listen)
        .map_err(|e| anyhow::anyhow!("cannot listen on `{}`: {e}", args.listen))?;
    tracing::info!(listen = %args.listen, "serving");
    serve(&server, &config, None);
    Ok(())
}

/// Answers requests, `limit` of them or forever.
fn serve(server: &Server, config: &Config, limit: Option<usize>) {
    for (n, request) in server.incoming_requests().enumerate() {
        let (status, body) = answer(config, request.method(), request.url());
        tracing::info!(method = %request.method(), url = request.url(), status, "request");
        let json = Header::from_bytes("Content-Type", "application/json").expect("a valid header");
        let _ = request.respond(Response::from_string(body).with_status_code(status).with_header(json));
        if limit.is_some_and(|limit| n + 1 >= limit) {
            break;
        }
    }
}

/// The status and body for one request.
fn answer(config: &Config, method: &Method, url: &str) -> (u16, String) {
    let (path, query) = url.split_once('?').unwrap_or((url, ""));
    match (method, path) {
        (Method::Get, "/health") => (200, "\"ok\"".to_string()),
        (Method::Get, "/greet") => {
            let name = query
                .split('&')
                .find_map(|pair| pair.strip_prefix("name="))
                .filter(|n| !n.is_empty())
                .unwrap_or("world");
            let greeting = Greeting {
                greeting: format!("{}, {name}!", config.greeting),
                service: env!("CARGO_PKG_NAME"),
                version: env!("CARGO_PKG_VERSION"),
            };
            (200, serde_json::to_string(&greeting).expect("a greeting serializes"))
        }
        _ => (404, serde_json::json!({ "error": "not found", "path": path }).to_string()),
    }
}

/// Serves one request on a free loopback port and prints what a client got.
fn self_test(config: &Config) -> Result<()> {
    let server = Server::http("127.0.0.1:0").map_err(|e| anyhow::anyhow!("cannot listen: {e}"))?;
    let addr = server.server_addr().to_ip().context("not an IP address")?;
    std::thread::scope(|scope| {
        scope.spawn(|| serve(&server, config, Some(1)));
        let mut stream = TcpStream::connect(addr).context("cannot connect")?;
        stream.write_all(b"GET /greet?name=docker HTTP/1.0\r\nHost: localhost\r\n\r\n")?;
        let mut reply = String::new();
        stream.read_to_string(&mut reply)?;
        let body = reply.split_once("\r\n\r\n").map_or("", |(_, body)| body);
        println!("{body}");
        Ok(())
    })
}
