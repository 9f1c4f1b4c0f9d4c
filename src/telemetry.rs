//! Metric names (one place) and typed helpers, plus tracing setup. Names follow
//! `herald_<thing>_<unit>[_total]`; labels come from bounded sets only.

use std::sync::OnceLock;
use std::time::Duration;

use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};

use crate::model::{Channel, Priority, Status};

pub const ACCEPTED: &str = "herald_notifications_accepted_total";
pub const REJECTED: &str = "herald_requests_rejected_total";
pub const DISPATCHED: &str = "herald_dispatched_total";
pub const DISPATCH_SECONDS: &str = "herald_dispatch_duration_seconds";
pub const QUEUE_DEPTH: &str = "herald_queue_depth";
pub const DELAYED_DEPTH: &str = "herald_delayed_depth";
pub const RETRIES: &str = "herald_retries_total";
pub const FALLBACKS: &str = "herald_fallbacks_total";
pub const DEAD_LETTERS: &str = "herald_dead_letters_total";
pub const RECEIPTS: &str = "herald_receipts_total";
pub const STORE_ERRORS: &str = "herald_store_errors_total";
pub const PROMOTED: &str = "herald_promoted_total";
pub const STORE_UP: &str = "herald_store_up";
pub const SUPPRESSED: &str = "herald_suppressed_total";
pub const REROUTED: &str = "herald_rerouted_total";
/// Entries given back to their queue because their turn at the rate limiter came too late to
/// send them before another worker could take them over.
pub const REQUEUED: &str = "herald_requeued_total";
pub const RATE: &str = "herald_rate_limit_per_second";
const PLATFORM_USAGE: &str = "herald_platform_usage_percent";
pub const CIRCUIT: &str = "herald_circuit_open";
pub const COST: &str = "herald_cost_micros_total";
pub const CHANNEL_HELD: &str = "herald_channel_held";

static HANDLE: OnceLock<PrometheusHandle> = OnceLock::new();

/// Installs the Prometheus recorder once per process and returns its handle.
pub fn prometheus() -> PrometheusHandle {
    HANDLE
        .get_or_init(|| {
            let builder = PrometheusBuilder::new()
                .set_buckets_for_metric(
                    Matcher::Full(DISPATCH_SECONDS.to_string()),
                    &[
                        0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0,
                        10.0,
                    ],
                )
                .unwrap_or_else(|_| PrometheusBuilder::new());
            let recorder = builder.build_recorder();
            let handle = recorder.handle();
            // Another recorder may be installed already (tests embedding several servers).
            let _ = metrics::set_global_recorder(recorder);
            describe();
            handle
        })
        .clone()
}

fn describe() {
    metrics::describe_counter!(ACCEPTED, "Notifications accepted (durable), by priority.");
    metrics::describe_counter!(REJECTED, "Send requests or items refused, by reason.");
    metrics::describe_counter!(DISPATCHED, "Platform calls, by channel and outcome.");
    metrics::describe_histogram!(
        DISPATCH_SECONDS,
        metrics::Unit::Seconds,
        "Platform call latency, by channel."
    );
    metrics::describe_gauge!(
        QUEUE_DEPTH,
        "Ready and in-flight entries, by channel and priority."
    );
    metrics::describe_gauge!(
        DELAYED_DEPTH,
        "Scheduled sends and retries waiting for their time."
    );
    metrics::describe_counter!(RETRIES, "Retries scheduled, by channel.");
    metrics::describe_counter!(FALLBACKS, "Moves to the next channel, by channel left.");
    metrics::describe_counter!(DEAD_LETTERS, "Notifications dead-lettered, by channel.");
    metrics::describe_counter!(
        RECEIPTS,
        "Platform receipts recorded, by channel and status."
    );
    metrics::describe_counter!(STORE_ERRORS, "Store operations that failed, by operation.");
    metrics::describe_counter!(
        REQUEUED,
        "Entries given back to their queue: their limiter turn came too late to send safely."
    );
    metrics::describe_counter!(PROMOTED, "Scheduled sends and retries moved to ready.");
    metrics::describe_gauge!(STORE_UP, "1 while the store answers, else 0.");
    metrics::describe_counter!(
        SUPPRESSED,
        "Sends skipped because every address was dead or opted out, by channel."
    );
    metrics::describe_gauge!(
        CHANNEL_HELD,
        "1 while a channel is not sending, by channel and reason (throttled, misconfigured)."
    );
}

pub fn accepted(priority: Priority, n: u64) {
    metrics::counter!(ACCEPTED, "priority" => priority.name()).increment(n);
}

pub fn rejected(reason: &'static str, n: u64) {
    metrics::counter!(REJECTED, "reason" => reason).increment(n);
}

pub fn dispatched(channel: Channel, outcome: &'static str, took: Duration) {
    metrics::counter!(DISPATCHED, "channel" => channel.name(), "outcome" => outcome).increment(1);
    metrics::histogram!(DISPATCH_SECONDS, "channel" => channel.name()).record(took.as_secs_f64());
}

pub fn retry(channel: Channel) {
    metrics::counter!(RETRIES, "channel" => channel.name()).increment(1);
}

pub fn fallback(channel: Channel) {
    metrics::counter!(FALLBACKS, "channel" => channel.name()).increment(1);
}

pub fn dead_letter(channel: Channel) {
    metrics::counter!(DEAD_LETTERS, "channel" => channel.name()).increment(1);
}

pub fn receipt(channel: Channel, status: Status) {
    metrics::counter!(RECEIPTS, "channel" => channel.name(), "status" => status.name())
        .increment(1);
}

pub fn store_error(op: &'static str) {
    metrics::counter!(STORE_ERRORS, "op" => op).increment(1);
}

pub fn promoted(n: usize) {
    metrics::counter!(PROMOTED).increment(n as u64);
}

pub fn queue_depth(channel: Channel, priority: Priority, depth: u64) {
    metrics::gauge!(QUEUE_DEPTH, "channel" => channel.name(), "priority" => priority.name())
        .set(depth as f64);
}

pub fn delayed_depth(depth: u64) {
    metrics::gauge!(DELAYED_DEPTH).set(depth as f64);
}

/// 1 while a channel's circuit is open (0.5 while a probe is out), else 0.
pub fn circuit(channel: Channel, state: &'static str) {
    let v = match state {
        "open" => 1.0,
        "half_open" => 0.5,
        _ => 0.0,
    };
    metrics::gauge!(CIRCUIT, "channel" => channel.name()).set(v);
}

/// This instance's share of a channel's rate, after adaptation.
pub fn rate(channel: Channel, per_second: f64) {
    metrics::gauge!(RATE, "channel" => channel.name()).set(per_second);
}

/// The share of its quota a platform says is used (Graph's usage headers).
pub fn platform_usage(channel: Channel, percent: u8) {
    metrics::gauge!(PLATFORM_USAGE, "channel" => channel.name()).set(f64::from(percent));
}

pub fn requeued(channel: Channel) {
    metrics::counter!(REQUEUED, "channel" => channel.name()).increment(1);
}

pub fn rerouted(channel: Channel) {
    metrics::counter!(REROUTED, "channel" => channel.name()).increment(1);
}

pub fn cost(channel: Channel, category: crate::model::Category, currency: &str, micros: i64) {
    // Currencies are ISO codes from the policy: a small bounded set.
    metrics::counter!(COST, "channel" => channel.name(), "category" => category.name(), "currency" => currency.to_string())
        .increment(micros.max(0) as u64);
}

pub fn suppressed(channel: Channel) {
    metrics::counter!(SUPPRESSED, "channel" => channel.name()).increment(1);
}

pub fn channel_held(channel: Channel, reason: &'static str, held: bool) {
    metrics::gauge!(CHANNEL_HELD, "channel" => channel.name(), "reason" => reason).set(if held {
        1.0
    } else {
        0.0
    });
}

pub fn store_up(up: bool) {
    metrics::gauge!(STORE_UP).set(if up { 1.0 } else { 0.0 });
}

/// Sets up logging: `RUST_LOG` wins over `level`; `json` or plain text.
pub fn init_tracing(level: &str, format: &str) {
    use tracing_subscriber::EnvFilter;
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(level));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    let _ = if format == "json" {
        builder.json().try_init()
    } else {
        builder.try_init()
    };
}
