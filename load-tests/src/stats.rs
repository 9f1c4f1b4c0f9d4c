//! The pure parts: latency histograms, per-second timelines, a scenario's result and the
//! Markdown summary table built from every result.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use hdrhistogram::Histogram;
use serde::{Deserialize, Serialize};

/// A latency recorder shared by tasks: microseconds, 1 µs .. 10 min, 3 significant digits.
pub struct Latency {
    h: Mutex<Histogram<u64>>,
}

impl Default for Latency {
    fn default() -> Self {
        Self::new()
    }
}

impl Latency {
    pub fn new() -> Self {
        // Bounds are constants that hdrhistogram accepts (low >= 1, high >= 2 * low, sigfig <= 5).
        let h = Histogram::new_with_bounds(1, 600_000_000, 3).expect("constant, valid bounds");
        Self { h: Mutex::new(h) }
    }

    pub fn record(&self, d: Duration) {
        self.record_us(d.as_micros() as u64);
    }

    pub fn record_us(&self, us: u64) {
        let mut h = self.h.lock().unwrap_or_else(|e| e.into_inner());
        h.saturating_record(us.max(1));
    }

    /// How many recorded values exceed `us`.
    pub fn count_above_us(&self, us: u64) -> u64 {
        let h = self.h.lock().unwrap_or_else(|e| e.into_inner());
        h.iter_recorded()
            .filter(|v| v.value_iterated_to() > us)
            .map(|v| v.count_at_value())
            .sum()
    }

    pub fn percentiles(&self) -> Option<Percentiles> {
        let h = self.h.lock().unwrap_or_else(|e| e.into_inner());
        Percentiles::from_histogram(&h)
    }
}

/// Latency percentiles in milliseconds.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq)]
pub struct Percentiles {
    pub count: u64,
    pub p50_ms: f64,
    pub p90_ms: f64,
    pub p99_ms: f64,
    pub p999_ms: f64,
    pub max_ms: f64,
}

impl Percentiles {
    pub fn from_histogram(h: &Histogram<u64>) -> Option<Self> {
        if h.is_empty() {
            return None;
        }
        let ms = |us: u64| us as f64 / 1000.0;
        Some(Self {
            count: h.len(),
            p50_ms: ms(h.value_at_quantile(0.50)),
            p90_ms: ms(h.value_at_quantile(0.90)),
            p99_ms: ms(h.value_at_quantile(0.99)),
            p999_ms: ms(h.value_at_quantile(0.999)),
            max_ms: ms(h.max()),
        })
    }
}

/// Events per second since a start instant (the throughput-over-time line of the charts).
pub struct Timeline {
    start: Instant,
    buckets: Vec<AtomicU64>,
}

impl Timeline {
    pub fn new(start: Instant, max_secs: usize) -> Self {
        Self {
            start,
            buckets: (0..max_secs.max(1)).map(|_| AtomicU64::new(0)).collect(),
        }
    }

    pub fn add(&self, n: u64) {
        self.add_at(Instant::now(), n);
    }

    pub fn add_at(&self, at: Instant, n: u64) {
        let s = at.saturating_duration_since(self.start).as_secs() as usize;
        let i = s.min(self.buckets.len() - 1);
        self.buckets[i].fetch_add(n, Ordering::Relaxed);
    }

    /// (second, events in that second), trimmed after the last non-empty second.
    pub fn series(&self) -> Vec<(f64, f64)> {
        let v: Vec<u64> = self
            .buckets
            .iter()
            .map(|b| b.load(Ordering::Relaxed))
            .collect();
        let last = v.iter().rposition(|&c| c > 0).map(|i| i + 1).unwrap_or(0);
        v[..last]
            .iter()
            .enumerate()
            .map(|(i, &c)| (i as f64, c as f64))
            .collect()
    }
}

/// A baseline measured in the same run as the scenario it is compared with.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Baseline {
    pub name: String,
    pub ops: u64,
    pub elapsed_s: f64,
    pub throughput: f64,
    pub latency: Option<Percentiles>,
    pub errors: u64,
}

/// One of the targets, checked against this run.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Target {
    pub name: String,
    pub target: String,
    pub measured: String,
    pub pass: bool,
}

impl Target {
    pub fn at_least(name: &str, want: f64, got: f64, unit: &str) -> Self {
        Self {
            name: name.into(),
            target: format!(">= {} {unit}", fmt_num(want)),
            measured: format!("{} {unit}", fmt_num(got)),
            pass: got >= want,
        }
    }

    pub fn at_most(name: &str, want: f64, got: f64, unit: &str) -> Self {
        Self {
            name: name.into(),
            target: format!("<= {} {unit}", fmt_num(want)),
            measured: format!("{} {unit}", fmt_num(got)),
            pass: got <= want,
        }
    }
}

/// What a scenario run writes to `results/<scenario>.json`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Default)]
#[serde(default)]
pub struct ScenarioResult {
    pub scenario: String,
    /// `smoke`, `run` or `full`.
    pub mode: String,
    /// Unix seconds when the run ended.
    pub finished_at: u64,
    pub params: serde_json::Value,
    /// What the throughput counts (`requests`, `notifications accepted`, `deliveries`, …).
    pub unit: String,
    pub ops: u64,
    pub elapsed_s: f64,
    pub throughput: f64,
    pub latency: Option<Percentiles>,
    /// What the latency measures (e.g. `Send round trip`, `accept -> platform request`).
    pub latency_of: String,
    pub errors: u64,
    pub herald_cpu_pct: Option<f64>,
    /// redis-server's and this generator's CPU over the same interval (100% = one core of 2).
    pub redis_cpu_pct: Option<f64>,
    pub loadgen_cpu_pct: Option<f64>,
    pub herald_peak_rss_mb: Option<f64>,
    pub redis_bytes_per_notification: Option<f64>,
    pub baseline: Option<Baseline>,
    /// scenario throughput / baseline throughput.
    pub ratio: Option<f64>,
    pub targets: Vec<Target>,
    /// (second, events in that second).
    pub timeline: Vec<(f64, f64)>,
    pub notes: Vec<String>,
}

pub fn fmt_num(x: f64) -> String {
    if !x.is_finite() {
        return "-".into();
    }
    let a = x.abs();
    if a >= 100.0 {
        // Thousands separated by commas.
        let n = x.round() as i64;
        let s = n.unsigned_abs().to_string();
        let mut out = String::new();
        for (i, ch) in s.chars().enumerate() {
            if i > 0 && (s.len() - i).is_multiple_of(3) {
                out.push(',');
            }
            out.push(ch);
        }
        if n < 0 {
            format!("-{out}")
        } else {
            out
        }
    } else if a >= 10.0 {
        format!("{x:.1}")
    } else {
        format!("{x:.2}")
    }
}

fn opt(x: Option<f64>) -> String {
    x.map(fmt_num).unwrap_or_else(|| "-".into())
}

/// The one table of `results/summary.md`, one row per scenario result, in the given order.
pub fn summary_markdown(results: &[ScenarioResult]) -> String {
    let mut s = String::new();
    s.push_str("# Herald load test results\n\n");
    s.push_str(
        "Written by `herald-load` (`load-tests/`); one row per `results/<scenario>.json`. \
         Throughput is per second in the unit named; latency in ms; ratio = scenario / baseline \
         throughput, both measured in the same run.\n\n",
    );
    s.push_str(
        "| scenario | mode | throughput /s | unit | p50 | p99 | p999 | errors | Herald CPU % | \
         Redis CPU % | generator CPU % | peak RSS MB | Redis B/notif | baseline | baseline /s | ratio |\n",
    );
    s.push_str("|---|---|--:|---|--:|--:|--:|--:|--:|--:|--:|--:|--:|---|--:|--:|\n");
    for r in results {
        let (p50, p99, p999) = match &r.latency {
            Some(p) => (fmt_num(p.p50_ms), fmt_num(p.p99_ms), fmt_num(p.p999_ms)),
            None => ("-".into(), "-".into(), "-".into()),
        };
        let (bname, bthr) = match &r.baseline {
            Some(b) => (b.name.clone(), fmt_num(b.throughput)),
            None => ("-".into(), "-".into()),
        };
        s.push_str(&format!(
            "| {} | {} | {} | {} | {p50} | {p99} | {p999} | {} | {} | {} | {} | {} | {} | {bname} | {bthr} | {} |\n",
            r.scenario,
            r.mode,
            fmt_num(r.throughput),
            r.unit,
            r.errors,
            opt(r.herald_cpu_pct),
            opt(r.redis_cpu_pct),
            opt(r.loadgen_cpu_pct),
            opt(r.herald_peak_rss_mb),
            opt(r.redis_bytes_per_notification),
            r.ratio.map(|x| format!("{x:.2}")).unwrap_or_else(|| "-".into()),
        ));
    }
    let checks: Vec<(&str, &Target)> = results
        .iter()
        .flat_map(|r| r.targets.iter().map(move |t| (r.scenario.as_str(), t)))
        .collect();
    if !checks.is_empty() {
        s.push_str("\n## Targets (issue 5), checked on this run\n\n");
        s.push_str("| scenario | target | wanted | measured | met |\n|---|---|---|---|---|\n");
        for (sc, t) in checks {
            s.push_str(&format!(
                "| {sc} | {} | {} | {} | {} |\n",
                t.name,
                t.target,
                t.measured,
                if t.pass { "yes" } else { "no" }
            ));
        }
    }
    let notes: Vec<(&str, &String)> = results
        .iter()
        .flat_map(|r| r.notes.iter().map(move |n| (r.scenario.as_str(), n)))
        .collect();
    if !notes.is_empty() {
        s.push_str("\n## Notes\n\n");
        for (sc, n) in notes {
            s.push_str(&format!("- `{sc}`: {n}\n"));
        }
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentiles_of_a_known_distribution() {
        let l = Latency::new();
        for ms in 1..=1000u64 {
            l.record(Duration::from_millis(ms));
        }
        let p = l.percentiles().expect("non-empty");
        assert_eq!(p.count, 1000);
        // hdrhistogram keeps 3 significant digits.
        assert!((p.p50_ms - 500.0).abs() < 1.0, "{p:?}");
        assert!((p.p99_ms - 990.0).abs() < 1.0, "{p:?}");
        assert!((p.p999_ms - 999.0).abs() < 1.0, "{p:?}");
        assert!((p.max_ms - 1000.0).abs() < 1.0, "{p:?}");
        assert!(Latency::new().percentiles().is_none());
    }

    #[test]
    fn timeline_buckets_per_second_and_trims() {
        let start = Instant::now();
        let t = Timeline::new(start, 10);
        t.add_at(start, 3);
        t.add_at(start + Duration::from_millis(1500), 5);
        t.add_at(start + Duration::from_secs(100), 1); // clamped into the last bucket
        let s = t.series();
        assert_eq!(s.len(), 10);
        assert_eq!(s[0], (0.0, 3.0));
        assert_eq!(s[1], (1.0, 5.0));
        assert_eq!(s[9], (9.0, 1.0));
        let t2 = Timeline::new(start, 10);
        t2.add_at(start, 1);
        assert_eq!(t2.series(), vec![(0.0, 1.0)]);
    }

    #[test]
    fn numbers_and_summary_table() {
        assert_eq!(fmt_num(153_210.4), "153,210");
        assert_eq!(fmt_num(1_000_000.0), "1,000,000");
        assert_eq!(fmt_num(12.345), "12.3");
        assert_eq!(fmt_num(0.456), "0.46");
        assert_eq!(fmt_num(f64::NAN), "-");
        let r = ScenarioResult {
            scenario: "batch".into(),
            mode: "smoke".into(),
            unit: "notifications accepted".into(),
            throughput: 150_000.0,
            latency: Some(Percentiles {
                count: 10,
                p50_ms: 5.0,
                p90_ms: 6.0,
                p99_ms: 7.5,
                p999_ms: 9.0,
                max_ms: 10.0,
            }),
            herald_cpu_pct: Some(120.0),
            baseline: Some(Baseline {
                name: "redis-xadd".into(),
                ops: 1,
                elapsed_s: 1.0,
                throughput: 300_000.0,
                latency: None,
                errors: 0,
            }),
            ratio: Some(0.5),
            targets: vec![Target::at_least("ingest", 150_000.0, 150_000.0, "/s")],
            ..Default::default()
        };
        let md = summary_markdown(&[r]);
        assert!(md.contains(
            "| batch | smoke | 150,000 | notifications accepted | 5.00 | 7.50 | 9.00 | 0 | 120 | - | - | - | - | redis-xadd | 300,000 | 0.50 |"
        ), "{md}");
        assert!(
            md.contains("| batch | ingest | >= 150,000 /s | 150,000 /s | yes |"),
            "{md}"
        );
    }
}
