//! Flow control behind a slow consumer (`--out -`, `udp-receiver` into a
//! pipe): which REQACKs may be answered while the stream's window is full.
//!
//! udp-sender retransmits every block a CMD_RETRANSMIT asks for, and once
//! every receiver has answered it sends the next REQACK at once. A block
//! past the window is refused, so an answer asking for blocks the window
//! cannot take costs the LAN a retransmission of each of them and brings
//! the next REQACK straight back: a loop at wire speed that takes a few
//! blocks per round. (Checking only the first block a slice lacks let that
//! loop run: as soon as the consumer had taken one block, the first gap
//! fitted and the answer asked for the whole rest of the slice, which was
//! refused again: 7 times the image retransmitted behind a consumer that
//! paused 2 s every 32 MiB.)
//!
//! udp-receiver keeps the sender waiting instead: its network thread only
//! opens a slice once its FIFO has room for a whole one, and blocks (reads
//! nothing, answers nothing) until it has. The same here, at block
//! granularity: a REQACK is answered only when every block it would ask
//! for fits the window. Until then it goes unanswered and udp-sender waits
//! for its REQACK timeout (about 10 ms, then a second from its eleventh
//! round) before asking again: no data is sent meanwhile. One exception
//! keeps a window smaller than a slice from waiting forever: when the
//! first block the slice lacks is the next one the consumer needs (the
//! window cannot move without it), the answer asks for the blocks that
//! fit, and says it has the others.

use crate::proto::udpcast::{bit, MAP_BYTES};

use super::ledger::Slice;

/// How to answer a REQACK for a slice that lacks blocks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Answer {
    /// CMD_RETRANSMIT with this map (bit set: do not send that block).
    Retransmit([u8; MAP_BYTES]),
    /// Not now: the window cannot take what would be asked for.
    Wait,
}

/// The answer to a REQACK for `slice`, which starts at image offset
/// `start` (None while the sizes of the slices before it are unknown: its
/// blocks cannot be placed, so nothing is held back). `written` is what
/// the consumer has taken, `limit` the end of the window (`u64::MAX` for a
/// file: everything fits).
pub(super) fn answer(
    slice: &Slice,
    start: Option<u64>,
    block_size: u64,
    written: u64,
    limit: u64,
) -> Answer {
    let Some(start) = start else {
        return Answer::Retransmit(slice.got);
    };
    let bytes = u64::from(slice.bytes.unwrap_or(0));
    let mut map = slice.got;
    let mut first_gap = None;
    let mut asked = 0;
    let mut held_back = 0;
    for b in (0..slice.blocks(block_size)).filter(|&b| !bit(&slice.got, b)) {
        let at = start + b as u64 * block_size;
        let end = at + (bytes - b as u64 * block_size).min(block_size);
        first_gap.get_or_insert(at);
        if end <= limit {
            asked += 1;
        } else {
            map[b / 8] |= 1 << (b % 8);
            held_back += 1;
        }
    }
    if held_back == 0 {
        Answer::Retransmit(slice.got)
    } else if asked > 0 && first_gap == Some(written) {
        Answer::Retransmit(map)
    } else {
        Answer::Wait
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A slice of `bytes` bytes in blocks of 4 holding `got`.
    fn slice(bytes: u32, got: &[usize]) -> Slice {
        let mut s = Slice::new();
        s.bytes = Some(bytes);
        for &b in got {
            s.mark(b);
        }
        s
    }

    fn map(bits: &[usize]) -> [u8; MAP_BYTES] {
        let mut m = [0; MAP_BYTES];
        for &b in bits {
            m[b / 8] |= 1 << (b % 8);
        }
        m
    }

    #[test]
    fn everything_fits_asks_for_everything() {
        let s = slice(40, &[1, 3]);
        assert_eq!(
            answer(&s, Some(100), 4, 0, 140),
            Answer::Retransmit(map(&[1, 3]))
        );
        assert_eq!(
            answer(&s, Some(100), 4, 0, u64::MAX),
            Answer::Retransmit(map(&[1, 3]))
        );
        // A slice that cannot be placed yet holds nothing back.
        assert_eq!(answer(&s, None, 4, 0, 0), Answer::Retransmit(map(&[1, 3])));
    }

    #[test]
    fn a_full_window_leaves_the_reqack_unanswered() {
        // The consumer has taken 60 bytes; the window ends at 120, so
        // blocks 5-9 of the slice at 100 (bytes 120-140) do not fit. The
        // first gap (block 0, at 100) is not what the consumer waits for:
        // wait, however little it has taken since the last REQACK.
        let s = slice(40, &[1, 3]);
        assert_eq!(answer(&s, Some(100), 4, 60, 120), Answer::Wait);
        assert_eq!(answer(&s, Some(100), 4, 99, 120), Answer::Wait);
        // Once all of it fits, everything is asked for at once.
        assert_eq!(
            answer(&s, Some(100), 4, 99, 140),
            Answer::Retransmit(map(&[1, 3]))
        );
    }

    #[test]
    fn a_window_smaller_than_the_slice_asks_for_what_fits() {
        // The consumer waits for block 0 (at 100) and the window (12
        // bytes) ends at 112: blocks 0 and 2 are asked for, the rest is
        // marked as held so the sender does not send it.
        let s = slice(40, &[1, 3]);
        assert_eq!(
            answer(&s, Some(100), 4, 100, 112),
            Answer::Retransmit(map(&[1, 3, 4, 5, 6, 7, 8, 9]))
        );
        // A short last block counts by its length.
        let s = slice(10, &[0, 1]);
        assert_eq!(
            answer(&s, Some(0), 4, 8, 10),
            Answer::Retransmit(map(&[0, 1]))
        );
        assert_eq!(answer(&s, Some(0), 4, 8, 9), Answer::Wait);
    }
}
