//! `sms`: Twilio's Messages API (`POST /2010-04-01/Accounts/{sid}/Messages.json`, form-encoded,
//! HTTP Basic), GSM-7 / UCS-2 segment counting (SMS is billed per segment), the classification
//! of every Twilio error code of platforms.md §6, and `X-Twilio-Signature`, which the status
//! callbacks and inbound messages Twilio posts back are signed with.

use std::time::Duration;

use async_trait::async_trait;
use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine;
use hmac::{Hmac, Mac};
use sha1::Sha1;
use std::sync::Arc;

use super::{http_client, retry_after, transport_error, Channel, Delivery, Deps, SendContext};
use crate::config::sms::SmsConfig;
use crate::model::{self, Detail, ErrorClass, Millis, Notification, Outcome};

/// Twilio refuses longer bodies (error 21617); checked before sending.
pub const MAX_BODY_CHARS: usize = 1600;

/// Twilio's longest `ValidityPeriod` (and its default): 10 hours.
pub const MAX_VALIDITY_SECS: i64 = 36_000;

/// Attempts after which an "unreachable handset" (30003) or "unknown error" (30008) stops
/// being retried on SMS and the notification moves to the next channel: the phone may be off
/// for days, and the number is not dead, so it is neither retried for ever nor marked dead.
pub const CAPPED_RETRIES: u32 = 3;

/// Where Twilio posts status callbacks, under `server.public_url`.
pub const STATUS_PATH: &str = "/webhooks/twilio/status";

/// Where Twilio posts inbound messages (set as the number's messaging webhook).
pub const INBOUND_PATH: &str = "/webhooks/twilio/inbound";

// ---------------------------------------------------------------------------------------------
// Segments
// ---------------------------------------------------------------------------------------------

/// How an SMS travels: GSM-7 when every character is in the GSM 03.38 alphabet, else UCS-2.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Encoding {
    Gsm7,
    Ucs2,
}

impl Encoding {
    pub fn name(self) -> &'static str {
        match self {
            Encoding::Gsm7 => "GSM-7",
            Encoding::Ucs2 => "UCS-2",
        }
    }

    /// Units (septets or UTF-16 code units) in a message that fits one segment.
    pub fn single(self) -> usize {
        match self {
            Encoding::Gsm7 => 160,
            Encoding::Ucs2 => 70,
        }
    }

    /// Units per part of a concatenated message (the rest carries the 6-byte UDH).
    pub fn per_part(self) -> usize {
        match self {
            Encoding::Gsm7 => 153,
            Encoding::Ucs2 => 67,
        }
    }
}

/// What a message costs in segments.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Segments {
    pub encoding: Encoding,
    /// Septets (GSM-7; extension characters count two) or UTF-16 code units (UCS-2).
    pub units: usize,
    pub segments: usize,
}

/// The GSM 03.38 basic character set, in code order (0x1B, the escape to the extension
/// table, stands as a character no text contains).
const GSM7_BASIC: &str = "@£$¥èéùìòÇ\nØø\rÅåΔ_ΦΓΛΩΠΨΣΘΞ\u{1b}ÆæßÉ !\"#¤%&'()*+,-./0123456789:;<=>?\
¡ABCDEFGHIJKLMNOPQRSTUVWXYZÄÖÑÜ§¿abcdefghijklmnopqrstuvwxyzäöñüà";

/// The GSM 03.38 extension table: each is sent as ESC + code, so it takes two septets.
const GSM7_EXTENSION: &str = "\u{0c}^{}\\[~]|€";

/// Septets of each ASCII character (0: not in GSM-7), from the tables above: most text is
/// ASCII, and a lookup beats scanning the alphabet for every character.
static GSM7_ASCII: std::sync::LazyLock<[u8; 128]> = std::sync::LazyLock::new(|| {
    let mut t = [0u8; 128];
    for (i, slot) in t.iter_mut().enumerate() {
        let c = char::from(i as u8);
        *slot = gsm7_septets_slow(c).map_or(0, |n| n as u8);
    }
    t
});

/// Septets `c` takes in GSM-7, or None when GSM-7 cannot carry it.
pub fn gsm7_septets(c: char) -> Option<usize> {
    if c.is_ascii() {
        return match GSM7_ASCII[c as usize] {
            0 => None,
            n => Some(usize::from(n)),
        };
    }
    gsm7_septets_slow(c)
}

fn gsm7_septets_slow(c: char) -> Option<usize> {
    if c == '\u{1b}' {
        None
    } else if GSM7_BASIC.contains(c) {
        Some(1)
    } else if GSM7_EXTENSION.contains(c) {
        Some(2)
    } else {
        None
    }
}

/// Counts the segments `text` is billed as. One character outside GSM-7 switches the whole
/// message to UCS-2 (an emoji, outside the BMP, takes two UTF-16 units). A multipart message
/// is packed the way handsets split it: a character never straddles two parts (neither an
/// extension character's escape pair nor a surrogate pair), so a part may carry one unit less.
pub fn count_segments(text: &str) -> Segments {
    let gsm: Option<Vec<usize>> = text.chars().map(gsm7_septets).collect();
    let (encoding, widths) = match gsm {
        Some(w) => (Encoding::Gsm7, w),
        None => (
            Encoding::Ucs2,
            text.chars().map(char::len_utf16).collect::<Vec<_>>(),
        ),
    };
    let units: usize = widths.iter().sum();
    if units <= encoding.single() {
        return Segments {
            encoding,
            units,
            segments: 1,
        };
    }
    let per = encoding.per_part();
    let mut segments = 1;
    let mut fill = 0;
    for w in widths {
        if fill + w > per {
            segments += 1;
            fill = 0;
        }
        fill += w;
    }
    Segments {
        encoding,
        units,
        segments,
    }
}

// ---------------------------------------------------------------------------------------------
// Request
// ---------------------------------------------------------------------------------------------

/// What every request carries besides the notification.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Sender {
    pub from: Option<String>,
    pub messaging_service_sid: Option<String>,
    /// `{public_url}/webhooks/twilio/status`; empty: no status callbacks.
    pub status_callback: String,
}

/// The text sent: the title on its own line above the body, then each action as
/// `label: url` (an SMS has no buttons, so the link is written out).
pub fn message_text(n: &Notification) -> String {
    let c = &n.content;
    let mut parts: Vec<String> = Vec::new();
    let title = c.title.trim();
    let body = c.body.trim();
    if !title.is_empty() {
        parts.push(title.to_string());
    }
    if !body.is_empty() {
        parts.push(body.to_string());
    }
    for a in &c.actions {
        let url = a.url.trim();
        if url.is_empty() {
            continue;
        }
        let label = a.label.trim();
        parts.push(if label.is_empty() {
            url.to_string()
        } else {
            format!("{label}: {url}")
        });
    }
    parts.join("\n")
}

/// `ValidityPeriod` in seconds for a notification that expires at `expire_at` (0 = never):
/// whole seconds left, at least 1, at most Twilio's 36,000.
pub fn validity_period(expire_at: Millis, now: Millis) -> Option<i64> {
    if expire_at <= 0 {
        return None;
    }
    let left_ms = (expire_at - now).max(0);
    Some(((left_ms + 999) / 1000).clamp(1, MAX_VALIDITY_SECS))
}

/// The form fields of the Messages request for `n` to `to`. Refuses (as a `BadPayload`) what
/// Twilio would refuse for the content itself: an empty body or one over 1,600 characters.
pub fn form(
    n: &Notification,
    to: &str,
    sender: &Sender,
    now: Millis,
) -> Result<Vec<(&'static str, String)>, Outcome> {
    let text = message_text(n);
    if text.is_empty() {
        return Err(Outcome::BadPayload {
            detail: Detail::new("empty_body", "an SMS needs a title or a body"),
        });
    }
    let chars = text.chars().count();
    if chars > MAX_BODY_CHARS {
        return Err(Outcome::BadPayload {
            detail: Detail::new(
                "body_too_long",
                format!("{chars} characters; Twilio takes at most {MAX_BODY_CHARS}"),
            ),
        });
    }
    let mut f = vec![("To", to.to_string())];
    if let Some(from) = &sender.from {
        f.push(("From", from.clone()));
    }
    if let Some(mss) = &sender.messaging_service_sid {
        f.push(("MessagingServiceSid", mss.clone()));
    }
    f.push(("Body", text));
    if !sender.status_callback.is_empty() {
        f.push((
            "StatusCallback",
            status_callback_url(&sender.status_callback, &n.id),
        ));
    }
    if let Some(v) = validity_period(n.expire_at, now) {
        f.push(("ValidityPeriod", v.to_string()));
    }
    Ok(f)
}

/// The status callback URL for one notification. The notification id rides along as `n`:
/// Twilio signs the full URL, so it is as trustworthy as the rest, and a callback that arrives
/// before dispatch has recorded the message sid still finds its notification.
pub fn status_callback_url(base: &str, notification_id: &str) -> String {
    let q: String = url::form_urlencoded::Serializer::new(String::new())
        .append_pair("n", notification_id)
        .finish();
    format!("{base}?{q}")
}

// ---------------------------------------------------------------------------------------------
// Classification
// ---------------------------------------------------------------------------------------------

/// The class of each Twilio error code Herald knows (platforms.md §6, plus the request errors
/// Twilio answers for a malformed send). None: unknown; classify on the HTTP status.
pub fn code_class(code: u32) -> Option<ErrorClass> {
    Some(match code {
        // Too many requests; queue overflow (per sender: 21611, account: 30001).
        20429 | 21611 | 30001 => ErrorClass::Throttled,
        // Unreachable handset, unknown error: retried a few times (CAPPED_RETRIES).
        30003 | 30008 | 20500 | 20503 => ErrorClass::Transient,
        // Invalid To, not a mobile number, unknown handset, landline, blocked.
        21211 | 21614 | 30004 | 30005 | 30006 => ErrorClass::DeadAddress,
        // Opted out (STOP), filtered as spam, validity expired, country not enabled.
        21610 | 30007 | 30036 | 21408 => ErrorClass::Policy,
        // Credentials; unverified toll-free; unregistered 10DLC; the sender itself.
        20003 | 20404 | 30032 | 30034 | 21603 | 21606 | 21212 => ErrorClass::Auth,
        // The request: no To, no Body, body too long.
        21604 | 21602 | 21617 => ErrorClass::Payload,
        _ => return None,
    })
}

/// Class of a status code Twilio gave with no known error code.
fn http_class(status: u16) -> ErrorClass {
    match status {
        429 => ErrorClass::Throttled,
        401 | 403 | 404 => ErrorClass::Auth,
        408 | 500..=599 => ErrorClass::Transient,
        _ => ErrorClass::Payload,
    }
}

/// Twilio's error body `{"code","message","more_info","status"}`.
#[derive(Debug, Default, serde::Deserialize)]
struct ErrorBody {
    #[serde(default)]
    code: Option<serde_json::Value>,
    #[serde(default)]
    message: Option<String>,
}

/// Twilio's 201 body (fields Herald uses).
#[derive(Debug, Default, serde::Deserialize)]
struct Created {
    #[serde(default)]
    sid: String,
    /// A string in Twilio's answers ("2"); a number is taken too.
    #[serde(default)]
    num_segments: Option<serde_json::Value>,
}

fn number_of(v: &serde_json::Value) -> Option<u64> {
    match v {
        serde_json::Value::Number(n) => n.as_u64(),
        serde_json::Value::String(s) => s.trim().parse().ok(),
        _ => None,
    }
}

/// The Twilio error code in an answer, if any.
pub fn error_code(body: &[u8]) -> Option<u32> {
    let e: ErrorBody = serde_json::from_slice(body).ok()?;
    e.code
        .as_ref()
        .and_then(number_of)
        .and_then(|c| u32::try_from(c).ok())
}

/// The outcome for error `code` (as a string in `Detail.code`) on attempt `attempt`.
fn outcome_for(
    class: ErrorClass,
    code: Option<u32>,
    detail: Detail,
    after: Option<Duration>,
    attempt: u32,
) -> Outcome {
    match class {
        ErrorClass::Throttled => Outcome::Throttled { after, detail },
        ErrorClass::Transient => {
            if matches!(code, Some(30003 | 30008)) && attempt >= CAPPED_RETRIES {
                // Retried enough on SMS: try the next channel without calling the number dead.
                Outcome::PolicyRejected { detail }
            } else {
                Outcome::Retry { after, detail }
            }
        }
        ErrorClass::DeadAddress => Outcome::DeadAddress { detail },
        ErrorClass::Policy => Outcome::PolicyRejected { detail },
        ErrorClass::Auth => Outcome::Misconfigured { detail },
        ErrorClass::Payload => Outcome::BadPayload { detail },
    }
}

/// Classifies Twilio's answer to a Messages request. `attempt` counts from 1 (caps the
/// retries of 30003 / 30008).
///
/// 30036 (validity period expired) → `PolicyRejected`: the message outlived the validity
/// Herald gave it, so a resend on SMS is wrong (`Retry` would send stale news again when no
/// `expire_at` bounds it) and neither the number (`DeadAddress`) nor the request
/// (`BadPayload`, which dead-letters) is at fault. Falling back lets dispatch finish it: if the
/// notification's `expire_at` has passed, the next channel ends it EXPIRED without sending;
/// if not, another channel may still reach the person in time. (Twilio reports 30036 in a
/// status callback, which Herald records as EXPIRED.)
///
/// 21610 (the number sent STOP) → `PolicyRejected` too; `send` adds the number to
/// `Delivery.opted_out`, so dispatch records an opt-out, not a dead number.
pub fn classify(
    status: u16,
    body: &[u8],
    after: Option<Duration>,
    attempt: u32,
) -> (Outcome, Option<u64>) {
    if (200..300).contains(&status) {
        let c: Created = serde_json::from_slice(body).unwrap_or_default();
        let segments = c.num_segments.as_ref().and_then(number_of);
        return (Outcome::Sent { provider_id: c.sid }, segments);
    }
    let e: ErrorBody = serde_json::from_slice(body).unwrap_or_default();
    let code = e
        .code
        .as_ref()
        .and_then(number_of)
        .and_then(|c| u32::try_from(c).ok());
    let message = e
        .message
        .unwrap_or_else(|| format!("twilio answered HTTP {status}"));
    let detail = Detail::new(
        code.map(|c| c.to_string())
            .unwrap_or_else(|| format!("http_{status}")),
        message,
    );
    let class = code
        .and_then(code_class)
        .unwrap_or_else(|| http_class(status));
    (outcome_for(class, code, detail, after, attempt), None)
}

// ---------------------------------------------------------------------------------------------
// Signatures
// ---------------------------------------------------------------------------------------------

/// `X-Twilio-Signature`: base64(HMAC-SHA1(auth token, url + each param's name and value,
/// sorted by name)). `url` is the full URL Twilio requested, query included.
pub fn signature(auth_token: &str, url: &str, params: &[(String, String)]) -> String {
    let Some(mac) = signing_mac(auth_token, url, params) else {
        return String::new();
    };
    B64.encode(mac.finalize().into_bytes())
}

/// Checks `header` against the signature of (url, params) in constant time.
pub fn verify_signature(
    auth_token: &str,
    url: &str,
    params: &[(String, String)],
    header: Option<&str>,
) -> bool {
    let Some(sig) = header.and_then(|h| B64.decode(h.trim()).ok()) else {
        return false;
    };
    let Some(mac) = signing_mac(auth_token, url, params) else {
        return false;
    };
    mac.verify_slice(&sig).is_ok()
}

fn signing_mac(auth_token: &str, url: &str, params: &[(String, String)]) -> Option<Hmac<Sha1>> {
    let mut mac = Hmac::<Sha1>::new_from_slice(auth_token.as_bytes()).ok()?;
    mac.update(url.as_bytes());
    let mut sorted: Vec<&(String, String)> = params.iter().collect();
    sorted.sort();
    for (k, v) in sorted {
        mac.update(k.as_bytes());
        mac.update(v.as_bytes());
    }
    Some(mac)
}

// ---------------------------------------------------------------------------------------------
// Channel
// ---------------------------------------------------------------------------------------------

pub struct Sms {
    client: reqwest::Client,
    /// `{base}/2010-04-01/Accounts/{sid}/Messages.json`.
    url: String,
    account_sid: String,
    auth_token: String,
    sender: Sender,
}

pub fn build(cfg: &SmsConfig, deps: &Deps) -> Result<Arc<dyn Channel>, String> {
    cfg.validate().map_err(|e| e.to_string())?;
    let auth_token = cfg.auth_token().map_err(|e| e.to_string())?;
    let public = deps.public_url.trim_end_matches('/');
    Ok(Arc::new(Sms {
        client: http_client(deps.request_timeout)?,
        url: messages_url(&cfg.base_url, &cfg.account_sid),
        account_sid: cfg.account_sid.clone(),
        auth_token,
        sender: Sender {
            from: cfg.from.clone(),
            messaging_service_sid: cfg.messaging_service_sid.clone(),
            status_callback: if public.is_empty() {
                String::new()
            } else {
                format!("{public}{STATUS_PATH}")
            },
        },
    }))
}

/// The Messages resource of an account.
pub fn messages_url(base: &str, account_sid: &str) -> String {
    format!(
        "{}/2010-04-01/Accounts/{account_sid}/Messages.json",
        base.trim_end_matches('/')
    )
}

#[async_trait]
impl Channel for Sms {
    fn kind(&self) -> model::Channel {
        model::Channel::Sms
    }

    async fn send(&self, n: &Notification, ctx: &SendContext<'_>) -> Delivery {
        let Some(to) = ctx.addresses.first() else {
            return Delivery::of(Outcome::DeadAddress {
                detail: Detail::new("no_address", "recipient has no phone"),
            });
        };
        let counted = count_segments(&message_text(n));
        let meta = |d: Delivery, segments: usize| {
            d.meta("segments", segments)
                .meta("encoding", counted.encoding.name())
        };
        let fields = match form(n, to, &self.sender, ctx.now) {
            Ok(f) => f,
            Err(o) => return meta(Delivery::of(o), counted.segments),
        };
        let res = self
            .client
            .post(&self.url)
            .basic_auth(&self.account_sid, Some(&self.auth_token))
            .form(&fields)
            .send()
            .await;
        let r = match res {
            Ok(r) => r,
            Err(e) => return meta(Delivery::of(transport_error(&e)), counted.segments),
        };
        let status = r.status().as_u16();
        let after = retry_after(r.headers());
        let body = match r.bytes().await {
            Ok(b) => b,
            Err(e) => return meta(Delivery::of(transport_error(&e)), counted.segments),
        };
        let (outcome, twilio_segments) = classify(status, &body, after, ctx.attempt);
        let opted_out =
            matches!(&outcome, Outcome::PolicyRejected { detail } if detail.code == "21610");
        // Twilio's own count is what it bills; ours stands in when it gives none.
        let segments = twilio_segments
            .and_then(|s| usize::try_from(s).ok())
            .filter(|s| *s > 0)
            .unwrap_or(counted.segments);
        let mut d = meta(Delivery::of(outcome), segments);
        if opted_out {
            d.opted_out.push(to.clone());
        }
        d
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{Action, Content, Recipient};

    fn note(title: &str, body: &str) -> Notification {
        Notification {
            id: "01HZY3Q8W1B2C3D4E5F6G7H8J9-3".into(),
            recipient: Recipient {
                phone: "+14155550100".into(),
                ..Default::default()
            },
            route: vec![model::Channel::Sms],
            content: Content {
                title: title.into(),
                body: body.into(),
                ..Default::default()
            },
            ..Default::default()
        }
    }

    fn sender() -> Sender {
        Sender {
            from: Some("+15005550006".into()),
            messaging_service_sid: None,
            status_callback: "https://herald.example.com/webhooks/twilio/status".into(),
        }
    }

    fn seg(text: &str) -> (Encoding, usize, usize) {
        let s = count_segments(text);
        (s.encoding, s.units, s.segments)
    }

    #[test]
    fn gsm7_single_and_multipart_boundaries() {
        assert_eq!(seg(&"a".repeat(160)), (Encoding::Gsm7, 160, 1));
        assert_eq!(seg(&"a".repeat(161)), (Encoding::Gsm7, 161, 2));
        assert_eq!(seg(&"a".repeat(306)), (Encoding::Gsm7, 306, 2));
        assert_eq!(seg(&"a".repeat(307)), (Encoding::Gsm7, 307, 3));
        assert_eq!(seg(&"a".repeat(459)), (Encoding::Gsm7, 459, 3));
        assert_eq!(seg(&"a".repeat(460)), (Encoding::Gsm7, 460, 4));
        // The whole basic set, Greek capitals and accents included, stays GSM-7.
        let basic: String = GSM7_BASIC.chars().filter(|c| *c != '\u{1b}').collect();
        assert_eq!(count_segments(&basic).encoding, Encoding::Gsm7);
        assert_eq!(count_segments("Ça coûte 5€").encoding, Encoding::Ucs2); // û is not GSM-7
    }

    #[test]
    fn extension_characters_count_double() {
        for c in ['^', '{', '}', '\\', '[', ']', '~', '|', '€', '\u{0c}'] {
            assert_eq!(gsm7_septets(c), Some(2), "{c:?}");
        }
        assert_eq!(seg(&"{".repeat(80)), (Encoding::Gsm7, 160, 1));
        assert_eq!(seg(&"{".repeat(81)), (Encoding::Gsm7, 162, 2));
        assert_eq!(
            seg(&format!("{}€", "a".repeat(158))),
            (Encoding::Gsm7, 160, 1)
        );
        assert_eq!(
            seg(&format!("{}€", "a".repeat(159))),
            (Encoding::Gsm7, 161, 2)
        );
        // An escape pair never straddles two parts: 152 + [2] does not fit in 153.
        assert_eq!(
            seg(&format!("{}{{{}", "a".repeat(152), "a".repeat(152))),
            (Encoding::Gsm7, 306, 3)
        );
        assert_eq!(
            seg(&format!("{}{{{}", "a".repeat(151), "a".repeat(153))),
            (Encoding::Gsm7, 306, 2)
        );
    }

    #[test]
    fn one_emoji_switches_to_ucs2() {
        assert_eq!(
            seg(&format!("{}😀", "a".repeat(68))),
            (Encoding::Ucs2, 70, 1)
        );
        assert_eq!(
            seg(&format!("{}😀", "a".repeat(69))),
            (Encoding::Ucs2, 71, 2)
        );
        assert_eq!(seg(&"é".repeat(70)), (Encoding::Gsm7, 70, 1)); // é is GSM-7
        assert_eq!(seg(&"ü".repeat(160)), (Encoding::Gsm7, 160, 1));
        assert_eq!(seg(&"ж".repeat(70)), (Encoding::Ucs2, 70, 1));
        assert_eq!(seg(&"ж".repeat(71)), (Encoding::Ucs2, 71, 2));
        assert_eq!(seg(&"ж".repeat(134)), (Encoding::Ucs2, 134, 2));
        assert_eq!(seg(&"ж".repeat(135)), (Encoding::Ucs2, 135, 3));
        // A surrogate pair never straddles two parts.
        assert_eq!(
            seg(&format!("{}😀{}", "ж".repeat(66), "ж".repeat(66))),
            (Encoding::Ucs2, 134, 3)
        );
        assert_eq!(seg(""), (Encoding::Gsm7, 0, 1));
    }

    #[test]
    fn text_joins_title_body_and_links() {
        assert_eq!(
            message_text(&note("Order shipped", "On its way")),
            "Order shipped\nOn its way"
        );
        assert_eq!(message_text(&note("", " Just a body ")), "Just a body");
        assert_eq!(message_text(&note("Title only", "")), "Title only");
        let mut n = note("Shipped", "Track it");
        n.content.actions = vec![
            Action {
                label: "Track".into(),
                url: "https://t.example/1".into(),
            },
            Action {
                label: String::new(),
                url: "https://t.example/2".into(),
            },
        ];
        assert_eq!(
            message_text(&n),
            "Shipped\nTrack it\nTrack: https://t.example/1\nhttps://t.example/2"
        );
    }

    #[test]
    fn form_carries_every_field() {
        let mut n = note("Order shipped", "On its way");
        n.expire_at = 1_000_000 + 600_000;
        let f = form(&n, "+14155550100", &sender(), 1_000_000).expect("valid");
        assert_eq!(
            f,
            vec![
                ("To", "+14155550100".to_string()),
                ("From", "+15005550006".to_string()),
                ("Body", "Order shipped\nOn its way".to_string()),
                (
                    "StatusCallback",
                    "https://herald.example.com/webhooks/twilio/status?n=01HZY3Q8W1B2C3D4E5F6G7H8J9-3"
                        .to_string()
                ),
                ("ValidityPeriod", "600".to_string()),
            ]
        );
        // A messaging service instead of a number; no expiry, no ValidityPeriod; no public URL,
        // no StatusCallback.
        let s = Sender {
            from: None,
            messaging_service_sid: Some("MG0123".into()),
            status_callback: String::new(),
        };
        let f = form(&note("", "hi"), "+14155550100", &s, 0).expect("valid");
        assert_eq!(
            f,
            vec![
                ("To", "+14155550100".to_string()),
                ("MessagingServiceSid", "MG0123".to_string()),
                ("Body", "hi".to_string()),
            ]
        );
    }

    #[test]
    fn validity_is_capped_and_rounded_up() {
        assert_eq!(validity_period(0, 5), None);
        assert_eq!(validity_period(10_500, 10_000), Some(1));
        assert_eq!(validity_period(10_000, 10_000), Some(1));
        assert_eq!(validity_period(10_000 + 90_001, 10_000), Some(91));
        assert_eq!(validity_period(86_400_000, 0), Some(MAX_VALIDITY_SECS));
    }

    #[test]
    fn oversize_or_empty_bodies_are_refused_before_sending() {
        let ok = note("", &"a".repeat(MAX_BODY_CHARS));
        assert!(form(&ok, "+1", &sender(), 0).is_ok());
        let long = note("", &"a".repeat(MAX_BODY_CHARS + 1));
        assert!(matches!(
            form(&long, "+1", &sender(), 0),
            Err(Outcome::BadPayload { detail }) if detail.code == "body_too_long"
        ));
        // 1,600 characters, not bytes: 1,600 emoji pass.
        let emoji = note("", &"😀".repeat(MAX_BODY_CHARS));
        assert!(form(&emoji, "+1", &sender(), 0).is_ok());
        assert!(matches!(
            form(&note(" ", ""), "+1", &sender(), 0),
            Err(Outcome::BadPayload { .. })
        ));
    }

    fn err(code: u32, status: u16) -> Vec<u8> {
        serde_json::json!({
            "code": code,
            "message": format!("error {code}"),
            "more_info": format!("https://www.twilio.com/docs/errors/{code}"),
            "status": status,
        })
        .to_string()
        .into_bytes()
    }

    fn class_of(code: u32, status: u16, attempt: u32) -> (&'static str, String) {
        let (o, _) = classify(status, &err(code, status), None, attempt);
        (
            o.label(),
            o.detail().map(|d| d.code.clone()).unwrap_or_default(),
        )
    }

    #[test]
    fn success_gives_the_sid_and_twilios_segment_count() {
        let body =
            br#"{"sid":"SM0123456789abcdef0123456789abcdef","status":"queued","num_segments":"2"}"#;
        let (o, s) = classify(201, body, None, 1);
        assert_eq!(
            o,
            Outcome::Sent {
                provider_id: "SM0123456789abcdef0123456789abcdef".into()
            }
        );
        assert_eq!(s, Some(2));
        let (_, s) = classify(201, br#"{"sid":"SMx","num_segments":3}"#, None, 1);
        assert_eq!(s, Some(3));
    }

    #[test]
    fn every_documented_code_is_classified() {
        let cases: &[(u32, u16, &str)] = &[
            (20429, 429, "throttled"),
            (21611, 400, "throttled"),
            (30001, 400, "throttled"),
            (30036, 400, "policy_rejected"),
            (21211, 400, "dead_address"),
            (21610, 400, "policy_rejected"),
            (30003, 400, "retry"),
            (30005, 400, "dead_address"),
            (30006, 400, "dead_address"),
            (30004, 400, "dead_address"),
            (30007, 400, "policy_rejected"),
            (30008, 400, "retry"),
            (20003, 401, "misconfigured"),
            (30032, 400, "misconfigured"),
            (30034, 400, "misconfigured"),
            (21602, 400, "payload"),
            (21604, 400, "payload"),
            (21617, 400, "payload"),
        ];
        for (code, status, want) in cases {
            let (label, detail_code) = class_of(*code, *status, 1);
            assert_eq!(label, *want, "code {code}");
            assert_eq!(detail_code, code.to_string());
        }
    }

    #[test]
    fn unreachable_and_unknown_are_retried_a_few_times_then_fall_back() {
        for code in [30003, 30008] {
            assert_eq!(class_of(code, 400, 1).0, "retry");
            assert_eq!(class_of(code, 400, CAPPED_RETRIES - 1).0, "retry");
            assert_eq!(class_of(code, 400, CAPPED_RETRIES).0, "policy_rejected");
        }
        // Other transient errors are not capped here (dispatch's max_attempts caps them).
        assert_eq!(class_of(20503, 503, 10).0, "retry");
    }

    #[test]
    fn answers_without_a_known_code_fall_back_to_the_http_status() {
        let ra = Some(Duration::from_secs(3));
        let (o, _) = classify(429, b"", ra, 1);
        assert!(
            matches!(o, Outcome::Throttled { after: Some(d), .. } if d == Duration::from_secs(3))
        );
        let (o, _) = classify(503, b"<html>busy</html>", None, 1);
        assert!(matches!(o, Outcome::Retry { detail, .. } if detail.code == "http_503"));
        assert_eq!(classify(500, &err(20500, 500), None, 1).0.label(), "retry");
        assert_eq!(classify(401, b"{}", None, 1).0.label(), "misconfigured");
        assert_eq!(
            classify(400, &err(99999, 400), None, 1).0.label(),
            "payload"
        );
        // A code given as a string is read too.
        let (o, _) = classify(400, br#"{"code":"21211","message":"bad To"}"#, None, 1);
        assert!(
            matches!(o, Outcome::DeadAddress { detail } if detail.code == "21211" && detail.message == "bad To")
        );
        assert_eq!(error_code(&err(30007, 400)), Some(30007));
        assert_eq!(error_code(b"nope"), None);
    }

    #[test]
    fn signatures_match_twilios_published_examples() {
        let url = "https://mycompany.com/myapp.php?foo=1&bar=2";
        let params = |caller: &str| {
            vec![
                ("CallSid".to_string(), "CA1234567890ABCDE".to_string()),
                ("Caller".to_string(), caller.to_string()),
                ("Digits".to_string(), "1234".to_string()),
                ("From".to_string(), caller.to_string()),
                ("To".to_string(), "+18005551212".to_string()),
            ]
        };
        assert_eq!(
            signature("12345", url, &params("+14158675310")),
            "GvWf1cFY/Q7PnoempGyD5oXAezc="
        );
        assert_eq!(
            signature("12345", url, &params("+14158675309")),
            "RSOYDt4T1cUTdK1PDd93/VVr8B8="
        );
        // Order of the params does not matter; their names and values do.
        let mut p = params("+14158675310");
        p.reverse();
        assert!(verify_signature(
            "12345",
            url,
            &p,
            Some("GvWf1cFY/Q7PnoempGyD5oXAezc=")
        ));
        assert!(!verify_signature(
            "12346",
            url,
            &p,
            Some("GvWf1cFY/Q7PnoempGyD5oXAezc=")
        ));
        assert!(!verify_signature(
            "12345",
            "https://mycompany.com/myapp.php?foo=1&bar=3",
            &p,
            Some("GvWf1cFY/Q7PnoempGyD5oXAezc=")
        ));
        assert!(!verify_signature("12345", url, &p, None));
        assert!(!verify_signature("12345", url, &p, Some("not base64!")));
    }
}
