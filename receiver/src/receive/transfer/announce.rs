//! Control packets that steer the session: the signed manifest head, signed
//! ends, and an unsigned session's announces and ends.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use super::image::Image;
use super::{lock, Transfer};
use crate::error::{Error, ErrorCode};
use crate::proto::manifest::Manifest;
use crate::proto::wire::{self, Control, DropReason, Geometry, Packet};
use crate::receive::signed::Signed;
use crate::receive::workers::Sink;

impl Transfer {
    /// A manifest head: verify it; the first that verifies (and matches
    /// `--session` and `--expect-sha256`) fixes the session and opens the
    /// target.
    pub(super) fn manifest_head(
        &self,
        session: u32,
        geometry: Geometry,
        payload: &[u8],
    ) -> std::result::Result<(), DropReason> {
        // Once a head fixed the session, the sender's copies are the same
        // bytes, and any other head is none of this session's business: no
        // signature is checked on a worker for a flood of forged heads.
        if let Some(head) = self.head.get() {
            return Err(if head[..] == *payload {
                DropReason::Duplicate
            } else {
                DropReason::Unauthenticated
            });
        }
        let (m, key) =
            Manifest::verify(payload, &self.trusted).map_err(|_| DropReason::Unauthenticated)?;
        if m.session != session || m.geometry != geometry {
            return Err(DropReason::Inconsistent);
        }
        let (age, ahead) = manifest_clock(&m);
        let too_old = self.max_age.is_some_and(|max| age > max);
        if too_old || self.max_skew.is_some_and(|max| ahead > max) {
            if !self.replay_warned.swap(true, Ordering::Relaxed) {
                if too_old {
                    log::warn!(
                        "session {:#010x}: a manifest signed {} s ago (more than --max-manifest-age) is refused as a replay",
                        m.session,
                        age.as_secs()
                    );
                } else {
                    log::warn!(
                        "session {:#010x}: a manifest dated {} s in the future (more than --max-clock-skew) is refused: the sender's or this host's clock is wrong",
                        m.session,
                        ahead.as_secs()
                    );
                }
            }
            return Err(DropReason::ForeignSession);
        }
        if let Some(s) = self.signed() {
            return Err(if s.manifest == m {
                DropReason::Duplicate
            } else {
                DropReason::ForeignSession
            });
        }
        // A head that names the image's SHA-256 is checked against
        // `--expect-sha256` now; one whose sender hashes as it sends, at its
        // first signed end that carries the digest.
        let named = m.digest != [0; wire::DIGEST_LEN];
        if named && self.pinned.is_some_and(|d| d != m.digest) {
            return Err(DropReason::ForeignSession);
        }
        let mut first = false;
        let signed = self.signed.get_or_init(|| {
            first = true;
            let s = Signed::new(m, key);
            if self.checks.is_started() {
                s.use_pool(self.checks.handle());
            }
            if let Some(w) = self.waker.get() {
                s.wake_on_complete(w.clone());
            }
            Arc::new(s)
        });
        if !first {
            return Err(DropReason::Duplicate);
        }
        let _ = self.head.set(payload.to_vec());
        log::info!(
            "session {:#010x}: manifest verified (key {}), SHA-256 {}",
            m.session,
            wire::hex(key.as_bytes()),
            if named {
                wire::hex(&m.digest)
            } else {
                "to come in the signed end".into()
            }
        );
        if named {
            let _ = self.digest.set(m.digest);
        }
        self.remember(&signed.control(0, 0));
        let image = self
            .image
            .get_or_init(|| self.open_or_fail(m.session, m.geometry));
        if let Ok(img) = image {
            signed.resumed(img.slots());
        }
        Ok(())
    }

    /// A signed end of pass, verified with the manifest's key.
    pub(super) fn signed_end(
        &self,
        image: &Image,
        payload: &[u8],
    ) -> std::result::Result<(), DropReason> {
        let s = self.signed().ok_or(DropReason::Unauthenticated)?;
        let end = s
            .manifest
            .verify_end(&s.key, payload)
            .map_err(|_| DropReason::Unauthenticated)?;
        if let Some(d) = end.digest {
            if self.pinned.is_some_and(|p| p != d) {
                self.fail(Error::new(
                    ErrorCode::DigestMismatch,
                    format!(
                        "the signed image has SHA-256 {}, not the one --expect-sha256 names",
                        wire::hex(&d)
                    ),
                ));
            } else if !s.learn_digest(d) {
                self.fail(Error::new(
                    ErrorCode::ProtocolError,
                    "the signer gave two different SHA-256 digests in one session",
                ));
            } else if self.digest.get().is_none() {
                log::info!(
                    "session {:#010x}: signed SHA-256 {}",
                    s.manifest.session,
                    wire::hex(&d)
                );
                let _ = self.digest.set(d);
            }
        }
        // A sender that did not hash the image with SHA-256: every chunk
        // is checked against its signed hash all the same, but a pinned
        // SHA-256 cannot be compared with anything.
        if let Some(r) = end.root {
            if self.pinned.is_some() {
                self.fail(Error::new(
                    ErrorCode::DigestMismatch,
                    "the signer sends no SHA-256 (its ends carry the root of its chunk hashes): --expect-sha256 cannot be checked (the sender needs --sha256)",
                ));
            } else if !s.learn_root(r) {
                self.fail(Error::new(
                    ErrorCode::ProtocolError,
                    "the signer gave two different image roots in one session",
                ));
            } else {
                log::debug!(
                    "session {:#010x}: signed image root {}",
                    s.manifest.session,
                    wire::hex(&r)
                );
            }
        }
        self.end_of_pass(image, &s.control(end.pass, end.flags));
        Ok(())
    }

    /// A zero-run packet of a signed session: its runs are applied (and
    /// their chunks checked like data) only once its signature verifies
    /// with the manifest's key; else it is dropped as unauthenticated.
    pub(super) fn signed_zeros(
        &self,
        image: &Image,
        p: &Packet<'_>,
    ) -> std::result::Result<(), DropReason> {
        let s = self.signed().ok_or(DropReason::Unauthenticated)?;
        let Packet::Zeros {
            seq,
            runs,
            body,
            signature: Some(sig),
            ..
        } = *p
        else {
            return Err(DropReason::Unauthenticated);
        };
        s.manifest
            .verify_zeros(&s.key, seq, body, sig)
            .map_err(|_| DropReason::Unauthenticated)?;
        if let Err(e) = image.zero_runs(runs, Some(s)) {
            self.fail(e);
        }
        Ok(())
    }

    /// An announce or end of an unsigned session: acted on once its
    /// parameters (passes, repair address, FEC) are corroborated and only
    /// while they agree (see [`Announced`]); its digest (all zero while
    /// the sender has not read the whole image: it comes with the ends) is
    /// taken once corroborated too; a digest other than
    /// `--expect-sha256`'s is another session's.
    pub(super) fn unsigned_control(
        &self,
        image: &Image,
        control: &Control,
        is_end: bool,
    ) -> std::result::Result<(), DropReason> {
        let known = control.digest != [0; wire::DIGEST_LEN];
        if known && self.pinned.is_some_and(|d| d != control.digest) {
            return Err(DropReason::ForeignSession);
        }
        let mut a = lock(&self.announced);
        let take = a.offer(control)?;
        if let Some(d) = a.offer_digest(&control.digest)? {
            let _ = self.digest.set(d);
        }
        drop(a);
        if !take {
            return Ok(());
        }
        if is_end {
            self.end_of_pass(image, control);
        } else {
            self.remember(control);
            lock(&self.announced).note_final(control, false);
        }
        Ok(())
    }

    pub(super) fn remember(&self, control: &Control) {
        *lock(&self.last_control) = Some(*control);
    }

    /// An end taken: a verified signed one, or an unsigned one that agrees
    /// with the corroborated parameters (its `FINAL` is then only a hint
    /// that the sender's next packet takes back).
    pub(super) fn end_of_pass(&self, image: &Image, control: &Control) {
        self.remember(control);
        self.first_pass_missing
            .get_or_init(|| image.geometry.block_count - image.claimed.count());
        let mut a = lock(&self.announced);
        if !self.is_signed() {
            a.note_final(control, true);
        } else if control.flags & wire::FLAG_FINAL != 0 {
            a.set_final();
        }
        drop(a);
        lock(&self.confirmed).end_seen(u64::from(control.pass), Instant::now());
        self.passes_seen
            .fetch_max(u64::from(control.pass) + 1, Ordering::Release);
    }
}

/// `m`'s date against this host's clock: how long ago it was signed (0
/// for a manifest from the future) and how far ahead it is dated (0 for
/// one from the past).
fn manifest_clock(m: &Manifest) -> (Duration, Duration) {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    (
        Duration::from_secs(now.saturating_sub(m.issued_at)),
        Duration::from_secs(m.issued_at.saturating_sub(now)),
    )
}
