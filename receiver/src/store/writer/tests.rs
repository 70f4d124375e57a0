use super::*;
use crate::store::handoff::Held;

fn stager(name: &str, len: u64, block: u32, buffer: u64) -> (Stager, std::path::PathBuf) {
    let dir = std::env::temp_dir().join(format!("xdpcast-writer-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let p = dir.join(name);
    let file = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(true)
        .open(&p)
        .unwrap();
    file.set_len(len).unwrap();
    let st = Storage {
        file,
        direct: None,
        paced: true,
    };
    let cfg = StoreConfig {
        buffer_bytes: buffer,
        ..StoreConfig::default()
    };
    (Stager::new(st, len, block, &cfg).unwrap(), p)
}

fn image(len: usize) -> Vec<u8> {
    (0..len).map(|i| (i * 131 % 251) as u8).collect()
}

#[test]
fn blocks_in_any_order_from_threads_land_and_read_back() {
    let len = 5 * CHUNK + 12_345;
    let block = 1400u64;
    let (s, p) = stager("order", len, block as u32, 16 * CHUNK);
    let img = image(len as usize);
    let blocks = len.div_ceil(block);
    std::thread::scope(|sc| {
        for t in 0..3u64 {
            let (s, img) = (&s, &img);
            sc.spawn(move || {
                // Each thread takes every third block, backwards.
                for i in (0..blocks).rev().filter(|i| i % 3 == t) {
                    let o = i * block;
                    let e = (o + block).min(len);
                    s.write(o, &img[o as usize..e as usize]);
                }
            });
        }
    });
    // Read back through the stager before and after the flush.
    let mut out = vec![0; 3000];
    s.read(CHUNK - 1000, &mut out).unwrap();
    assert_eq!(out, img[(CHUNK - 1000) as usize..(CHUNK + 2000) as usize]);
    s.flush().unwrap();
    assert_eq!(std::fs::read(&p).unwrap(), img);
    let c = s.counters();
    // Every byte written once, by the writer or (buffer full) a worker.
    assert_eq!(c.bytes_stored.load(Ordering::Relaxed), len);
    std::fs::remove_file(p).unwrap();
}

#[test]
fn handed_off_blocks_land_read_back_and_their_frames_come_back() {
    use crate::store::handoff::Producer;
    let len = 4 * CHUNK + 999;
    let block = 1400u64;
    let (s, p) = stager("handoff", len, block as u32, 16 * CHUNK);
    // The "frames": the image itself, one frame per block.
    let img = Arc::new(image(len as usize));
    let blocks = len.div_ceil(block);
    let back: Vec<Vec<u64>> = std::thread::scope(|sc| {
        let workers: Vec<_> = (0..2u64)
            .map(|t| {
                let (s, img) = (&s, img.clone());
                sc.spawn(move || {
                    // A small lane, so that some blocks find it full.
                    let lane = Producer::new(64, img.as_ptr(), img.len(), img.clone());
                    let mut kept = 0;
                    for i in (0..blocks).filter(|i| i % 2 == t) {
                        let (o, e) = (i * block, ((i + 1) * block).min(len));
                        let held = Held {
                            producer: &lane,
                            frame: i,
                        };
                        if s.hand_off(o, &img[o as usize..e as usize], held) {
                            kept += 1;
                        }
                        if i % 64 == t {
                            lane.kick();
                        }
                    }
                    // Blocks read back through the stager once handed off.
                    let o = (blocks - 1 - t) * block;
                    let mut out = vec![0; (len - o).min(block) as usize];
                    s.read(o, &mut out).unwrap();
                    assert_eq!(out, img[o as usize..o as usize + out.len()]);
                    s.flush().unwrap();
                    let mut back = Vec::new();
                    lane.take_returned(&mut back);
                    assert_eq!(back.len(), kept, "every kept frame comes back once");
                    back
                })
            })
            .collect();
        workers.into_iter().map(|w| w.join().unwrap()).collect()
    });
    assert_eq!(std::fs::read(&p).unwrap(), *img);
    let kept: usize = back.iter().map(Vec::len).sum();
    let (handed_off, lane_full) = s.handoff_counts();
    assert_eq!(handed_off, kept as u64);
    assert_eq!(handed_off + lane_full, blocks);
    for (t, b) in back.iter().enumerate() {
        assert!(b.iter().all(|&i| i % 2 == t as u64));
    }
    std::fs::remove_file(p).unwrap();
}

#[test]
fn many_blocks_in_one_write_land() {
    let len = 3 * CHUNK + 777;
    let (s, p) = stager("whole", len, 1400, 16 * CHUNK);
    let img = image(len as usize);
    s.write(0, &img);
    s.flush().unwrap();
    assert_eq!(std::fs::read(&p).unwrap(), img);
    std::fs::remove_file(p).unwrap();
}

#[test]
fn holes_are_written_partially_then_filled() {
    // More buffers than are faulted in eagerly, fewer than chunks: the
    // writer faults buffers in while it evicts.
    let len = 24 * CHUNK;
    let block = 4096u64;
    let (s, p) = stager("holes", len, block as u32, 16 * CHUNK);
    let img = image(len as usize);
    let blocks = len / block;
    let put = |i: u64| {
        s.write(
            i * block,
            &img[(i * block) as usize..((i + 1) * block) as usize],
        )
    };
    // Every 10th block lost in the first pass: no chunk completes and the
    // writer must evict incomplete chunks to keep buffers free.
    (0..blocks).filter(|i| i % 10 != 0).for_each(put);
    (0..blocks).filter(|i| i % 10 == 0).for_each(put);
    s.flush().unwrap();
    assert_eq!(std::fs::read(&p).unwrap(), img);
    assert!(s.counters().chunks_partial.load(Ordering::Relaxed) > 0);
    let mut out = vec![0; block as usize];
    s.read(5 * block, &mut out).unwrap();
    assert_eq!(out, img[(5 * block) as usize..(6 * block) as usize]);
    std::fs::remove_file(p).unwrap();
}
