//! Durable queue and notification state behind one `Store` trait: `RedisStore` in production,
//! `MemoryStore` as the embedded default. Both pass the same conformance suite.

pub mod memory;
pub mod redis;

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use tokio::sync::Notify;

use crate::model::{
    AttemptRecord, Channel, ContactChange, ContactKey, ContactState, ErrorClass, Millis,
    Notification, Priority, ProviderReceipt, Receipt, Status,
};

pub use self::memory::MemoryStore;
pub use self::redis::RedisStore;

tokio::task_local! {
    /// Set while a task does HIGH-priority work (a HIGH `Send`, the HIGH-only dispatch
    /// workers): the Redis store gives that work its own connection, so a HIGH notification's
    /// commands never wait in line behind the BULK drain's batch scripts on the shared one.
    static HIGH_LANE: ();
}

/// Runs `f` as HIGH-priority store work (see `HIGH_LANE`).
pub async fn high_lane<F: std::future::Future>(f: F) -> F::Output {
    HIGH_LANE.scope((), f).await
}

/// Whether the current task is doing HIGH-priority store work.
pub fn in_high_lane() -> bool {
    HIGH_LANE.try_with(|_| ()).is_ok()
}

#[derive(Debug, thiserror::Error, Clone)]
pub enum StoreError {
    /// The backing store cannot be reached now; callers answer UNAVAILABLE and retry.
    #[error("store unavailable: {0}")]
    Unavailable(String),
    /// A bug or corrupt data.
    #[error("store error: {0}")]
    Internal(String),
    /// A page token or cursor this store did not give out.
    #[error("not a token this store gave out: {0:?}")]
    BadCursor(String),
}

/// Idempotency: the tenant-scoped key and a fingerprint of the request it first came with.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IdemKey {
    pub key: String,
    pub fingerprint: String,
}

/// A validated notification ready to be written.
#[derive(Debug, Clone)]
pub struct NewNotification {
    pub notification: Notification,
    pub shard: u16,
    pub idem: Option<IdemKey>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Enqueued {
    Created {
        id: String,
        status: Status,
    },
    Duplicate {
        id: String,
        status: Status,
    },
    /// Same idempotency key, different request.
    Conflict {
        id: String,
    },
}

/// Which stream entry a claim came from; handed back to `finish`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EntryRef {
    pub priority: Priority,
    pub entry_id: String,
}

/// A notification a worker now owns and must finish.
#[derive(Debug, Clone)]
pub struct Claimed {
    pub entry: EntryRef,
    pub notification: Notification,
    /// Index in `notification.route` of the channel this entry is for.
    pub route_index: usize,
    /// Attempts made so far, all channels.
    pub attempts: u32,
    /// Attempts made so far on this channel.
    pub channel_attempts: u32,
}

impl Claimed {
    pub fn channel(&self) -> Option<Channel> {
        self.notification.route.get(self.route_index).copied()
    }
}

/// What becomes of a claimed notification.
#[derive(Debug, Clone, PartialEq)]
pub enum Disposition {
    /// The platform took it; `status` is `Sent`, or `Delivered` where acceptance is delivery
    /// (a webhook receiver's 2xx).
    Sent {
        status: Status,
        provider_id: String,
        cost_micros: i64,
        currency: String,
        /// Index it under this address by send time (platforms with watermark receipts).
        watermark: Option<ContactKey>,
        /// Budgets charged with `cost_micros` and per-contact send counts to bump.
        counters: Vec<Counter>,
    },
    /// Try the same channel again at `due`.
    Retry {
        due: Millis,
        class: ErrorClass,
        code: String,
    },
    /// Queue on the next channel of its route.
    Fallback {
        route_index: usize,
        channel: Channel,
    },
    /// Give up; `dead_letter` keeps it for inspection and redrive.
    Failed {
        class: ErrorClass,
        code: String,
        message: String,
        dead_letter: bool,
    },
    /// Expired, suppressed or canceled before any platform saw it.
    Final(Status),
    /// Put back untouched (shutdown).
    Requeue,
}

/// A usage counter a send moves (kept by the store, read back per batch by the policy).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Counter {
    /// Spend under this budget key (e.g. `campaign:spring:20261123`), in micros.
    Budget(String),
    /// A send under this key (e.g. `<contact>:marketing`), for frequency caps.
    Recent(String),
}

/// How long per-contact send times are kept for frequency caps.
pub const RECENT_KEEP_MS: Millis = 31 * 24 * 3600 * 1000;

#[derive(Debug, Clone)]
pub struct Completion {
    pub entry: EntryRef,
    pub id: String,
    pub channel: Channel,
    /// The platform call made, if any.
    pub attempt: Option<AttemptRecord>,
    pub disposition: Disposition,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CancelTarget {
    Notification(String),
    Campaign(String),
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CancelOutcome {
    pub canceled: u64,
    /// For a single notification: its status after the call (None: unknown id).
    pub status: Option<Status>,
}

/// A notification as `GetNotification` shows it.
#[derive(Debug, Clone)]
pub struct NotificationView {
    pub notification: Notification,
    pub status: Status,
    pub channel: Option<Channel>,
    pub attempts: Vec<AttemptRecord>,
    pub receipts: Vec<Receipt>,
    pub cost_micros: i64,
    pub currency: String,
}

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CampaignStats {
    pub total: u64,
    pub by_status: BTreeMap<Status, u64>,
    pub by_channel: BTreeMap<Channel, BTreeMap<Status, u64>>,
    pub cost_micros: i64,
    pub canceled: bool,
}

#[derive(Debug, Clone)]
pub struct ReceiptPage {
    pub receipts: Vec<Receipt>,
    /// Where to read on from (also set on each receipt).
    pub cursor: String,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeadLetter {
    pub id: String,
    pub channel: Channel,
    pub class: Option<ErrorClass>,
    pub code: String,
    pub message: String,
    pub at: Millis,
}

/// One page of dead letters.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct DeadLetterPage {
    pub letters: Vec<DeadLetter>,
    /// Where the next page starts; None when this was the last.
    pub next: Option<String>,
}

/// What a redrive did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Redriven {
    /// Queued again.
    pub redriven: u64,
    /// Dead letters whose record is gone: left in place.
    pub gone: u64,
}

/// Depth of one ready lane, summed over shards (in flight included), and of the delayed sets.
#[derive(Debug, Clone, Default)]
pub struct QueueDepth {
    pub ready: BTreeMap<(Channel, Priority), u64>,
    pub delayed: u64,
}

#[async_trait]
pub trait Store: Send + Sync + 'static {
    fn shards(&self) -> u16;

    /// Wakes local workers when something becomes ready.
    fn signal(&self) -> &QueueSignal;

    /// Writes notifications (idempotency checked), one round trip per shard; returns in order.
    /// Returns only once the store holds them.
    async fn enqueue(&self, batch: Vec<NewNotification>) -> Result<Vec<Enqueued>, StoreError>;

    /// Claims up to `count` ready entries of `channel` on `shard` for `consumer`, HIGH lane
    /// first and no lane after `last` (`Priority::High`: the HIGH lane only), marking them
    /// SENDING. With `reclaim_idle`, entries other consumers have held longer than that are
    /// taken over first. Canceled and expired ones are finished inside.
    #[allow(clippy::too_many_arguments)]
    async fn claim(
        &self,
        channel: Channel,
        shard: u16,
        consumer: &str,
        count: usize,
        last: Priority,
        reclaim_idle: Option<Duration>,
        now: Millis,
    ) -> Result<Vec<Claimed>, StoreError>;

    /// Applies a batch's outcomes in one round trip. Entries `consumer` no longer owns (taken
    /// over by another worker) are skipped; returns how many were applied.
    async fn finish(
        &self,
        channel: Channel,
        shard: u16,
        consumer: &str,
        done: &[Completion],
        now: Millis,
    ) -> Result<usize, StoreError>;

    /// Moves due scheduled sends and retries of every shard to their ready lanes.
    async fn promote_due(&self, now: Millis, limit: usize) -> Result<usize, StoreError>;

    /// Applies receipts a platform reported later (delivered, read, failed).
    async fn record_receipts(&self, receipts: Vec<ProviderReceipt>) -> Result<(), StoreError>;

    async fn cancel(&self, target: CancelTarget, now: Millis) -> Result<CancelOutcome, StoreError>;

    async fn get(&self, id: &str) -> Result<Option<NotificationView>, StoreError>;

    /// Receipts after `cursor` (None: from now, or from the oldest kept with `from_start`).
    async fn read_receipts(
        &self,
        cursor: Option<&str>,
        from_start: bool,
        limit: usize,
    ) -> Result<ReceiptPage, StoreError>;

    async fn campaign(&self, campaign_id: &str) -> Result<CampaignStats, StoreError>;

    /// A channel's dead letters, newest first: up to `limit` after `page` (a token an earlier
    /// page gave; None: from the newest), and the token of the next page when there may be
    /// one. A token this store did not give is `StoreError::BadCursor`.
    async fn dead_letters(
        &self,
        channel: Channel,
        limit: usize,
        page: Option<&str>,
    ) -> Result<DeadLetterPage, StoreError>;

    /// Sends dead letters of `channel` again (`ids`, or all of them when empty): a notification
    /// still FAILED on that channel is QUEUED on it again with that channel's attempts at 0, a
    /// QUEUED receipt, and no expiry; its dead letter goes. A dead letter whose notification
    /// moved on goes too; one whose record is gone (past the retention of finished records)
    /// stays for inspection.
    async fn redrive_dead_letters(
        &self,
        channel: Channel,
        ids: &[String],
        now: Millis,
    ) -> Result<Redriven, StoreError>;

    async fn queue_depth(&self) -> Result<QueueDepth, StoreError>;

    /// The state of each address, in order (one round trip).
    async fn contacts(&self, keys: &[ContactKey]) -> Result<Vec<ContactState>, StoreError>;

    /// Applies address changes (dead, opted out, inbound message); later inbound times win.
    async fn update_contacts(
        &self,
        changes: Vec<(ContactKey, ContactChange)>,
    ) -> Result<(), StoreError>;

    /// Up to `limit` notifications waiting now (ready lanes, then scheduled and retries), with
    /// the route index each waits on: what a policy dry run evaluates.
    async fn waiting(&self, limit: usize) -> Result<Vec<(Notification, usize)>, StoreError>;

    /// Spend so far under each budget key, in micros (0 when none).
    async fn budget_spent(&self, keys: &[String]) -> Result<Vec<i64>, StoreError>;

    /// Sends under each key since `since` (frequency caps).
    async fn recent_sends(&self, keys: &[(String, Millis)]) -> Result<Vec<u64>, StoreError>;

    /// Records that `instance` is alive now; returns how many instances were alive within
    /// the last `window` (this one included).
    async fn heartbeat(
        &self,
        instance: &str,
        now: Millis,
        window: Millis,
    ) -> Result<u32, StoreError>;

    /// The policy in force (None: none applied yet).
    async fn policy(&self) -> Result<Option<PolicyRecord>, StoreError>;

    /// The version in force (0: none): what every instance polls.
    async fn policy_version(&self) -> Result<u64, StoreError>;

    /// Makes `document` the policy in force as the next version, unless `expected_version`
    /// is given and is not the version in force. Keeps the last 100 versions as history.
    async fn apply_policy(
        &self,
        expected_version: Option<u64>,
        document: String,
        author: String,
        diff: String,
        now: Millis,
    ) -> Result<PolicyApplied, StoreError>;

    /// Channels paused by an operator (across instances), with the reason given.
    async fn paused(&self) -> Result<BTreeMap<Channel, String>, StoreError>;

    /// Pauses `channel` (Some(reason)) or resumes it (None).
    async fn set_paused(&self, channel: Channel, reason: Option<String>) -> Result<(), StoreError>;

    /// Applied versions, newest first.
    async fn policy_history(&self, limit: usize) -> Result<Vec<PolicyRecord>, StoreError>;

    /// Notifications sent to `key` at or before `watermark` (Messenger's delivery and read
    /// watermarks), oldest first; kept for 7 days.
    async fn sent_before(
        &self,
        key: &ContactKey,
        watermark: Millis,
    ) -> Result<Vec<String>, StoreError>;

    async fn ping(&self) -> Result<(), StoreError>;
}

/// Per-channel wake-ups for idle workers of this process.
#[derive(Default)]
pub struct QueueSignal {
    by_channel: HashMap<Channel, Arc<Notify>>,
}

impl QueueSignal {
    pub fn new() -> Self {
        Self {
            by_channel: Channel::ALL
                .iter()
                .map(|c| (*c, Arc::new(Notify::new())))
                .collect(),
        }
    }

    pub fn notify(&self, channel: Channel) {
        if let Some(n) = self.by_channel.get(&channel) {
            n.notify_waiters();
        }
    }

    pub fn notify_all(&self) {
        for n in self.by_channel.values() {
            n.notify_waiters();
        }
    }

    /// Waits until `channel` is signalled or `timeout` passes.
    pub async fn wait(&self, channel: Channel, timeout: Duration) {
        match self.by_channel.get(&channel) {
            Some(n) => {
                let _ = tokio::time::timeout(timeout, n.notified()).await;
            }
            None => tokio::time::sleep(timeout).await,
        }
    }
}

/// One applied version of the policy document.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct PolicyRecord {
    pub version: u64,
    /// The TOML text as applied.
    pub document: String,
    pub author: String,
    pub applied_at: Millis,
    /// What changed from the version before, one line per key.
    pub diff: String,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PolicyApplied {
    Applied {
        version: u64,
    },
    /// `expected_version` was stale: this is the version in force.
    Stale {
        current: u64,
    },
}

/// Policy versions kept as history.
pub const POLICY_HISTORY: usize = 100;

/// How long the watermark index keeps a sent notification.
pub const WATERMARK_KEEP_MS: Millis = 7 * 24 * 3600 * 1000;

/// Builds the receipt a status change emits (both stores use it).
pub(crate) fn receipt_for(
    n: &Notification,
    channel: Option<Channel>,
    status: Status,
    at: Millis,
) -> Receipt {
    Receipt {
        notification_id: n.id.clone(),
        campaign_id: n.campaign_id.clone(),
        channel,
        status,
        provider_id: String::new(),
        error_class: None,
        error_code: String::new(),
        attempt: 0,
        cost_micros: 0,
        currency: String::new(),
        at,
        labels: n.labels.clone(),
        cursor: String::new(),
    }
}
