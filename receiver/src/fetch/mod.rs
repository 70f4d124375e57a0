//! The HTTP(S) source: what multicast did not deliver, fetched from web
//! servers that serve the same image, with byte-range requests
//! (docs/http.md).
//!
//! The fetcher is one thread beside the data path. Whatever it fetches
//! goes into the transfer as the packets multicast would have brought: the
//! manifest file's records as kind 6 packets, the bytes of a range as data
//! packets. So HTTP bytes take the same path as multicast blocks: claimed
//! once, written by the store, and in a signed session counted only when
//! their chunk's hash matches the signed manifest. Bytes that fail are
//! forgotten by that same code and fetched again (from the next mirror) or
//! left to multicast repair; they never make a SUCCESS.
//!
//! When it fetches (the policy, [`HttpRequest`]):
//! - nothing heard within `after`: the signed manifest from
//!   `URL.xdpcast-manifest`, then the whole image (multicast stays joined,
//!   and whatever it brings is not fetched);
//! - a late joiner (the first block multicast brought lies more than a
//!   chunk into the image): what went by, while multicast brings the rest;
//! - after the sender's passes, when at least `repair.share` of the image
//!   is still missing and few of the sender's receivers lack much (its end
//!   packets say how many, [`HttpRepair`]), or when the sender fell silent for `after`, or when
//!   the control thread says so ([`Fetcher::take_over`]: the last pass
//!   ended with blocks missing, the sender is gone): everything missing.
//!
//! Mirrors that refuse or fail are backed off (429/503: `Retry-After`);
//! after `max_failures` failed requests in a row the source is given up
//! with one message, and the receiver goes on with multicast repair. A
//! manifest file a mirror does not have yet (404: the sender writes it
//! before or at the end of its first pass) is asked for again after a
//! short jittered backoff and is no failure; while no session is known the
//! source is never given up (the start timeout ends the wait).

pub mod http;
pub mod manifest_file;

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicU8, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use ed25519_dalek::VerifyingKey;

use crate::core::fallback::HttpRepair;
use crate::proto::manifest::{self, Manifest};
use crate::proto::wire::{self, DropReason, Kind, FLAG_REPAIR};
use crate::receive::request::HttpRequest;
use crate::receive::transfer::{Image, Transfer};
use crate::receive::workers::{Sink, WorkerCounters};
use crate::rng::XorShift;
use crate::status::page::HttpStatus;
use http::{FetchError, Mirror};
use manifest_file::ManifestFile;

/// How often the fetcher looks at the transfer.
const TICK: Duration = Duration::from_millis(100);
/// First backoff after a failed request (doubling, jittered).
const BACKOFF_BASE: Duration = Duration::from_millis(500);
/// Longest backoff after failures (a `Retry-After` may be longer).
const BACKOFF_MAX: Duration = Duration::from_secs(30);
/// First wait before asking again for a manifest file a mirror does not
/// have yet (doubling, jittered).
const MANIFEST_POLL_BASE: Duration = Duration::from_millis(500);
/// Longest wait between two asks for a manifest file not there yet.
const MANIFEST_POLL_MAX: Duration = Duration::from_secs(5);
/// Blocks per unit of an unsigned session's ranges (no chunks to align to).
const UNSIGNED_UNIT_BYTES: u64 = 1 << 20;

/// State of the HTTP source, as the status page shows it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum HttpState {
    /// Configured, nothing fetched (multicast is doing it).
    Standby = 0,
    /// Fetching.
    Active = 1,
    /// Given up after failures: multicast repair only.
    GaveUp = 2,
}

/// What the HTTP source did, for the status page and the logs.
#[derive(Debug, Default)]
pub struct HttpCounters {
    /// Requests sent (ranges and manifest files).
    pub requests: AtomicU64,
    /// Image bytes taken in from HTTP replies (before chunk checks).
    pub bytes: AtomicU64,
    /// Chunks fetched over HTTP that failed their signed hash.
    pub bad_chunks: AtomicU64,
    /// Replies that broke the range contract (whole body, wrong
    /// Content-Range, too long, too short, past the deadline).
    pub bad_replies: AtomicU64,
    /// Refusals and connection failures.
    pub refused: AtomicU64,
    /// 429 and 503 replies (backed off).
    pub busy: AtomicU64,
    /// [`HttpState`].
    pub state: AtomicU8,
    /// Whether there is any URL to fetch from (given, or named by the
    /// signed manifest): without one the source does nothing and the
    /// status page shows none.
    pub has_urls: AtomicBool,
}

impl HttpCounters {
    /// The status page's region, with `multicast_bytes` from the data path.
    pub fn status(&self, multicast_bytes: u64) -> HttpStatus {
        let get = |c: &AtomicU64| c.load(Ordering::Relaxed);
        HttpStatus {
            // 0 on the page: no HTTP source.
            state: if self.has_urls.load(Ordering::Relaxed) {
                1 + u64::from(self.state.load(Ordering::Relaxed))
            } else {
                0
            },
            multicast_bytes,
            http_bytes: get(&self.bytes),
            requests: get(&self.requests),
            bad_chunks: get(&self.bad_chunks),
            bad_replies: get(&self.bad_replies),
            refused: get(&self.refused),
            busy: get(&self.busy),
        }
    }

    /// The source's state.
    pub fn state(&self) -> HttpState {
        match self.state.load(Ordering::Relaxed) {
            1 => HttpState::Active,
            2 => HttpState::GaveUp,
            _ => HttpState::Standby,
        }
    }
}

/// Whether the sender's last announced pass has been seen.
fn passes_over(t: &Transfer) -> bool {
    t.last_control()
        .is_some_and(|c| t.passes_seen() >= u64::from(c.passes))
}

/// Whether the passes are over and the web server should bring what is
/// missing rather than NACK rounds: this receiver lacks much, and few of
/// the sender's receivers do, as its last end says ([`HttpRepair`]).
fn much_missing_after_passes(t: &Transfer, repair: &HttpRepair) -> bool {
    let Some(img) = t.image() else {
        return false;
    };
    let g = img.geometry;
    let missing = g.block_count.saturating_sub(t.blocks_done());
    let lacking = t.last_control().and_then(|c| c.lacking());
    passes_over(t) && repair.prefers_http(missing, g.block_count, lacking)
}

struct Shared {
    stop: AtomicBool,
    take_over: AtomicBool,
    /// The manifest file was not there (404, 410) when the fetcher asked
    /// for the pages the multicast did not bring: until it is, only a
    /// repair round brings them (it repeats every page).
    no_file: AtomicBool,
    counters: Arc<HttpCounters>,
}

/// The HTTP source's thread.
pub struct Fetcher {
    shared: Arc<Shared>,
    t: Arc<Transfer>,
    repair: HttpRepair,
    handle: Option<JoinHandle<()>>,
}

impl Fetcher {
    /// Start fetching for `t` as its worker-counter slot `slot`, by
    /// `req`'s policy; a manifest file must be signed by one of `trusted`.
    pub fn start(
        t: Arc<Transfer>,
        slot: usize,
        req: HttpRequest,
        trusted: Vec<VerifyingKey>,
    ) -> std::io::Result<Fetcher> {
        let shared = Arc::new(Shared {
            stop: AtomicBool::new(false),
            take_over: AtomicBool::new(false),
            no_file: AtomicBool::new(false),
            counters: Arc::default(),
        });
        let (s, t2, repair) = (shared.clone(), t.clone(), req.repair);
        let handle = std::thread::Builder::new()
            .name("xdpcast-http".into())
            .spawn(move || {
                let mut w = Work::new(t, slot, req, trusted, s);
                w.run();
            })?;
        Ok(Fetcher {
            shared,
            t: t2,
            repair,
            handle: Some(handle),
        })
    }

    /// Fetch everything still missing (the sender is gone, or its last
    /// pass ended with blocks missing).
    pub fn take_over(&self) {
        self.shared.take_over.store(true, Ordering::Relaxed);
    }

    /// Whether the web server brings what is missing (the receiver then
    /// sends no NACKs): it is fetching now, or the passes are over with at
    /// least `--http-repair-percent` missing and the source is usable. The
    /// fetcher's thread takes that case on its next look; a NACK sent
    /// before then would start the repair round the policy skips.
    ///
    /// Not while a signed session lacks pages of chunk hashes that the
    /// manifest file could not give (`--no-manifest-file`, or not written
    /// yet): without them no fetched chunk verifies, and the repair round
    /// a NACK starts repeats every page.
    pub fn fetching(&self) -> bool {
        let pages_wanted = self.shared.no_file.load(Ordering::Relaxed)
            && self
                .t
                .signed()
                .is_some_and(|s| s.pages() < s.manifest.page_count());
        !pages_wanted
            && (self.counters().state() == HttpState::Active
                || (self.usable() && much_missing_after_passes(&self.t, &self.repair)))
    }

    /// Whether the source is usable: it has URLs and is not given up. The
    /// URLs a verified head names count from the moment it verified, not
    /// only once the fetcher's jittered start has taken them up: a NACK
    /// sent in between would start the repair round the policy skips.
    pub fn usable(&self) -> bool {
        let c = self.counters();
        c.state() != HttpState::GaveUp
            && (c.has_urls.load(Ordering::Relaxed)
                || self
                    .t
                    .head_payload()
                    .is_some_and(|p| !manifest::head_urls(p).is_empty()))
    }

    /// The source's counters.
    pub fn counters(&self) -> &HttpCounters {
        &self.shared.counters
    }

    /// The counters, to read after the fetcher stopped.
    pub fn counters_handle(&self) -> Arc<HttpCounters> {
        self.shared.counters.clone()
    }
}

impl Drop for Fetcher {
    fn drop(&mut self) {
        self.shared.stop.store(true, Ordering::Relaxed);
        if let Some(h) = self.handle.take() {
            let _ = h.join();
        }
    }
}

struct MirrorState {
    mirror: Mirror,
    /// Not before this (backoff, Retry-After).
    not_before: Instant,
    failures: u32,
    /// Manifest file requests it answered with 404 or 410 (the poll's
    /// backoff; no failure).
    misses: u32,
    /// The manifest file is not asked for again before this (after a 404
    /// or 410: the mirror still serves ranges meanwhile).
    file_not_before: Instant,
}

impl MirrorState {
    /// A mirror ready for ranges and for the manifest file at `now`.
    fn new(mirror: Mirror, now: Instant) -> MirrorState {
        MirrorState {
            mirror,
            not_before: now,
            failures: 0,
            misses: 0,
            file_not_before: now,
        }
    }
}

/// One range request: units `[first, end)` of the image.
#[derive(Debug, Clone, Copy)]
struct Job {
    first_block: u64,
    end_block: u64,
}

struct Work {
    t: Arc<Transfer>,
    slot: usize,
    req: HttpRequest,
    trusted: Vec<VerifyingKey>,
    shared: Arc<Shared>,
    mirrors: Vec<MirrorState>,
    next_mirror: usize,
    rng: XorShift,
    started: Instant,
    jitter: Duration,
    /// Everything missing is fetched from now on.
    all: bool,
    /// Late joiner: blocks below this went by before we joined.
    behind: Option<u64>,
    /// Multicast packets counted at the last change, and when.
    multicast: (u64, Instant),
    /// Failed requests in a row.
    failures: u32,
    last_error: String,
    /// Unit -> failed attempts (bad chunks), to give up on a unit.
    attempts: HashMap<u64, u32>,
    /// Units left to multicast repair.
    abandoned: std::collections::HashSet<u64>,
    /// The manifest file's pages, once fetched (pages the multicast did
    /// not bring are taken from it).
    file_pages_done: bool,
    /// One ingest at a time, so a bad chunk is counted for its range.
    ingest: Mutex<()>,
}

impl Work {
    fn new(
        t: Arc<Transfer>,
        slot: usize,
        req: HttpRequest,
        trusted: Vec<VerifyingKey>,
        shared: Arc<Shared>,
    ) -> Work {
        let mut rng = XorShift::from_entropy();
        let jitter = req
            .jitter
            .mul_f64((rng.next_u64() % 10_000) as f64 / 10_000.0);
        let now = Instant::now();
        let roots = http::roots(&req.extra_roots);
        Work {
            mirrors: req
                .urls
                .iter()
                .map(|u| MirrorState::new(Mirror::new(u, req.timeout, &roots), now))
                .collect(),
            next_mirror: (rng.next_u64() % req.urls.len().max(1) as u64) as usize,
            t,
            slot,
            req,
            trusted,
            shared,
            rng,
            started: now,
            jitter,
            all: false,
            behind: None,
            multicast: (0, now),
            failures: 0,
            last_error: String::new(),
            attempts: HashMap::new(),
            abandoned: Default::default(),
            file_pages_done: false,
            ingest: Mutex::new(()),
        }
    }

    fn counters(&self) -> &HttpCounters {
        &self.shared.counters
    }

    fn slot(&self) -> &WorkerCounters {
        self.t.counters(self.slot)
    }

    fn run(&mut self) {
        self.counters()
            .has_urls
            .store(!self.mirrors.is_empty(), Ordering::Relaxed);
        loop {
            std::thread::sleep(TICK);
            if self.shared.stop.load(Ordering::Relaxed)
                || self.t.has_failed()
                || self.t.complete()
                || self.counters().state() == HttpState::GaveUp
            {
                return;
            }
            // Jittered start: nothing before it, whatever the policy says.
            if self.started.elapsed() < self.jitter {
                continue;
            }
            if self.mirrors.is_empty() {
                match self.t.head_payload().map(manifest::head_urls) {
                    // No session yet: nothing to ask for.
                    None => continue,
                    Some(urls) if urls.is_empty() => return,
                    Some(urls) => self.adopt(urls),
                }
            }
            let image = self.t.image().cloned();
            match image {
                None => self.bootstrap(),
                Some(img) => self.fetch_missing(&img),
            }
        }
    }

    /// No URL given: take those the verified head names (signed by a
    /// trusted key; a URL only says where to ask, the chunk hashes still
    /// decide what is genuine).
    fn adopt(&mut self, urls: Vec<String>) {
        log::warn!(
            "no --http given: the signed manifest names {}; what multicast does not bring is fetched from there",
            urls.join(", ")
        );
        let roots = http::roots(&self.req.extra_roots);
        let now = Instant::now();
        self.mirrors = urls
            .iter()
            .map(|u| MirrorState::new(Mirror::new(u, self.req.timeout, &roots), now))
            .collect();
        self.next_mirror = (self.rng.next_u64() % self.mirrors.len() as u64) as usize;
        self.req.urls = urls;
        self.counters().has_urls.store(true, Ordering::Relaxed);
    }

    /// Packets the multicast data path took (every slot but ours).
    fn multicast_packets(&self) -> u64 {
        self.t
            .all_counters()
            .enumerate()
            .filter(|(i, _)| *i != self.slot)
            .map(|(_, c)| c.packets.load(Ordering::Relaxed))
            .sum()
    }

    /// No session heard: after `after`, the manifest file and from it the
    /// session (signed sessions only: an unsigned one names its image only
    /// on the wire).
    fn bootstrap(&mut self) {
        if self.started.elapsed() < self.req.after + self.jitter {
            return;
        }
        if self.trusted.is_empty() {
            if !self.all {
                self.all = true;
                log::warn!(
                    "no multicast within {:?}: an unsigned session cannot start from HTTP (it needs the signed manifest, receive --trust); waiting for multicast",
                    self.req.after
                );
            }
            return;
        }
        let Some((i, file)) = self.manifest_file() else {
            return;
        };
        let (m, _) = match Manifest::verify(&file.head, &self.trusted) {
            Ok(v) => v,
            Err(e) => {
                let url = self.mirrors[i].mirror.url.clone();
                self.mirror_failed(i, format!("{url}{}: {e}", manifest_file::SUFFIX), None);
                return;
            }
        };
        log::warn!(
            "no multicast within {:?}: the whole image over HTTP ({} bytes), multicast stays joined",
            self.req.after,
            m.geometry.total_size
        );
        self.all = true;
        self.counters()
            .state
            .store(HttpState::Active as u8, Ordering::Relaxed);
        let c = self.t.counters(self.slot);
        self.t.ingest(
            &wire::encode_raw(Kind::Manifest, m.session, &m.geometry, 0, &file.head),
            c,
        );
        bump_packets(c);
        self.feed_pages(&file, m.session, &m.geometry);
    }

    /// The file's pages and signed ends, as the packets they are.
    fn feed_pages(&mut self, file: &ManifestFile, session: u32, g: &wire::Geometry) {
        let c = self.t.counters(self.slot);
        let pages = file.pages.iter().enumerate();
        let pages = pages.map(|(i, p)| (Kind::Manifest, i as u64, p));
        let ends = file.ends.iter().map(|e| (Kind::SignedEnd, 0, e));
        for (kind, i, p) in pages.chain(ends) {
            self.t.ingest(&wire::encode_raw(kind, session, g, i, p), c);
            bump_packets(c);
        }
        self.file_pages_done = true;
    }

    /// The manifest file from the next mirror that serves one. A mirror
    /// that has none (404, 410) is asked again after a short jittered
    /// backoff and this is no failure of the server: the sender writes the
    /// file before its first pass when it can, else when that pass ends.
    fn manifest_file(&mut self) -> Option<(usize, ManifestFile)> {
        let i = self.pick_mirror(|ms| ms.not_before.max(ms.file_not_before))?;
        let url = format!("{}{}", self.mirrors[i].mirror.url, manifest_file::SUFFIX);
        bump(&self.counters().requests);
        let e = match self.mirrors[i]
            .mirror
            .get_small(&url, manifest_file::MAX_FILE_LEN)
        {
            Ok(bytes) => match ManifestFile::parse(&bytes) {
                Ok(f) => {
                    self.shared.no_file.store(false, Ordering::Relaxed);
                    self.succeeded(i);
                    return Some((i, f));
                }
                Err(e) => {
                    self.mirror_failed(i, format!("{url}: {e}"), None);
                    return None;
                }
            },
            Err(e) => e,
        };
        self.count_error(&e);
        match e {
            FetchError::NotFound(_) => self.not_there_yet(i, &url, &e),
            FetchError::Busy(retry) => self.mirror_failed(i, format!("{url}: {e}"), retry),
            _ => self.mirror_failed(i, format!("{url}: {e}"), None),
        }
        None
    }

    /// Mirror `m` has no manifest file (yet): asked again after
    /// [`MANIFEST_POLL_BASE`] doubled per miss up to [`MANIFEST_POLL_MAX`],
    /// jittered; one message per mirror.
    fn not_there_yet(&mut self, m: usize, url: &str, e: &FetchError) {
        self.shared.no_file.store(true, Ordering::Relaxed);
        let ms = &mut self.mirrors[m];
        if ms.misses == 0 {
            log::warn!(
                "{url}: {e}: asking again until it is there (the sender writes it before or at the end of its first pass)"
            );
        }
        let wait = http::backoff(
            MANIFEST_POLL_BASE,
            ms.misses,
            MANIFEST_POLL_MAX,
            self.rng.next_u64(),
        );
        ms.misses = ms.misses.saturating_add(1);
        ms.file_not_before = Instant::now() + wait;
    }

    /// Decide, from the transfer's state, what to fetch; fetch it.
    fn fetch_missing(&mut self, img: &Arc<Image>) {
        let now = Instant::now();
        let mc = self.multicast_packets();
        if mc != self.multicast.0 {
            self.multicast = (mc, now);
        }
        let g = img.geometry;
        let passes_over = passes_over(&self.t);
        let missing = g.block_count.saturating_sub(self.t.blocks_done());
        let why = if self.all {
            None
        } else if self.shared.take_over.load(Ordering::Relaxed) {
            Some("the sender's passes ended with blocks missing, or the sender is gone")
        } else if now.duration_since(self.multicast.1) >= self.req.after {
            Some("multicast silent")
        } else if much_missing_after_passes(&self.t, &self.req.repair) {
            Some("much missing after the sender's passes, and few of its receivers lack much")
        } else if passes_over
            && self
                .t
                .last_control()
                .is_some_and(|c| c.flags & FLAG_REPAIR == 0)
        {
            Some("the sender takes no repair requests")
        } else {
            None
        };
        if let Some(why) = why {
            log::warn!(
                "{why}: fetching the {missing} missing blocks over HTTP instead of waiting for multicast repair"
            );
            self.all = true;
        }
        if !self.all && self.behind.is_none() {
            self.late_joiner(img);
        }
        if !self.all && self.behind.is_none() {
            return;
        }
        if self.t.is_signed() && self.all && !self.file_pages_done {
            self.pages_from_file(img);
        }
        let jobs = self.jobs(img);
        if jobs.is_empty() && self.all && missing > 0 && !self.abandoned.is_empty() {
            // Everything still missing failed its hash from every mirror:
            // nothing is left to ask the web servers for, and while the
            // source counts as usable the session would wait on it.
            self.give_up(format!(
                "every missing range failed its signed hash from every mirror ({} units left)",
                self.abandoned.len()
            ));
            return;
        }
        if jobs.is_empty() {
            self.counters()
                .state
                .store(HttpState::Standby as u8, Ordering::Relaxed);
            return;
        }
        self.counters()
            .state
            .store(HttpState::Active as u8, Ordering::Relaxed);
        self.run_jobs(img, &jobs);
    }

    /// A signed session whose sender went before every page was heard:
    /// the pages from the manifest file (checked against the signed root
    /// like pages from the wire; a file of another manifest is refused
    /// page by page).
    fn pages_from_file(&mut self, img: &Arc<Image>) {
        let Some(s) = self.t.signed() else {
            return;
        };
        if s.pages() >= s.manifest.page_count() {
            self.file_pages_done = true;
            return;
        }
        if let Some((_, f)) = self.manifest_file() {
            self.feed_pages(&f, img.session, &img.geometry);
        }
    }

    /// Late joiner: the first blocks multicast brought lie more than a
    /// unit into the image; what went by is fetched while multicast
    /// brings the rest.
    fn late_joiner(&mut self, img: &Arc<Image>) {
        if img.written.count() == 0 {
            return;
        }
        let unit = self.unit_blocks(img);
        let first = self.t.missing_ranges(1).first().copied();
        let gap = match first {
            Some((0, n)) => u64::from(n),
            _ => 0,
        };
        if gap > unit {
            log::warn!(
                "joined late: blocks 0..{gap} went by; fetching them over HTTP while multicast brings the rest"
            );
            self.behind = Some(gap);
        } else {
            self.behind = Some(0);
        }
    }

    /// Blocks per unit: a chunk in a signed session, about 1 MiB otherwise.
    fn unit_blocks(&self, img: &Image) -> u64 {
        match self.t.signed() {
            Some(s) => u64::from(s.manifest.chunk_blocks),
            None => (UNSIGNED_UNIT_BYTES / u64::from(img.geometry.block_size)).max(1),
        }
    }

    /// The next range requests: whole units with unclaimed blocks (below
    /// the late joiner's mark, unless fetching all), merged up to
    /// `range_bytes`, at most `parallel` of them.
    fn jobs(&self, img: &Image) -> Vec<Job> {
        let g = img.geometry;
        let unit = self.unit_blocks(img);
        let per_job = (self.req.range_bytes / (unit * u64::from(g.block_size))).max(1) * unit;
        let limit = if self.all {
            g.block_count
        } else {
            self.behind.unwrap_or(0)
        };
        let mut jobs: Vec<Job> = Vec::new();
        // Units already taken: two missing ranges in one unit make one job.
        let mut next_unit = 0;
        for (first, count) in self.t.missing_ranges(4096) {
            let end = (first + u64::from(count)).min(limit);
            let mut u = (first / unit).max(next_unit);
            while u * unit < end && jobs.len() <= self.req.parallel {
                if !self.abandoned.contains(&u) {
                    let (a, b) = (u * unit, ((u + 1) * unit).min(g.block_count));
                    match jobs.last_mut() {
                        Some(j) if j.end_block == a && b - j.first_block <= per_job => {
                            j.end_block = b
                        }
                        _ => jobs.push(Job {
                            first_block: a,
                            end_block: b,
                        }),
                    }
                }
                u += 1;
            }
            next_unit = next_unit.max(u);
            if jobs.len() > self.req.parallel {
                break;
            }
        }
        jobs.truncate(self.req.parallel.max(1));
        jobs
    }

    fn run_jobs(&mut self, img: &Arc<Image>, jobs: &[Job]) {
        let picks: Vec<Option<usize>> = jobs
            .iter()
            .map(|_| self.pick_mirror(|ms| ms.not_before))
            .collect();
        let g = img.geometry;
        let results: Vec<(Job, usize, Result<Vec<u8>, FetchError>)> = std::thread::scope(|s| {
            let handles: Vec<_> = jobs
                .iter()
                .zip(&picks)
                .filter_map(|(j, m)| m.map(|m| (j, m)))
                .map(|(j, m)| {
                    let mirror = &self.mirrors[m].mirror;
                    bump(&self.counters().requests);
                    s.spawn(move || {
                        let (a, b) = (
                            g.offset(j.first_block),
                            g.offset(j.end_block).min(g.total_size),
                        );
                        (*j, m, mirror.get_range(a, b, g.total_size))
                    })
                })
                .collect();
            handles.into_iter().filter_map(|h| h.join().ok()).collect()
        });
        for (job, m, r) in results {
            match r {
                Ok(bytes) => {
                    let bad = self.take_in(img, job, &bytes);
                    if bad == 0 {
                        self.succeeded(m);
                    } else {
                        self.forged(img, job, m, bad);
                    }
                }
                Err(e) => {
                    self.count_error(&e);
                    let retry = match &e {
                        FetchError::Busy(r) => *r,
                        _ => None,
                    };
                    let url = self.mirrors[m].mirror.url.clone();
                    self.mirror_failed(m, format!("{url}: {e}"), retry);
                }
            }
        }
    }

    /// Feed the blocks of `bytes` (the range of `job`) into the transfer
    /// as data packets; returns the chunks that failed their hash.
    fn take_in(&self, img: &Image, job: Job, bytes: &[u8]) -> u64 {
        let g = img.geometry;
        let c = self.slot();
        let _one = self.ingest.lock().unwrap_or_else(|p| p.into_inner());
        // Chunks failed so far: the staging writer checks them on its own
        // thread (counted by the signed state), a stream as they land.
        let failed = || {
            self.t.signed().map_or(0, |s| s.bad_chunks())
                + c.drops[DropReason::BadChunk as usize].load(Ordering::Relaxed)
        };
        let before = failed();
        let base = g.offset(job.first_block);
        for i in job.first_block..job.end_block {
            let at = (g.offset(i) - base) as usize;
            let block = &bytes[at..at + g.block_len(i)];
            self.t
                .ingest(&wire::encode_data(img.session, &g, i, block), c);
            bump_packets(c);
        }
        self.counters()
            .bytes
            .fetch_add(bytes.len() as u64, Ordering::Relaxed);
        // The verdict on these chunks (the deadline only guards against a
        // writer that stopped: the transfer has failed then).
        let until = std::time::Instant::now() + std::time::Duration::from_secs(10);
        while !self.t.chunks_checked(job.first_block, job.end_block)
            && std::time::Instant::now() < until
        {
            std::thread::sleep(std::time::Duration::from_millis(1));
        }
        failed() - before
    }

    /// Chunks from mirror `m` failed their hash: counted, the mirror backed
    /// off (the next range goes to another), and a unit that failed on
    /// every mirror twice is left to multicast repair.
    fn forged(&mut self, img: &Image, job: Job, m: usize, bad: u64) {
        self.counters().bad_chunks.fetch_add(bad, Ordering::Relaxed);
        let url = self.mirrors[m].mirror.url.clone();
        log::warn!(
            "{url}: {bad} chunk(s) of blocks {}..{} failed their signed hash: fetched again from another mirror",
            job.first_block,
            job.end_block
        );
        let unit = self.unit_blocks(img);
        let limit = 2 * self.mirrors.len() as u32;
        for u in job.first_block / unit..job.end_block.div_ceil(unit) {
            let n = self.attempts.entry(u).or_insert(0);
            *n += 1;
            if *n >= limit && self.abandoned.insert(u) {
                log::warn!(
                    "blocks {}..{} failed their hash from every mirror: left to multicast repair",
                    u * unit,
                    (u + 1) * unit
                );
            }
        }
        self.mirror_failed(m, format!("{url}: forged bytes"), None);
    }

    fn count_error(&self, e: &FetchError) {
        let c = self.counters();
        bump(match e {
            FetchError::Busy(_) => &c.busy,
            FetchError::Refused(_) | FetchError::NotFound(_) => &c.refused,
            FetchError::Bad(_) => &c.bad_replies,
        });
    }

    /// The next mirror whose `ready` time has come, round robin.
    fn pick_mirror(&mut self, ready: impl Fn(&MirrorState) -> Instant) -> Option<usize> {
        let now = Instant::now();
        let n = self.mirrors.len();
        for k in 0..n {
            let i = (self.next_mirror + k) % n;
            if ready(&self.mirrors[i]) <= now {
                self.next_mirror = (i + 1) % n;
                return Some(i);
            }
        }
        None
    }

    fn succeeded(&mut self, m: usize) {
        self.failures = 0;
        self.mirrors[m].failures = 0;
    }

    fn mirror_failed(&mut self, m: usize, why: String, retry_after: Option<Duration>) {
        let ms = &mut self.mirrors[m];
        ms.failures += 1;
        let wait = retry_after.unwrap_or_else(|| {
            http::backoff(
                BACKOFF_BASE,
                ms.failures - 1,
                BACKOFF_MAX,
                self.rng.next_u64(),
            )
        });
        ms.not_before = Instant::now() + wait;
        // No session yet: the source is not given up, so the first failure
        // of each mirror is said once (a wrong CA, a wrong URL).
        if ms.failures == 1 && self.t.image().is_none() {
            log::warn!("HTTP: {why} (asking again until the start timeout; next in {wait:?})");
        } else {
            log::info!("HTTP: {why} (next try in {wait:?})");
        }
        self.failed(why);
    }

    /// A failed request; after `max_failures` in a row, give up with one
    /// clear message. Not while no session is known: there is no multicast
    /// repair to go back to, and the manifest file is asked for again
    /// (after the mirror's backoff) until the start timeout ends the
    /// session.
    fn failed(&mut self, why: String) {
        self.failures += 1;
        self.last_error = why;
        if self.failures >= self.req.max_failures && self.t.image().is_some() {
            self.give_up(format!(
                "{} failed requests in a row (last: {})",
                self.failures, self.last_error
            ));
        }
    }

    /// The source is given up (the session's NACKs resume, its timeouts
    /// count again): one clear message.
    fn give_up(&self, why: String) {
        self.counters()
            .state
            .store(HttpState::GaveUp as u8, Ordering::Relaxed);
        log::warn!("HTTP source given up after {why}: back to multicast repair");
    }
}

fn bump(c: &AtomicU64) {
    c.fetch_add(1, Ordering::Relaxed);
}

fn bump_packets(c: &WorkerCounters) {
    c.packets.fetch_add(1, Ordering::Relaxed);
}
