//! Round trips through a real page file, torn reads, dead writers.

use super::reader::{process_start_ns, START_SLACK_NS};
use super::*;
use crate::error::ErrorCode;
use crate::net::rings::XskStats;
use crate::proto::wire::DropReason;
use std::os::unix::fs::MetadataExt;
use std::path::PathBuf;
use std::sync::atomic::Ordering;
use std::time::Duration;

fn tmp_page(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("xdpcast-status-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    dir.join(name)
}

fn sample() -> Snapshot {
    let mut s = Snapshot {
        state: State::Failure,
        error: ErrorCode::DiskFull,
        mode: PathMode::XdpNative,
        session_id: 77,
        block_size: 1400,
        block_count: 10,
        total_bytes: 13_000,
        blocks_done: 9,
        bytes_done: 12_600,
        sparse: SparseStatus {
            skipped_bytes: 5_600,
            skipped_blocks: 4,
            zero_method: ZeroMethod::ZeroOut,
        },
        flags: FLAG_GEOMETRY | FLAG_DIGEST,
        digest: [0xAB; 32],
        name: "lab-1".into(),
        group: "239.1.2.3:5000".into(),
        target: "/tmp/x.img".into(),
        message: "x".repeat(400),
        workers: vec![
            WorkerStatus {
                queue: 1,
                cpu: 0,
                packets: 5,
                batch_ns: [900, 4_000, 31_000],
                batch_sum_ns: 77_000,
                kernel: XskStats {
                    rx_dropped: 7,
                    rx_invalid_descs: 8,
                    rx_ring_full: 9,
                    fill_ring_empty: 10,
                },
                gro_messages: 11,
                ..Default::default()
            };
            2
        ],
        diag: DiagStatus {
            unserved_frames: 12,
            unserved_queues: 0b1010 | 1 << 63,
            last_block_ns: 1_700_000_000_123_456_789,
        },
        http: HttpStatus {
            state: 2,
            multicast_bytes: 13,
            http_bytes: 14,
            requests: 15,
            bad_chunks: 16,
            bad_replies: 17,
            refused: 18,
            busy: 19,
        },
        trust: TrustStatus {
            flags: TRUST_REQUIRED | TRUST_MANIFEST,
            chunk_count: 12,
            chunks_verified: 11,
            rejected_blocks: 256,
            pages: 1,
            issued_at: 1_800_000_000,
            signer: [0x5A; 32],
        },
        storage: StorageStatus {
            buffer_bytes: 256 << 20,
            buffer_used: 3 << 20,
            bytes_stored: 12345,
            direct: true,
            write_max_ns: 99,
            handed_off: 7,
            lane_full: 2,
            bytes_read_back: 4096,
            blocks_refused: 5,
            chunks_checked: 77,
            ..Default::default()
        },
        ..Default::default()
    };
    s.drops[DropReason::BadMagic as usize] = 3;
    s
}

#[test]
fn publish_and_read_round_trip() {
    let p = tmp_page("rt");
    let w = StatusWriter::create(&p).unwrap();
    let want = sample();
    w.publish(&want);
    let got = StatusReader::open(&p).unwrap().read().unwrap();
    assert_eq!(got.writer_pid, u64::from(std::process::id()));
    assert!(got.heartbeat_ns > 0);
    assert_eq!(got.message.len(), TEXT_LEN - 1, "long text is cut");
    let got = Snapshot {
        writer_pid: 0,
        heartbeat_ns: 0,
        message: want.message.clone(),
        ..got
    };
    assert_eq!(got, want);
    assert_eq!(got.drops_for(DropReason::BadMagic), 3);
    assert_eq!(got.diag.queues().collect::<Vec<_>>(), vec![1, 3, 63]);
    assert!(
        !got.is_stale(Duration::from_secs(1)),
        "final pages are never stale"
    );
    let mode = std::fs::metadata(&p).unwrap().mode() & 0o777;
    assert_eq!(mode, 0o644);
    w.remove().unwrap();
    assert!(!p.exists());
}

#[test]
fn a_sender_page_round_trips() {
    let p = tmp_page("sender");
    let w = StatusWriter::create(&p).unwrap();
    let want = Snapshot {
        state: State::InProgress,
        role: Role::Sender,
        name: "send-lab".into(),
        sender: SenderStatus {
            phase: SendPhase::Repair,
            receivers_known: 24,
            receiving: 3,
            finished: 20,
            failed: 0,
            vanished: 1,
            repair_rounds: 2,
            repair_packets: 400,
            repair_bytes: 560_000,
            nacks: 1,
            parity_requests: 9,
            reports: 300,
            confirms: 8,
            ignored: 5,
            bytes_sent: 9_000_000,
        },
        ..Default::default()
    };
    w.publish(&want);
    let got = StatusReader::open(&p).unwrap().read().unwrap();
    assert_eq!((got.role, got.sender), (want.role, want.sender));
    // A receiver's page has no sender words, whatever the region holds.
    w.publish(&Snapshot {
        role: Role::Receiver,
        ..want
    });
    let got = StatusReader::open(&p).unwrap().read().unwrap();
    assert_eq!(got.role, Role::Receiver);
    assert_eq!(got.sender, SenderStatus::default());
    w.remove().unwrap();
}

#[test]
fn readers_never_see_torn_pages() {
    let p = tmp_page("torn");
    let w = StatusWriter::create(&p).unwrap();
    w.publish(&Snapshot::default());
    let r = StatusReader::open(&p).unwrap();
    let stop = std::sync::atomic::AtomicBool::new(false);
    std::thread::scope(|s| {
        s.spawn(|| {
            for i in 0..20_000u64 {
                w.publish(&Snapshot {
                    blocks_done: i,
                    bytes_done: i * 1400,
                    packets: i * 2,
                    state: State::InProgress,
                    ..Default::default()
                });
            }
            stop.store(true, Ordering::Relaxed);
        });
        let mut reads = 0u64;
        while !stop.load(Ordering::Relaxed) || reads == 0 {
            let s = r.read().unwrap();
            assert_eq!(s.bytes_done, s.blocks_done * 1400);
            assert_eq!(s.packets, s.blocks_done * 2);
            reads += 1;
        }
    });
}

#[test]
fn rejects_foreign_files_and_bad_names() {
    let p = tmp_page("foreign");
    std::fs::write(&p, vec![1u8; PAGE_SIZE]).unwrap();
    let e = StatusReader::open(&p).unwrap().read().unwrap_err();
    assert!(e.message.contains("bad magic"));
    std::fs::write(&p, b"short").unwrap();
    assert!(StatusReader::open(&p).is_err());
    assert!(page_path("../etc").is_err());
    assert!(page_path("").is_err());
    assert!(page_path("lab-1.img_2").is_ok());
}

#[test]
fn writer_killed_mid_update_does_not_hang_readers() {
    let p = tmp_page("killed");
    let w = StatusWriter::create(&p).unwrap();
    w.publish(&Snapshot {
        state: State::InProgress,
        ..Default::default()
    });
    // What a writer killed between the two `seq` increments leaves behind.
    let words = w.page.words();
    words[offsets::SEQ].fetch_add(1, Ordering::Relaxed);
    let r = StatusReader::open(&p).unwrap();
    let e = r.read().unwrap_err();
    assert_eq!(e.code, ErrorCode::Timeout, "live writer: {e}");
    words[offsets::WRITER_PID].store(u64::from(u32::MAX), Ordering::Relaxed);
    let s = r.read().unwrap();
    assert!(s.is_stale(Duration::from_secs(60)));
    w.remove().unwrap();
}

#[test]
fn dead_writer_is_stale() {
    let s = Snapshot {
        state: State::InProgress,
        writer_pid: u64::from(u32::MAX),
        heartbeat_ns: now_ns(),
        ..Default::default()
    };
    assert!(s.is_stale(Duration::from_secs(60)));
    let live = Snapshot {
        writer_pid: u64::from(std::process::id()),
        ..s
    };
    assert!(!live.is_stale(Duration::from_secs(60)));
}

#[test]
fn a_reused_pid_does_not_hold_a_page() {
    let me = u64::from(std::process::id());
    let start = process_start_ns(me).expect("our own start time");
    assert!(start <= now_ns() + START_SLACK_NS);
    let live = Snapshot {
        state: State::InProgress,
        writer_pid: me,
        heartbeat_ns: now_ns(),
        ..Default::default()
    };
    assert!(live.held());
    // The same pid on a page whose last heartbeat came a day before
    // this process started: another process's, which died.
    let reused = Snapshot {
        heartbeat_ns: start - 24 * 3600 * 1_000_000_000,
        ..live.clone()
    };
    assert!(!reused.held());
    assert!(reused.is_stale(Duration::from_secs(365 * 24 * 3600)));
    // No heartbeat to compare with: the pid alone decides.
    assert!(Snapshot {
        heartbeat_ns: 0,
        ..live.clone()
    }
    .held());
}

#[test]
fn a_page_truncated_under_a_reader_is_unreadable_not_fatal() {
    let p = tmp_page("truncated");
    let w = StatusWriter::create(&p).unwrap();
    w.publish(&sample());
    let r = StatusReader::open(&p).unwrap();
    assert_eq!(r.read().unwrap().name, "lab-1");
    // The owner cuts the file while the reader holds it open: a reader on
    // a mapping would die of SIGBUS here; this one says why it cannot read.
    std::fs::OpenOptions::new()
        .write(true)
        .open(&p)
        .unwrap()
        .set_len(100)
        .unwrap();
    let e = r.read().unwrap_err();
    assert_eq!(e.code, ErrorCode::InvalidArgument, "{e}");
    assert!(e.message.contains("not a status page (100 bytes)"), "{e}");
    // Grown back: the first 100 bytes are the page's, the rest zeros.
    std::fs::OpenOptions::new()
        .write(true)
        .open(&p)
        .unwrap()
        .set_len(PAGE_SIZE as u64)
        .unwrap();
    let s = r.read().unwrap();
    assert_eq!((s.session_id, s.name.as_str()), (77, ""));
    w.remove().unwrap();
}

#[test]
fn a_page_of_another_size_or_state_is_refused() {
    let p = tmp_page("size");
    let w = StatusWriter::create(&p).unwrap();
    w.publish(&sample());
    let words = w.page.words();
    words[offsets::PAGE_SIZE].store(4096, Ordering::Relaxed);
    let e = StatusReader::open(&p).unwrap().read().unwrap_err();
    assert!(e.message.contains("page size 4096"), "{e}");
    words[offsets::PAGE_SIZE].store(PAGE_SIZE as u64, Ordering::Relaxed);
    words[offsets::STATE].store(9, Ordering::Relaxed);
    let e = StatusReader::open(&p).unwrap().read().unwrap_err();
    assert!(e.message.contains("unknown state"), "{e}");
    // An error code no one assigned reads as internal (docs: JSON).
    words[offsets::STATE].store(State::Failure as u64, Ordering::Relaxed);
    words[offsets::ERROR_CODE].store((1 << 32) | 17, Ordering::Relaxed);
    let s = StatusReader::open(&p).unwrap().read().unwrap();
    assert_eq!(s.error, ErrorCode::Internal);
    w.remove().unwrap();
}
