//! One web server (a mirror): byte-range GETs with every reply bounded.
//!
//! The client is ureq 3 (synchronous, rustls, keep-alive pool per agent;
//! docs/http.md says why). Every request has a deadline for the whole call
//! (a slowloris ends there), every body is read into a buffer of exactly
//! the size asked for plus one byte (an endless or longer body ends there),
//! and a reply is taken only as `206` with the `Content-Range` asked for
//! and the image's total size. Nothing from a server is trusted for being
//! well formed: the bytes still pass the chunk hashes (signed sessions) or
//! the end SHA-256 before they count.

use std::io::Read as _;
use std::time::{Duration, SystemTime};

use ureq::tls::{Certificate, PemItem, RootCerts, TlsConfig};
use ureq::Agent;

/// Most redirects followed per request.
pub const MAX_REDIRECTS: u32 = 5;
/// Largest response header block taken.
const MAX_HEADER_BYTES: usize = 64 * 1024;
/// Longest `Retry-After` honoured (longer values are cut to this).
pub const MAX_RETRY_AFTER: Duration = Duration::from_secs(300);

/// A reply that breaks the range contract, counted by kind.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BadReply {
    /// `200` (the whole body) to a range request.
    WholeBody,
    /// `206` with a `Content-Range` other than the one asked for, or none.
    WrongRange,
    /// More body bytes than the range holds.
    TooLong,
    /// Fewer body bytes than the range holds (connection closed early).
    TooShort,
    /// The deadline for the whole call passed (slowloris, stalled server).
    Timeout,
}

impl BadReply {
    /// Name for logs and counters.
    pub fn name(self) -> &'static str {
        match self {
            BadReply::WholeBody => "whole body to a range request",
            BadReply::WrongRange => "wrong Content-Range",
            BadReply::TooLong => "more bytes than asked",
            BadReply::TooShort => "fewer bytes than asked",
            BadReply::Timeout => "deadline passed",
        }
    }
}

/// Why a request brought nothing usable.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FetchError {
    /// `429` or `503`: come back later (after `Retry-After`, when given).
    Busy(Option<Duration>),
    /// `404` or `410`: no such file there (yet: a manifest file the sender
    /// writes later).
    NotFound(u16),
    /// Any other refusal: a status (404, 403, 500...), a connection or name
    /// resolution failure, a TLS error.
    Refused(String),
    /// A reply that breaks the range contract.
    Bad(BadReply),
}

impl std::fmt::Display for FetchError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            FetchError::Busy(Some(d)) => write!(f, "busy (retry after {} s)", d.as_secs()),
            FetchError::Busy(None) => write!(f, "busy"),
            FetchError::NotFound(s) => write!(f, "HTTP status {s} (not there)"),
            FetchError::Refused(why) => write!(f, "{why}"),
            FetchError::Bad(b) => write!(f, "bad reply: {}", b.name()),
        }
    }
}

/// One mirror of the image.
#[derive(Debug)]
pub struct Mirror {
    /// The image's URL.
    pub url: String,
    agent: Agent,
}

/// The certificate authorities an HTTPS server's chain must lead to:
/// Mozilla's roots (webpki-roots, as rustls ships them), and with
/// `extra` (DER certificates, `--http-ca`) those too.
pub fn roots(extra: &[Vec<u8>]) -> RootCerts {
    if extra.is_empty() {
        return RootCerts::WebPki;
    }
    let mozilla = webpki_root_certs::TLS_SERVER_ROOT_CERTS
        .iter()
        .map(|c| Certificate::from_der(c.as_ref()).to_owned());
    let lab = extra.iter().map(|d| Certificate::from_der(d).to_owned());
    mozilla.chain(lab).collect::<Vec<_>>().into()
}

/// The certificates of a PEM file's text (`--http-ca`): every
/// `CERTIFICATE` block, as DER; an error if there is none or a block is
/// malformed (private keys and other blocks are skipped).
pub fn pem_certificates(pem: &[u8]) -> Result<Vec<Vec<u8>>, String> {
    let mut out = Vec::new();
    for item in ureq::tls::parse_pem(pem) {
        match item.map_err(|e| e.to_string())? {
            PemItem::Certificate(c) => out.push(c.der().to_vec()),
            _ => continue,
        }
    }
    if out.is_empty() {
        return Err("no CERTIFICATE block".into());
    }
    Ok(out)
}

impl Mirror {
    /// A client for `url`: proxy from the environment as curl picks it,
    /// `timeout` for each whole request, HTTPS servers checked against
    /// `roots` ([`roots`]).
    pub fn new(url: &str, timeout: Duration, roots: &RootCerts) -> Mirror {
        let proxy =
            proxy_for(url, &|k| std::env::var(k).ok()).and_then(|p| match ureq::Proxy::new(&p) {
                Ok(p) => Some(p),
                Err(e) => {
                    log::warn!("HTTP proxy {p:?} for {url} ignored: {e}");
                    None
                }
            });
        let agent: Agent = Agent::config_builder()
            .http_status_as_error(false)
            .max_redirects(MAX_REDIRECTS)
            .max_response_header_size(MAX_HEADER_BYTES)
            .timeout_global(Some(timeout))
            .timeout_connect(Some(timeout.min(Duration::from_secs(10))))
            .proxy(proxy)
            .user_agent(concat!("xdpcast/", env!("CARGO_PKG_VERSION")))
            .tls_config(TlsConfig::builder().root_certs(roots.clone()).build())
            .build()
            .into();
        Mirror {
            url: url.to_string(),
            agent,
        }
    }

    /// GET the whole resource at `url` (a manifest file): `200` only, at
    /// most `limit` bytes.
    pub fn get_small(&self, url: &str, limit: u64) -> Result<Vec<u8>, FetchError> {
        let resp = self
            .agent
            .get(url)
            .header("Accept-Encoding", "identity")
            .call()
            .map_err(transport)?;
        let status = resp.status().as_u16();
        if status != 200 {
            return Err(status_error(status, &resp));
        }
        read_exactly_at_most(resp.into_body(), limit)
    }

    /// GET bytes `[start, end)` of the image, whose total size is `total`.
    pub fn get_range(&self, start: u64, end: u64, total: u64) -> Result<Vec<u8>, FetchError> {
        debug_assert!(start < end && end <= total);
        let resp = self
            .agent
            .get(&self.url)
            .header("Range", format!("bytes={start}-{}", end - 1))
            .header("Accept-Encoding", "identity")
            .call()
            .map_err(transport)?;
        let status = resp.status().as_u16();
        match status {
            206 => {}
            // The whole image instead of the range: not read.
            200 => return Err(FetchError::Bad(BadReply::WholeBody)),
            s => return Err(status_error(s, &resp)),
        }
        let range = resp
            .headers()
            .get("content-range")
            .and_then(|v| v.to_str().ok())
            .and_then(parse_content_range);
        if range != Some((start, end, Some(total))) {
            return Err(FetchError::Bad(BadReply::WrongRange));
        }
        let want = end - start;
        let got = read_exactly_at_most(resp.into_body(), want)?;
        if (got.len() as u64) < want {
            return Err(FetchError::Bad(BadReply::TooShort));
        }
        Ok(got)
    }
}

/// Read at most `limit` bytes; a body with more is [`BadReply::TooLong`].
fn read_exactly_at_most(body: ureq::Body, limit: u64) -> Result<Vec<u8>, FetchError> {
    let mut buf = Vec::with_capacity(limit.min(64 << 20) as usize);
    let mut r = body
        .into_with_config()
        .limit(limit.saturating_add(1))
        .reader()
        .take(limit.saturating_add(1));
    match r.read_to_end(&mut buf) {
        Ok(_) if buf.len() as u64 > limit => Err(FetchError::Bad(BadReply::TooLong)),
        Ok(_) => Ok(buf),
        Err(e) => {
            if buf.len() as u64 > limit {
                return Err(FetchError::Bad(BadReply::TooLong));
            }
            Err(io_error(e))
        }
    }
}

fn io_error(e: std::io::Error) -> FetchError {
    let text = e.to_string();
    match e.into_inner().map(|inner| inner.downcast::<ureq::Error>()) {
        Some(Ok(u)) => transport(*u),
        _ if text.contains("timeout") || text.contains("timed out") => {
            FetchError::Bad(BadReply::Timeout)
        }
        _ => FetchError::Refused(text),
    }
}

fn transport(e: ureq::Error) -> FetchError {
    match e {
        ureq::Error::Timeout(_) => FetchError::Bad(BadReply::Timeout),
        ureq::Error::BodyExceedsLimit(_) => FetchError::Bad(BadReply::TooLong),
        ureq::Error::Io(io) => io_error(io),
        other => FetchError::Refused(other.to_string()),
    }
}

fn status_error(status: u16, resp: &ureq::http::Response<ureq::Body>) -> FetchError {
    match status {
        429 | 503 => FetchError::Busy(
            resp.headers()
                .get("retry-after")
                .and_then(|v| v.to_str().ok())
                .and_then(|v| parse_retry_after(v, SystemTime::now())),
        ),
        404 | 410 => FetchError::NotFound(status),
        s => FetchError::Refused(format!("HTTP status {s}")),
    }
}

/// `Content-Range: bytes a-b/total` (or `/*`) as `(a, b + 1, total)`.
pub fn parse_content_range(v: &str) -> Option<(u64, u64, Option<u64>)> {
    let rest = v.trim().strip_prefix("bytes ")?;
    let (range, total) = rest.split_once('/')?;
    let (a, b) = range.split_once('-')?;
    let (a, b): (u64, u64) = (a.trim().parse().ok()?, b.trim().parse().ok()?);
    if b < a {
        return None;
    }
    let total = match total.trim() {
        "*" => None,
        t => Some(t.parse().ok()?),
    };
    Some((a, b.checked_add(1)?, total))
}

/// `Retry-After` as seconds or an HTTP date, capped at [`MAX_RETRY_AFTER`].
pub fn parse_retry_after(v: &str, now: SystemTime) -> Option<Duration> {
    let v = v.trim();
    let d = match v.parse::<u64>() {
        Ok(secs) => Duration::from_secs(secs),
        Err(_) => httpdate(v)?.duration_since(now).unwrap_or(Duration::ZERO),
    };
    Some(d.min(MAX_RETRY_AFTER))
}

/// An IMF-fixdate (`Sun, 06 Nov 1994 08:49:37 GMT`), the only date form
/// a server may send (RFC 9110 5.6.7).
fn httpdate(v: &str) -> Option<SystemTime> {
    let p: Vec<&str> = v.split_whitespace().collect();
    if p.len() != 6 || p[5] != "GMT" {
        return None;
    }
    let day: u64 = p[1].parse().ok()?;
    const MONTHS: [&str; 12] = [
        "Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec",
    ];
    let month = MONTHS.iter().position(|m| *m == p[2])? as u64 + 1;
    let year: u64 = p[3].parse().ok()?;
    let hms: Vec<u64> = p[4]
        .split(':')
        .map(|x| x.parse().ok())
        .collect::<Option<_>>()?;
    if hms.len() != 3 || !(1..=31).contains(&day) || year < 1970 {
        return None;
    }
    // Days since 1970-01-01 (civil calendar, H. Hinnant's algorithm).
    let (y, m) = if month <= 2 {
        (year - 1, month + 9)
    } else {
        (year, month - 3)
    };
    let era = y / 400;
    let yoe = y - era * 400;
    let doy = (153 * m + 2) / 5 + day - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    let days = era * 146_097 + doe - 719_468;
    let secs = days * 86_400 + hms[0] * 3600 + hms[1] * 60 + hms[2];
    Some(SystemTime::UNIX_EPOCH + Duration::from_secs(secs))
}

/// The proxy for `url` as curl picks it from the environment (`env`):
/// `http_proxy` (lower case only, as curl: `HTTP_PROXY` can be set by a
/// CGI request's `Proxy:` header) for http, `https_proxy` or
/// `HTTPS_PROXY` for https, else `all_proxy` or `ALL_PROXY`; none when
/// the host matches `no_proxy`/`NO_PROXY` (comma-separated host names or
/// domain suffixes, `*` for all).
pub fn proxy_for(url: &str, env: &dyn Fn(&str) -> Option<String>) -> Option<String> {
    let (scheme, rest) = url.split_once("://")?;
    let authority = rest.split(['/', '?', '#']).next().unwrap_or("");
    let hostport = authority.rsplit_once('@').map_or(authority, |(_, h)| h);
    let host = if let Some(v6) = hostport.strip_prefix('[') {
        v6.split(']').next().unwrap_or("")
    } else {
        hostport.split(':').next().unwrap_or("")
    }
    .to_ascii_lowercase();
    let get = |k: &str| env(k).filter(|v| !v.trim().is_empty());
    let no_proxy = get("no_proxy")
        .or_else(|| get("NO_PROXY"))
        .unwrap_or_default();
    for entry in no_proxy.split(',').map(|e| e.trim().to_ascii_lowercase()) {
        let entry = entry.trim_start_matches('.');
        if entry == "*"
            || (!entry.is_empty() && (host == entry || host.ends_with(&format!(".{entry}"))))
        {
            return None;
        }
    }
    let chosen = match scheme.to_ascii_lowercase().as_str() {
        "http" => get("http_proxy"),
        "https" => get("https_proxy").or_else(|| get("HTTPS_PROXY")),
        _ => None,
    };
    chosen
        .or_else(|| get("all_proxy"))
        .or_else(|| get("ALL_PROXY"))
}

/// Backoff after a failure: `base` doubled per consecutive failure, at
/// most `max`, then between half and all of it (jitter, so a fleet that
/// failed together does not come back together).
pub fn backoff(base: Duration, failures: u32, max: Duration, random: u64) -> Duration {
    let d = base.saturating_mul(1u32 << failures.min(16)).min(max);
    d / 2 + d.mul_f64((random % 1000) as f64 / 2000.0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn content_range_forms() {
        assert_eq!(
            parse_content_range("bytes 0-99/1000"),
            Some((0, 100, Some(1000)))
        );
        assert_eq!(parse_content_range("bytes 5-5/*"), Some((5, 6, None)));
        for bad in [
            "bytes 9-5/10",
            "items 0-1/2",
            "bytes 0-/9",
            "bytes x-1/2",
            "bytes 0-1",
        ] {
            assert_eq!(parse_content_range(bad), None, "{bad}");
        }
    }

    #[test]
    fn retry_after_seconds_and_dates_capped() {
        let now = SystemTime::UNIX_EPOCH + Duration::from_secs(784_111_777); // 06 Nov 1994 08:49:37
        assert_eq!(parse_retry_after("7", now), Some(Duration::from_secs(7)));
        assert_eq!(parse_retry_after("99999", now), Some(MAX_RETRY_AFTER));
        assert_eq!(
            parse_retry_after("Sun, 06 Nov 1994 08:50:07 GMT", now),
            Some(Duration::from_secs(30))
        );
        assert_eq!(
            parse_retry_after("Sun, 06 Nov 1994 08:00:00 GMT", now),
            Some(Duration::ZERO)
        );
        assert_eq!(parse_retry_after("soon", now), None);
    }

    #[test]
    fn proxies_picked_as_curl_does() {
        let env = |vars: &'static [(&'static str, &'static str)]| {
            move |k: &str| {
                vars.iter()
                    .find(|(n, _)| *n == k)
                    .map(|(_, v)| v.to_string())
            }
        };
        let e = env(&[
            ("http_proxy", "http://p:3128"),
            ("HTTPS_PROXY", "http://s:3128"),
        ]);
        assert_eq!(
            proxy_for("http://a.lab/x.img", &e).as_deref(),
            Some("http://p:3128")
        );
        assert_eq!(
            proxy_for("https://a.lab/x.img", &e).as_deref(),
            Some("http://s:3128")
        );
        // Upper-case HTTP_PROXY is not taken (httpoxy), as with curl.
        let e = env(&[("HTTP_PROXY", "http://evil:1")]);
        assert_eq!(proxy_for("http://a.lab/x", &e), None);
        let e = env(&[
            ("all_proxy", "http://all:1"),
            ("no_proxy", "localhost, .lab"),
        ]);
        assert_eq!(proxy_for("http://fog.lab:8080/x", &e), None);
        assert_eq!(proxy_for("http://lab/x", &e), None);
        assert_eq!(
            proxy_for("http://[::1]/x", &e).as_deref(),
            Some("http://all:1")
        );
        assert_eq!(proxy_for("http://u:p@localhost/x", &e), None);
        assert_eq!(
            proxy_for("http://other.org/x", &e).as_deref(),
            Some("http://all:1")
        );
        let e = env(&[("http_proxy", "http://p:1"), ("NO_PROXY", "*")]);
        assert_eq!(proxy_for("http://x/y", &e), None);
    }

    /// A server on loopback that answers each connection's request with
    /// `reply(range asked)` (raw bytes, then it closes), and sleeps
    /// `stall` between bytes when given (slowloris).
    fn canned(
        reply: impl Fn(&str) -> Vec<u8> + Send + 'static,
        stall: Option<Duration>,
    ) -> (String, std::thread::JoinHandle<()>) {
        use std::io::{BufRead, Write};
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let url = format!("http://{}/img", l.local_addr().unwrap());
        let h = std::thread::spawn(move || {
            let (c, _) = l.accept().unwrap();
            let mut r = std::io::BufReader::new(c.try_clone().unwrap());
            let mut range = String::new();
            loop {
                let mut line = String::new();
                if r.read_line(&mut line).unwrap_or(0) == 0 || line == "\r\n" {
                    break;
                }
                if let Some(v) = line.to_ascii_lowercase().strip_prefix("range: ") {
                    range = v.trim().to_string();
                }
            }
            let mut c = c;
            let bytes = reply(&range);
            match stall {
                None => {
                    let _ = c.write_all(&bytes);
                }
                Some(d) => {
                    for b in bytes {
                        if c.write_all(&[b]).is_err() {
                            break;
                        }
                        std::thread::sleep(d);
                    }
                }
            }
        });
        (url, h)
    }

    fn reply(status: &str, headers: &[String], body: &[u8]) -> Vec<u8> {
        let mut out = format!("HTTP/1.1 {status}\r\nConnection: close\r\n");
        for h in headers {
            out.push_str(h);
            out.push_str("\r\n");
        }
        out.push_str("\r\n");
        let mut out = out.into_bytes();
        out.extend_from_slice(body);
        out
    }

    fn get(
        reply: impl Fn(&str) -> Vec<u8> + Send + 'static,
        stall: Option<Duration>,
        timeout: Duration,
    ) -> Result<Vec<u8>, FetchError> {
        let (url, h) = canned(reply, stall);
        let m = Mirror {
            url: url.clone(),
            agent: Mirror::new(&url, timeout, &RootCerts::WebPki).agent,
        };
        let r = m.get_range(100, 200, 1000);
        drop(m);
        let _ = h.join();
        r
    }

    const T: Duration = Duration::from_secs(20);

    #[test]
    fn an_honest_range_reply_is_taken() {
        let r = get(
            |range| {
                assert_eq!(range, "bytes=100-199");
                let cl = "Content-Length: 100".to_string();
                let cr = "Content-Range: bytes 100-199/1000".to_string();
                reply("206 Partial Content", &[cl, cr], &[7u8; 100])
            },
            None,
            T,
        );
        assert_eq!(r, Ok(vec![7u8; 100]));
    }

    #[test]
    fn each_broken_reply_is_refused_by_kind() {
        let cr = |v: &str| format!("Content-Range: {v}");
        let cl = |n: usize| format!("Content-Length: {n}");
        let cases: Vec<(Vec<u8>, FetchError)> = vec![
            // The whole image instead of the range.
            (
                reply("200 OK", &[cl(1000)], &[0u8; 1000]),
                FetchError::Bad(BadReply::WholeBody),
            ),
            // Another range, another total, none at all.
            (
                reply("206 Partial", &[cl(100), cr("bytes 0-99/1000")], &[0; 100]),
                FetchError::Bad(BadReply::WrongRange),
            ),
            (
                reply(
                    "206 Partial",
                    &[cl(100), cr("bytes 100-199/2000")],
                    &[0; 100],
                ),
                FetchError::Bad(BadReply::WrongRange),
            ),
            (
                reply("206 Partial", &[cl(100)], &[0; 100]),
                FetchError::Bad(BadReply::WrongRange),
            ),
            // More bytes than asked (its length says so, or it has none).
            (
                reply(
                    "206 Partial",
                    &[cl(150), cr("bytes 100-199/1000")],
                    &[0; 150],
                ),
                FetchError::Bad(BadReply::TooLong),
            ),
            (
                reply("206 Partial", &[cr("bytes 100-199/1000")], &[0; 5000]),
                FetchError::Bad(BadReply::TooLong),
            ),
            // Fewer, the connection closed early.
            (
                reply("206 Partial", &[cr("bytes 100-199/1000")], &[0; 50]),
                FetchError::Bad(BadReply::TooShort),
            ),
            // Busy, with and without Retry-After; refused.
            (
                reply("503 Busy", &[cl(0), "Retry-After: 7".into()], &[]),
                FetchError::Busy(Some(Duration::from_secs(7))),
            ),
            (
                reply("429 Slow down", &[cl(0)], &[]),
                FetchError::Busy(None),
            ),
            (
                reply("404 Not Found", &[cl(0)], &[]),
                FetchError::NotFound(404),
            ),
            (
                reply("403 Forbidden", &[cl(0)], &[]),
                FetchError::Refused("HTTP status 403".into()),
            ),
        ];
        for (bytes, want) in cases {
            let shown = String::from_utf8_lossy(&bytes[..bytes.len().min(120)]).into_owned();
            let got = get(move |_| bytes.clone(), None, T);
            match (&got, &want) {
                // A short body may surface as an I/O error of the reader.
                (Err(FetchError::Refused(_)), FetchError::Bad(BadReply::TooShort)) => {}
                _ => assert_eq!(got, Err(want), "{shown}"),
            }
        }
    }

    #[test]
    fn a_slowloris_ends_at_the_deadline() {
        let r = get(
            |_| {
                let cl = "Content-Length: 100".to_string();
                let cr = "Content-Range: bytes 100-199/1000".to_string();
                reply("206 Partial Content", &[cl, cr], &[7u8; 100])
            },
            Some(Duration::from_millis(20)),
            Duration::from_millis(500),
        );
        assert_eq!(r, Err(FetchError::Bad(BadReply::Timeout)));
    }

    #[test]
    fn lab_cas_come_from_pem_certificate_blocks_beside_mozilla_s() {
        let pem = b"junk\n-----BEGIN PRIVATE KEY-----\nAQID\n-----END PRIVATE KEY-----\n\
-----BEGIN CERTIFICATE-----\nBAUG\n-----END CERTIFICATE-----\n\
-----BEGIN CERTIFICATE-----\nBwgJ\n-----END CERTIFICATE-----\n";
        assert_eq!(
            pem_certificates(pem),
            Ok(vec![vec![4, 5, 6], vec![7, 8, 9]])
        );
        assert!(pem_certificates(b"").is_err());
        assert!(pem_certificates(
            b"-----BEGIN PRIVATE KEY-----\nAQID\n-----END PRIVATE KEY-----\n"
        )
        .is_err());
        assert!(pem_certificates(
            b"-----BEGIN CERTIFICATE-----\n!!!!\n-----END CERTIFICATE-----\n"
        )
        .is_err());
        assert!(matches!(roots(&[]), RootCerts::WebPki));
        match roots(&[vec![4, 5, 6]]) {
            RootCerts::Specific(all) => {
                assert_eq!(
                    all.len(),
                    webpki_root_certs::TLS_SERVER_ROOT_CERTS.len() + 1
                );
                assert_eq!(all.last().unwrap().der(), &[4, 5, 6]);
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn backoff_grows_and_is_jittered_within_bounds() {
        let base = Duration::from_millis(500);
        let max = Duration::from_secs(60);
        for f in 0..40 {
            for r in [0, 499, 999] {
                let d = backoff(base, f, max, r);
                let full = base.saturating_mul(1 << f.min(16)).min(max);
                assert!(d >= full / 2 && d <= full, "{f} {r} {d:?}");
            }
        }
    }
}
