//! Parsing one datagram: never panics, never allocates.

use super::*;

/// Parse one datagram. Never panics, whatever the input.
pub fn parse(buf: &[u8]) -> Result<Packet<'_>, DropReason> {
    if buf.len() < HEADER_LEN {
        return Err(DropReason::Truncated);
    }
    if be_u32(buf, 0) != MAGIC {
        return Err(DropReason::BadMagic);
    }
    if buf[4] != VERSION {
        return Err(DropReason::BadVersion);
    }
    let kind = Kind::from_u8(buf[5]).ok_or(DropReason::BadKind)?;
    let payload_len = usize::from(be_u16(buf, 6));
    let payload = &buf[HEADER_LEN..];
    if payload.len() < payload_len {
        return Err(DropReason::Truncated);
    }
    if payload.len() != payload_len {
        return Err(DropReason::LengthMismatch);
    }
    let session = be_u32(buf, 8);
    let geometry = Geometry {
        block_size: be_u32(buf, 12),
        block_count: be_u64(buf, 24),
        total_size: be_u64(buf, 32),
    };
    let index = be_u64(buf, 16);
    if !(MIN_BLOCK_SIZE..=MAX_BLOCK_SIZE).contains(&geometry.block_size) {
        return Err(DropReason::Oversize);
    }
    if !geometry.is_consistent() {
        return Err(DropReason::Inconsistent);
    }
    match kind {
        Kind::Data => {
            if payload_len > geometry.block_size as usize {
                return Err(DropReason::Oversize);
            }
            if index >= geometry.block_count {
                return Err(DropReason::OutOfRange);
            }
            if payload_len != geometry.block_len(index) {
                return Err(DropReason::Inconsistent);
            }
            Ok(Packet::Data {
                session,
                geometry,
                index,
                payload,
            })
        }
        Kind::Announce | Kind::End => {
            if payload_len != CONTROL_PAYLOAD_LEN {
                return Err(DropReason::BadControl);
            }
            let mut digest = [0u8; DIGEST_LEN];
            digest.copy_from_slice(&payload[..DIGEST_LEN]);
            let mut addr = [0u8; 16];
            addr.copy_from_slice(&payload[DIGEST_LEN + 20..DIGEST_LEN + 36]);
            let control = Control {
                digest,
                pass: be_u32(payload, DIGEST_LEN),
                passes: be_u32(payload, DIGEST_LEN + 4),
                flags: be_u32(payload, DIGEST_LEN + 8),
                repair_port: be_u16(payload, DIGEST_LEN + 12),
                fec_repair: be_u16(payload, DIGEST_LEN + 14),
                fec_group: be_u32(payload, DIGEST_LEN + 16),
                repair_addr: addr.into(),
            };
            if control.passes == 0 || control.fec_group > MAX_FEC_GROUP {
                return Err(DropReason::BadControl);
            }
            Ok(if kind == Kind::Announce {
                Packet::Announce {
                    session,
                    geometry,
                    control,
                }
            } else {
                Packet::End {
                    session,
                    geometry,
                    control,
                }
            })
        }
        Kind::Nack => Ok(Packet::Nack {
            session,
            geometry,
            token: index,
            ranges: ranges(payload, &geometry, MAX_NACK_RANGES, false)?,
        }),
        Kind::Zeros => {
            if payload_len < ZEROS_PREFIX_LEN {
                return Err(DropReason::BadControl);
            }
            let count = be_u32(payload, 0);
            if u64::from(count) <= index {
                return Err(DropReason::OutOfRange);
            }
            // A signed session's packet ends in a signature: told by the
            // length, as runs are 12 bytes each.
            let rest = payload_len - ZEROS_PREFIX_LEN;
            let signed = rest >= ZEROS_SIGNATURE_LEN
                && rest % NACK_RANGE_LEN == ZEROS_SIGNATURE_LEN % NACK_RANGE_LEN;
            let (body, signature) = if signed {
                let (b, s) = payload.split_at(payload_len - ZEROS_SIGNATURE_LEN);
                (b, Some(s))
            } else {
                (payload, None)
            };
            // As many runs as fill a block (what senders before signed
            // zero runs put in one packet).
            let most = ((geometry.block_size as usize - ZEROS_PREFIX_LEN) / NACK_RANGE_LEN).max(1);
            Ok(Packet::Zeros {
                session,
                geometry,
                seq: index,
                count,
                runs: ranges(&body[ZEROS_PREFIX_LEN..], &geometry, most, true)?,
                body,
                signature,
            })
        }
        Kind::Fec => {
            if payload_len != FEC_PREFIX_LEN + geometry.block_size as usize {
                return Err(DropReason::BadControl);
            }
            let group_size = be_u32(payload, 0);
            if group_size == 0 || group_size > MAX_FEC_GROUP {
                return Err(DropReason::BadControl);
            }
            if index.saturating_mul(u64::from(group_size)) >= geometry.block_count {
                return Err(DropReason::OutOfRange);
            }
            Ok(Packet::Fec {
                session,
                geometry,
                group: index,
                group_size,
                symbol: &payload[4..],
            })
        }
        Kind::Manifest => {
            if payload_len == 0 || payload_len > MAX_MANIFEST_PAYLOAD {
                return Err(DropReason::BadControl);
            }
            Ok(Packet::Manifest {
                session,
                geometry,
                index,
                payload,
            })
        }
        Kind::SignedEnd => {
            if payload_len != SIGNED_END_LEN {
                return Err(DropReason::BadControl);
            }
            Ok(Packet::SignedEnd {
                session,
                geometry,
                payload,
            })
        }
        Kind::ParityRequest | Kind::Confirm => {
            let prefix = if kind == Kind::Confirm {
                CONFIRM_PREFIX_LEN
            } else {
                PARITY_PREFIX_LEN
            };
            if payload_len < prefix {
                return Err(DropReason::BadControl);
            }
            let group_size = be_u32(payload, 0);
            let body = &payload[prefix..];
            if kind == Kind::Confirm && be_u32(payload, 8) & CONFIRM_SIGNED != 0 {
                // A signed verdict: no entries, the proof instead.
                let flags = be_u32(payload, 8);
                if flags & CONFIRM_TOO_SLOW == 0
                    || body.len() != VERDICT_LEN
                    || group_size == 0
                    || group_size > MAX_FEC_GROUP
                {
                    return Err(DropReason::BadControl);
                }
                return Ok(Packet::Confirm {
                    session,
                    geometry,
                    round: index,
                    group_size,
                    receivers: be_u32(payload, 4),
                    flags,
                    counts: Ranges(&[]),
                    proof: body,
                });
            }
            let n = body.len() / NACK_RANGE_LEN;
            let min = usize::from(kind == Kind::ParityRequest);
            if group_size == 0
                || group_size > MAX_FEC_GROUP
                || body.len() % NACK_RANGE_LEN != 0
                || n < min
                || n > MAX_PARITY_ENTRIES
            {
                return Err(DropReason::BadControl);
            }
            let entries = Ranges(body);
            let groups = geometry.block_count.div_ceil(u64::from(group_size));
            if !entries
                .iter()
                .all(|(g, count)| g < groups && (1..=group_size).contains(&count))
            {
                return Err(DropReason::OutOfRange);
            }
            Ok(if kind == Kind::Confirm {
                Packet::Confirm {
                    session,
                    geometry,
                    round: index,
                    group_size,
                    receivers: be_u32(payload, 4),
                    flags: be_u32(payload, 8),
                    counts: entries,
                    proof: &[],
                }
            } else {
                Packet::ParityRequest {
                    session,
                    geometry,
                    token: index,
                    group_size,
                    needs: entries,
                }
            })
        }
        Kind::Progress => {
            if payload_len != REPORT_PAYLOAD_LEN {
                return Err(DropReason::BadControl);
            }
            let mut name = [0u8; REPORT_NAME_LEN];
            name.copy_from_slice(&payload[16..]);
            let report = Report {
                blocks_done: be_u64(payload, 0),
                requests: be_u32(payload, 8),
                state: payload[12],
                error: payload[13],
                flags: payload[14],
                name,
            };
            if report.blocks_done > geometry.block_count || report.state > 3 {
                return Err(DropReason::BadControl);
            }
            Ok(Packet::Progress {
                session,
                geometry,
                token: index,
                report,
            })
        }
    }
}

/// Check the block ranges of a NACK or zero-run payload: 1 to `max`
/// ranges, none empty, each inside the image, and (`sorted`) in increasing
/// order without overlap.
fn ranges<'a>(
    payload: &'a [u8],
    geometry: &Geometry,
    max: usize,
    sorted: bool,
) -> Result<Ranges<'a>, DropReason> {
    let n = payload.len() / NACK_RANGE_LEN;
    if payload.len() % NACK_RANGE_LEN != 0 || n == 0 || n > max {
        return Err(DropReason::BadControl);
    }
    let ranges = Ranges(payload);
    let mut floor = 0;
    let valid = ranges.iter().all(|(first, count)| {
        let end = first.checked_add(u64::from(count));
        let ok = count > 0
            && end.is_some_and(|end| end <= geometry.block_count)
            && (!sorted || first >= floor);
        floor = end.unwrap_or(u64::MAX);
        ok
    });
    if !valid {
        return Err(DropReason::OutOfRange);
    }
    Ok(ranges)
}
