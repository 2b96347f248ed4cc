//! The stream reader's memory is proportional to the bytes received, whatever their shape
//! (see the bound stated on `proto::stream::Limits`). A counting global allocator measures
//! the peak heap the reader holds while hostile inputs are fed to it the way a connection
//! feeds them (16 KiB reads, events drained after each), and every shape must stay within
//! `BYTES_PER_BYTE` bytes per byte received and within the absolute per-stream bound.
//!
//! One `#[test]` only: the allocator counts every thread, so nothing may run beside it.

use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicUsize, Ordering};

use proto::ns;
use proto::stream::{Limits, ReadError, StreamEvent, StreamReader};

struct Counting;

static CURRENT: AtomicUsize = AtomicUsize::new(0);
static PEAK: AtomicUsize = AtomicUsize::new(0);

// SAFETY: forwards to the system allocator; only adds counters.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        let now = CURRENT.fetch_add(layout.size(), Ordering::Relaxed) + layout.size();
        PEAK.fetch_max(now, Ordering::Relaxed);
        System.alloc(layout)
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        CURRENT.fetch_sub(layout.size(), Ordering::Relaxed);
        System.dealloc(ptr, layout)
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        if new_size > layout.size() {
            let grow = new_size - layout.size();
            let now = CURRENT.fetch_add(grow, Ordering::Relaxed) + grow;
            PEAK.fetch_max(now, Ordering::Relaxed);
        } else {
            CURRENT.fetch_sub(layout.size() - new_size, Ordering::Relaxed);
        }
        System.realloc(ptr, layout, new_size)
    }
}

#[global_allocator]
static ALLOCATOR: Counting = Counting;

/// The worst case stated on `Limits` (84), rounded up: requested bytes, which is what this
/// allocator sees (malloc's rounding is part of the stated figure).
const BYTES_PER_BYTE: usize = 90;
/// What a reader holds before any input: rxml's scratch buffers and the like.
const FIXED: usize = 64 * 1024;
/// The node reads at most this much per read.
const READ_CHUNK: usize = 16 * 1024;

const HEADER: &str = "<?xml version='1.0'?><stream:stream xmlns='jabber:client' \
    xmlns:stream='http://etherx.jabber.org/streams' to='example.com' version='1.0'>";

struct Outcome {
    fed: usize,
    peak: usize,
    refused: Option<ReadError>,
}

/// Feed `input` as a connection would and report the peak heap held meanwhile (above what
/// was allocated before the reader existed).
fn measure(limits: Limits, input: &[u8], read_chunk: usize) -> Outcome {
    let base = CURRENT.load(Ordering::Relaxed);
    PEAK.store(base, Ordering::Relaxed);
    let mut reader = StreamReader::new(limits, ns::CLIENT);
    let mut fed = 0;
    let mut refused = None;
    let mut stanzas = Vec::new();
    'feed: for chunk in input.chunks(read_chunk) {
        reader.feed(chunk);
        fed += chunk.len();
        loop {
            match reader.next_event() {
                Ok(Some(StreamEvent::Element(el, _))) => stanzas.push(el),
                Ok(Some(_)) => {}
                Ok(None) => break,
                Err(e) => {
                    refused = Some(e);
                    break 'feed;
                }
            }
        }
        // A connection hands complete stanzas on and does not keep them.
        stanzas.clear();
    }
    let peak = PEAK.load(Ordering::Relaxed).saturating_sub(base);
    drop(reader);
    Outcome { fed, peak, refused }
}

fn repeat(unit: &str, times: usize) -> String {
    unit.repeat(times)
}

fn stanza(open: &str, body: &str, close: &str) -> Vec<u8> {
    format!("{HEADER}{open}{body}{close}").into_bytes()
}

#[test]
fn reader_memory_is_proportional_to_input_for_every_shape() {
    let limits = Limits::default();
    let uri_1k = format!("urn:x:{}", "a".repeat(1000));
    let uri_8k = format!("urn:x:{}", "a".repeat(8000));
    let dense_units = 4000;
    let shapes: Vec<(&str, Vec<u8>)> = vec![
        // The report that opened issue 16: an 8 KB default namespace on an unclosed element
        // with 4,000 empty children (1,350 bytes of memory per byte before).
        (
            "8 KB namespace, 4000 children",
            stanza(
                &format!("<message xmlns='{uri_8k}'>"),
                &repeat("<a/>", 4000),
                "",
            ),
        ),
        (
            "1 KB namespace, 4000 children",
            stanza(
                &format!("<message xmlns='{uri_1k}'>"),
                &repeat("<a/>", 4000),
                "",
            ),
        ),
        (
            "empty elements between text",
            stanza("<message>", &repeat("<a/>x", dense_units), ""),
        ),
        (
            "empty elements",
            stanza("<message>", &repeat("<a/>", 8000), ""),
        ),
        (
            "prefixed attributes in a long namespace",
            stanza(
                &format!("<message xmlns:p='{uri_1k}'>"),
                &repeat(
                    "<a p:a='' p:b='' p:c='' p:d='' p:e='' p:f='' p:g='' p:h=''/>",
                    2000,
                ),
                "",
            ),
        ),
        (
            "a namespace declared on every element",
            stanza(
                "<message>",
                &repeat(&format!("<a xmlns='{uri_1k}'/>"), 300),
                "",
            ),
        ),
        (
            "64 attributes per element",
            stanza(
                "<message>",
                &repeat(
                    &format!(
                        "<a {}/>",
                        (0..64)
                            .map(|i| format!("a{i}=''"))
                            .collect::<Vec<_>>()
                            .join(" ")
                    ),
                    200,
                ),
                "",
            ),
        ),
        (
            "deep nesting with declarations",
            stanza(
                "<message>",
                &repeat(&format!("<a xmlns:p{}='{uri_1k}'>", 1), 30),
                "",
            ),
        ),
        (
            "many text nodes",
            stanza("<message>", &repeat("<b>x</b>", 8000), ""),
        ),
        (
            "one long body",
            stanza("<message><body>", &"x".repeat(250_000), ""),
        ),
        (
            "many small stanzas",
            format!(
                "{HEADER}{}",
                repeat("<message to='a@b'><body>hi</body></message>", 20_000)
            )
            .into_bytes(),
        ),
    ];
    let absolute = limits.max_tree_bytes() + limits.max_token_bytes + 2 * READ_CHUNK + FIXED;
    let mut report = Vec::new();
    let mut failures = Vec::new();
    for ((name, input), read_chunk) in shapes.iter().flat_map(|s| [(s, READ_CHUNK), (s, 256)]) {
        let out = measure(limits, input, read_chunk);
        let per_byte = out.peak as f64 / out.fed as f64;
        report.push(format!(
            "{name} ({read_chunk} B reads): fed {} B, peak {} B ({per_byte:.1} B/B), {}",
            out.fed,
            out.peak,
            match &out.refused {
                Some(e) => format!("refused: {e}"),
                None => "accepted".into(),
            }
        ));
        failures.extend(
            (out.peak > BYTES_PER_BYTE * out.fed + FIXED)
                .then(|| format!("{name}: {} bytes held for {} received", out.peak, out.fed)),
        );
        failures.extend((out.peak > absolute).then(|| {
            format!(
                "{name}: {} bytes held, over the absolute bound {absolute}",
                out.peak
            )
        }));
        if let Some(e) = &out.refused {
            failures.extend(
                (!matches!(e, ReadError::PolicyViolation(_))).then(|| format!("{name}: {e:?}")),
            );
        }
    }
    println!("{}", report.join("\n"));
    assert!(failures.is_empty(), "{failures:#?}");
    // The report's input is refused at the namespace, before the children arrive.
    let first = measure(limits, &shapes[0].1, READ_CHUNK);
    assert!(matches!(first.refused, Some(ReadError::PolicyViolation(_))));
    assert!(first.peak < 64 * 1024, "{}", first.peak);
}
