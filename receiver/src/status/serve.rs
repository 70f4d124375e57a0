//! `xdpcast metrics`: the metrics page of every session over HTTP.
//!
//! The server is hyper's HTTP/1.1 connection driver on a current-thread
//! tokio runtime: one thread serves every connection, each as its own task,
//! so a client that sends its request one byte at a time holds only its own
//! connection, never the others. hyper parses the requests (no HTTP parsing
//! here), closes a connection whose request head is not complete within
//! [`Limits::header_timeout`], and applies the same timeout to a kept-alive
//! connection waiting for its next request (idle timeout); no connection
//! lasts beyond [`Limits::max_connection_time`] plus that timeout. At most
//! [`Limits::max_connections`] are open at once; further ones wait in the
//! listen backlog. Pages are read on tokio's blocking pool, as a reader may
//! wait up to [`crate::status::page::STUCK_AFTER`] for a stuck writer.

use std::convert::Infallible;
use std::net::TcpListener;
use std::sync::Arc;
use std::time::Duration;

use http_body_util::Full;
use hyper::body::{Body, Bytes, Incoming};
use hyper::header::{HeaderValue, ALLOW, CONTENT_TYPE};
use hyper::server::conn::http1;
use hyper::service::{service_fn, HttpService};
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
    /// Time a connection is served, however busy; then it is closed after
    /// the request in hand (clients reconnect).
    pub max_connection_time: Duration,
}

impl Default for Limits {
    fn default() -> Limits {
        Limits {
            header_timeout: Duration::from_secs(5),
            max_connections: 256,
            max_connection_time: Duration::from_secs(60),
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

/// Drive one connection for at most [`Limits::max_connection_time`]; then
/// finish the request in hand (graceful shutdown) and close, cutting off
/// after another [`Limits::header_timeout`] a client that does not read
/// its answer.
async fn serve_for<I, S>(conn: http1::Connection<I, S>, limits: Limits) -> hyper::Result<()>
where
    S: HttpService<Incoming>,
    S::ResBody: 'static,
    <S::ResBody as Body>::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
    I: hyper::rt::Read + hyper::rt::Write + Unpin,
{
    let mut conn = std::pin::pin!(conn);
    match tokio::time::timeout(limits.max_connection_time, conn.as_mut()).await {
        Ok(done) => done,
        Err(_) => {
            conn.as_mut().graceful_shutdown();
            // Elapsed again: dropping the connection closes the socket.
            tokio::time::timeout(limits.header_timeout, conn)
                .await
                .unwrap_or(Ok(()))
        }
    }
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
            let served = serve_for(conn, limits);
            if once {
                return served
                    .await
                    .map_err(|e| Error::new(ErrorCode::Network, format!("metrics request: {e}")));
            }
            tokio::spawn(async move {
                if let Err(e) = served.await {
                    log::debug!("metrics connection from {peer}: {e}");
                }
                drop(slot);
            });
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{Read, Write};

    /// A client that asks for a large answer and never reads it holds the
    /// connection (hyper waits to write) only until the connection's time
    /// is up and the graceful shutdown's grace has passed.
    #[test]
    fn a_client_that_does_not_read_is_cut_off() {
        let limits = Limits {
            header_timeout: Duration::from_millis(500),
            max_connections: 1,
            max_connection_time: Duration::from_millis(500),
        };
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_io()
            .enable_time()
            .build()
            .unwrap();
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let (served_tx, served_rx) = std::sync::mpsc::channel::<()>();
        let client = std::thread::spawn(move || {
            let mut c = std::net::TcpStream::connect(addr).unwrap();
            c.write_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n").unwrap();
            // Read nothing until the server is done with the connection.
            served_rx.recv().unwrap();
            let mut got = Vec::new();
            let _ = c.read_to_end(&mut got);
            got.len()
        });
        const BODY: usize = 64 << 20;
        let result = rt.block_on(async move {
            listener.set_nonblocking(true).unwrap();
            let listener = tokio::net::TcpListener::from_std(listener).unwrap();
            let (stream, _) = listener.accept().await.unwrap();
            let big = service_fn(|_req: Request<Incoming>| async {
                Ok::<_, Infallible>(Response::new(Full::new(Bytes::from(vec![b'x'; BODY]))))
            });
            let conn = http1::Builder::new()
                .timer(TokioTimer::new())
                .serve_connection(TokioIo::new(stream), big);
            // Only a guard against hanging the test suite.
            tokio::time::timeout(Duration::from_secs(120), serve_for(conn, limits)).await
        });
        assert!(result.is_ok(), "the connection was never cut off");
        served_tx.send(()).unwrap();
        let received = client.join().unwrap();
        assert!(received < BODY, "the whole answer went out: {received}");
    }
}
