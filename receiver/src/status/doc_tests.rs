//! One truth for the status page: docs/status-page.md is the reference,
//! and its tables (the layout, the regions, the worker slots, the error
//! codes, the drop reasons, the JSON keys and the metric families) are
//! checked here against the C header, the Python reader and what the Rust
//! reader makes of a page, so that none of them can drift from the others.
//! A new word or name that is missing in one of them fails a test here.

use std::collections::BTreeSet;

use serde_json::Value;

use crate::error::ErrorCode;
use crate::proto::wire::DropReason;
use crate::status::page::{self, offsets, Snapshot, State, LAYOUT_VERSION, PAGE_MAGIC, PAGE_SIZE};
use crate::status::report::{self, SessionReport};

const DOC: &str = include_str!("../../../docs/status-page.md");
const HEADER: &str = include_str!("../../include/xdpcast_status.h");
const PYTHON: &str = include_str!("../../../examples/status_reader.py");

/// A `## title` section of the doc, up to the next `## `.
fn section(title: &str) -> &'static str {
    let start = DOC.find(&format!("\n## {title}\n")).expect(title) + 1;
    let len = DOC[start + 3..]
        .find("\n## ")
        .map_or(DOC.len() - start, |n| n + 3);
    &DOC[start..start + len]
}

/// The `ticked` words of `text`, in order.
fn ticked(text: &str) -> Vec<&str> {
    text.split('`').skip(1).step_by(2).collect()
}

/// The cells of a table row (`| a | b |`), trimmed.
fn cells(line: &str) -> Vec<&str> {
    line.trim()
        .trim_matches('|')
        .split(" | ")
        .map(str::trim)
        .collect()
}

/// The value of `#define name N` in the header.
fn define(name: &str) -> Option<u64> {
    HEADER.lines().find_map(|l| {
        let rest = l.strip_prefix("#define ")?.strip_prefix(name)?;
        if !rest.starts_with([' ', '\t']) {
            return None;
        }
        let value = rest.split_whitespace().next()?;
        value.trim_end_matches(['u', 'U', 'L']).parse().ok()
    })
}

/// The value of enumerator `name` in the header (`    NAME = N,`).
fn enumerator(name: &str) -> Option<u64> {
    HEADER.lines().find_map(|l| {
        let rest = l.trim().strip_prefix(name)?.strip_prefix(" = ")?;
        rest.split(',').next()?.trim().parse().ok()
    })
}

/// The string `case name: return "...";` gives in the header.
fn case(name: &str) -> Option<&'static str> {
    HEADER.lines().find_map(|l| {
        let rest = l.trim().strip_prefix(&format!("case {name}: return \""))?;
        rest.strip_suffix("\";")
    })
}

/// `NAME = [...]` of the Python reader as its items (strings, or `None`).
fn python_list(name: &str) -> Vec<Option<&'static str>> {
    let start = PYTHON.find(&format!("\n{name} = [")).expect(name) + name.len() + 5;
    let end = start + PYTHON[start..].find(']').unwrap();
    PYTHON[start..end]
        .split(',')
        .map(str::trim)
        .filter(|t| !t.is_empty())
        .map(|t| t.strip_prefix('"').and_then(|t| t.strip_suffix('"')))
        .collect()
}

fn python_strings(name: &str) -> Vec<&'static str> {
    python_list(name).into_iter().map(Option::unwrap).collect()
}

/// `W[name]` of the Python reader.
fn python_word(name: &str) -> Option<u64> {
    let start = PYTHON.find("\nW = dict(").unwrap();
    let end = start + PYTHON[start..].find("\n)\n").unwrap();
    PYTHON[start..end]
        .lines()
        .filter(|l| !l.trim_start().starts_with('#'))
        .flat_map(|l| l.split(','))
        .find_map(|kv| {
            let (k, v) = kv.split_once('=')?;
            (k.trim() == name).then(|| v.trim().parse().ok())?
        })
}

/// A page whose every word holds a value of its own (1000 + its index),
/// valid where the reader checks: a sender's page with 32 workers, so
/// that every region and slot reaches the JSON.
fn distinct_words() -> [u64; PAGE_SIZE / 8] {
    let mut w = [0u64; PAGE_SIZE / 8];
    for (i, v) in w.iter_mut().enumerate() {
        *v = 1000 + i as u64;
    }
    w[offsets::MAGIC] = PAGE_MAGIC;
    w[offsets::VERSION] = LAYOUT_VERSION;
    w[offsets::PAGE_SIZE] = PAGE_SIZE as u64;
    w[offsets::STATE] = State::InProgress as u64;
    w[offsets::ERROR_CODE] = ErrorCode::DiskFull as u64;
    w[offsets::WORKER_COUNT] = 32;
    w[offsets::ROLE] = page::Role::Sender as u64;
    w
}

/// What the Rust reader makes of [`distinct_words`], as JSON.
fn distinct_json() -> (Value, [u64; PAGE_SIZE / 8]) {
    let w = distinct_words();
    let s = Snapshot::from_words(&w).unwrap();
    (serde_json::from_str(&report::json(&s)).unwrap(), w)
}

/// The keys of the outermost object of `json`, in the order written.
fn top_keys(json: &str) -> Vec<String> {
    let (mut depth, mut in_str, mut esc, mut key) = (0, false, false, None::<String>);
    let mut keys = Vec::new();
    let mut last = ' ';
    for c in json.chars() {
        if in_str {
            match (esc, c) {
                (true, _) => esc = false,
                (false, '\\') => esc = true,
                (false, '"') => in_str = false,
                (false, c) => {
                    if let Some(k) = key.as_mut() {
                        k.push(c)
                    }
                }
            }
            if !in_str {
                if let Some(k) = key.take() {
                    keys.push(k);
                }
            }
            continue;
        }
        match c {
            '{' | '[' => depth += 1,
            '}' | ']' => {
                depth -= 1;
                if depth == 0 {
                    break;
                }
            }
            '"' => {
                in_str = true;
                // A key opens the object or follows a comma at depth 1.
                if depth == 1 && (last == '{' || last == ',') {
                    key = Some(String::new());
                }
            }
            _ => {}
        }
        last = c;
    }
    keys
}

#[test]
fn error_codes_agree_in_the_doc_header_python_and_json() {
    let rows: Vec<(u32, &str)> = section("Error codes")
        .lines()
        .filter(|l| l.starts_with("| ") && !l.starts_with("| Value") && !l.starts_with("|--"))
        .map(|l| {
            let c = cells(l);
            (c[0].parse().unwrap(), ticked(c[1])[0])
        })
        .collect();
    let rust: Vec<(u32, &str)> = ErrorCode::ALL
        .iter()
        .map(|c| (*c as u32, c.name()))
        .collect();
    assert_eq!(rows, rust, "docs/status-page.md error codes vs ErrorCode");
    let python = python_list("ERRORS");
    for (v, name) in &rows {
        let macro_name = match v {
            0 => "XDPCAST_OK".to_string(),
            _ => format!("XDPCAST_ERR_{}", name.to_uppercase()),
        };
        assert_eq!(enumerator(&macro_name), Some(u64::from(*v)), "{macro_name}");
        assert_eq!(case(&macro_name), Some(*name), "xdpcast_error_name {v}");
        assert_eq!(python[*v as usize], Some(*name), "ERRORS[{v}]");
        let s = Snapshot {
            state: State::Failure,
            error: ErrorCode::from_u32(*v).unwrap(),
            ..Default::default()
        };
        let r = SessionReport::new(&s);
        assert_eq!((r.error_code, r.error.as_str()), (*v, *name));
    }
    // Python's unassigned numbers are None (they read as internal).
    let assigned: BTreeSet<u32> = rows.iter().map(|r| r.0).collect();
    for (i, n) in python.iter().enumerate() {
        assert_eq!(n.is_some(), assigned.contains(&(i as u32)), "ERRORS[{i}]");
    }
}

#[test]
fn drop_reasons_agree_in_the_doc_header_python_and_json() {
    // "N `name`" pairs of the prose list.
    let text = section("Drop reasons");
    let parts: Vec<&str> = text.split('`').collect();
    let rows: Vec<(usize, &str)> = (1..parts.len())
        .step_by(2)
        .filter_map(|i| {
            let n = parts[i - 1].split_whitespace().last()?.parse().ok()?;
            Some((n, parts[i]))
        })
        .collect();
    let rust: Vec<(usize, &str)> = DropReason::ALL
        .iter()
        .map(|r| (*r as usize, r.name()))
        .collect();
    assert_eq!(rows, rust, "docs/status-page.md drop reasons vs DropReason");
    for (i, name) in &rows {
        let m = format!("XDPCAST_DROP_{}", name.to_uppercase());
        assert_eq!(enumerator(&m), Some(*i as u64), "{m}");
        assert_eq!(case(&m), Some(*name), "xdpcast_drop_name {i}");
    }
    assert_eq!(
        enumerator("XDPCAST_DROP_COUNT"),
        Some(DropReason::COUNT as u64)
    );
    assert_eq!(define("XDPCAST_DROP_SLOTS"), Some(page::DROP_SLOTS as u64));
    let names: Vec<&str> = rows.iter().map(|r| r.1).collect();
    assert_eq!(python_strings("DROPS"), names);
    // JSON: every reason by name, in alphabetical order, value drops[r].
    let (v, w) = distinct_json();
    let json = report::json(&Snapshot::from_words(&w).unwrap());
    let drops_at = json.find("\"drops\":{").unwrap();
    let drops = &json[drops_at + 8..drops_at + json[drops_at..].find('}').unwrap() + 1];
    let keys = top_keys(drops);
    let mut sorted = names.clone();
    sorted.sort_unstable();
    assert_eq!(keys, sorted, "JSON drops keys");
    for (i, name) in &rows {
        assert_eq!(v["drops"][name], w[offsets::DROPS + i], "{name}");
    }
    // The layout table says which slots are used.
    let row = section("Layout")
        .lines()
        .find(|l| l.contains("`drops[16]`"))
        .unwrap();
    assert!(
        row.contains(&format!("0–{}", DropReason::COUNT - 1))
            && row.contains(&format!("slot {} is reserved", DropReason::COUNT)),
        "{row}"
    );
}

/// Doc fields that are not numbers of the same name in the JSON, and
/// where the JSON has them instead (checked by the JSON tests).
const NOT_NUMBERS: &[&str] = &[
    "magic",
    "version",
    "page_size",
    "seq",
    "state",
    "mode",
    "worker_count",
    "flags",
    "digest",
    "drops",
    "name",
    "group",
    "target",
    "message",
    "workers",
    "worker_latency",
    "worker_batch_sum",
    "trust",
    "storage",
    "repair",
    "stream",
    "sparse",
    "diag",
    "http",
    "worker_ext",
];

#[test]
fn the_layout_table_agrees_with_the_header_python_and_the_rust_reader() {
    let (json, w) = distinct_json();
    let mut next_byte = 0;
    let mut fields = 0;
    for l in section("Layout").lines() {
        let c = cells(l);
        let (Some(byte), Some(word), Some(size)) = (
            c.first().and_then(|v| v.parse::<u64>().ok()),
            c.get(1).and_then(|v| v.parse::<u64>().ok()),
            c.get(2).and_then(|v| v.parse::<u64>().ok()),
        ) else {
            continue;
        };
        // The rows tile the page: no gap, no overlap.
        assert_eq!((byte, byte), (next_byte, word * 8), "{l}");
        next_byte = byte + size;
        let Some(field) = ticked(c[3]).first().copied() else {
            assert!(c[3] == "—" && c[4].contains("reserved"), "{l}");
            continue;
        };
        fields += 1;
        let base = field.split('[').next().unwrap();
        let m = format!("XDPCAST_W_{}", base.to_uppercase());
        assert_eq!(define(&m), Some(word), "{m}");
        assert_eq!(python_word(base), Some(word), "status_reader.py W[{base}]");
        if base == "error_code" || !NOT_NUMBERS.contains(&base) {
            assert_eq!(json[base], w[word as usize], "JSON {base} (word {word})");
        }
    }
    assert_eq!(
        next_byte, PAGE_SIZE as u64,
        "the layout table covers the page"
    );
    assert!(fields > 40);
    assert_eq!(json["workers"].as_array().unwrap().len(), 32);
}

/// Where a region word is in the header, relative macros included.
fn header_word(field: &str, word: u64) -> bool {
    let up = field.to_uppercase();
    let stream = up.strip_prefix("STREAM_").unwrap_or(&up).to_string();
    [
        define(&format!("XDPCAST_W_{up}")),
        define(&format!("XDPCAST_W_SENDER_{up}")),
        define(&format!("XDPCAST_ST_{up}")).map(|v| v + offsets::STORAGE as u64),
        define(&format!("XDPCAST_TR_{up}")).map(|v| v + offsets::TRUST as u64),
        define(&format!("XDPCAST_DIAG_{up}")).map(|v| v + offsets::DIAG as u64),
        define(&format!("XDPCAST_SM_{stream}")).map(|v| v + offsets::STREAM as u64),
        define(&format!("XDPCAST_HTTP_{}", up.trim_start_matches("HTTP_")))
            .map(|v| v + offsets::HTTP as u64),
    ]
    .contains(&Some(word))
}

/// Where a region word is in the Python reader.
fn python_has(field: &str, word: u64) -> bool {
    let at = |list: &str, base: usize| {
        python_strings(list)
            .iter()
            .position(|f| *f == field.trim_start_matches("stream_"))
            .map(|i| (base + i) as u64)
    };
    [
        python_word(field),
        python_word(&format!("sender_{field}")),
        at("STORAGE_FIELDS", offsets::STORAGE),
        at("TRUST_FIELDS", offsets::TRUST + 1),
        at("STREAM_FIELDS", offsets::STREAM),
        at("HTTP_FIELDS", offsets::HTTP),
        // The owner and the signer frame the trust fields; diag words are
        // read by index.
        (field == "owner_uid").then(|| python_word("trust").unwrap()),
        (field == "signer").then(|| python_word("trust").unwrap() + 7),
        (field == "unserved_frames").then(|| python_word("diag").unwrap()),
        (field == "unserved_queues").then(|| python_word("diag").unwrap() + 1),
        (field == "last_block_ns").then(|| python_word("diag").unwrap() + 2),
    ]
    .contains(&Some(word))
}

/// The JSON value for region word `field` at `word`: in the object of its
/// region, or at the top for the sparse and diag regions.
fn region_value<'a>(json: &'a Value, field: &str, word: u64) -> &'a Value {
    let region = |base: usize| (base as u64..(base + offsets::REGION_WORDS) as u64).contains(&word);
    if region(offsets::TRUST) {
        &json["trust"][field]
    } else if region(offsets::STORAGE) {
        &json["storage"][field]
    } else if region(offsets::REPAIR) {
        &json["sender"][field]
    } else if region(offsets::STREAM) {
        &json["stream"][field.strip_prefix("stream_").unwrap_or(field)]
    } else if region(offsets::HTTP) {
        &json["http"][field]
    } else {
        &json[field]
    }
}

#[test]
fn every_region_word_agrees_with_the_header_python_and_the_rust_reader() {
    let (json, w) = distinct_json();
    let mut seen = 0;
    for l in DOC
        .lines()
        .filter(|l| l.starts_with("| 5") || l.starts_with("| 6"))
    {
        let c = cells(l);
        let Some(word) = c[0].split('–').next().and_then(|v| v.parse::<u64>().ok()) else {
            continue;
        };
        if !(offsets::TRUST as u64..offsets::WORKER_EXT as u64).contains(&word) {
            continue;
        }
        let Some(field) = ticked(c[1]).first().copied() else {
            continue;
        };
        seen += 1;
        assert!(header_word(field, word), "header: {field} at word {word}");
        assert!(
            python_has(field, word),
            "status_reader.py: {field} at {word}"
        );
        match field {
            // Not numbers in the JSON, or (owner_uid) the file's owner there.
            "owner_uid" | "role" | "phase" | "zero_method" | "direct" | "unserved_queues"
            | "signer" => {}
            _ => assert_eq!(
                region_value(&json, field, word),
                &Value::from(w[word as usize]),
                "JSON {field} (word {word})"
            ),
        }
    }
    assert!(seen > 40, "{seen} region words");
}

#[test]
fn every_worker_slot_word_agrees_with_the_header_python_and_the_rust_reader() {
    let (json, w) = distinct_json();
    let tables = [
        (
            "queue",
            "XDPCAST_WK_",
            "WORKER_FIELDS",
            offsets::WORKERS,
            offsets::WORKER_WORDS,
        ),
        (
            "batch_p50_ns",
            "XDPCAST_LAT_",
            "LATENCY_FIELDS",
            offsets::WORKER_LATENCY,
            offsets::LATENCY_WORDS,
        ),
        (
            "rx_dropped",
            "XDPCAST_WX_",
            "WORKER_EXT_FIELDS",
            offsets::WORKER_EXT,
            offsets::WORKER_EXT_WORDS,
        ),
    ];
    for (first, prefix, list, base, stride) in tables {
        let start = DOC.find(&format!("\n| 0 | `{first}` |")).expect(first);
        let rows: Vec<(usize, &str)> = DOC[start + 1..]
            .lines()
            .take_while(|l| l.starts_with("| "))
            .filter_map(|l| {
                let c = cells(l);
                Some((c[0].parse().ok()?, *ticked(c[1]).first()?))
            })
            .collect();
        assert_eq!(
            python_strings(list),
            rows.iter().map(|r| r.1).collect::<Vec<_>>()
        );
        for (n, field) in rows {
            let up = field.to_uppercase();
            let name = up.trim_start_matches("BATCH_").trim_end_matches("_NS");
            assert_eq!(
                define(&format!("{prefix}{name}")),
                Some(n as u64),
                "{field}"
            );
            for i in [0, 31] {
                let want = w[base + i * stride + n];
                assert_eq!(json["workers"][i][field], want, "worker {i} {field}");
            }
        }
    }
    for i in [0, 31] {
        let want = w[offsets::WORKER_BATCH_SUM + i];
        assert_eq!(json["workers"][i]["batch_sum_ns"], want);
    }
}

#[test]
fn the_json_keys_come_in_the_documented_order() {
    let (json, w) = distinct_json();
    let text = report::json(&Snapshot::from_words(&w).unwrap());
    let doc = section("JSON");
    let rows: Vec<&str> = doc.lines().filter(|l| l.starts_with("| `")).collect();
    let documented: Vec<&str> = rows.iter().flat_map(|l| ticked(cells(l)[0])).collect();
    assert_eq!(top_keys(&text), documented, "top-level keys");
    // Each object's keys, in the order its row lists them.
    for (key, value) in json.as_object().unwrap() {
        let Some(obj) = value.as_object().filter(|_| key != "drops") else {
            continue;
        };
        let row = rows
            .iter()
            .find(|l| cells(l)[0] == format!("`{key}`"))
            .unwrap();
        let listed: Vec<&str> = ticked(cells(row)[2])
            .into_iter()
            .filter(|k| obj.contains_key(*k))
            .collect();
        let at = text.find(&format!("\"{key}\":{{")).unwrap() + key.len() + 3;
        assert_eq!(top_keys(&text[at..]), listed, "keys of {key}");
    }
    // The worker objects' keys, in the paragraph's order.
    let para = &doc[doc.find("Each worker object").unwrap()..];
    let para = &para[..para.find("\n\n").unwrap()];
    let worker = json["workers"][0].as_object().unwrap();
    let listed: Vec<&str> = ticked(para)
        .into_iter()
        .filter(|k| worker.contains_key(*k))
        .collect();
    let at = text.find("\"workers\":[").unwrap() + 11;
    assert_eq!(top_keys(&text[at..]), listed, "worker keys");
    assert_eq!(listed.len(), worker.len());
}

#[test]
fn docs_list_every_metric_family() {
    let w = distinct_words();
    let sender = Snapshot::from_words(&w).unwrap();
    let receiver = Snapshot {
        role: page::Role::Receiver,
        ..sender.clone()
    };
    let text = report::prometheus(&[receiver, sender], 0);
    let families: Vec<&str> = text
        .lines()
        .filter_map(|l| l.strip_prefix("# TYPE "))
        .map(|l| l.split(' ').next().unwrap())
        .collect();
    let prom = section("Prometheus");
    let documented: BTreeSet<&str> = prom
        .lines()
        .filter(|l| l.starts_with("| `"))
        .flat_map(|l| ticked(cells(l)[0]))
        .collect();
    for f in &families {
        assert!(
            documented.contains(f),
            "family {f} not in docs/status-page.md"
        );
    }
    assert!(documented.len() > 20);
    for f in documented {
        assert!(
            families.contains(&f),
            "docs/status-page.md lists family {f}"
        );
    }
}
