//! /healthz, /readyz and /metrics of a long-running component (the node controller on
//! `agent.listen`, the catalog controller on `catalog.listen`): a plain HTTP/1 server (hyper)
//! answering from its own task, so work in progress never delays a probe.

use std::convert::Infallible;
use std::net::{Ipv4Addr, SocketAddr};

use anyhow::Context;
use http_body_util::Full;
use hyper::body::Bytes;
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;

use std::sync::Arc;

/// What a component answers its probes with.
pub trait Probe: Send + Sync + 'static {
    /// Why the component is not live (a stuck loop: restart it), or None.
    fn not_live(&self) -> Option<String>;
    /// Why it should get no traffic yet, or None.
    fn not_ready(&self) -> Option<String>;
    /// OpenMetrics text, or None: no /metrics.
    fn metrics(&self) -> Option<String>;
}

/// `key`: the setting `listen` comes from, for error messages.
pub async fn serve(
    listen: &str,
    key: &'static str,
    probe: Arc<dyn Probe>,
) -> anyhow::Result<tokio::task::JoinHandle<()>> {
    let listener = bind(listen, key).await?;
    tracing::info!(listen = %listener.local_addr()?, "serving /healthz /readyz /metrics");
    Ok(tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                continue;
            };
            let probe = probe.clone();
            tokio::spawn(async move {
                let svc = hyper::service::service_fn(move |req| handle(req, probe.clone()));
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), svc)
                    .await;
            });
        }
    }))
}

/// `[::]` serves IPv6 and IPv4 alike; on a node booted with IPv6 disabled it cannot be bound, and
/// the same port on every IPv4 address is what the operator meant.
async fn bind(listen: &str, key: &str) -> anyhow::Result<TcpListener> {
    let addr: SocketAddr = listen
        .parse()
        .with_context(|| format!("{key} {listen:?} is not an address and port"))?;
    match TcpListener::bind(addr).await {
        Err(e) if addr.ip().is_unspecified() && addr.is_ipv6() => {
            let v4 = SocketAddr::from((Ipv4Addr::UNSPECIFIED, addr.port()));
            tracing::info!(error = %e, fallback = %v4, "IPv6 is not available; listening on IPv4");
            TcpListener::bind(v4)
                .await
                .with_context(|| format!("listening on {v4} ({key} {listen})"))
        }
        other => other.with_context(|| format!("listening on {listen} ({key})")),
    }
}

/// What `prometheus-client` writes (Prometheus scrapes it as such).
const OPENMETRICS: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

async fn handle(
    req: Request<hyper::body::Incoming>,
    probe: Arc<dyn Probe>,
) -> Result<Response<Full<Bytes>>, Infallible> {
    let text = "text/plain";
    let answer = |why: Option<String>, ok: &str| match why {
        None => (StatusCode::OK, text, format!("{ok}\n")),
        Some(why) => (StatusCode::SERVICE_UNAVAILABLE, text, format!("{why}\n")),
    };
    let (code, ctype, body) = match (req.uri().path(), probe.metrics()) {
        ("/healthz", _) => answer(probe.not_live(), "ok"),
        ("/readyz", _) => answer(probe.not_ready(), "ready"),
        ("/metrics", Some(m)) => (StatusCode::OK, OPENMETRICS, m),
        _ => (StatusCode::NOT_FOUND, text, "not found\n".to_owned()),
    };
    let mut r = Response::new(Full::new(Bytes::from(body)));
    *r.status_mut() = code;
    r.headers_mut().insert(
        "content-type",
        hyper::header::HeaderValue::from_static(ctype),
    );
    Ok(r)
}
