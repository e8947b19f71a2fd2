//! The HTTP endpoint of `--metrics-addr`: `GET /metrics` (the Prometheus text format) and
//! `GET /healthz` (200 while the run is starting or running, 503 once a worker failed or a sink
//! reported an error). Served by hyper on the run's I/O runtime ([`crate::io`]); the listener is
//! bound before the run starts, so a taken port is reported before any worker runs.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;

use anyhow::Context;
use bytes::Bytes;
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use prometheus_client::registry::Registry;
use tokio::runtime::Handle;

use crate::metrics::{Metrics, RunState};
use crate::Result;

/// Binds the endpoint's address (before the run starts).
pub fn bind(addr: SocketAddr) -> Result<std::net::TcpListener> {
    let listener = std::net::TcpListener::bind(addr).with_context(|| format!("metrics endpoint: cannot listen on {addr}"))?;
    listener.set_nonblocking(true).with_context(|| format!("metrics endpoint {addr}"))?;
    Ok(listener)
}

/// Whether the run is healthy: not failed, and no sink reported an error.
pub fn healthy(metrics: &Metrics) -> bool {
    metrics.run_state() != RunState::Failed && !metrics.shared_counters().iter().any(|(name, n)| name.starts_with("sink_errors:") && *n > 0)
}

/// Serves `/metrics` and `/healthz` on `listener` from the runtime `io` until the runtime shuts
/// down. Returns the address it listens on.
pub fn serve(io: &Handle, listener: std::net::TcpListener, registry: Registry, metrics: Arc<Metrics>) -> Result<SocketAddr> {
    let addr = listener.local_addr()?;
    let listener = {
        let _inside = io.enter();
        tokio::net::TcpListener::from_std(listener).with_context(|| format!("metrics endpoint {addr}"))?
    };
    let state = Arc::new((registry, metrics));
    io.spawn(async move {
        loop {
            let stream = match listener.accept().await {
                Ok((stream, _)) => stream,
                Err(e) => {
                    tracing::warn!(%addr, error = %e, "metrics endpoint: cannot accept a connection");
                    tokio::time::sleep(std::time::Duration::from_millis(100)).await;
                    continue;
                }
            };
            let state = state.clone();
            tokio::spawn(async move {
                let service = hyper::service::service_fn(move |request| {
                    let state = state.clone();
                    async move { Ok::<_, Infallible>(respond(&request, &state.0, &state.1)) }
                });
                if let Err(e) = hyper::server::conn::http1::Builder::new().serve_connection(TokioIo::new(stream), service).await {
                    tracing::debug!(error = %e, "metrics endpoint: connection ended");
                }
            });
        }
    });
    tracing::info!(%addr, "metrics endpoint listening on http://{addr}/metrics and /healthz");
    Ok(addr)
}

fn respond(request: &Request<Incoming>, registry: &Registry, metrics: &Metrics) -> Response<Full<Bytes>> {
    let reply = |status: StatusCode, content_type: &str, body: String| {
        let mut response = Response::new(Full::new(Bytes::from(body)));
        *response.status_mut() = status;
        if let Ok(v) = content_type.parse() {
            response.headers_mut().insert(hyper::header::CONTENT_TYPE, v);
        }
        response
    };
    let text = "text/plain; charset=utf-8";
    if request.method() != Method::GET && request.method() != Method::HEAD {
        return reply(StatusCode::METHOD_NOT_ALLOWED, text, "only GET\n".into());
    }
    match request.uri().path() {
        "/metrics" => {
            let content_type = prometheus_client::encoding::prometheus_text::CONTENT_TYPE;
            reply(StatusCode::OK, content_type, super::exporter::render(registry))
        }
        "/healthz" if healthy(metrics) => reply(StatusCode::OK, text, format!("{:?}\n", metrics.run_state()).to_lowercase()),
        "/healthz" => reply(StatusCode::SERVICE_UNAVAILABLE, text, "failed\n".into()),
        _ => reply(StatusCode::NOT_FOUND, text, "not found: try /metrics or /healthz\n".into()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn health_fails_on_a_failed_run_or_a_sink_error() {
        let m = Metrics::new(1);
        assert!(healthy(&m));
        m.set_run_state(RunState::Running);
        m.add("sink_errors:out", 0);
        assert!(healthy(&m));
        m.add("sink_errors:out", 1);
        assert!(!healthy(&m));
        let m = Metrics::new(1);
        m.set_run_state(RunState::Failed);
        assert!(!healthy(&m));
    }

    /// A real request over loopback: /metrics, /healthz (200, then 503 once the run failed), 404.
    #[test]
    fn serves_metrics_and_health_over_http() {
        use std::io::{Read, Write};
        let io = crate::io::IoRuntime::new().unwrap();
        let metrics = Arc::new(Metrics::new(1));
        metrics.add_events_read(42);
        let registry = super::super::exporter::RunCollector::new("j", 0, metrics.clone(), None).into_registry();
        let listener = bind("127.0.0.1:0".parse().unwrap()).unwrap();
        let addr = serve(io.handle(), listener, registry, metrics.clone()).unwrap();
        let get = |path: &str| {
            let mut s = std::net::TcpStream::connect(addr).unwrap();
            write!(s, "GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").unwrap();
            let mut out = String::new();
            s.read_to_string(&mut out).unwrap();
            out
        };
        let m = get("/metrics");
        assert!(m.starts_with("HTTP/1.1 200"), "{m}");
        assert!(m.contains("paystream_events_read_total{job=\"j\"} 42"), "{m}");
        assert!(get("/healthz").starts_with("HTTP/1.1 200"));
        assert!(get("/nope").starts_with("HTTP/1.1 404"));
        metrics.set_run_state(RunState::Failed);
        assert!(get("/healthz").starts_with("HTTP/1.1 503"));
        drop(io);
        assert!(std::net::TcpStream::connect(addr).is_err(), "the listener closes with the runtime");
    }
}
