//! Encoding the packets a sender (or a receiver's request) puts on the wire.

use super::*;

/// Encode a packet of `kind` with header index `index` and `payload` as is
/// (manifest and signed end packets).
pub fn encode_raw(
    kind: Kind,
    session: u32,
    geometry: &Geometry,
    index: u64,
    payload: &[u8],
) -> Vec<u8> {
    let mut out = vec![0u8; HEADER_LEN + payload.len()];
    write_header(&mut out, kind, session, geometry, index, payload.len());
    out[HEADER_LEN..].copy_from_slice(payload);
    out
}

/// Most runs in one zero-run packet: the payload, with room for a signed
/// session's signature, stays within a block, so it fits every frame the
/// session's data packets fit (blocks under 80 bytes: one run).
pub fn max_zero_runs(block_size: u32) -> usize {
    ((block_size as usize).saturating_sub(ZEROS_PREFIX_LEN + ZEROS_SIGNATURE_LEN) / NACK_RANGE_LEN)
        .max(1)
}

/// Append `signature` to the payload of `packet` (a zero-run packet of a
/// signed session), fixing the header's payload length.
pub fn append_signature(packet: &mut Vec<u8>, signature: &[u8]) {
    packet.extend_from_slice(signature);
    let len = (packet.len() - HEADER_LEN) as u16;
    packet[6..8].copy_from_slice(&len.to_be_bytes());
}

fn write_header(
    out: &mut [u8],
    kind: Kind,
    session: u32,
    geometry: &Geometry,
    index: u64,
    payload_len: usize,
) {
    out[0..4].copy_from_slice(&MAGIC.to_be_bytes());
    out[4] = VERSION;
    out[5] = kind as u8;
    out[6..8].copy_from_slice(&(payload_len as u16).to_be_bytes());
    out[8..12].copy_from_slice(&session.to_be_bytes());
    out[12..16].copy_from_slice(&geometry.block_size.to_be_bytes());
    out[16..24].copy_from_slice(&index.to_be_bytes());
    out[24..32].copy_from_slice(&geometry.block_count.to_be_bytes());
    out[32..40].copy_from_slice(&geometry.total_size.to_be_bytes());
}

/// Write the header of data packet `index` into `out[..HEADER_LEN]`; the
/// caller puts the block bytes behind it. Returns the datagram length.
pub fn encode_data_header(out: &mut [u8], session: u32, geometry: &Geometry, index: u64) -> usize {
    let len = geometry.block_len(index);
    write_header(out, Kind::Data, session, geometry, index, len);
    HEADER_LEN + len
}

/// Encode a complete data packet (header and block) into a new buffer.
pub fn encode_data(session: u32, geometry: &Geometry, index: u64, block: &[u8]) -> Vec<u8> {
    let mut out = vec![0u8; HEADER_LEN + block.len()];
    write_header(&mut out, Kind::Data, session, geometry, index, block.len());
    out[HEADER_LEN..].copy_from_slice(block);
    out
}

/// Encode an announce or end packet.
pub fn encode_control(kind: Kind, session: u32, geometry: &Geometry, control: &Control) -> Vec<u8> {
    let mut out = vec![0u8; HEADER_LEN + CONTROL_PAYLOAD_LEN];
    write_header(&mut out, kind, session, geometry, 0, CONTROL_PAYLOAD_LEN);
    let p = &mut out[HEADER_LEN..];
    p[..DIGEST_LEN].copy_from_slice(&control.digest);
    let d = DIGEST_LEN;
    p[d..d + 4].copy_from_slice(&control.pass.to_be_bytes());
    p[d + 4..d + 8].copy_from_slice(&control.passes.to_be_bytes());
    p[d + 8..d + 12].copy_from_slice(&control.flags.to_be_bytes());
    p[d + 12..d + 14].copy_from_slice(&control.repair_port.to_be_bytes());
    p[d + 14..d + 16].copy_from_slice(&control.fec_repair.to_be_bytes());
    p[d + 16..d + 20].copy_from_slice(&control.fec_group.to_be_bytes());
    p[d + 20..d + 36].copy_from_slice(&control.repair_addr.octets());
    out
}

/// One packet of `kind` whose payload is `prefix` and then `ranges` as
/// 12-byte `(u64, u32)` pairs (NACK ranges, zero runs, or the `(group,
/// count)` entries of parity requests and confirmations).
pub(super) fn encode_ranges(
    kind: Kind,
    session: u32,
    geometry: &Geometry,
    index: u64,
    prefix: &[u8],
    ranges: &[(u64, u32)],
) -> Vec<u8> {
    let len = prefix.len() + ranges.len() * NACK_RANGE_LEN;
    let mut out = Vec::with_capacity(HEADER_LEN + len);
    out.resize(HEADER_LEN, 0);
    write_header(&mut out, kind, session, geometry, index, len);
    out.extend_from_slice(prefix);
    for (first, count) in ranges {
        out.extend_from_slice(&first.to_be_bytes());
        out.extend_from_slice(&count.to_be_bytes());
    }
    out
}

/// Encode NACK packets for `ranges` of missing blocks, at most
/// `MAX_NACK_RANGES` ranges per packet, from the receiver whose
/// per-session token is `token` (in the header's block index).
pub fn encode_nacks(
    session: u32,
    geometry: &Geometry,
    token: u64,
    ranges: &[(u64, u32)],
) -> Vec<Vec<u8>> {
    ranges
        .chunks(MAX_NACK_RANGES)
        .map(|chunk| encode_ranges(Kind::Nack, session, geometry, token, &[], chunk))
        .collect()
}

/// Encode the zero-run list: `runs` (sorted, disjoint, `(first, count)`)
/// cut into packets of at most [`max_zero_runs`] runs, packet `i` carrying
/// `block_index` `i` and the number of packets.
pub fn encode_zeros(session: u32, geometry: &Geometry, runs: &[(u64, u32)]) -> Vec<Vec<u8>> {
    encode_more_zeros(session, geometry, 0, runs)
}

/// Encode `runs` as the packets of a zero-run list that grows while the
/// sender reads the image: they follow the `seq` packets sent before, and
/// carry the number of packets in the list so far (`seq` plus theirs).
pub fn encode_more_zeros(
    session: u32,
    geometry: &Geometry,
    seq: u64,
    runs: &[(u64, u32)],
) -> Vec<Vec<u8>> {
    let chunks = runs.chunks(max_zero_runs(geometry.block_size));
    let count = ((seq + chunks.len() as u64).min(u64::from(u32::MAX)) as u32).to_be_bytes();
    chunks
        .enumerate()
        .map(|(i, chunk)| {
            encode_ranges(
                Kind::Zeros,
                session,
                geometry,
                seq + i as u64,
                &count,
                chunk,
            )
        })
        .collect()
}

/// Encode parity requests: `needs` are `(group, symbols lacking)` for
/// groups of `group_size` blocks, at most 100 per packet, from the
/// receiver whose per-session token is `token`.
pub fn encode_parity_requests(
    session: u32,
    geometry: &Geometry,
    token: u64,
    group_size: u32,
    needs: &[(u64, u32)],
) -> Vec<Vec<u8>> {
    needs
        .chunks(MAX_PARITY_ENTRIES)
        .map(|chunk| {
            let prefix = group_size.to_be_bytes();
            encode_ranges(
                Kind::ParityRequest,
                session,
                geometry,
                token,
                &prefix,
                chunk,
            )
        })
        .collect()
}

/// What a confirmation says besides its entries.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ConfirmHeader {
    /// Repair round it belongs to.
    pub round: u64,
    /// Blocks per FEC group.
    pub group_size: u32,
    /// Receivers the sender knows.
    pub receivers: u32,
    /// `CONFIRM_*` bits.
    pub flags: u32,
}

/// Encode one confirmation with at most 100 `(group, symbols)` entries.
pub fn encode_confirm(
    session: u32,
    geometry: &Geometry,
    h: &ConfirmHeader,
    counts: &[(u64, u32)],
) -> Vec<u8> {
    let mut prefix = [0u8; CONFIRM_PREFIX_LEN];
    prefix[..4].copy_from_slice(&h.group_size.to_be_bytes());
    prefix[4..8].copy_from_slice(&h.receivers.to_be_bytes());
    prefix[8..].copy_from_slice(&h.flags.to_be_bytes());
    let counts = &counts[..counts.len().min(MAX_PARITY_ENTRIES)];
    encode_ranges(Kind::Confirm, session, geometry, h.round, &prefix, counts)
}

/// Encode a signed "too slow" verdict: `h.flags` gets
/// [`CONFIRM_TOO_SLOW`] and [`CONFIRM_SIGNED`], `proof` is the
/// [`VERDICT_LEN`] bytes of `Manifest::sign_verdict`.
pub fn encode_verdict(
    session: u32,
    geometry: &Geometry,
    h: &ConfirmHeader,
    proof: &[u8],
) -> Vec<u8> {
    let mut payload = Vec::with_capacity(CONFIRM_PREFIX_LEN + proof.len());
    payload.extend_from_slice(&h.group_size.to_be_bytes());
    payload.extend_from_slice(&h.receivers.to_be_bytes());
    payload.extend_from_slice(&(h.flags | CONFIRM_TOO_SLOW | CONFIRM_SIGNED).to_be_bytes());
    payload.extend_from_slice(proof);
    encode_raw(Kind::Confirm, session, geometry, h.round, &payload)
}

/// Encode a progress report from the receiver whose per-session token is
/// `token`.
pub fn encode_progress(session: u32, geometry: &Geometry, token: u64, r: &Report) -> Vec<u8> {
    let mut out = vec![0u8; HEADER_LEN + REPORT_PAYLOAD_LEN];
    write_header(
        &mut out,
        Kind::Progress,
        session,
        geometry,
        token,
        REPORT_PAYLOAD_LEN,
    );
    let p = &mut out[HEADER_LEN..];
    p[..8].copy_from_slice(&r.blocks_done.to_be_bytes());
    p[8..12].copy_from_slice(&r.requests.to_be_bytes());
    p[12] = r.state;
    p[13] = r.error;
    p[14] = r.flags;
    p[16..].copy_from_slice(&r.name);
    out
}

/// Encode a FEC packet: `symbol` is a serialized RaptorQ encoding packet
/// (4-byte payload id and `block_size` bytes).
pub fn encode_fec(
    session: u32,
    geometry: &Geometry,
    group: u64,
    group_size: u32,
    symbol: &[u8],
) -> Vec<u8> {
    let len = 4 + symbol.len();
    let mut out = vec![0u8; HEADER_LEN + len];
    write_header(&mut out, Kind::Fec, session, geometry, group, len);
    out[HEADER_LEN..HEADER_LEN + 4].copy_from_slice(&group_size.to_be_bytes());
    out[HEADER_LEN + 4..].copy_from_slice(symbol);
    out
}
