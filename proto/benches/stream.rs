//! Stream reading and element serialisation throughput, in stanzas per second.
//!
//! `cargo bench -p proto --bench stream`

use criterion::{black_box, criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use proto::element::Element;
use proto::stream::{Limits, StreamEvent, StreamReader};

const HEADER: &[u8] = b"<?xml version='1.0'?><stream:stream xmlns='jabber:client' \
    xmlns:stream='http://etherx.jabber.org/streams' to='capulet.example' version='1.0'>";
const STANZAS: usize = 1000;

/// About 200 bytes: a typical one-to-one chat message.
fn stanza(i: usize) -> String {
    format!(
        "<message to='juliet@capulet.example/balcony' from='romeo@montague.example/orchard' \
         type='chat' id='msg-{i:06}'><body>Art thou not Romeo, and a Montague? \
         Neither, fair maid.</body></message>"
    )
}

fn input() -> (Vec<u8>, usize) {
    let mut body = Vec::new();
    for i in 0..STANZAS {
        body.extend_from_slice(stanza(i).as_bytes());
    }
    let avg = body.len() / STANZAS;
    (body, avg)
}

/// Feed `header` + `body` in chunks of `chunk` bytes; return the number of elements.
fn read_all(body: &[u8], chunk: usize) -> usize {
    let mut reader = StreamReader::new(Limits::default(), "jabber:client");
    reader.feed(HEADER);
    let mut n = 0;
    let mut drain = |reader: &mut StreamReader| {
        while let Some(ev) = reader.next_event().expect("valid input") {
            if let StreamEvent::Element(el, _) = ev {
                black_box(&el);
                n += 1;
            }
        }
    };
    drain(&mut reader);
    for part in body.chunks(chunk) {
        reader.feed(part);
        drain(&mut reader);
    }
    n
}

fn bench_read(c: &mut Criterion) {
    let (body, avg) = input();
    let mut g = c.benchmark_group(format!("read_{avg}B_message"));
    g.throughput(Throughput::Elements(STANZAS as u64));
    for chunk in [body.len(), 4096, 1460, 64] {
        g.bench_with_input(BenchmarkId::new("chunk", chunk), &chunk, |b, &chunk| {
            b.iter(|| assert_eq!(read_all(&body, chunk), STANZAS))
        });
    }
    g.finish();
}

/// Baseline: rxml's raw events alone, no tree building (the floor for `read_*`).
fn bench_rxml_floor(c: &mut Criterion) {
    use rxml::{Parse, RawParser};
    let (body, avg) = input();
    let mut g = c.benchmark_group(format!("rxml_raw_events_{avg}B_message"));
    g.throughput(Throughput::Elements(STANZAS as u64));
    g.bench_function("chunk/4096", |b| {
        b.iter(|| {
            let mut p = RawParser::new();
            let mut n = 0usize;
            for part in std::iter::once(HEADER).chain(body.chunks(4096)) {
                let mut s = part;
                while let Ok(Some(ev)) = p.parse(&mut s, false) {
                    black_box(&ev);
                    n += 1;
                }
            }
            n
        })
    });
    g.finish();
}

fn bench_write(c: &mut Criterion) {
    let (body, avg) = input();
    let mut reader = StreamReader::new(Limits::default(), "jabber:client");
    reader.feed(HEADER);
    reader.feed(&body);
    let mut elements: Vec<Element> = Vec::new();
    while let Some(ev) = reader.next_event().expect("valid input") {
        if let StreamEvent::Element(el, _) = ev {
            elements.push(el);
        }
    }
    let mut g = c.benchmark_group(format!("write_{avg}B_message"));
    g.throughput(Throughput::Elements(elements.len() as u64));
    g.bench_function("write_to", |b| {
        let mut out = Vec::with_capacity(body.len() * 2);
        b.iter(|| {
            out.clear();
            for el in &elements {
                el.write_to(&mut out, "jabber:client");
            }
            black_box(&out);
        })
    });
    g.finish();
}

criterion_group!(benches, bench_read, bench_rxml_floor, bench_write);
criterion_main!(benches);
