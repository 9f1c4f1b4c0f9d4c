//! Platform channels behind one `Channel` trait: each builds the platform's request, sends it
//! and classifies the answer into one `Outcome`. Channels never touch the store or metrics.
//!
//! Every channel module has the same shape, so the next one is written by copying the
//! pattern: its config lives in `config::<name>`; the module has `build()` (config → channel),
//! request building (a pure function, unit-tested), the send, `classify()` (every documented
//! answer → `Outcome`, unit-tested per error code), and its tests.

pub mod apns;
pub mod email;
pub mod fcm;
pub mod messenger;
pub mod sandbox;
pub mod sms;
pub mod webhook;
pub mod webpush;
pub mod whatsapp;

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use tokio::sync::mpsc;

use crate::model::{self, Millis, Notification, Outcome, ProviderReceipt};

/// Where channels report what platforms tell them later (delivery, reads).
pub type ReceiptSink = mpsc::Sender<ProviderReceipt>;

/// What every channel may need from the process that builds it.
#[derive(Clone)]
pub struct Deps {
    pub receipts: ReceiptSink,
    /// How platforms reach Herald's webhooks (`server.public_url`), e.g. Twilio's
    /// `StatusCallback`.
    pub public_url: String,
    /// Timeout of one platform request (`dispatch.request_timeout`).
    pub request_timeout: Duration,
}

/// What a channel knows when it sends one notification.
#[derive(Debug, Clone)]
pub struct SendContext<'a> {
    /// Counts from 1, across channels.
    pub attempt: u32,
    /// The recipient's addresses on this channel that are neither dead nor opted out (device
    /// tokens, subscription endpoints, the phone number, …). Never empty.
    pub addresses: &'a [String],
    /// When the person last wrote to us on this channel (opens messaging windows); 0 = never.
    pub last_inbound: Millis,
    pub now: Millis,
}

/// `Delivery::meta` key of the share (percent) of the platform's quota used, when the
/// platform says (Graph's `X-App-Usage`, `X-Page-Usage`, `X-Business-Use-Case-Usage`): the
/// dispatcher slows the channel down from [`crate::ratelimit::USAGE_SLOW_FROM`] on.
pub const USAGE_PERCENT: &str = "usage_percent";

/// A channel's verdict on one notification, with what it learnt about addresses.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Delivery {
    pub outcome: Outcome,
    /// Addresses the platform said are dead (one token among several, say).
    pub dead: Vec<String>,
    /// Addresses whose owner opted out (Twilio 21610).
    pub opted_out: Vec<String>,
    /// Facts to keep on the attempt (`segments`, `encoding`, `messaging_type`, …).
    pub meta: BTreeMap<String, String>,
}

impl Delivery {
    pub fn of(outcome: Outcome) -> Self {
        Self {
            outcome,
            dead: Vec::new(),
            opted_out: Vec::new(),
            meta: BTreeMap::new(),
        }
    }

    pub fn meta(mut self, key: &str, value: impl ToString) -> Self {
        self.meta.insert(key.to_string(), value.to_string());
        self
    }
}

impl From<Outcome> for Delivery {
    fn from(o: Outcome) -> Self {
        Delivery::of(o)
    }
}

#[async_trait]
pub trait Channel: Send + Sync + 'static {
    fn kind(&self) -> model::Channel;

    /// Whether the platform accepting a request means it was delivered (a webhook receiver's
    /// 2xx is delivery; a push service's 200 is not).
    fn accept_is_delivery(&self) -> bool {
        false
    }

    /// Whether the platform reports receipts as watermarks per address (Messenger): then
    /// sent notifications are indexed by address and time.
    fn watermark_receipts(&self) -> bool {
        false
    }

    /// Sends one notification to `ctx.addresses`.
    async fn send(&self, n: &Notification, ctx: &SendContext<'_>) -> Delivery;
}

/// Folds per-address results (one request per device token) into one delivery: sent if any
/// was taken; otherwise the most hopeful failure (retry before policy before dead).
pub fn combine(results: Vec<(String, Outcome)>) -> Delivery {
    let mut dead = Vec::new();
    let mut sent: Option<Outcome> = None;
    let mut best: Option<Outcome> = None;
    let rank = |o: &Outcome| match o {
        Outcome::Sent { .. } => 0,
        Outcome::Throttled { .. } => 1,
        Outcome::Retry { .. } => 2,
        Outcome::Misconfigured { .. } => 3,
        Outcome::PolicyRejected { .. } => 4,
        Outcome::BadPayload { .. } => 5,
        Outcome::DeadAddress { .. } => 6,
    };
    for (addr, o) in results {
        match &o {
            Outcome::Sent { .. } => {
                if sent.is_none() {
                    sent = Some(o);
                }
                continue;
            }
            Outcome::DeadAddress { .. } => dead.push(addr),
            _ => {}
        }
        if best.as_ref().map(|b| rank(&o) < rank(b)).unwrap_or(true) {
            best = Some(o);
        }
    }
    let outcome = sent.or(best).unwrap_or(Outcome::DeadAddress {
        detail: model::Detail::new("no_address", "no address to send to"),
    });
    Delivery {
        outcome,
        dead,
        opted_out: Vec::new(),
        meta: BTreeMap::new(),
    }
}

/// Idle keep-alive connections kept per host: the default dispatch in-flight bound (16 shards
/// × 2 workers × 64). With fewer, a drain closes connections as sends finish and opens new
/// ones for the next (6% of Herald's CPU went to connecting in `herald-load run e2e` at 256).
/// Idle ones close after 90 s.
pub const MAX_IDLE_PER_HOST: usize = 2048;

/// An HTTP client for platform APIs: pooled keep-alive connections, no redirects, TLS by
/// rustls with the system's roots.
pub fn http_client(timeout: Duration) -> Result<reqwest::Client, String> {
    reqwest::Client::builder()
        .timeout(timeout)
        .connect_timeout(timeout.min(Duration::from_secs(5)))
        .redirect(reqwest::redirect::Policy::none())
        .pool_max_idle_per_host(MAX_IDLE_PER_HOST)
        .pool_idle_timeout(Duration::from_secs(90))
        .user_agent(concat!("herald/", env!("CARGO_PKG_VERSION")))
        .build()
        .map_err(|e| format!("http client: {e}"))
}

/// The channels this process sends with.
#[derive(Clone, Default)]
pub struct Channels {
    by_kind: HashMap<model::Channel, Arc<dyn Channel>>,
}

impl Channels {
    pub fn new(list: Vec<Arc<dyn Channel>>) -> Self {
        Self {
            by_kind: list.into_iter().map(|c| (c.kind(), c)).collect(),
        }
    }

    pub fn get(&self, kind: model::Channel) -> Option<&Arc<dyn Channel>> {
        self.by_kind.get(&kind)
    }

    pub fn kinds(&self) -> Vec<model::Channel> {
        let mut v: Vec<_> = self.by_kind.keys().copied().collect();
        v.sort();
        v
    }
}

/// `Retry-After` as seconds or an HTTP date.
pub fn parse_retry_after(v: &str) -> Option<Duration> {
    let v = v.trim();
    if let Ok(secs) = v.parse::<u64>() {
        return Some(Duration::from_secs(secs));
    }
    let when = httpdate::parse_http_date(v).ok()?;
    Some(
        when.duration_since(std::time::SystemTime::now())
            .unwrap_or(Duration::ZERO),
    )
}

/// The `Retry-After` header of a response, if any.
pub fn retry_after(headers: &reqwest::header::HeaderMap) -> Option<Duration> {
    headers
        .get(reqwest::header::RETRY_AFTER)
        .and_then(|v| v.to_str().ok())
        .and_then(parse_retry_after)
}

/// A transport failure (connect, timeout, reset) as a transient outcome.
pub fn transport_error(e: &reqwest::Error) -> Outcome {
    let code = if e.is_timeout() {
        "timeout"
    } else if e.is_connect() {
        "connect"
    } else {
        "transport"
    };
    Outcome::Retry {
        after: None,
        detail: model::Detail::new(code, e.to_string()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::Detail;

    #[test]
    fn retry_after_forms() {
        assert_eq!(parse_retry_after("2"), Some(Duration::from_secs(2)));
        assert_eq!(parse_retry_after(" 120 "), Some(Duration::from_secs(120)));
        let past = httpdate::fmt_http_date(std::time::UNIX_EPOCH);
        assert_eq!(parse_retry_after(&past), Some(Duration::ZERO));
        let later = std::time::SystemTime::now() + Duration::from_secs(30);
        let d = parse_retry_after(&httpdate::fmt_http_date(later)).expect("date parses");
        assert!(d <= Duration::from_secs(30) && d >= Duration::from_secs(28));
        assert_eq!(parse_retry_after("soon"), None);
    }

    #[test]
    fn combine_prefers_sent_and_reports_dead_tokens() {
        let dead = || Outcome::DeadAddress {
            detail: Detail::new("Unregistered", "gone"),
        };
        let d = combine(vec![
            ("a".into(), dead()),
            (
                "b".into(),
                Outcome::Sent {
                    provider_id: "p".into(),
                },
            ),
        ]);
        assert!(matches!(d.outcome, Outcome::Sent { .. }));
        assert_eq!(d.dead, vec!["a".to_string()]);
        let d = combine(vec![
            ("a".into(), dead()),
            (
                "b".into(),
                Outcome::Retry {
                    after: None,
                    detail: Detail::new("500", "x"),
                },
            ),
        ]);
        assert!(matches!(d.outcome, Outcome::Retry { .. }));
        let d = combine(vec![("a".into(), dead()), ("b".into(), dead())]);
        assert!(matches!(d.outcome, Outcome::DeadAddress { .. }));
        assert_eq!(d.dead.len(), 2);
    }
}
