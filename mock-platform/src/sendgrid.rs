//! The SendGrid mock: `POST /v3/mail/send` as SendGrid answers it (Bearer key check, body
//! validation with SendGrid's own error messages, 202 + `X-Message-Id`, every documented
//! error), and the signed Event Webhook back to Herald (`delivered`, then `open`; bounces,
//! unsubscribes and the rest on demand). Events are signed with a fixed P-256 key whose public
//! half, base64 DER, is `webhook_public_key()` (also `GET /_mock/sendgrid/public_key`): put it
//! in Herald's `channels.email.sendgrid_webhook_public_key`.

use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use axum::body::Bytes;
use axum::extract::{DefaultBodyLimit, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::Router;
use base64::engine::general_purpose::{STANDARD as B64, URL_SAFE_NO_PAD as B64URL};
use base64::Engine;
use p256::ecdsa::signature::Signer;
use p256::ecdsa::{Signature, SigningKey};
use p256::pkcs8::EncodePublicKey;
use serde_json::{json, Map, Value};

use crate::{header_pairs, Gate, LedgerEntry, Mock};

pub const PLATFORM: &str = "sendgrid";
pub const SEND_PATH: &str = "/v3/mail/send";
pub const WEBHOOK_PATH: &str = "/webhooks/sendgrid";
pub const SIGNATURE_HEADER: &str = "X-Twilio-Email-Event-Webhook-Signature";
pub const TIMESTAMP_HEADER: &str = "X-Twilio-Email-Event-Webhook-Timestamp";

/// SendGrid's request size limit.
const MAX_BODY: usize = 30 * 1024 * 1024;
const MAX_RECIPIENTS: usize = 1000;
const HELP: &str = "http://sendgrid.com/docs/API_Reference/Web_API_v3/Mail/errors.html";

/// The mock's event-signing key: fixed, so a mock run and Herald's config agree without a
/// handshake. (A real account has its own; this one signs only test traffic.)
const SIGNING_SCALAR: [u8; 32] = *b"herald-mock-sendgrid-events-key!";

pub fn routes() -> Router<Arc<Mock>> {
    Router::new()
        .route(
            SEND_PATH,
            post(mail_send).layer(DefaultBodyLimit::max(MAX_BODY + 1024 * 1024)),
        )
        .route("/_mock/sendgrid/public_key", get(public_key_api))
}

fn signing_key() -> SigningKey {
    // A constant scalar well below the group order: always a valid key.
    SigningKey::from_slice(&SIGNING_SCALAR).expect("the fixed scalar is a valid P-256 key")
}

/// The event webhook verification key, base64 DER (SubjectPublicKeyInfo), as SendGrid shows
/// it in its settings.
pub fn webhook_public_key() -> String {
    signing_key()
        .verifying_key()
        .to_public_key_der()
        .map(|d| B64.encode(d.as_bytes()))
        .unwrap_or_default()
}

/// `X-Twilio-Email-Event-Webhook-Signature` for `timestamp` and `body`: base64 DER ECDSA
/// P-256 / SHA-256 over the timestamp followed by the body.
pub fn sign(timestamp: &str, body: &[u8]) -> String {
    let mut msg = Vec::with_capacity(timestamp.len() + body.len());
    msg.extend_from_slice(timestamp.as_bytes());
    msg.extend_from_slice(body);
    let sig: Signature = signing_key().sign(&msg);
    B64.encode(sig.to_der().as_bytes())
}

/// Headers and body of a signed event POST, timestamped `timestamp` (Unix seconds).
pub fn signed_events(events: &[Value], timestamp: i64) -> (Vec<(String, String)>, Vec<u8>) {
    let body = serde_json::to_vec(events).unwrap_or_default();
    let ts = timestamp.to_string();
    let headers = vec![
        ("content-type".to_string(), "application/json".to_string()),
        (SIGNATURE_HEADER.to_string(), sign(&ts, &body)),
        (TIMESTAMP_HEADER.to_string(), ts),
    ];
    (headers, body)
}

fn now_secs() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0)
}

async fn public_key_api() -> String {
    webhook_public_key()
}

// ------------------------------------------------------------------ errors

fn errors_body(errors: &[(&str, Option<&str>, Option<String>)]) -> Value {
    json!({
        "errors": errors
            .iter()
            .map(|(m, f, h)| json!({ "message": m, "field": f, "help": h }))
            .collect::<Vec<_>>()
    })
}

/// HTTP status, extra headers and body of each documented error `code` (the HTTP status as
/// text: "400", "401", "403", "413", "429", "500", "502", "503").
pub fn error_parts(code: &str) -> (u16, Vec<(String, String)>, Value) {
    let one = |m: &str, f: Option<&str>| errors_body(&[(m, f, None)]);
    match code {
        "400" => (400, vec![], one("Bad Request", None)),
        "401" => (
            401,
            vec![],
            one(
                "The provided authorization grant is invalid, expired, or revoked",
                None,
            ),
        ),
        "403" => (
            403,
            vec![],
            one(
                "The from address does not match a verified Sender Identity. Mail cannot be sent until this error is resolved. Visit https://sendgrid.com/docs/for-developers/sending-email/sender-identity/ to see the Sender Identity requirements",
                Some("from"),
            ),
        ),
        "413" => (
            413,
            vec![],
            one(
                "The JSON payload you have included in your request is too large. Please limit your request to 30 MB.",
                None,
            ),
        ),
        "429" => (
            429,
            vec![
                ("X-RateLimit-Limit".into(), "600".into()),
                ("X-RateLimit-Remaining".into(), "0".into()),
                ("X-RateLimit-Reset".into(), (now_secs() + 1).to_string()),
            ],
            one("too many requests", None),
        ),
        "502" => (502, vec![], one("Bad Gateway", None)),
        "503" => (503, vec![], one("Service Unavailable", None)),
        _ => (500, vec![], one("Internal Server Error", None)),
    }
}

fn render(status: u16, headers: Vec<(String, String)>, body: &Value) -> Response {
    let mut r = (
        StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR),
        [("content-type", "application/json")],
        body.to_string(),
    )
        .into_response();
    for (k, v) in headers {
        if let (Ok(k), Ok(v)) = (
            axum::http::HeaderName::try_from(k.as_str()),
            axum::http::HeaderValue::try_from(v.as_str()),
        ) {
            r.headers_mut().insert(k, v);
        }
    }
    r
}

// ------------------------------------------------------------------ request checks

fn valid_email(s: &str) -> bool {
    let s = s.trim();
    match s.rsplit_once('@') {
        Some((local, domain)) => {
            !local.is_empty()
                && !domain.is_empty()
                && domain.contains('.')
                && !s.contains(char::is_whitespace)
        }
        None => false,
    }
}

/// SendGrid's validation of a Mail Send body: every problem found, as it words them.
pub fn validate(body: &Value) -> Vec<(&'static str, Option<String>)> {
    let mut errs: Vec<(&'static str, Option<String>)> = Vec::new();
    let p = body["personalizations"].as_array();
    match p {
        Some(list) if !list.is_empty() => {
            if list.len() > MAX_RECIPIENTS {
                errs.push((
                    "You may not include more than 1000 personalizations per API request.",
                    Some("personalizations".into()),
                ));
            }
            let mut total = 0;
            for (i, pers) in list.iter().enumerate() {
                let to = pers["to"].as_array();
                let ok = to.is_some_and(|t| {
                    !t.is_empty()
                        && t.iter()
                            .all(|r| r["email"].as_str().is_some_and(valid_email))
                });
                if !ok {
                    errs.push((
                        "The to array is required for all personalization objects, and must have at least one email object with a valid email address.",
                        Some(format!("personalizations.{i}.to")),
                    ));
                }
                for k in ["to", "cc", "bcc"] {
                    total += pers[k].as_array().map(Vec::len).unwrap_or(0);
                }
            }
            if total > MAX_RECIPIENTS {
                errs.push((
                    "The total number of recipients must be less than 1000. This includes all recipients defined within the to, cc, and bcc parameters, across each object that you include in the personalizations array.",
                    Some("personalizations".into()),
                ));
            }
        }
        _ => errs.push((
            "The personalizations field is required and must have at least one personalization.",
            Some("personalizations".into()),
        )),
    }
    match body["from"]["email"].as_str() {
        None => errs.push((
            "The from object must be provided for every email send. It is an object that requires an email parameter, but may also contain a name parameter.",
            Some("from".into()),
        )),
        Some(e) if !valid_email(e) => errs.push((
            "The from email does not contain a valid address.",
            Some("from.email".into()),
        )),
        _ => {}
    }
    let template = body["template_id"].as_str().is_some_and(|t| !t.is_empty());
    let subject_everywhere = body["personalizations"]
        .as_array()
        .is_some_and(|l| !l.is_empty() && l.iter().all(|p| p["subject"].is_string()));
    if !template && !subject_everywhere && body["subject"].as_str().is_none_or(|s| s.is_empty()) {
        errs.push((
            "The subject is required. You can get around this requirement if you use a template with a subject defined or if every personalization has a subject defined.",
            Some("subject".into()),
        ));
    }
    match body["content"].as_array() {
        Some(c) if !c.is_empty() => {
            for (i, part) in c.iter().enumerate() {
                if part["type"].as_str().is_none_or(|t| t.is_empty()) {
                    errs.push((
                        "The content type cannot contain ';', or CRLF characters, and must be at least one character in length.",
                        Some(format!("content.{i}.type")),
                    ));
                }
                if part["value"].as_str().is_none_or(|v| v.is_empty()) {
                    errs.push((
                        "The content value must be a string at least one character in length.",
                        Some(format!("content.{i}.value")),
                    ));
                }
            }
            let types: Vec<&str> = c.iter().filter_map(|p| p["type"].as_str()).collect();
            let plain = types.iter().position(|t| *t == "text/plain");
            let html = types.iter().position(|t| *t == "text/html");
            if plain.is_some_and(|p| p != 0) || matches!((plain, html), (Some(p), Some(h)) if h < p)
            {
                errs.push((
                    "If present, text/plain content must be first, followed by text/html, followed by any other content.",
                    Some("content".into()),
                ));
            }
        }
        _ if template => {}
        _ => errs.push((
            "Unless a valid template_id is provided, the content parameter is required. There must be at least one defined content block. We typically suggest both text/plain and text/html blocks are included, but only one block is required.",
            Some("content".into()),
        )),
    }
    errs
}

/// Every `to` address of the request, in order.
fn recipients(body: &Value) -> Vec<String> {
    body["personalizations"]
        .as_array()
        .map(|l| {
            l.iter()
                .flat_map(|p| p["to"].as_array().cloned().unwrap_or_default())
                .filter_map(|r| r["email"].as_str().map(str::to_string))
                .collect()
        })
        .unwrap_or_default()
}

/// Custom args of the message as events carry them: the request's, then the
/// personalization's on top.
fn custom_args(body: &Value, personalization: &Value) -> Map<String, Value> {
    let mut m = body["custom_args"].as_object().cloned().unwrap_or_default();
    if let Some(p) = personalization["custom_args"].as_object() {
        m.extend(p.clone());
    }
    m
}

/// A SendGrid-looking id (22 URL-safe characters).
fn sg_id() -> String {
    let bytes: [u8; 16] = rand::random();
    B64URL.encode(bytes)
}

// ------------------------------------------------------------------ the endpoint

async fn mail_send(State(mock): State<Arc<Mock>>, headers: HeaderMap, body: Bytes) -> Response {
    let parsed: Option<Value> = serde_json::from_slice(&body).ok();
    let address = parsed
        .as_ref()
        .and_then(|b| recipients(b).into_iter().next())
        .unwrap_or_default();
    let record = |status: u16, error: Option<String>| {
        mock.record(LedgerEntry {
            platform: PLATFORM.into(),
            method: "POST".into(),
            path: SEND_PATH.into(),
            query: String::new(),
            headers: header_pairs(&headers),
            body: body.to_vec(),
            address: address.clone(),
            status,
            error,
            at: SystemTime::now(),
        })
    };
    let answer = |code: &str| {
        let (status, h, b) = error_parts(code);
        record(status, Some(code.to_string()));
        render(status, h, &b)
    };

    // Authentication first, as SendGrid does.
    let auth = headers
        .get("authorization")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    if auth.is_empty() {
        record(401, Some("401".into()));
        return render(
            401,
            vec![],
            &errors_body(&[("authorization required", None, None)]),
        );
    }
    if auth.strip_prefix("Bearer ") != Some(mock.config.sendgrid_api_key.as_str()) {
        return answer("401");
    }
    if body.len() > MAX_BODY {
        return answer("413");
    }
    let Some(req) = parsed else {
        return answer("400");
    };
    let problems = validate(&req);
    if !problems.is_empty() {
        record(400, Some("400".into()));
        let list: Vec<(&str, Option<&str>, Option<String>)> = problems
            .iter()
            .map(|(m, f)| {
                let help = f.as_ref().map(|f| format!("{HELP}#message.{f}"));
                (*m, f.as_deref(), help)
            })
            .collect();
        return render(400, vec![], &errors_body(&list));
    }

    match mock.gate(PLATFORM, &address).await {
        Gate::Pass => {}
        Gate::Error(code) => return answer(&code),
        Gate::Throttle => return answer("429"),
        Gate::Outage => return answer("503"),
    }

    let x_message_id = sg_id();
    record(202, None);
    let personalizations = req["personalizations"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    for p in &personalizations {
        let args = custom_args(&req, p);
        for r in p["to"].as_array().cloned().unwrap_or_default() {
            let Some(email) = r["email"].as_str() else {
                continue;
            };
            mock.kv_set(
                &format!("sendgrid:last:{}", email.to_ascii_lowercase()),
                json!({ "x_message_id": x_message_id, "custom_args": args }).to_string(),
            );
            if mock.config.receipts {
                let delivered = event(
                    "delivered",
                    email,
                    &x_message_id,
                    &args,
                    json!({ "response": "250 2.0.0 OK", "tls": 1, "ip": "192.0.2.10" }),
                );
                let open = event(
                    "open",
                    email,
                    &x_message_id,
                    &args,
                    json!({ "useragent": "Mozilla/5.0", "ip": "198.51.100.7", "sg_machine_open": false }),
                );
                let deliver_at = Duration::from_millis(mock.config.deliver_after_ms);
                let read_at = Duration::from_millis(mock.config.read_after_ms).max(deliver_at);
                post_in_order(
                    &mock,
                    vec![(deliver_at, vec![delivered]), (read_at, vec![open])],
                );
            }
        }
    }
    let mut r = (StatusCode::ACCEPTED, "").into_response();
    if let Ok(v) = axum::http::HeaderValue::try_from(x_message_id.as_str()) {
        r.headers_mut().insert("x-message-id", v);
    }
    r
}

// ------------------------------------------------------------------ events

/// One Event Webhook event as SendGrid posts it: the common fields, the message's custom args
/// at the top level, then `extra` (e.g. `type`, `status`, `reason` of a bounce).
pub fn event(
    name: &str,
    email: &str,
    x_message_id: &str,
    custom_args: &Map<String, Value>,
    extra: Value,
) -> Value {
    let mut e = json!({
        "email": email,
        "timestamp": now_secs(),
        "event": name,
        "sg_event_id": sg_id(),
        "sg_message_id": format!("{x_message_id}.filterdrecv-5645d9c87f-l6ln2-1-64F8B3E1-2.0"),
        "smtp-id": format!("<{x_message_id}@geopod-ismtpd-4>"),
        "category": [],
    });
    if let Some(obj) = e.as_object_mut() {
        for (k, v) in custom_args {
            obj.entry(k.clone()).or_insert(v.clone());
        }
        if let Some(x) = extra.as_object() {
            for (k, v) in x {
                obj.insert(k.clone(), v.clone());
            }
        }
    }
    e
}

/// Posts `events` to Herald after `delay`, signed when they leave.
pub fn post_events(mock: &Arc<Mock>, delay: Duration, events: Vec<Value>) {
    post_in_order(mock, vec![(delay, events)]);
}

/// Posts batches of events in order, each at its offset from now, the next only once the
/// previous one was taken: SendGrid sends a message's events in the order they happened and
/// retries a batch the receiver did not take (here a few times, quickly).
pub fn post_in_order(mock: &Arc<Mock>, steps: Vec<(Duration, Vec<Value>)>) {
    if mock.config.herald_url.is_none() {
        return;
    }
    let mock = mock.clone();
    tokio::spawn(async move {
        let start = tokio::time::Instant::now();
        for (at, events) in steps {
            tokio::time::sleep_until(start + at).await;
            let mut tries = 0;
            loop {
                tries += 1;
                match post_events_now(&mock, events.clone()).await {
                    Ok(s) if (200..300).contains(&s) => break,
                    Ok(s) if tries >= 5 => {
                        eprintln!("mock-platform: sendgrid events refused with {s}; giving up");
                        break;
                    }
                    Err(e) if tries >= 5 => {
                        eprintln!("mock-platform: sendgrid events not delivered: {e}");
                        break;
                    }
                    _ => tokio::time::sleep(Duration::from_millis(100 * tries)).await,
                }
            }
        }
    });
}

/// Posts `events` to Herald now and returns its HTTP status, so a test knows they were taken.
pub async fn post_events_now(mock: &Mock, events: Vec<Value>) -> Result<u16, String> {
    let (headers, body) = signed_events(&events, now_secs());
    mock.post_now(WEBHOOK_PATH, headers, body).await
}

/// The event `name` for the last message sent to `email` (None if the mock sent it none),
/// with `extra` fields.
pub fn event_for(mock: &Mock, email: &str, name: &str, extra: Value) -> Option<Value> {
    let last: Value = serde_json::from_str(
        &mock.kv_get(&format!("sendgrid:last:{}", email.to_ascii_lowercase()))?,
    )
    .ok()?;
    let args = last["custom_args"].as_object().cloned().unwrap_or_default();
    Some(event(
        name,
        email,
        last["x_message_id"].as_str()?,
        &args,
        extra,
    ))
}

/// The person's mailbox does not exist: a hard `bounce` of the last message to `email`,
/// posted now. Returns Herald's HTTP status.
pub async fn bounce(mock: &Mock, email: &str) -> Result<u16, String> {
    let e = event_for(
        mock,
        email,
        "bounce",
        json!({
            "type": "bounce",
            "status": "5.1.1",
            "reason": "550 5.1.1 The email account that you tried to reach does not exist.",
            "bounce_classification": "Invalid Address",
        }),
    )
    .ok_or_else(|| format!("no message was sent to {email}"))?;
    post_events_now(mock, vec![e]).await
}

/// The person clicked unsubscribe in the last message to `email`; posted now.
pub async fn unsubscribe(mock: &Mock, email: &str) -> Result<u16, String> {
    let e = event_for(mock, email, "unsubscribe", json!({}))
        .ok_or_else(|| format!("no message was sent to {email}"))?;
    post_events_now(mock, vec![e]).await
}

#[cfg(test)]
mod tests {
    use super::*;
    use p256::ecdsa::signature::Verifier;
    use p256::ecdsa::VerifyingKey;
    use p256::pkcs8::DecodePublicKey;

    #[test]
    fn documented_errors_render_exactly() {
        for (code, status) in [
            ("400", 400),
            ("401", 401),
            ("403", 403),
            ("413", 413),
            ("429", 429),
            ("500", 500),
            ("502", 502),
            ("503", 503),
        ] {
            let (s, h, b) = error_parts(code);
            assert_eq!(s, status, "{code}");
            let e = &b["errors"][0];
            assert!(
                e["message"].as_str().is_some_and(|m| !m.is_empty()),
                "{code}"
            );
            assert!(
                e.get("field").is_some() && e.get("help").is_some(),
                "{code}"
            );
            if code == "429" {
                let names: Vec<&str> = h.iter().map(|(k, _)| k.as_str()).collect();
                assert_eq!(
                    names,
                    [
                        "X-RateLimit-Limit",
                        "X-RateLimit-Remaining",
                        "X-RateLimit-Reset"
                    ]
                );
            }
        }
        assert_eq!(
            error_parts("401").2,
            json!({"errors":[{"message":"The provided authorization grant is invalid, expired, or revoked","field":null,"help":null}]})
        );
    }

    #[test]
    fn validation_names_fields() {
        let ok = json!({
            "personalizations":[{"to":[{"email":"a@example.com"}]}],
            "from":{"email":"shop@example.com"},
            "subject":"Hi",
            "content":[{"type":"text/plain","value":"Hello"}]
        });
        assert!(validate(&ok).is_empty());
        let fields = |v: &Value| {
            validate(v)
                .into_iter()
                .filter_map(|(_, f)| f)
                .collect::<Vec<_>>()
        };
        assert_eq!(
            fields(&json!({})),
            vec!["personalizations", "from", "subject", "content"]
        );
        let mut bad = ok.clone();
        bad["personalizations"][0]["to"][0]["email"] = json!("nope");
        bad["content"][0]["value"] = json!("");
        assert_eq!(
            fields(&bad),
            vec!["personalizations.0.to", "content.0.value"]
        );
        let mut order = ok.clone();
        order["content"] =
            json!([{"type":"text/html","value":"<p>x</p>"},{"type":"text/plain","value":"x"}]);
        assert_eq!(fields(&order), vec!["content"]);
    }

    #[test]
    fn events_are_signed_with_the_published_key() {
        let der = B64.decode(webhook_public_key()).expect("base64");
        let vk = VerifyingKey::from_public_key_der(&der).expect("SPKI");
        let args = Map::from_iter([("notification_id".to_string(), json!("N1"))]);
        let e = event(
            "delivered",
            "a@example.com",
            "XMID",
            &args,
            json!({"tls":1}),
        );
        assert_eq!(e["notification_id"], "N1");
        assert_eq!(e["tls"], 1);
        assert!(e["sg_message_id"]
            .as_str()
            .is_some_and(|s| s.starts_with("XMID.")));
        let (headers, body) = signed_events(&[e], 1_700_000_000);
        let h = |n: &str| {
            headers
                .iter()
                .find(|(k, _)| k == n)
                .map(|(_, v)| v.clone())
                .expect("header")
        };
        let ts = h(TIMESTAMP_HEADER);
        assert_eq!(ts, "1700000000");
        let sig = Signature::from_der(&B64.decode(h(SIGNATURE_HEADER)).expect("b64")).expect("der");
        let mut msg = ts.into_bytes();
        msg.extend_from_slice(&body);
        vk.verify(&msg, &sig).expect("verifies");
    }
}
