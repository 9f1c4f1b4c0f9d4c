//! SMS segment counting (`channels::sms::count_segments`), done for every SMS send and for the
//! policy's per-segment prices: GSM-7 (with extension characters) and UCS-2 texts, short and
//! 1,000 characters.

use std::hint::black_box;

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use herald::channels::sms::{count_segments, Encoding};

/// `len` characters of `pattern`, repeated.
fn text(pattern: &str, len: usize) -> String {
    pattern.chars().cycle().take(len).collect()
}

fn bench(c: &mut Criterion) {
    // GSM-7 with an extension character (€, two septets); UCS-2 from Cyrillic and one emoji
    // (outside the BMP: two UTF-16 units).
    let gsm = "Your code is 123456. Valid 10 min; fee €0.50 [ref: A-7] ";
    let ucs2 = "Ваш заказ отправлен 📦 и прибудет во вторник. ";
    let cases = [
        ("gsm7", 60, text(gsm, 60), Encoding::Gsm7),
        ("gsm7", 1000, text(gsm, 1000), Encoding::Gsm7),
        ("ucs2", 60, text(ucs2, 60), Encoding::Ucs2),
        ("ucs2", 1000, text(ucs2, 1000), Encoding::Ucs2),
    ];

    let mut g = c.benchmark_group("segments");
    for (name, chars, t, encoding) in &cases {
        assert_eq!(count_segments(t).encoding, *encoding, "{name} fixture");
        g.throughput(Throughput::Elements(*chars as u64));
        g.bench_with_input(BenchmarkId::new(*name, chars), t, |b, t| {
            b.iter(|| count_segments(black_box(t)))
        });
    }
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
