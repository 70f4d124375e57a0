//! `xdpcast metrics`: the metrics page of every session over HTTP.
//!
//! The server is hyper's HTTP/1.1 connection driver on a current-thread
//! tokio runtime: one thread serves every connection, each as its own task,
//! so a client that sends its request one byte at a time holds only its own
//! connection, never the others. hyper parses the requests (no HTTP parsing
//! here), closes a connection whose request head is not complete within
//! [`Limits::header_timeout`], and applies the same timeout to a kept-alive
//! connection waiting for its next request (idle timeout). At most
//! [`Limits::max_connections`] are open at once; further ones wait in the
//! listen backlog. Pages are read on tokio's blocking pool, as a reader may
//! wait up to [`crate::status::page::STUCK_AFTER`] for a stuck writer.

use std::convert::Infallible;
use std::net::TcpListener;
use std::sync::Arc;
use std::time::Duration;

use http_body_util::Full;
use hyper::body::{Bytes, Incoming};
use hyper::header::{HeaderValue, ALLOW, CONTENT_TYPE};
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::sync::Semaphore;

use crate::error::{Error, ErrorCode, Result};
use crate::status::monitor::scan;
use crate::status::page::Snapshot;
use crate::status::report;

/// Content type of the Prometheus text format.
pub const PROMETHEUS_TEXT: &str = "text/plain; version=0.0.4; charset=utf-8";

/// How the server protects itself from slow or idle clients.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// Time a client has to send a complete request head, from its
    /// connection or the end of its previous response.
    pub header_timeout: Duration,
    /// Connections served at once.
    pub max_connections: usize,
}

impl Default for Limits {
    fn default() -> Limits {
        Limits {
            header_timeout: Duration::from_secs(5),
            max_connections: 256,
        }
    }
}

/// The metrics page: every readable page in Prometheus text format, plus
/// the number of pages that could not be read.
pub fn metrics_text() -> String {
    let entries = scan();
    let pages: Vec<Snapshot> = entries.iter().filter_map(|e| e.page.clone().ok()).collect();
    report::prometheus(&pages, entries.len() - pages.len())
}

fn reply(status: StatusCode, content_type: &'static str, body: String) -> Response<Full<Bytes>> {
    let mut r = Response::new(Full::new(Bytes::from(body)));
    *r.status_mut() = status;
    r.headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static(content_type));
    r
}

/// One request: `GET`/`HEAD` of `/metrics`; `/` says where the metrics are;
/// other paths 404; other methods on these paths 405 with `Allow`.
async fn answer(req: Request<Incoming>) -> std::result::Result<Response<Full<Bytes>>, Infallible> {
    let path = req.uri().path();
    if path != "/metrics" && path != "/" {
        return Ok(reply(
            StatusCode::NOT_FOUND,
            "text/plain; charset=utf-8",
            "not found; the metrics are at /metrics\n".into(),
        ));
    }
    if req.method() != Method::GET && req.method() != Method::HEAD {
        let mut r = reply(
            StatusCode::METHOD_NOT_ALLOWED,
            "text/plain; charset=utf-8",
            "only GET and HEAD\n".into(),
        );
        r.headers_mut()
            .insert(ALLOW, HeaderValue::from_static("GET, HEAD"));
        return Ok(r);
    }
    if path == "/" {
        return Ok(reply(
            StatusCode::OK,
            "text/plain; charset=utf-8",
            "xdpcast: Prometheus metrics at /metrics\n".into(),
        ));
    }
    Ok(match tokio::task::spawn_blocking(metrics_text).await {
        Ok(text) => reply(StatusCode::OK, PROMETHEUS_TEXT, text),
        Err(e) => reply(
            StatusCode::INTERNAL_SERVER_ERROR,
            "text/plain; charset=utf-8",
            format!("reading the status pages failed: {e}\n"),
        ),
    })
}

/// Serve the metrics on `listener` until the process is killed; with
/// `once`, serve the first connection (one request, no keep-alive) and
/// return.
pub fn serve_metrics(listener: TcpListener, limits: Limits, once: bool) -> Result<()> {
    let io = |what: &str, e: std::io::Error| Error::new(ErrorCode::Network, format!("{what}: {e}"));
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_io()
        .enable_time()
        .build()
        .map_err(|e| io("metrics runtime", e))?;
    rt.block_on(async move {
        listener
            .set_nonblocking(true)
            .map_err(|e| io("metrics listener", e))?;
        let listener =
            tokio::net::TcpListener::from_std(listener).map_err(|e| io("metrics listener", e))?;
        let slots = Arc::new(Semaphore::new(limits.max_connections));
        let mut http = http1::Builder::new();
        http.timer(TokioTimer::new())
            .header_read_timeout(limits.header_timeout)
            .keep_alive(!once);
        loop {
            let slot = Arc::clone(&slots)
                .acquire_owned()
                .await
                .expect("the semaphore is never closed");
            let (stream, peer) = match listener.accept().await {
                Ok(c) => c,
                Err(e) if once => return Err(io("accept", e)),
                Err(e) => {
                    // Out of descriptors or memory, for instance: wait, retry.
                    log::warn!("metrics: accept: {e}");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            };
            let conn = http.serve_connection(TokioIo::new(stream), service_fn(answer));
            if once {
                return conn
                    .await
                    .map_err(|e| Error::new(ErrorCode::Network, format!("metrics request: {e}")));
            }
            tokio::spawn(async move {
                if let Err(e) = conn.await {
                    log::debug!("metrics connection from {peer}: {e}");
                }
                drop(slot);
            });
        }
    })
}
