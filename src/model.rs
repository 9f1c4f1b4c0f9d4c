//! Domain types every part shares (notification, recipient, content, status, channel, outcome,
//! receipt). Imports no other part of Herald, so every layer can stand on it.

use std::collections::BTreeMap;
use std::fmt;
use std::time::Duration;

use serde::{Deserialize, Serialize};

/// Milliseconds since the Unix epoch: the one time unit Herald stores.
pub type Millis = i64;

/// Now, in milliseconds since the Unix epoch.
pub fn now_ms() -> Millis {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as Millis)
        .unwrap_or(0)
}

macro_rules! named_enum {
    ($(#[$m:meta])* $name:ident { $($variant:ident = $num:expr, $text:expr;)* }) => {
        $(#[$m])*
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
        #[serde(into = "u8", try_from = "u8")]
        pub enum $name { $($variant),* }

        impl $name {
            pub const ALL: &'static [$name] = &[$($name::$variant),*];
            /// The lowercase name used in config, metrics labels and the CLI.
            pub fn name(self) -> &'static str {
                match self { $($name::$variant => $text),* }
            }
            pub fn from_name(s: &str) -> Option<Self> {
                let s = s.trim().to_ascii_lowercase();
                match s.as_str() { $($text => Some($name::$variant),)* _ => None }
            }
            /// Stable small number used in compact encodings and in the proto enum.
            pub fn number(self) -> u8 {
                match self { $($name::$variant => $num),* }
            }
            pub fn from_number(n: u8) -> Option<Self> {
                match n { $($num => Some($name::$variant),)* _ => None }
            }
        }

        impl From<$name> for u8 {
            fn from(v: $name) -> u8 { v.number() }
        }

        impl TryFrom<u8> for $name {
            type Error = String;
            fn try_from(n: u8) -> Result<Self, String> {
                $name::from_number(n).ok_or_else(|| format!("unknown {} {}", stringify!($name), n))
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result { f.write_str(self.name()) }
        }
    };
}

named_enum!(
    /// A platform channel. Numbers match the proto enum `herald.v1.Channel`.
    Channel {
        Sandbox = 1, "sandbox";
        Webhook = 2, "webhook";
        Messenger = 3, "messenger";
        Whatsapp = 4, "whatsapp";
        Apns = 5, "apns";
        Fcm = 6, "fcm";
        Webpush = 7, "webpush";
        Sms = 8, "sms";
        Email = 9, "email";
    }
);

named_enum!(
    /// What a notification is for; platform rules and prices differ by category.
    Category {
        Transactional = 1, "transactional";
        Utility = 2, "utility";
        Marketing = 3, "marketing";
        Authentication = 4, "authentication";
    }
);

named_enum!(
    /// Dispatch lane: `High` never waits behind `Bulk`.
    Priority {
        High = 1, "high";
        Normal = 2, "normal";
        Bulk = 3, "bulk";
    }
);

named_enum!(
    /// Where a notification is in its life. Numbers match the proto enum `herald.v1.Status`.
    Status {
        Accepted = 1, "accepted";
        Scheduled = 2, "scheduled";
        Queued = 3, "queued";
        Sending = 4, "sending";
        Retrying = 5, "retrying";
        Sent = 6, "sent";
        Delivered = 7, "delivered";
        Read = 8, "read";
        Clicked = 9, "clicked";
        Failed = 10, "failed";
        Expired = 11, "expired";
        Canceled = 12, "canceled";
        Suppressed = 13, "suppressed";
    }
);

named_enum!(
    /// The outcome classes of platforms.md (R, T, P, X, A) plus a payload no retry will fix.
    ErrorClass {
        Transient = 1, "transient";
        Throttled = 2, "throttled";
        DeadAddress = 3, "dead_address";
        Policy = 4, "policy";
        Auth = 5, "auth";
        Payload = 6, "payload";
    }
);

// The enums come from `named_enum!`, which has no place for `#[default]`.
#[allow(clippy::derivable_impls)]
impl Default for Category {
    fn default() -> Self {
        Category::Transactional
    }
}

#[allow(clippy::derivable_impls)]
impl Default for Priority {
    fn default() -> Self {
        Priority::Normal
    }
}

impl Status {
    /// Nothing more will happen to a notification in this status.
    pub fn is_final(self) -> bool {
        matches!(
            self,
            Status::Failed | Status::Expired | Status::Canceled | Status::Suppressed
        ) || self.is_engagement()
    }

    /// A platform has taken the notification (it may still report delivery and reads).
    pub fn is_handed_over(self) -> bool {
        matches!(
            self,
            Status::Sent | Status::Delivered | Status::Read | Status::Clicked
        )
    }

    /// Delivered, read or clicked: only later engagement may follow.
    fn is_engagement(self) -> bool {
        matches!(self, Status::Delivered | Status::Read | Status::Clicked)
    }

    /// Not yet handed to any platform; cancel still stops it.
    pub fn is_pending(self) -> bool {
        matches!(
            self,
            Status::Accepted | Status::Scheduled | Status::Queued | Status::Retrying
        )
    }

    /// Rank used by the status machine: a receipt moves a notification only to a higher rank.
    pub fn rank(self) -> u8 {
        match self {
            Status::Accepted => 0,
            Status::Scheduled | Status::Queued | Status::Retrying => 1,
            Status::Sending => 2,
            Status::Sent => 3,
            Status::Failed => 4,
            Status::Delivered => 5,
            Status::Read => 6,
            Status::Clicked => 7,
            Status::Expired | Status::Canceled | Status::Suppressed => 8,
        }
    }

    /// The status machine for platform receipts: statuses only move forward; a final status
    /// (failed, expired, canceled, suppressed) only gives way to engagement that proves it
    /// wrong (a delivery report after a failure report that arrived first).
    pub fn receipt_may_move_to(self, next: Status) -> bool {
        match self {
            Status::Expired | Status::Canceled | Status::Suppressed => false,
            Status::Failed => next.is_engagement(),
            _ => next.rank() > self.rank(),
        }
    }

    /// The proto enum's name, e.g. `STATUS_DELIVERED`.
    pub fn proto_name(self) -> String {
        format!("STATUS_{}", self.name().to_ascii_uppercase())
    }
}

/// A Web Push subscription as the browser hands it out.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
pub struct WebPushSubscription {
    pub endpoint: String,
    pub p256dh: String,
    pub auth: String,
}

/// Who a notification goes to, with an address per channel.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
pub struct Recipient {
    #[serde(default)]
    pub contact_id: String,
    #[serde(default)]
    pub messenger_psid: String,
    #[serde(default)]
    pub whatsapp_number: String,
    #[serde(default)]
    pub phone: String,
    #[serde(default)]
    pub email: String,
    #[serde(default)]
    pub apns_tokens: Vec<String>,
    #[serde(default)]
    pub fcm_tokens: Vec<String>,
    #[serde(default)]
    pub webpush_subscriptions: Vec<WebPushSubscription>,
    #[serde(default)]
    pub webhook_url: String,
    #[serde(default)]
    pub timezone: String,
    #[serde(default)]
    pub locale: String,
}

impl Recipient {
    /// Whether this recipient has an address for `channel`.
    pub fn has_address(&self, channel: Channel) -> bool {
        match channel {
            Channel::Sandbox => true,
            Channel::Webhook => !self.webhook_url.is_empty(),
            Channel::Messenger => !self.messenger_psid.is_empty(),
            Channel::Whatsapp => !self.whatsapp_number.is_empty(),
            Channel::Apns => !self.apns_tokens.is_empty(),
            Channel::Fcm => !self.fcm_tokens.is_empty(),
            Channel::Webpush => !self.webpush_subscriptions.is_empty(),
            Channel::Sms => !self.phone.is_empty(),
            Channel::Email => !self.email.is_empty(),
        }
    }

    /// The addresses `channel` sends to: the PSID, the number, every device token, every
    /// subscription endpoint, the webhook URL. Contact state (dead, opted out) is kept per
    /// address.
    pub fn addresses(&self, channel: Channel) -> Vec<String> {
        let one = |s: &String| {
            if s.is_empty() {
                vec![]
            } else {
                vec![s.clone()]
            }
        };
        match channel {
            Channel::Sandbox => vec![if self.contact_id.is_empty() {
                "sandbox".to_string()
            } else {
                self.contact_id.clone()
            }],
            Channel::Webhook => one(&self.webhook_url),
            Channel::Messenger => one(&self.messenger_psid),
            Channel::Whatsapp => one(&self.whatsapp_number),
            Channel::Apns => self.apns_tokens.clone(),
            Channel::Fcm => self.fcm_tokens.clone(),
            Channel::Webpush => self
                .webpush_subscriptions
                .iter()
                .map(|s| s.endpoint.clone())
                .collect(),
            Channel::Sms => one(&self.phone),
            Channel::Email => one(&self.email),
        }
    }

    /// Whether it has any address at all (sandbox aside).
    pub fn is_empty(&self) -> bool {
        Channel::ALL
            .iter()
            .filter(|c| **c != Channel::Sandbox)
            .all(|c| !self.has_address(*c))
            && self.contact_id.is_empty()
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize, Default)]
pub struct Action {
    pub label: String,
    pub url: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize, Default)]
pub struct Template {
    pub name: String,
    pub language: String,
    #[serde(default)]
    pub params: Vec<String>,
}

/// What the notification says.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize, Default)]
pub struct Content {
    #[serde(default)]
    pub title: String,
    #[serde(default)]
    pub body: String,
    #[serde(default)]
    pub image_url: String,
    #[serde(default)]
    pub actions: Vec<Action>,
    #[serde(default)]
    pub template: Option<Template>,
    #[serde(default)]
    pub data: BTreeMap<String, String>,
    #[serde(default)]
    pub messenger_tag: String,
    #[serde(default)]
    pub collapse_id: String,
}

/// Everything a send request said: immutable once accepted. Its compact encoding is what the
/// store keeps (fields are only ever appended, each with a default, so old records decode).
/// `Default` gives an empty notification (no id, no route): tests and tools fill in what they
/// need with struct-update syntax.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
pub struct Notification {
    pub id: String,
    #[serde(default)]
    pub tenant: String,
    #[serde(default)]
    pub idempotency_key: String,
    #[serde(default)]
    pub campaign_id: String,
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
    pub recipient: Recipient,
    /// Channels in preference order, resolved at accept time.
    pub route: Vec<Channel>,
    pub content: Content,
    pub category: Category,
    pub priority: Priority,
    /// 0 = now.
    #[serde(default)]
    pub send_at: Millis,
    /// 0 = never.
    #[serde(default)]
    pub expire_at: Millis,
    pub created_at: Millis,
}

impl Notification {
    pub fn is_expired(&self, now: Millis) -> bool {
        self.expire_at > 0 && now >= self.expire_at
    }

    pub fn encode(&self) -> Vec<u8> {
        msgpack(self)
    }

    /// The length of `encode()`, counted without writing it anywhere.
    pub fn encoded_len(&self) -> usize {
        struct Count(usize);
        impl std::io::Write for Count {
            fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
                self.0 += buf.len();
                Ok(buf.len())
            }
            fn flush(&mut self) -> std::io::Result<()> {
                Ok(())
            }
        }
        let mut n = Count(0);
        // Counting plain structs cannot fail; if it ever did, the encoding itself is measured.
        match rmp_serde::encode::write(&mut n, self) {
            Ok(()) => n.0,
            Err(_) => self.encode().len(),
        }
    }

    pub fn decode(bytes: &[u8]) -> Result<Self, String> {
        rmp_serde::from_slice(bytes).map_err(|e| format!("corrupt notification record: {e}"))
    }
}

/// Details of a platform's answer, as the platform gave it.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct Detail {
    pub code: String,
    pub message: String,
}

impl Detail {
    pub fn new(code: impl Into<String>, message: impl Into<String>) -> Self {
        Self {
            code: code.into(),
            message: message.into(),
        }
    }
}

/// A channel's verdict on one send, already classified.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// The platform took it.
    Sent { provider_id: String },
    /// R: transient; retry with backoff, not before `after` if the platform said so.
    Retry {
        after: Option<Duration>,
        detail: Detail,
    },
    /// T: throttled; retry later and slow down.
    Throttled {
        after: Option<Duration>,
        detail: Detail,
    },
    /// P: this address is dead for this channel.
    DeadAddress { detail: Detail },
    /// X: not allowed on this channel now; try the next channel.
    PolicyRejected { detail: Detail },
    /// A: auth or configuration; stop the channel, alert.
    Misconfigured { detail: Detail },
    /// The request itself is wrong (a bug or an oversize payload); no retry will fix it.
    BadPayload { detail: Detail },
}

impl Outcome {
    pub fn class(&self) -> Option<ErrorClass> {
        match self {
            Outcome::Sent { .. } => None,
            Outcome::Retry { .. } => Some(ErrorClass::Transient),
            Outcome::Throttled { .. } => Some(ErrorClass::Throttled),
            Outcome::DeadAddress { .. } => Some(ErrorClass::DeadAddress),
            Outcome::PolicyRejected { .. } => Some(ErrorClass::Policy),
            Outcome::Misconfigured { .. } => Some(ErrorClass::Auth),
            Outcome::BadPayload { .. } => Some(ErrorClass::Payload),
        }
    }

    /// Bounded label for metrics.
    pub fn label(&self) -> &'static str {
        match self {
            Outcome::Sent { .. } => "sent",
            Outcome::Retry { .. } => "retry",
            Outcome::Throttled { .. } => "throttled",
            Outcome::DeadAddress { .. } => "dead_address",
            Outcome::PolicyRejected { .. } => "policy_rejected",
            Outcome::Misconfigured { .. } => "misconfigured",
            Outcome::BadPayload { .. } => "payload",
        }
    }

    pub fn detail(&self) -> Option<&Detail> {
        match self {
            Outcome::Sent { .. } => None,
            Outcome::Retry { detail, .. }
            | Outcome::Throttled { detail, .. }
            | Outcome::DeadAddress { detail }
            | Outcome::PolicyRejected { detail }
            | Outcome::Misconfigured { detail }
            | Outcome::BadPayload { detail } => Some(detail),
        }
    }
}

/// One try on one channel, as kept on the notification.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AttemptRecord {
    pub number: u32,
    pub channel: Channel,
    pub started_at: Millis,
    pub finished_at: Millis,
    pub outcome: String,
    #[serde(default)]
    pub error_class: Option<ErrorClass>,
    #[serde(default)]
    pub error_code: String,
    #[serde(default)]
    pub error_message: String,
    #[serde(default)]
    pub provider_id: String,
    /// Facts worth keeping about the try (e.g. `segments`, `encoding` for SMS, which is billed
    /// per segment; `messaging_type` for Messenger).
    #[serde(default)]
    pub meta: BTreeMap<String, String>,
}

/// One address of a contact on one channel: the unit contact state is kept for.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ContactKey {
    pub channel: Channel,
    pub address: String,
}

impl ContactKey {
    /// Email addresses are kept lower-cased: providers report them so (SendGrid's events),
    /// and a bounce for `Ann@X.com` must suppress mail to `ann@x.com`.
    pub fn new(channel: Channel, address: impl Into<String>) -> Self {
        let mut address = address.into();
        if channel == Channel::Email {
            address = address.to_lowercase();
        }
        Self { channel, address }
    }
}

/// What Herald knows of one address.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct ContactState {
    /// The platform said this address does not exist (P): later sends are suppressed.
    pub dead: bool,
    /// The person asked not to get messages here (SMS STOP, unsubscribe).
    pub opted_out: bool,
    /// When the person last wrote to us on this channel (opens messaging windows); 0 = never.
    pub last_inbound: Millis,
}

impl ContactState {
    pub fn suppressed(&self) -> bool {
        self.dead || self.opted_out
    }
}

/// A change to an address's state, from a platform answer or webhook.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ContactChange {
    Dead,
    Alive,
    OptOut,
    OptIn,
    Inbound(Millis),
}

/// A status change, as streamed by `WatchReceipts` and kept on the notification.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Receipt {
    pub notification_id: String,
    #[serde(default)]
    pub campaign_id: String,
    pub channel: Option<Channel>,
    pub status: Status,
    #[serde(default)]
    pub provider_id: String,
    #[serde(default)]
    pub error_class: Option<ErrorClass>,
    #[serde(default)]
    pub error_code: String,
    #[serde(default)]
    pub attempt: u32,
    #[serde(default)]
    pub cost_micros: i64,
    #[serde(default)]
    pub currency: String,
    pub at: Millis,
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
    /// Filled in when read back from the store: resume right after this receipt.
    #[serde(skip)]
    pub cursor: String,
}

impl Receipt {
    pub fn encode(&self) -> Vec<u8> {
        rmp_serde::to_vec(self).unwrap_or_default()
    }

    pub fn decode(bytes: &[u8]) -> Result<Self, String> {
        rmp_serde::from_slice(bytes).map_err(|e| format!("corrupt receipt: {e}"))
    }
}

/// A status reported later by a platform (delivery, read), found by its provider message id
/// or directly by notification id.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProviderReceipt {
    pub channel: Channel,
    pub notification_id: String,
    pub provider_id: String,
    pub status: Status,
    pub error_class: Option<ErrorClass>,
    pub error_code: String,
    pub at: Millis,
}

/// The 64-bit FNV-1a hash: stable across processes and versions, used to pick shards.
pub fn fnv1a(bytes: &[u8]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in bytes {
        h ^= u64::from(*b);
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    h
}

/// A notification id: a ULID (time-ordered) plus the shard it lives on, so a lookup by id
/// needs no search. Rendered `<ULID>-<shard>`.
pub fn make_id(shard: u16) -> String {
    make_id_at(shard, now_ms())
}

/// The top bit of a ULID's random part (its 11th character is then `G` or later): set only in
/// the ids the Redis store makes for packed records (store/redis.rs, `packed_ids`).
pub const PACKED_MARK: u128 = 1 << 79;

/// An id made at `at` (ms): its ULID carries that time, so a record need not store it twice.
pub fn make_id_at(shard: u16, at: Millis) -> String {
    let at = u64::try_from(at).unwrap_or(0);
    let random = rand::random::<u128>() & (PACKED_MARK - 1);
    id_text(ulid::Ulid::from_parts(at, random), shard)
}

/// `<ULID>-<shard>`, written without the formatting machinery (integers' `to_string` does not
/// use it): ingest makes an id (or two, for a packed record) per notification, and `format!`
/// of them was 3% of `SendBatch`'s CPU.
pub fn id_text(u: ulid::Ulid, shard: u16) -> String {
    let mut buf = [0u8; ulid::ULID_LEN];
    let mut s = String::with_capacity(ulid::ULID_LEN + 6);
    s.push_str(u.array_to_str(&mut buf));
    s.push('-');
    s.push_str(&shard.to_string());
    s
}

/// MessagePack of `v` (`rmp_serde::to_vec`'s encoding) into a buffer sized for a record:
/// `to_vec` starts from an empty one and grew it four or five times per record (4% of
/// `SendBatch`'s CPU went to those reallocations). Serializing plain structs of strings, maps
/// and numbers cannot fail; if it did, the result is empty, as `to_vec(..).unwrap_or_default()`.
pub fn msgpack<T: serde::Serialize + ?Sized>(v: &T) -> Vec<u8> {
    let mut out = Vec::with_capacity(256);
    match rmp_serde::encode::write(&mut out, v) {
        Ok(()) => out,
        Err(_) => Vec::new(),
    }
}

/// Lowercase hex of `bytes` (digests in keys and fingerprints), one allocation.
pub fn hex(bytes: &[u8]) -> String {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut s = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        s.push(char::from(DIGITS[usize::from(b >> 4)]));
        s.push(char::from(DIGITS[usize::from(b & 15)]));
    }
    s
}

/// The shard encoded in an id, if the id is well formed.
pub fn shard_of(id: &str) -> Option<u16> {
    let (u, s) = id.rsplit_once('-')?;
    if u.len() != 26 || ulid::Ulid::from_string(u).is_err() {
        return None;
    }
    s.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_carry_their_shard() {
        let id = make_id(13);
        assert_eq!(shard_of(&id), Some(13));
        assert_eq!(shard_of("nonsense"), None);
        assert_eq!(shard_of("01ARZ3NDEKTSV4RRFFQ69G5FAV-x"), None);
    }

    #[test]
    fn statuses_only_move_forward() {
        assert!(Status::Sent.receipt_may_move_to(Status::Delivered));
        assert!(Status::Delivered.receipt_may_move_to(Status::Read));
        assert!(!Status::Read.receipt_may_move_to(Status::Delivered));
        assert!(!Status::Delivered.receipt_may_move_to(Status::Sent));
        assert!(!Status::Canceled.receipt_may_move_to(Status::Delivered));
        assert!(Status::Failed.receipt_may_move_to(Status::Delivered));
        assert!(!Status::Delivered.receipt_may_move_to(Status::Failed));
        assert!(Status::Sending.receipt_may_move_to(Status::Delivered));
    }

    #[test]
    fn notification_round_trips() {
        let n = Notification {
            id: make_id(1),
            tenant: "t".into(),
            campaign_id: "c".into(),
            labels: BTreeMap::from([("k".into(), "v".into())]),
            recipient: Recipient {
                webhook_url: "http://x".into(),
                ..Default::default()
            },
            route: vec![Channel::Webhook, Channel::Sandbox],
            content: Content {
                body: "hi".into(),
                ..Default::default()
            },
            category: Category::Utility,
            priority: Priority::High,
            expire_at: 5,
            created_at: 1,
            ..Default::default()
        };
        let back = Notification::decode(&n.encode()).expect("decodes");
        assert_eq!(back, n);
        assert!(Notification::decode(b"\x01garbage").is_err());
        // The same bytes as rmp_serde::to_vec, which records written before were made with.
        assert_eq!(n.encode(), rmp_serde::to_vec(&n).expect("encodes"));
        let big = Notification {
            content: Content {
                body: "x".repeat(4000),
                ..Default::default()
            },
            ..n
        };
        assert_eq!(big.encode(), rmp_serde::to_vec(&big).expect("encodes"));
    }

    #[test]
    fn ids_and_hex_are_written_as_format_would() {
        let u = ulid::Ulid::from_parts(1_796_202_324_337, 0x1234_5678_9abc_def0_1234);
        for shard in [0, 7, 9, 10, 15, 99, 100, 1023, 9999, 10000, u16::MAX] {
            assert_eq!(id_text(u, shard), format!("{u}-{shard}"));
            assert_eq!(shard_of(&id_text(u, shard)), Some(shard));
        }
        let bytes: Vec<u8> = (0..=255).collect();
        let want: String = bytes.iter().map(|b| format!("{b:02x}")).collect();
        assert_eq!(hex(&bytes), want);
        assert_eq!(hex(&[]), "");
    }

    #[test]
    fn email_contact_keys_ignore_case() {
        assert_eq!(
            ContactKey::new(Channel::Email, "Ann@Example.COM"),
            ContactKey::new(Channel::Email, "ann@example.com")
        );
        assert_ne!(
            ContactKey::new(Channel::Webhook, "https://x/A"),
            ContactKey::new(Channel::Webhook, "https://x/a")
        );
    }

    #[test]
    fn names_round_trip() {
        for c in Channel::ALL {
            assert_eq!(Channel::from_name(c.name()), Some(*c));
            assert_eq!(Channel::from_number(c.number()), Some(*c));
        }
        assert_eq!(Status::Delivered.proto_name(), "STATUS_DELIVERED");
    }
}
