//! Opening the target and the image on the first packet that fixes the
//! session (unsigned) or on the verified manifest head (signed).

use std::sync::atomic::AtomicU64;
use std::sync::Arc;

use super::image::{Checker, Image};
use super::Transfer;
use crate::error::Result;
use crate::proto::wire::{DropReason, Geometry, Packet};
use crate::receive::bitmap::BlockBitmap;
use crate::receive::workers::Sink;
use crate::store::resume;
use crate::store::stream::{self, StreamOut};
use crate::store::target::{self, Target};
use crate::store::writer::StoreConfig;

impl Transfer {
    /// The target: a stream to stdout for `-` (in a signed session, blocks
    /// wait in its window until their chunk verified, so the window holds
    /// at least one chunk), else the file or device, reopened for a resume.
    pub(super) fn open_target(
        &self,
        session: u32,
        geometry: &Geometry,
    ) -> Result<(Target, Option<Vec<u64>>)> {
        if stream::is_stdout(&self.target_path) {
            let chunk = self.signed().map_or(0, |s| {
                let (a, b) = s.manifest.chunk_bytes(0);
                b - a
            });
            let window = self.stream_window.max(chunk);
            target::admit_image(
                geometry.total_size,
                geometry.block_size,
                &self.store,
                window,
            )?;
            let out = StreamOut::start(stream::stdout()?, window)?;
            let t = Target::stream(
                out,
                geometry.total_size,
                geometry.block_size,
                self.is_signed(),
            );
            return Ok((t, None));
        }
        let saved = self
            .resume
            .as_deref()
            .and_then(|p| resume::load(p, session, geometry));
        let open = match saved {
            Some(_) => Target::reopen,
            None => Target::open,
        };
        // A signed session stages each signed chunk as one unit, hashed
        // in the staging buffer before it is written (see `Checker`).
        let store = match self.signed() {
            Some(s) => StoreConfig {
                unit: s.manifest.chunk_bytes(0).1,
                ..self.store
            },
            None => self.store,
        };
        let target = open(
            &self.target_path,
            geometry.total_size,
            geometry.block_size,
            &store,
        )?;
        Ok((target, saved))
    }

    pub(super) fn open_image(&self, session: u32, geometry: Geometry) -> Result<Arc<Image>> {
        let (target, saved) = self.open_target(session, &geometry)?;
        log::info!(
            "session {session:#010x}: {} bytes in {} blocks of {} into {}",
            geometry.total_size,
            geometry.block_count,
            geometry.block_size,
            self.target_path.display()
        );
        let (claimed, written) = match &saved {
            Some(words) => (
                BlockBitmap::from_words(geometry.block_count, words),
                BlockBitmap::from_words(geometry.block_count, words),
            ),
            None => (
                BlockBitmap::new(geometry.block_count),
                BlockBitmap::new(geometry.block_count),
            ),
        };
        let resumed = written.count();
        let last = geometry.block_count - 1;
        let resumed_bytes = resumed * u64::from(geometry.block_size)
            - if written.contains(last) {
                u64::from(geometry.block_size) - geometry.block_len(last) as u64
            } else {
                0
            };
        if resumed > 0 {
            log::warn!(
                "resuming: {resumed} of {} blocks already on disk",
                geometry.block_count
            );
        }
        let image = Arc::new(Image {
            session,
            geometry,
            target,
            claimed,
            written,
            resumed,
            resumed_bytes,
            skipped_blocks: AtomicU64::new(0),
            skipped_bytes: AtomicU64::new(0),
            zeros: BlockBitmap::new(geometry.block_count),
            resumed_left: saved
                .as_ref()
                .map(|words| BlockBitmap::from_words(geometry.block_count, words)),
            resumed_zero_blocks: AtomicU64::new(0),
            resumed_zero_bytes: AtomicU64::new(0),
        });
        // Before the image is published (no block is written before it).
        if let Some(signed) = self.signed.get() {
            image.target.set_verify(Arc::new(Checker {
                signed: signed.clone(),
                image: Arc::downgrade(&image),
            }));
        }
        Ok(image)
    }

    /// The image for this packet: opened on the first packet, afterwards the
    /// packet must agree with it.
    pub(super) fn image_for(&self, p: &Packet<'_>) -> std::result::Result<&Arc<Image>, DropReason> {
        if self.expected_session.is_some_and(|s| s != p.session()) {
            return Err(DropReason::ForeignSession);
        }
        let image = if self.is_signed() {
            // Nothing is opened for a session before its manifest verifies.
            self.image.get().ok_or(DropReason::Unauthenticated)?
        } else {
            self.image
                .get_or_init(|| self.open_or_fail(p.session(), p.geometry()))
        };
        let image = image.as_ref().map_err(|_| DropReason::Inconsistent)?;
        if image.session != p.session() {
            return Err(DropReason::ForeignSession);
        }
        if image.geometry != p.geometry() {
            return Err(DropReason::Inconsistent);
        }
        Ok(image)
    }

    pub(super) fn open_or_fail(&self, session: u32, geometry: Geometry) -> Result<Arc<Image>> {
        let r = self.open_image(session, geometry);
        if let Err(e) = &r {
            self.fail(e.clone());
        }
        r
    }
}
