//! `messenger`: the Messenger Send API (Graph API). One request per PSID to
//! `{base}/{version}/me/messages?access_token=…`, with the `messaging_type` the 24 h window
//! allows (RESPONSE inside it, UPDATE outside, MESSAGE_TAG + `tag` when the content carries
//! one); every Graph error code / subcode of platforms.md §1 classified into an `Outcome`.
//! Receipts come later as per-PSID watermarks (`webhooks::messenger`).

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use serde_json::{json, Value};

use super::{http_client, retry_after, transport_error, Channel, Delivery, Deps, SendContext};
use crate::config::messenger::MessengerConfig;
use crate::model::{self, Content, Detail, Millis, Notification, Outcome};

/// The standard messaging window: hours since the person last wrote.
pub const WINDOW_MS: Millis = 24 * 3600 * 1000;
/// Longest text message, in characters.
pub const MAX_TEXT: usize = 2000;
/// Longest text of a button template, in characters.
pub const MAX_BUTTON_TEXT: usize = 640;
/// Buttons a button template holds.
pub const MAX_BUTTONS: usize = 3;
/// Longest button title, in characters.
pub const MAX_BUTTON_TITLE: usize = 20;
/// The message tags Messenger still takes outside the window (since 2020-03-04).
pub const TAGS: &[&str] = &[
    "CONFIRMED_EVENT_UPDATE",
    "POST_PURCHASE_UPDATE",
    "ACCOUNT_UPDATE",
    "HUMAN_AGENT",
];

pub fn build(cfg: &MessengerConfig, deps: &Deps) -> Result<Arc<dyn Channel>, String> {
    let token = cfg.page_access_token().map_err(|e| e.to_string())?;
    let client = http_client(deps.request_timeout)?;
    Ok(Arc::new(Messenger {
        client,
        url: send_url(&cfg.base_url, &cfg.api_version),
        token,
    }))
}

/// `{base}/{version}/me/messages`: the page is the one the token belongs to.
pub fn send_url(base: &str, version: &str) -> String {
    format!(
        "{}/{}/me/messages",
        base.trim_end_matches('/'),
        graph_version(version)
    )
}

/// `v21.0` whether the config says `v21.0` or `21.0`.
pub(crate) fn graph_version(v: &str) -> String {
    let v = v.trim().trim_matches('/');
    if v.starts_with('v') {
        v.to_string()
    } else {
        format!("v{v}")
    }
}

pub struct Messenger {
    client: reqwest::Client,
    url: String,
    token: String,
}

/// What Herald sends to one PSID, and the facts worth keeping about it.
#[derive(Debug, Clone, PartialEq)]
pub struct Request {
    pub body: Value,
    pub messaging_type: &'static str,
    pub tag: Option<String>,
    /// Actions beyond the three buttons a template holds.
    pub buttons_dropped: usize,
}

/// Title and body as one text: the title on its own line above the body.
pub(crate) fn compose_text(c: &Content) -> String {
    match (c.title.trim().is_empty(), c.body.trim().is_empty()) {
        (false, false) => format!("{}\n\n{}", c.title.trim(), c.body.trim()),
        (false, true) => c.title.trim().to_string(),
        _ => c.body.trim().to_string(),
    }
}

/// The `messaging_type` (and tag) for a send: a tag if the content carries one, else RESPONSE
/// inside the window, UPDATE outside it (which the platform refuses: 10/2018278).
pub fn messaging_type(
    tag: &str,
    last_inbound: Millis,
    now: Millis,
) -> (&'static str, Option<String>) {
    let tag = tag.trim();
    if !tag.is_empty() {
        return ("MESSAGE_TAG", Some(tag.to_ascii_uppercase()));
    }
    if last_inbound > 0 && now - last_inbound < WINDOW_MS {
        ("RESPONSE", None)
    } else {
        ("UPDATE", None)
    }
}

fn payload_error(code: &str, message: impl Into<String>) -> Outcome {
    Outcome::BadPayload {
        detail: Detail::new(code, message),
    }
}

/// Builds the Send API body for `psid`; a payload the platform would refuse is refused here,
/// before any request.
pub fn request(
    n: &Notification,
    psid: &str,
    last_inbound: Millis,
    now: Millis,
) -> Result<Request, Outcome> {
    let c = &n.content;
    let (messaging_type, tag) = messaging_type(&c.messenger_tag, last_inbound, now);
    if let Some(t) = &tag {
        // A retired tag is answered with 100 (class A), which would pause the whole channel
        // for one notification's mistake.
        if !TAGS.contains(&t.as_str()) {
            return Err(payload_error(
                "unknown_tag",
                format!("messenger_tag {t:?} is not one of {}", TAGS.join(", ")),
            ));
        }
    }
    let text = compose_text(c);
    if text.is_empty() {
        return Err(payload_error("empty_text", "the message has no text"));
    }
    let len = text.chars().count();
    let actions: Vec<_> = c
        .actions
        .iter()
        .filter(|a| !a.url.trim().is_empty())
        .collect();
    let (message, buttons_dropped) = if actions.is_empty() {
        if len > MAX_TEXT {
            return Err(payload_error(
                "text_too_long",
                format!("text is {len} characters; Messenger takes at most {MAX_TEXT}"),
            ));
        }
        (json!({ "text": text }), 0)
    } else {
        if len > MAX_BUTTON_TEXT {
            return Err(payload_error(
                "text_too_long",
                format!(
                    "text with buttons is {len} characters; a button template takes at most {MAX_BUTTON_TEXT}"
                ),
            ));
        }
        let buttons: Vec<Value> = actions
            .iter()
            .take(MAX_BUTTONS)
            .map(|a| {
                let label = if a.label.trim().is_empty() {
                    "Open"
                } else {
                    a.label.trim()
                };
                // Longer titles are refused with error 100; cut them instead.
                let title: String = label.chars().take(MAX_BUTTON_TITLE).collect();
                json!({ "type": "web_url", "url": a.url.trim(), "title": title })
            })
            .collect();
        (
            json!({
                "attachment": {
                    "type": "template",
                    "payload": {
                        "template_type": "button",
                        "text": text,
                        "buttons": buttons,
                    }
                }
            }),
            actions.len().saturating_sub(MAX_BUTTONS),
        )
    };
    let mut body = json!({
        "recipient": { "id": psid },
        "messaging_type": messaging_type,
        "message": message,
    });
    if let Some(t) = &tag {
        body["tag"] = json!(t);
    }
    Ok(Request {
        body,
        messaging_type,
        tag,
        buttons_dropped,
    })
}

/// A Graph API error body: `{"error":{"message","type","code","error_subcode",
/// "error_data":{"details"},"fbtrace_id"}}`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct GraphError {
    pub code: i64,
    pub subcode: Option<i64>,
    pub message: String,
    pub details: String,
}

impl GraphError {
    /// `code/subcode`, or `code` alone.
    pub fn code_string(&self) -> String {
        match self.subcode {
            Some(s) => format!("{}/{s}", self.code),
            None => self.code.to_string(),
        }
    }

    pub fn detail(&self) -> Detail {
        let message = if self.details.is_empty() || self.details == self.message {
            self.message.clone()
        } else {
            format!("{}: {}", self.message, self.details)
        };
        Detail::new(self.code_string(), message)
    }
}

pub(crate) fn parse_graph_error(body: &[u8]) -> Option<GraphError> {
    let v: Value = serde_json::from_slice(body).ok()?;
    let e = v.get("error")?;
    let code = e.get("code").and_then(as_int)?;
    Some(GraphError {
        code,
        subcode: e.get("error_subcode").and_then(as_int),
        message: e
            .get("message")
            .and_then(Value::as_str)
            .unwrap_or_default()
            .to_string(),
        details: e
            .pointer("/error_data/details")
            .and_then(Value::as_str)
            .unwrap_or_default()
            .to_string(),
    })
}

/// Graph sends codes as numbers; accept numeric strings too.
fn as_int(v: &Value) -> Option<i64> {
    v.as_i64()
        .or_else(|| v.as_str().and_then(|s| s.parse().ok()))
}

/// An answer without a Graph error body, by HTTP status.
pub(crate) fn by_http_status(status: u16, retry_after: Option<Duration>) -> Outcome {
    let detail = Detail::new(
        format!("http_{status}"),
        format!("platform answered {status} without a Graph error body"),
    );
    match status {
        429 => Outcome::Throttled {
            after: retry_after,
            detail,
        },
        408 | 500..=599 => Outcome::Retry {
            after: retry_after,
            detail,
        },
        401 | 403 => Outcome::Misconfigured { detail },
        _ => Outcome::BadPayload { detail },
    }
}

/// Classifies a Send API answer on the Graph error code and subcode (platforms.md §1), not
/// on the HTTP status, which Graph sets to 400 for nearly everything.
pub fn classify(status: u16, body: &[u8], retry_after: Option<Duration>) -> Outcome {
    if (200..300).contains(&status) {
        let provider_id = serde_json::from_slice::<Value>(body)
            .ok()
            .and_then(|v| {
                v.get("message_id")
                    .and_then(Value::as_str)
                    .map(String::from)
            })
            .unwrap_or_default();
        return Outcome::Sent { provider_id };
    }
    let Some(e) = parse_graph_error(body) else {
        return by_http_status(status, retry_after);
    };
    let detail = e.detail();
    match (e.code, e.subcode) {
        // Temporary failures. (Persistent ones for one PSID end as dead letters once the
        // retries are spent.)
        (1 | 2 | 1200, _) => Outcome::Retry {
            after: retry_after,
            detail,
        },
        // Marketing sooner than the person's chosen frequency: skip on this channel.
        (4, Some(2018354)) => Outcome::PolicyRejected { detail },
        // App (4, 4/2018022), user (17), page (32) and generic (613) rate limits.
        (4 | 17 | 32 | 613, _) => Outcome::Throttled {
            after: retry_after,
            detail,
        },
        // Outside the allowed window (and its older subcode).
        (10, Some(2018278 | 2018065)) => Outcome::PolicyRejected { detail },
        (10, Some(2018108)) => Outcome::DeadAddress { detail },
        (10, _) => Outcome::Misconfigured { detail },
        // The person blocked the page or deactivated (551/1545041, older 200/1545041).
        (551, _) | (200..=299, Some(1545041)) => Outcome::DeadAddress { detail },
        (200..=299, _) => Outcome::Misconfigured { detail },
        (100, Some(2018001)) => Outcome::DeadAddress { detail },
        (100, Some(2018109)) => Outcome::BadPayload { detail },
        // Any other invalid parameter is a bug on our side: class A, so someone looks.
        (100, _) => Outcome::Misconfigured { detail },
        (190, _) => Outcome::Misconfigured { detail },
        (368, _) => Outcome::Misconfigured { detail },
        _ => match by_http_status(status, retry_after) {
            Outcome::Retry { after, .. } => Outcome::Retry { after, detail },
            Outcome::Throttled { after, .. } => Outcome::Throttled { after, detail },
            Outcome::Misconfigured { .. } => Outcome::Misconfigured { detail },
            _ => Outcome::BadPayload { detail },
        },
    }
}

/// The highest percentage in Graph's usage headers (`X-App-Usage`, `X-Page-Usage`,
/// `X-Business-Use-Case-Usage`): how close the app is to its rate limit wall.
pub(crate) fn usage_percent(headers: &reqwest::header::HeaderMap) -> Option<i64> {
    fn max_number(v: &Value) -> Option<i64> {
        match v {
            Value::Number(n) => n.as_i64(),
            Value::Object(m) => m.values().filter_map(max_number).max(),
            Value::Array(a) => a.iter().filter_map(max_number).max(),
            _ => None,
        }
    }
    ["x-app-usage", "x-page-usage", "x-business-use-case-usage"]
        .iter()
        .filter_map(|h| headers.get(*h)?.to_str().ok())
        .filter_map(|s| serde_json::from_str::<Value>(s).ok())
        .filter_map(|v| {
            // Business use case usage nests entries with `estimated_time_to_regain_access`
            // (minutes) beside the percentages; only the percentages count here.
            let mut v = v;
            strip_key(&mut v, "estimated_time_to_regain_access");
            strip_key(&mut v, "type");
            max_number(&v)
        })
        .max()
}

fn strip_key(v: &mut Value, key: &str) {
    match v {
        Value::Object(m) => {
            m.remove(key);
            for x in m.values_mut() {
                strip_key(x, key);
            }
        }
        Value::Array(a) => {
            for x in a {
                strip_key(x, key);
            }
        }
        _ => {}
    }
}

#[async_trait]
impl Channel for Messenger {
    fn kind(&self) -> model::Channel {
        model::Channel::Messenger
    }

    fn watermark_receipts(&self) -> bool {
        true
    }

    async fn send(&self, n: &Notification, ctx: &SendContext<'_>) -> Delivery {
        let Some(psid) = ctx.addresses.first() else {
            return Delivery::of(Outcome::DeadAddress {
                detail: Detail::new("no_address", "recipient has no messenger_psid"),
            });
        };
        let req = match request(n, psid, ctx.last_inbound, ctx.now) {
            Ok(r) => r,
            Err(o) => return Delivery::of(o),
        };
        let mut meta = BTreeMap::new();
        meta.insert("messaging_type".to_string(), req.messaging_type.to_string());
        if let Some(t) = &req.tag {
            meta.insert("tag".to_string(), t.clone());
        }
        if req.buttons_dropped > 0 {
            meta.insert(
                "buttons_dropped".to_string(),
                req.buttons_dropped.to_string(),
            );
        }
        let res = self
            .client
            .post(&self.url)
            .query(&[("access_token", self.token.as_str())])
            .json(&req.body)
            .send()
            .await;
        // The URL carries the page token: errors are reported without it.
        let outcome = match res {
            Err(e) => transport_error(&e.without_url()),
            Ok(r) => {
                let status = r.status().as_u16();
                let after = retry_after(r.headers());
                if let Some(p) = usage_percent(r.headers()) {
                    meta.insert(super::USAGE_PERCENT.to_string(), p.to_string());
                }
                match r.bytes().await {
                    Ok(body) => classify(status, &body, after),
                    Err(e) => transport_error(&e.without_url()),
                }
            }
        };
        Delivery {
            outcome,
            dead: Vec::new(),
            opted_out: Vec::new(),
            meta,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{Action, Channel as Ch, Recipient};

    fn notification(content: Content) -> Notification {
        Notification {
            id: model::make_id(0),
            recipient: Recipient {
                messenger_psid: "24680".into(),
                ..Default::default()
            },
            route: vec![Ch::Messenger],
            content,
            ..Default::default()
        }
    }

    fn text(body: &str) -> Content {
        Content {
            body: body.into(),
            ..Default::default()
        }
    }

    const NOW: Millis = 1_700_000_000_000;

    #[test]
    fn url_names_the_version_and_me() {
        assert_eq!(
            send_url("https://graph.facebook.com/", "v21.0"),
            "https://graph.facebook.com/v21.0/me/messages"
        );
        assert_eq!(
            send_url("http://127.0.0.1:9", "21.0"),
            "http://127.0.0.1:9/v21.0/me/messages"
        );
    }

    #[test]
    fn messaging_type_follows_the_window_and_the_tag() {
        assert_eq!(messaging_type("", NOW - 1000, NOW), ("RESPONSE", None));
        assert_eq!(
            messaging_type("", NOW - WINDOW_MS - 1, NOW),
            ("UPDATE", None)
        );
        assert_eq!(messaging_type("", 0, NOW), ("UPDATE", None));
        assert_eq!(
            messaging_type("account_update", 0, NOW),
            ("MESSAGE_TAG", Some("ACCOUNT_UPDATE".into()))
        );
        // A tag wins even inside the window: the sender asked for it.
        assert_eq!(
            messaging_type("POST_PURCHASE_UPDATE", NOW - 10, NOW).0,
            "MESSAGE_TAG"
        );
    }

    #[test]
    fn text_request_field_by_field() {
        let n = notification(Content {
            title: "Order shipped".into(),
            body: "It arrives Tuesday".into(),
            ..Default::default()
        });
        let r = request(&n, "24680", NOW - 60_000, NOW).expect("valid");
        assert_eq!(r.messaging_type, "RESPONSE");
        assert_eq!(r.tag, None);
        assert_eq!(
            r.body,
            json!({
                "recipient": {"id": "24680"},
                "messaging_type": "RESPONSE",
                "message": {"text": "Order shipped\n\nIt arrives Tuesday"},
            })
        );
        let r = request(&n, "24680", 0, NOW).expect("valid");
        assert_eq!(r.body["messaging_type"], "UPDATE");
        assert!(r.body.get("tag").is_none());
    }

    #[test]
    fn tagged_request_carries_the_tag() {
        let mut c = text("Your password changed");
        c.messenger_tag = "ACCOUNT_UPDATE".into();
        let r = request(&notification(c), "1", 0, NOW).expect("valid");
        assert_eq!(r.body["messaging_type"], "MESSAGE_TAG");
        assert_eq!(r.body["tag"], "ACCOUNT_UPDATE");
        assert_eq!(r.tag.as_deref(), Some("ACCOUNT_UPDATE"));
        let mut c = text("Sale!");
        c.messenger_tag = "SHIPPING_UPDATE".into();
        assert!(matches!(
            request(&notification(c), "1", 0, NOW),
            Err(Outcome::BadPayload { detail }) if detail.code == "unknown_tag"
        ));
    }

    #[test]
    fn buttons_become_a_button_template() {
        let mut c = text("Track your parcel");
        c.actions = (1..=4)
            .map(|i| Action {
                label: format!("A rather long label number {i}"),
                url: format!("https://example.com/{i}"),
            })
            .collect();
        let r = request(&notification(c), "1", NOW - 1, NOW).expect("valid");
        let payload = &r.body["message"]["attachment"]["payload"];
        assert_eq!(r.body["message"]["attachment"]["type"], "template");
        assert_eq!(payload["template_type"], "button");
        assert_eq!(payload["text"], "Track your parcel");
        let buttons = payload["buttons"].as_array().expect("buttons");
        assert_eq!(buttons.len(), 3);
        assert_eq!(buttons[0]["type"], "web_url");
        assert_eq!(buttons[0]["url"], "https://example.com/1");
        assert_eq!(buttons[0]["title"], "A rather long label ");
        assert_eq!(r.buttons_dropped, 1);
    }

    #[test]
    fn oversize_text_is_refused_before_any_request() {
        let ok = "é".repeat(MAX_TEXT);
        assert!(request(&notification(text(&ok)), "1", 0, NOW).is_ok());
        let long = "x".repeat(MAX_TEXT + 1);
        assert!(matches!(
            request(&notification(text(&long)), "1", 0, NOW),
            Err(Outcome::BadPayload { detail }) if detail.code == "text_too_long"
        ));
        let mut c = text(&"x".repeat(MAX_BUTTON_TEXT + 1));
        c.actions = vec![Action {
            label: "Go".into(),
            url: "https://example.com".into(),
        }];
        assert!(matches!(
            request(&notification(c), "1", 0, NOW),
            Err(Outcome::BadPayload { .. })
        ));
        assert!(matches!(
            request(&notification(text("  ")), "1", 0, NOW),
            Err(Outcome::BadPayload { detail }) if detail.code == "empty_text"
        ));
    }

    fn err(code: i64, subcode: Option<i64>) -> Vec<u8> {
        let mut e = json!({
            "message": "(#x) something",
            "type": "OAuthException",
            "code": code,
            "fbtrace_id": "AbCdEf"
        });
        if let Some(s) = subcode {
            e["error_subcode"] = json!(s);
        }
        json!({ "error": e }).to_string().into_bytes()
    }

    fn class_of(code: i64, subcode: Option<i64>) -> Option<model::ErrorClass> {
        classify(400, &err(code, subcode), None).class()
    }

    #[test]
    fn every_documented_code_is_classified() {
        use model::ErrorClass::*;
        let table: &[(i64, Option<i64>, model::ErrorClass)] = &[
            (1, None, Transient),
            (2, None, Transient),
            (1200, None, Transient),
            (4, None, Throttled),
            (4, Some(2018022), Throttled),
            (17, None, Throttled),
            (32, None, Throttled),
            (613, None, Throttled),
            (4, Some(2018354), Policy),
            (10, Some(2018278), Policy),
            (10, Some(2018065), Policy),
            (10, Some(2018108), DeadAddress),
            (10, None, Auth),
            (200, None, Auth),
            (230, None, Auth),
            (299, None, Auth),
            (551, Some(1545041), DeadAddress),
            (200, Some(1545041), DeadAddress),
            (100, Some(2018001), DeadAddress),
            (100, Some(2018109), Payload),
            (100, None, Auth),
            (100, Some(33), Auth),
            (190, None, Auth),
            (190, Some(463), Auth),
            (368, None, Auth),
        ];
        for (code, sub, class) in table {
            assert_eq!(
                class_of(*code, *sub),
                Some(*class),
                "code {code} subcode {sub:?}"
            );
        }
    }

    #[test]
    fn detail_code_is_code_slash_subcode() {
        let o = classify(400, &err(10, Some(2018278)), None);
        assert_eq!(o.detail().map(|d| d.code.as_str()), Some("10/2018278"));
        let o = classify(400, &err(613, None), None);
        assert_eq!(o.detail().map(|d| d.code.as_str()), Some("613"));
    }

    #[test]
    fn success_and_odd_answers() {
        let ok = br#"{"recipient_id":"24680","message_id":"m_abc"}"#;
        assert_eq!(
            classify(200, ok, None),
            Outcome::Sent {
                provider_id: "m_abc".into()
            }
        );
        let ra = Some(Duration::from_secs(3));
        assert!(matches!(
            classify(613, &err(613, None), ra),
            Outcome::Throttled { after: Some(d), .. } if d == Duration::from_secs(3)
        ));
        assert!(matches!(
            classify(503, b"<html>busy</html>", None),
            Outcome::Retry { .. }
        ));
        assert!(matches!(
            classify(429, b"", None),
            Outcome::Throttled { .. }
        ));
        assert!(matches!(
            classify(400, b"not json", None),
            Outcome::BadPayload { .. }
        ));
        // An undocumented code on a 5xx is transient; on a 400 it is kept for inspection.
        assert!(matches!(
            classify(500, &err(9999, None), None),
            Outcome::Retry { detail, .. } if detail.code == "9999"
        ));
        assert!(matches!(
            classify(400, &err(9999, None), None),
            Outcome::BadPayload { .. }
        ));
    }

    #[test]
    fn usage_headers_give_the_highest_percentage() {
        let mut h = reqwest::header::HeaderMap::new();
        h.insert(
            "x-app-usage",
            r#"{"call_count":28,"total_time":25,"total_cputime":25}"#
                .parse()
                .expect("header"),
        );
        h.insert(
            "x-business-use-case-usage",
            r#"{"1234":[{"type":"messenger","call_count":71,"total_cputime":1,"total_time":2,"estimated_time_to_regain_access":900}]}"#
                .parse()
                .expect("header"),
        );
        assert_eq!(usage_percent(&h), Some(71));
        assert_eq!(usage_percent(&reqwest::header::HeaderMap::new()), None);
    }
}
