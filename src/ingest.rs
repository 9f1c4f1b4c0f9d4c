//! The accept path: validate, assign an id, resolve the route, idempotency, shard, enqueue.
//! Answers only once the store holds the notification.

use std::collections::BTreeMap;
use std::sync::{Arc, OnceLock};

use sha2::{Digest, Sha256};

use crate::channels::webhook;
use crate::config::IngestConfig;
use crate::model::{
    fnv1a, make_id_at, now_ms, Category, Channel, Content, Millis, Notification, Priority,
    Recipient, Status,
};
use crate::store::{Enqueued, IdemKey, NewNotification, Store, StoreError};
use crate::telemetry;
use tokio::sync::{mpsc, oneshot};

/// One invalid field of a request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FieldViolation {
    pub field: String,
    pub description: String,
}

impl FieldViolation {
    pub fn new(field: impl Into<String>, description: impl Into<String>) -> Self {
        Self {
            field: field.into(),
            description: description.into(),
        }
    }
}

#[derive(Debug, Clone, thiserror::Error)]
pub enum IngestError {
    #[error("invalid request: {}", .0.iter().map(|v| format!("{}: {}", v.field, v.description)).collect::<Vec<_>>().join("; "))]
    Invalid(Vec<FieldViolation>),
    #[error("idempotency key already used with a different request (notification {id})")]
    Conflict { id: String },
    #[error("{0}")]
    Unavailable(String),
    #[error("{0}")]
    Internal(String),
}

impl From<StoreError> for IngestError {
    fn from(e: StoreError) -> Self {
        match e {
            StoreError::Unavailable(m) => IngestError::Unavailable(m),
            StoreError::Internal(m) => IngestError::Internal(m),
            // Callers that take tokens name their own field; reaching here is a bug.
            StoreError::BadCursor(t) => IngestError::Internal(format!("unexpected token {t:?}")),
        }
    }
}

impl From<FieldViolation> for IngestError {
    fn from(v: FieldViolation) -> Self {
        IngestError::Invalid(vec![v])
    }
}

/// A send request in domain terms, not yet validated.
#[derive(Debug, Clone, Default)]
pub struct Draft {
    pub idempotency_key: String,
    pub campaign_id: String,
    pub labels: BTreeMap<String, String>,
    pub recipient: Recipient,
    pub channels: Vec<Channel>,
    pub content: Content,
    pub category: Option<Category>,
    pub priority: Option<Priority>,
    pub send_at: Millis,
    pub expire_at: Millis,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Accepted {
    pub id: String,
    pub status: Status,
    pub duplicate: bool,
}

pub struct Ingest {
    store: Arc<dyn Store>,
    cfg: IngestConfig,
    /// Channels this deployment can send with.
    enabled: Vec<Channel>,
    /// Route used when a request names no channels.
    default_route: Vec<Channel>,
    /// Refuse `http://` webhook URLs (`channels.webhook.allow_http = false`).
    https_webhooks_only: bool,
    /// Unary sends on their way to the store together (started on first use).
    coalescer: OnceLock<mpsc::Sender<Pending>>,
    /// How long a unary send waits for its write, queue included (`redis.command_timeout`).
    write_timeout: std::time::Duration,
}

/// A unary send waiting to be written, and where its result goes.
type Pending = (
    NewNotification,
    oneshot::Sender<Result<Enqueued, StoreError>>,
);

/// Batches of unary sends being written at once, at most.
const COALESCED_WRITES: usize = 2;
/// Unary sends written in one store call, at most.
const COALESCED_MAX: usize = 256;

/// Unary sends that arrive while others are being written are written together, in one store
/// call (one round trip; one function call per shard), so Redis's fixed cost per call is
/// shared instead of paid by each: a one-item enqueue cost Redis 157k instructions, against
/// 64k per item in a batch. Nothing waits for company: a send that finds a write slot free is
/// written at once, alone. Each send still answers only once its own write is done.
fn spawn_coalescer(store: Arc<dyn Store>) -> mpsc::Sender<Pending> {
    let (tx, mut rx) = mpsc::channel::<Pending>(4 * COALESCED_MAX);
    tokio::spawn(async move {
        let slots = Arc::new(tokio::sync::Semaphore::new(COALESCED_WRITES));
        while let Some(first) = rx.recv().await {
            // Waiting for a slot is when the others gather.
            let Ok(slot) = slots.clone().acquire_owned().await else {
                return;
            };
            let mut batch = vec![first];
            while batch.len() < COALESCED_MAX {
                match rx.try_recv() {
                    Ok(p) => batch.push(p),
                    Err(_) => break,
                }
            }
            let store = store.clone();
            tokio::spawn(async move {
                let _slot = slot;
                let (items, replies): (Vec<_>, Vec<_>) = batch.into_iter().unzip();
                match store.enqueue(items).await {
                    Ok(results) => {
                        let mut results = results.into_iter();
                        for reply in replies {
                            let r = results.next().ok_or_else(|| {
                                StoreError::Internal("store returned too few results".into())
                            });
                            let _ = reply.send(r);
                        }
                    }
                    Err(e) => {
                        for reply in replies {
                            let _ = reply.send(Err(e.clone()));
                        }
                    }
                }
            });
        }
    });
    tx
}

const MAX_SCHEDULE_AHEAD_MS: Millis = 366 * 24 * 3600 * 1000;

impl Ingest {
    pub fn new(
        store: Arc<dyn Store>,
        cfg: IngestConfig,
        enabled: Vec<Channel>,
        default_route: Vec<Channel>,
    ) -> Self {
        Self {
            store,
            cfg,
            enabled,
            default_route,
            https_webhooks_only: false,
            coalescer: OnceLock::new(),
            write_timeout: std::time::Duration::from_secs(2),
        }
    }

    /// A unary send answers UNAVAILABLE when its write, waiting in the queue included, takes
    /// longer than this (the store's own command timeout: a Redis that is away is reported in
    /// that time, not after the writes queued ahead of it have failed too).
    pub fn write_timeout(mut self, d: std::time::Duration) -> Self {
        self.write_timeout = d;
        self
    }

    /// Refuses `http://` webhook URLs from now on.
    pub fn https_webhooks_only(mut self, yes: bool) -> Self {
        self.https_webhooks_only = yes;
        self
    }

    pub fn max_batch(&self) -> usize {
        self.cfg.max_batch
    }

    /// Accepts one notification.
    pub async fn send(&self, tenant: &str, draft: Draft) -> Result<Accepted, IngestError> {
        let item = self.prepare(tenant, draft, now_ms())?;
        let priority = item.notification.priority;
        let r = if priority == Priority::High {
            // HIGH goes alone, on the store's HIGH lane: it never waits in a batch.
            crate::store::high_lane(self.store.enqueue(vec![item]))
                .await?
                .pop()
                .ok_or_else(|| IngestError::Internal("store returned no result".into()))?
        } else {
            let (reply, result) = oneshot::channel();
            let queue = self
                .coalescer
                .get_or_init(|| spawn_coalescer(self.store.clone()));
            let write = async {
                queue
                    .send((item, reply))
                    .await
                    .map_err(|_| IngestError::Internal("the write queue is gone".into()))?;
                result
                    .await
                    .map_err(|_| IngestError::Internal("the write queue dropped a send".into()))?
                    .map_err(IngestError::from)
            };
            tokio::time::timeout(self.write_timeout, write)
                .await
                .map_err(|_| {
                    IngestError::Unavailable("the store did not answer in time".into())
                })??
        };
        let a = accepted(r)?;
        if !a.duplicate {
            telemetry::accepted(priority, 1);
        }
        Ok(a)
    }

    /// Accepts many: invalid items get their own error, the rest are written in one round trip
    /// per shard. The outer error is for the whole call (the store is down).
    pub async fn send_batch(
        &self,
        tenant: &str,
        drafts: Vec<Result<Draft, IngestError>>,
    ) -> Result<Vec<Result<Accepted, IngestError>>, IngestError> {
        if drafts.len() > self.cfg.max_batch {
            return Err(FieldViolation::new(
                "items",
                format!(
                    "{} items is over the limit of {} per batch",
                    drafts.len(),
                    self.cfg.max_batch
                ),
            )
            .into());
        }
        let now = now_ms();
        let mut results: Vec<Option<Result<Accepted, IngestError>>> = Vec::new();
        let mut items = Vec::new();
        let mut slots = Vec::new();
        for (i, d) in drafts.into_iter().enumerate() {
            match d.and_then(|d| self.prepare(tenant, d, now)) {
                Ok(item) => {
                    items.push(item);
                    slots.push(i);
                    results.push(None);
                }
                Err(e) => {
                    telemetry::rejected("invalid", 1);
                    results.push(Some(Err(e)));
                }
            }
        }
        if !items.is_empty() {
            let prio: Vec<Priority> = items.iter().map(|i| i.notification.priority).collect();
            let written = self.store.enqueue(items).await?;
            for ((slot, r), p) in slots.into_iter().zip(written).zip(prio) {
                let a = accepted(r);
                if matches!(&a, Ok(x) if !x.duplicate) {
                    telemetry::accepted(p, 1);
                }
                results[slot] = Some(a);
            }
        }
        results
            .into_iter()
            .map(|r| {
                r.ok_or_else(|| IngestError::Internal("store returned too few results".into()))
            })
            .collect()
    }

    /// Validates a draft and builds what the store writes.
    pub fn prepare(
        &self,
        tenant: &str,
        d: Draft,
        now: Millis,
    ) -> Result<NewNotification, IngestError> {
        let mut v = Vec::new();
        let route = self.validate(&d, now, &mut v);
        if !v.is_empty() {
            return Err(IngestError::Invalid(v));
        }
        let shards = self.store.shards();
        let idem = if d.idempotency_key.is_empty() {
            None
        } else {
            Some(format!("{tenant}:{}", d.idempotency_key))
        };
        let shard = match &idem {
            Some(k) => (fnv1a(k.as_bytes()) % u64::from(shards)) as u16,
            None => rand::random_range(0..shards),
        };
        let mut n = Notification {
            id: String::new(),
            tenant: tenant.to_string(),
            idempotency_key: d.idempotency_key,
            campaign_id: d.campaign_id,
            labels: d.labels,
            recipient: d.recipient,
            route,
            content: d.content,
            category: d.category.unwrap_or(Category::Transactional),
            priority: d.priority.unwrap_or(Priority::Normal),
            send_at: if d.send_at > now { d.send_at } else { 0 },
            expire_at: d.expire_at,
            created_at: 0,
        };
        // One encoding, of what was asked (no id, no time): the fingerprint covers exactly
        // that, and the size check adds what the id and time take (at most 2 bytes of string
        // header and 8 of integer more than the empty id and the 0 encoded here).
        // Without an idempotency key only its length is needed, counted without writing it.
        let (asked_len, idem) = match idem {
            Some(key) => {
                let asked = n.encode();
                let fingerprint = fingerprint(&asked);
                (asked.len(), Some(IdemKey { key, fingerprint }))
            }
            None => (n.encoded_len(), None),
        };
        n.id = make_id_at(shard, now);
        n.created_at = now;
        if asked_len + n.id.len() + ID_AND_TIME_OVERHEAD > self.cfg.max_notification_bytes {
            return Err(FieldViolation::new(
                "content",
                format!(
                    "the notification is over {} bytes encoded",
                    self.cfg.max_notification_bytes
                ),
            )
            .into());
        }
        Ok(NewNotification {
            notification: n,
            shard,
            idem,
        })
    }

    fn validate(&self, d: &Draft, now: Millis, v: &mut Vec<FieldViolation>) -> Vec<Channel> {
        let mut bad = |f: &str, m: String| v.push(FieldViolation::new(f, m));
        if d.idempotency_key.len() > 256 {
            bad("idempotency_key", "must be at most 256 bytes".into());
        }
        if d.campaign_id.len() > 128 {
            bad("campaign_id", "must be at most 128 bytes".into());
        }
        if d.labels.len() > 64 {
            bad("labels", "at most 64 labels".into());
        }
        for (k, val) in &d.labels {
            if k.is_empty() || k.len() > 63 || val.len() > 256 {
                bad(
                    &format!("labels[{k}]"),
                    "keys are 1 to 63 bytes, values at most 256".into(),
                );
            }
        }
        let r = &d.recipient;
        if r.is_empty() && !d.channels.contains(&Channel::Sandbox) {
            bad(
                "recipient",
                "is required: give a contact_id or an address for at least one channel".into(),
            );
        }
        if !r.webhook_url.is_empty() {
            match webhook::target(&r.webhook_url).as_ref().map(|u| u.scheme()) {
                Some("http") if self.https_webhooks_only => bad(
                    "recipient.webhook_url",
                    "must be https (channels.webhook.allow_http is false)".into(),
                ),
                Some("http" | "https") => {}
                _ => bad(
                    "recipient.webhook_url",
                    "must be an absolute http(s) URL".into(),
                ),
            }
        }
        if !r.phone.is_empty() && !is_e164(&r.phone) {
            bad("recipient.phone", "must be E.164, e.g. +14155550123".into());
        }
        if !r.whatsapp_number.is_empty() && !is_e164(&r.whatsapp_number) {
            bad(
                "recipient.whatsapp_number",
                "must be E.164, e.g. +14155550123".into(),
            );
        }
        if !r.email.is_empty() && !looks_like_email(&r.email) {
            bad("recipient.email", "is not an email address".into());
        }
        for (i, s) in r.webpush_subscriptions.iter().enumerate() {
            if url::Url::parse(&s.endpoint)
                .map(|u| u.scheme() != "https" && u.scheme() != "http")
                .unwrap_or(true)
            {
                bad(
                    &format!("recipient.webpush_subscriptions[{i}].endpoint"),
                    "must be an absolute URL".into(),
                );
            }
        }
        let c = &d.content;
        if c.body.len() > self.cfg.max_body_bytes {
            bad(
                "content.body",
                format!(
                    "is {} bytes, over the limit of {}",
                    c.body.len(),
                    self.cfg.max_body_bytes
                ),
            );
        }
        if c.title.len() > 1024 {
            bad("content.title", "must be at most 1024 bytes".into());
        }
        if c.body.is_empty() && c.title.is_empty() && c.template.is_none() && c.data.is_empty() {
            bad(
                "content",
                "is empty: give a title, a body, a template or data".into(),
            );
        }
        if c.collapse_id.len() > 64 {
            bad("content.collapse_id", "must be at most 64 bytes".into());
        }
        if d.send_at < 0 || d.send_at > now + MAX_SCHEDULE_AHEAD_MS {
            bad("send_at", "must be within a year from now".into());
        }
        if d.expire_at != 0 {
            if d.expire_at <= now {
                bad("expire_at", "is in the past".into());
            } else if d.send_at > 0 && d.expire_at <= d.send_at {
                bad("expire_at", "must be after send_at".into());
            }
        }
        // The route: the request's channels, or the default; each must be enabled here, and
        // only channels the recipient has an address for stay in it.
        let mut route = Vec::new();
        let asked = if d.channels.is_empty() {
            self.default_route.clone()
        } else {
            d.channels.clone()
        };
        for (i, ch) in d.channels.iter().enumerate() {
            if !self.enabled.contains(ch) {
                bad(
                    &format!("channels[{i}]"),
                    format!("channel {ch} is not enabled on this deployment"),
                );
            }
            if d.channels[..i].contains(ch) {
                bad(
                    &format!("channels[{i}]"),
                    format!("channel {ch} is listed twice"),
                );
            }
        }
        for ch in asked {
            if self.enabled.contains(&ch) && r.has_address(ch) && !route.contains(&ch) {
                route.push(ch);
            }
        }
        if route.is_empty() && !r.is_empty() && v.is_empty() {
            v.push(FieldViolation::new(
                "recipient",
                "has no address for any channel of the route".to_string(),
            ));
        }
        route
    }
}

fn accepted(r: Enqueued) -> Result<Accepted, IngestError> {
    match r {
        Enqueued::Created { id, status } => Ok(Accepted {
            id,
            status,
            duplicate: false,
        }),
        Enqueued::Duplicate { id, status } => Ok(Accepted {
            id,
            status,
            duplicate: true,
        }),
        Enqueued::Conflict { id } => Err(IngestError::Conflict { id }),
    }
}

/// What an id and a creation time add to an encoded notification beyond the id's own bytes.
const ID_AND_TIME_OVERHEAD: usize = 10;

/// A digest of a notification encoded without its id and creation time.
fn fingerprint(asked: &[u8]) -> String {
    let digest = Sha256::digest(asked);
    crate::model::hex(&digest[..16])
}

fn is_e164(s: &str) -> bool {
    let Some(digits) = s.strip_prefix('+') else {
        return false;
    };
    (7..=15).contains(&digits.len())
        && digits.chars().all(|c| c.is_ascii_digit())
        && !digits.starts_with('0')
}

fn looks_like_email(s: &str) -> bool {
    match s.split_once('@') {
        Some((local, domain)) => {
            !local.is_empty()
                && domain.contains('.')
                && !domain.starts_with('.')
                && !domain.ends_with('.')
                && !s.contains(char::is_whitespace)
                && s.len() <= 254
        }
        None => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::MemoryStore;

    fn ingest() -> Ingest {
        Ingest::new(
            Arc::new(MemoryStore::default()),
            IngestConfig::default(),
            vec![Channel::Sandbox, Channel::Webhook],
            vec![Channel::Webhook],
        )
    }

    fn draft() -> Draft {
        Draft {
            recipient: Recipient {
                webhook_url: "https://example.com/hook".into(),
                ..Default::default()
            },
            content: Content {
                body: "hello".into(),
                ..Default::default()
            },
            ..Default::default()
        }
    }

    fn fields(e: IngestError) -> Vec<String> {
        match e {
            IngestError::Invalid(v) => v.into_iter().map(|f| f.field).collect(),
            other => panic!("expected invalid, got {other:?}"),
        }
    }

    #[test]
    fn the_counted_length_is_the_encoded_length() {
        let ing = ingest();
        let mut checked = 0;
        for body in [0usize, 1, 31, 32, 255, 256, 70_000] {
            let mut d = draft();
            d.content.title = "t".into();
            d.content.body = "é".repeat(body);
            d.labels = [("k".to_string(), "v".repeat(body % 300))].into();
            let n = ing.prepare("tenant", d, now_ms()).map(|i| i.notification);
            match n {
                Ok(n) => {
                    assert_eq!(n.encoded_len(), n.encode().len(), "body {body}");
                    checked += 1;
                }
                Err(e) => assert_eq!(fields(e), ["content.body"], "body {body}"),
            }
        }
        // Only the oversized body is refused; every other size was compared.
        assert_eq!(checked, 6);
    }

    #[test]
    fn a_remembered_webhook_url_is_checked_as_it_was() {
        let https = ingest().https_webhooks_only(true);
        let http_ok = ingest();
        let url = |u: &str| {
            let mut d = draft();
            d.recipient.webhook_url = u.into();
            d
        };
        // The same URL over and over, then another, then back: each answer is its own.
        for _ in 0..3 {
            assert!(http_ok
                .prepare("t", url("http://a.example/h"), now_ms())
                .is_ok());
        }
        let refused = https.prepare("t", url("http://a.example/h"), now_ms());
        assert_eq!(
            fields(refused.expect_err("http refused")),
            ["recipient.webhook_url"]
        );
        for bad in ["not a url", "ftp://a.example/h", "http://", "//a.example/h"] {
            let e = http_ok.prepare("t", url(bad), now_ms()).expect_err(bad);
            assert_eq!(fields(e), ["recipient.webhook_url"], "{bad}");
        }
        assert!(https
            .prepare("t", url("https://a.example/h"), now_ms())
            .is_ok());
        assert!(https
            .prepare("t", url("https://a.example/h"), now_ms())
            .is_ok());
        assert!(http_ok
            .prepare("t", url("http://a.example/h"), now_ms())
            .is_ok());
    }

    #[test]
    fn the_size_check_bounds_the_encoded_notification_from_above() {
        let ing = ingest();
        for body in [1usize, 10, 100, 1_000, 4_000] {
            let mut d = draft();
            d.content.body = "x".repeat(body);
            d.campaign_id = "c".repeat(body % 97);
            let item = match ing.prepare("tenant", d, now_ms()) {
                Ok(i) => i,
                Err(e) => panic!("{body}: {e:?}"),
            };
            let n = item.notification;
            let whole = n.encode().len();
            let mut asked = n.clone();
            asked.id.clear();
            asked.created_at = 0;
            let estimate = asked.encode().len() + n.id.len() + ID_AND_TIME_OVERHEAD;
            assert!(whole <= estimate, "{whole} > {estimate}");
            assert!(
                estimate - whole <= ID_AND_TIME_OVERHEAD,
                "{whole} vs {estimate}"
            );
        }
        // Over the limit: refused, naming the field.
        let small = Ingest::new(
            Arc::new(MemoryStore::default()),
            IngestConfig {
                max_notification_bytes: 300,
                ..IngestConfig::default()
            },
            vec![Channel::Webhook],
            vec![Channel::Webhook],
        );
        let mut d = draft();
        d.content.body = "x".repeat(300);
        let e = small.prepare("tenant", d, now_ms()).expect_err("too big");
        assert_eq!(fields(e), vec!["content".to_string()]);
    }

    #[test]
    fn errors_name_the_field() {
        let i = ingest();
        let now = now_ms();
        let mut d = draft();
        d.recipient = Recipient::default();
        assert_eq!(
            fields(i.prepare("t", d, now).expect_err("bad")),
            ["recipient"]
        );

        let mut d = draft();
        d.content.body = "x".repeat(5000);
        assert_eq!(
            fields(i.prepare("t", d, now).expect_err("bad")),
            ["content.body"]
        );

        let mut d = draft();
        d.channels = vec![Channel::Webhook, Channel::Sms];
        assert_eq!(
            fields(i.prepare("t", d, now).expect_err("bad")),
            ["channels[1]"]
        );

        let mut d = draft();
        d.recipient.phone = "555-1234".into();
        assert_eq!(
            fields(i.prepare("t", d, now).expect_err("bad")),
            ["recipient.phone"]
        );

        let mut d = draft();
        d.expire_at = now - 1;
        assert_eq!(
            fields(i.prepare("t", d, now).expect_err("bad")),
            ["expire_at"]
        );

        let strict = ingest().https_webhooks_only(true);
        let mut d = draft();
        d.recipient.webhook_url = "http://example.com/hook".into();
        assert_eq!(
            fields(strict.prepare("t", d, now).expect_err("bad")),
            ["recipient.webhook_url"]
        );

        let mut d = draft();
        d.recipient.webhook_url = "not a url".into();
        assert_eq!(
            fields(i.prepare("t", d, now).expect_err("bad")),
            ["recipient.webhook_url"]
        );
    }

    #[test]
    fn route_keeps_channels_with_an_address() {
        let i = ingest();
        let mut d = draft();
        d.channels = vec![Channel::Webhook, Channel::Sandbox];
        let n = i.prepare("t", d, now_ms()).expect("valid").notification;
        assert_eq!(n.route, vec![Channel::Webhook, Channel::Sandbox]);
        let n = i
            .prepare("t", draft(), now_ms())
            .expect("valid")
            .notification;
        assert_eq!(n.route, vec![Channel::Webhook]);
    }

    #[test]
    fn idempotency_keys_pick_a_stable_shard_and_fingerprint() {
        let i = ingest();
        let mut d = draft();
        d.idempotency_key = "k1".into();
        let a = i.prepare("t", d.clone(), now_ms()).expect("valid");
        let b = i.prepare("t", d.clone(), now_ms() + 5).expect("valid");
        assert_eq!(a.shard, b.shard);
        assert_eq!(a.idem, b.idem);
        d.content.body = "changed".into();
        let c = i.prepare("t", d, now_ms()).expect("valid");
        assert_ne!(a.idem.map(|k| k.fingerprint), c.idem.map(|k| k.fingerprint));
    }

    #[test]
    fn e164_and_email_checks() {
        assert!(is_e164("+14155550123"));
        assert!(!is_e164("14155550123"));
        assert!(!is_e164("+0123456789"));
        assert!(looks_like_email("a@b.co"));
        assert!(!looks_like_email("a@b"));
        assert!(!looks_like_email("a b@c.de"));
    }
}
