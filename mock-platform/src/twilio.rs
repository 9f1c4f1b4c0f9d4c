//! The Twilio mock: the Messages resource (`POST /2010-04-01/Accounts/{sid}/Messages.json`)
//! with Twilio's Basic auth, form checks and JSON bodies (201 with `sid`, `status`,
//! `num_segments`; errors `{"code","message","more_info","status"}`), per-number opt-outs
//! (21610 after STOP), status callbacks to each request's `StatusCallback` signed with
//! `X-Twilio-Signature` as Twilio signs them, and a simulated person texting in (STOP, START,
//! anything) that posts a signed inbound message to Herald's `/webhooks/twilio/inbound`.
//!
//! Twilio reports the 30xxx delivery errors in status callbacks, never in the answer to the
//! POST: `fail_delivery` makes a number fail that way (201, then `sent`, then
//! `undelivered` / `failed` with `ErrorCode`). Forced errors (`Mock::fail_next`,
//! `fail_address`, the knobs' error mix) answer the code at once, with the HTTP status Twilio
//! gives its API errors (400 for 21xxx / 30xxx, 401 for 20003, 429 for 20429), so classifiers
//! can be tested on every code.

use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use axum::{Json, Router};
use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine;
use hmac::{Hmac, Mac};
use serde::Deserialize;
use serde_json::{json, Value};
use sha1::Sha1;

use crate::{header_pairs, url_decode_pairs, Gate, LedgerEntry, Mock};

const PLATFORM: &str = "twilio";
const API_VERSION: &str = "2010-04-01";
/// Twilio's limit on a message body, in characters.
pub const MAX_BODY_CHARS: usize = 1600;
/// The number callbacks name as sender when a request used a Messaging Service.
pub const SERVICE_NUMBER: &str = "+15005550006";
/// Where Herald takes inbound messages.
pub const INBOUND_PATH: &str = "/webhooks/twilio/inbound";

pub const STOP_KEYWORDS: &[&str] = &[
    "STOP",
    "STOPALL",
    "UNSUBSCRIBE",
    "CANCEL",
    "END",
    "QUIT",
    "REVOKE",
    "OPTOUT",
];
pub const START_KEYWORDS: &[&str] = &["START", "YES", "UNSTOP"];

pub fn routes() -> Router<Arc<Mock>> {
    Router::new()
        .route(
            "/2010-04-01/Accounts/{account_sid}/Messages.json",
            post(create_message),
        )
        .route("/_mock/twilio/inbound", post(inbound_api))
        .route("/_mock/twilio/optout", post(optout_api))
        .route("/_mock/twilio/undeliverable", post(undeliverable_api))
}

// ---------------------------------------------------------------------------------------------
// Errors
// ---------------------------------------------------------------------------------------------

/// HTTP status and message Twilio answers for an error code.
pub fn error_info(code: &str) -> (u16, &'static str) {
    match code {
        "20003" => (401, "Authentication Error - invalid username"),
        "20404" => (404, "The requested resource was not found"),
        "20429" => (429, "Too Many Requests"),
        "20500" => (500, "Internal Server Error"),
        "20503" => (503, "Service Unavailable"),
        "21211" => (400, "Invalid 'To' Phone Number"),
        "21602" => (400, "Message body is required."),
        "21603" => (400, "A 'From' phone number is required."),
        "21604" => (400, "A 'To' phone number is required."),
        "21610" => (400, "Attempt to send to unsubscribed recipient"),
        "21611" => (
            400,
            "This 'From' number has exceeded the maximum number of queued messages",
        ),
        "21617" => (
            400,
            "The concatenated message body exceeds the 1600 character limit.",
        ),
        "30001" => (400, "Queue overflow"),
        "30003" => (400, "Unreachable destination handset"),
        "30004" => (400, "Message blocked"),
        "30005" => (400, "Unknown destination handset"),
        "30006" => (400, "Landline or unreachable carrier"),
        "30007" => (400, "Message filtered"),
        "30008" => (400, "Unknown error"),
        "30032" => (400, "Toll-Free Number Has Not Been Verified"),
        "30034" => (400, "Message from an Unregistered Number"),
        "30036" => (400, "Validity Period Expired"),
        _ => (400, "Bad Request"),
    }
}

/// Twilio's error body for `code`, and its HTTP status.
pub fn error_body(code: &str) -> (u16, Value) {
    let (status, message) = error_info(code);
    // Twilio sends the code as a number.
    let code_value = code
        .parse::<u64>()
        .map(Value::from)
        .unwrap_or_else(|_| Value::from(code));
    (
        status,
        json!({
            "code": code_value,
            "message": message,
            "more_info": format!("https://www.twilio.com/docs/errors/{code}"),
            "status": status,
        }),
    )
}

/// The error rendered as Twilio answers it.
pub fn error_response(code: &str) -> Response {
    let (status, body) = error_body(code);
    let status = StatusCode::from_u16(status).unwrap_or(StatusCode::BAD_REQUEST);
    (status, Json(body)).into_response()
}

// ---------------------------------------------------------------------------------------------
// Segments (as Twilio counts them: GSM 03.38 with its extension table, else UCS-2)
// ---------------------------------------------------------------------------------------------

const GSM7_BASIC: &str = "@£$¥èéùìòÇ\nØø\rÅåΔ_ΦΓΛΩΠΨΣΘΞÆæßÉ !\"#¤%&'()*+,-./0123456789:;<=>?\
¡ABCDEFGHIJKLMNOPQRSTUVWXYZÄÖÑÜ§¿abcdefghijklmnopqrstuvwxyzäöñüà";
const GSM7_EXTENSION: &str = "\u{0c}^{}\\[~]|€";

/// Segments a body is billed as; no character straddles two parts.
pub fn num_segments(body: &str) -> usize {
    let gsm: Option<Vec<usize>> = body
        .chars()
        .map(|c| {
            if GSM7_BASIC.contains(c) {
                Some(1)
            } else if GSM7_EXTENSION.contains(c) {
                Some(2)
            } else {
                None
            }
        })
        .collect();
    let (widths, single, per) = match gsm {
        Some(w) => (w, 160, 153),
        None => (body.chars().map(char::len_utf16).collect(), 70, 67),
    };
    if widths.iter().sum::<usize>() <= single {
        return 1;
    }
    let (mut parts, mut fill) = (1, 0);
    for w in widths {
        if fill + w > per {
            parts += 1;
            fill = 0;
        }
        fill += w;
    }
    parts
}

// ---------------------------------------------------------------------------------------------
// Signatures
// ---------------------------------------------------------------------------------------------

/// `X-Twilio-Signature`: base64(HMAC-SHA1(auth token, url + name+value of each param sorted by
/// name)).
pub fn signature(auth_token: &str, url: &str, params: &[(String, String)]) -> String {
    let Ok(mut mac) = Hmac::<Sha1>::new_from_slice(auth_token.as_bytes()) else {
        return String::new();
    };
    mac.update(url.as_bytes());
    let mut sorted: Vec<&(String, String)> = params.iter().collect();
    sorted.sort();
    for (k, v) in sorted {
        mac.update(k.as_bytes());
        mac.update(v.as_bytes());
    }
    B64.encode(mac.finalize().into_bytes())
}

/// Posts a form signed as Twilio signs it; returns Herald's HTTP status.
pub async fn post_signed(
    mock: &Mock,
    url: &str,
    params: Vec<(String, String)>,
) -> Result<u16, String> {
    let sig = signature(&mock.config.twilio_auth_token, url, &params);
    mock.http
        .post(url)
        .header("x-twilio-signature", sig)
        .header("user-agent", "TwilioProxy/1.1")
        .form(&params)
        .send()
        .await
        .map(|r| r.status().as_u16())
        .map_err(|e| format!("posting to {url}: {e}"))
}

/// Posts one status callback for message `sid` to `url` (a request's `StatusCallback`).
pub async fn post_status(
    mock: &Mock,
    url: &str,
    sid: &str,
    from: &str,
    to: &str,
    status: &str,
    error_code: Option<&str>,
) -> Result<u16, String> {
    let mut p: Vec<(String, String)> = [
        ("AccountSid", mock.config.twilio_account_sid.as_str()),
        ("ApiVersion", API_VERSION),
        ("From", from),
        ("MessageSid", sid),
        ("MessageStatus", status),
        ("SmsSid", sid),
        ("SmsStatus", status),
        ("To", to),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), v.to_string()))
    .collect();
    if let Some(code) = error_code {
        p.push(("ErrorCode".into(), code.to_string()));
    }
    post_signed(mock, url, p).await
}

// ---------------------------------------------------------------------------------------------
// Per-number state
// ---------------------------------------------------------------------------------------------

fn optout_key(number: &str) -> String {
    format!("twilio:optout:{number}")
}

fn undeliverable_key(number: &str) -> String {
    format!("twilio:undeliverable:{number}")
}

/// Marks `number` as having texted STOP (sends answer 21610) or START.
pub fn set_opted_out(mock: &Mock, number: &str, opted_out: bool) {
    mock.kv_set(&optout_key(number), if opted_out { "1" } else { "0" });
}

pub fn is_opted_out(mock: &Mock, number: &str) -> bool {
    mock.kv_get(&optout_key(number)).as_deref() == Some("1")
}

/// Messages to `number` are accepted (201) and then fail in a status callback with `code`
/// (30003, 30005, 30006, 30007, 30036, …); None clears it.
pub fn fail_delivery(mock: &Mock, number: &str, code: Option<&str>) {
    mock.kv_set(&undeliverable_key(number), code.unwrap_or(""));
}

fn delivery_failure(mock: &Mock, number: &str) -> Option<String> {
    mock.kv_get(&undeliverable_key(number))
        .filter(|c| !c.is_empty())
}

/// Twilio's status for a message that failed with `code`: "failed" when it never left
/// Twilio (queue, sender registration, validity), "undelivered" when a carrier refused it.
pub fn failure_status(code: &str) -> &'static str {
    match code {
        "30001" | "30032" | "30034" | "30036" => "failed",
        _ => "undelivered",
    }
}

/// The opt-out change an inbound text asks for: Some(true) STOP, Some(false) START.
pub fn keyword(body: &str) -> Option<bool> {
    let w = body.trim();
    if STOP_KEYWORDS.iter().any(|k| k.eq_ignore_ascii_case(w)) {
        Some(true)
    } else if START_KEYWORDS.iter().any(|k| k.eq_ignore_ascii_case(w)) {
        Some(false)
    } else {
        None
    }
}

/// The person at `from` texts `body` to Herald's number `to`: Twilio applies STOP / START
/// itself (later sends to `from` answer 21610 until START), then posts the signed inbound
/// message to `<herald_url>/webhooks/twilio/inbound`. Returns Herald's HTTP status.
pub async fn inbound_sms(mock: &Mock, from: &str, to: &str, body: &str) -> Result<u16, String> {
    if let Some(stop) = keyword(body) {
        set_opted_out(mock, from, stop);
    }
    let base = mock
        .config
        .herald_url
        .clone()
        .ok_or_else(|| "herald_url is not configured: nowhere to post".to_string())?;
    let sid = message_sid(mock);
    let segments = num_segments(body).to_string();
    let p: Vec<(String, String)> = [
        ("AccountSid", mock.config.twilio_account_sid.as_str()),
        ("ApiVersion", API_VERSION),
        ("Body", body),
        ("From", from),
        ("MessageSid", sid.as_str()),
        ("NumMedia", "0"),
        ("NumSegments", segments.as_str()),
        ("SmsMessageSid", sid.as_str()),
        ("SmsSid", sid.as_str()),
        ("SmsStatus", "received"),
        ("To", to),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), v.to_string()))
    .collect();
    let url = format!("{}{INBOUND_PATH}", base.trim_end_matches('/'));
    post_signed(mock, &url, p).await
}

// ---------------------------------------------------------------------------------------------
// Messages resource
// ---------------------------------------------------------------------------------------------

/// `SM` + 32 hex digits, as Twilio's message sids.
fn message_sid(mock: &Mock) -> String {
    let r: u64 = rand::random();
    format!("SM{:016x}{:016x}", mock.next_seq(), r)
}

/// E.164: `+`, a non-zero digit, at most 15 digits in all.
pub fn is_e164(n: &str) -> bool {
    let Some(d) = n.strip_prefix('+') else {
        return false;
    };
    (7..=15).contains(&d.len()) && d.bytes().all(|b| b.is_ascii_digit()) && !d.starts_with('0')
}

/// Whether the Basic credentials are the account's, for the account in the path.
fn authorized(mock: &Mock, path_sid: &str, headers: &HeaderMap) -> bool {
    let Some(encoded) = headers
        .get("authorization")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Basic "))
    else {
        return false;
    };
    let Ok(raw) = B64.decode(encoded.trim()) else {
        return false;
    };
    let raw = String::from_utf8_lossy(&raw);
    let Some((user, pass)) = raw.split_once(':') else {
        return false;
    };
    user == mock.config.twilio_account_sid
        && pass == mock.config.twilio_auth_token
        && path_sid == mock.config.twilio_account_sid
}

/// RFC 2822 date, as Twilio writes `date_created`.
pub fn rfc2822(t: SystemTime) -> String {
    let secs = t
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0);
    let days = secs.div_euclid(86_400);
    let rem = secs.rem_euclid(86_400);
    // Civil-from-days (Howard Hinnant's algorithm).
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + if m <= 2 { 1 } else { 0 };
    const WD: [&str; 7] = ["Thu", "Fri", "Sat", "Sun", "Mon", "Tue", "Wed"];
    const MON: [&str; 12] = [
        "Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec",
    ];
    format!(
        "{}, {:02} {} {} {:02}:{:02}:{:02} +0000",
        WD[days.rem_euclid(7) as usize],
        d,
        MON[(m - 1).clamp(0, 11) as usize],
        y,
        rem / 3600,
        (rem % 3600) / 60,
        rem % 60
    )
}

async fn create_message(
    State(mock): State<Arc<Mock>>,
    Path(account_sid): Path<String>,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let form = url_decode_pairs(&String::from_utf8_lossy(&body));
    let field = |name: &str| {
        form.iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.clone())
            .filter(|v| !v.is_empty())
    };
    let to = field("To").unwrap_or_default();
    let record = |status: u16, error: Option<&str>| {
        mock.record(LedgerEntry {
            platform: PLATFORM.into(),
            method: "POST".into(),
            path: uri.path().to_string(),
            query: uri.query().unwrap_or("").to_string(),
            headers: header_pairs(&headers),
            body: body.to_vec(),
            address: to.clone(),
            status,
            error: error.map(str::to_string),
            at: SystemTime::now(),
        })
    };
    let fail = |code: &str| {
        record(error_info(code).0, Some(code));
        error_response(code)
    };
    if !authorized(&mock, &account_sid, &headers) {
        return fail("20003");
    }
    match mock.gate(PLATFORM, &to).await {
        Gate::Pass => {}
        Gate::Error(code) => return fail(&code),
        Gate::Throttle => return fail("20429"),
        Gate::Outage => return fail("20503"),
    }
    let from = field("From");
    let service = field("MessagingServiceSid");
    let text = field("Body");
    if to.is_empty() {
        return fail("21604");
    }
    if from.is_none() && service.is_none() {
        return fail("21603");
    }
    let Some(text) = text else {
        return fail("21602");
    };
    if !is_e164(&to) {
        return fail("21211");
    }
    if text.chars().count() > MAX_BODY_CHARS {
        return fail("21617");
    }
    if is_opted_out(&mock, &to) {
        return fail("21610");
    }
    let sid = message_sid(&mock);
    let now = rfc2822(SystemTime::now());
    let account = mock.config.twilio_account_sid.clone();
    let answer = json!({
        "account_sid": account,
        "api_version": API_VERSION,
        "body": text,
        "date_created": now,
        "date_sent": null,
        "date_updated": now,
        "direction": "outbound-api",
        "error_code": null,
        "error_message": null,
        "from": from,
        "messaging_service_sid": service,
        "num_media": "0",
        "num_segments": num_segments(&text).to_string(),
        "price": null,
        "price_unit": "USD",
        "sid": sid,
        // A Messaging Service first "accepts" (it picks the sender), a number "queues".
        "status": if service.is_some() { "accepted" } else { "queued" },
        "subresource_uris": {
            "media": format!("/{API_VERSION}/Accounts/{account}/Messages/{sid}/Media.json"),
        },
        "to": to,
        "uri": format!("/{API_VERSION}/Accounts/{account}/Messages/{sid}.json"),
    });
    record(201, None);
    if let Some(callback) = field("StatusCallback") {
        schedule_callbacks(
            &mock,
            callback,
            sid,
            from.unwrap_or_else(|| SERVICE_NUMBER.into()),
            to.clone(),
        );
    }
    (StatusCode::CREATED, Json(answer)).into_response()
}

/// `sent`, then `delivered` (or the failure set with `fail_delivery`), to the request's
/// StatusCallback after the configured delays; only when callbacks are on.
fn schedule_callbacks(mock: &Arc<Mock>, url: String, sid: String, from: String, to: String) {
    if !mock.config.receipts || mock.config.herald_url.is_none() {
        return;
    }
    let failure = delivery_failure(mock, &to);
    let deliver = Duration::from_millis(mock.config.deliver_after_ms);
    let m = mock.clone();
    tokio::spawn(async move {
        tokio::time::sleep(deliver / 2).await;
        if let Err(e) = post_status(&m, &url, &sid, &from, &to, "sent", None).await {
            eprintln!("mock-platform: twilio status callback failed: {e}");
        }
        tokio::time::sleep(deliver - deliver / 2).await;
        let res = match &failure {
            Some(code) => {
                post_status(&m, &url, &sid, &from, &to, failure_status(code), Some(code)).await
            }
            None => post_status(&m, &url, &sid, &from, &to, "delivered", None).await,
        };
        if let Err(e) = res {
            eprintln!("mock-platform: twilio status callback failed: {e}");
        }
    });
}

// ---------------------------------------------------------------------------------------------
// Control API
// ---------------------------------------------------------------------------------------------

#[derive(Deserialize)]
struct InboundRequest {
    from: String,
    to: String,
    body: String,
}

async fn inbound_api(State(m): State<Arc<Mock>>, Json(r): Json<InboundRequest>) -> Response {
    match inbound_sms(&m, &r.from, &r.to, &r.body).await {
        Ok(status) => Json(json!({ "herald_status": status })).into_response(),
        Err(e) => (StatusCode::BAD_GATEWAY, e).into_response(),
    }
}

#[derive(Deserialize)]
struct OptOutRequest {
    number: String,
    #[serde(default = "yes")]
    opted_out: bool,
}

fn yes() -> bool {
    true
}

async fn optout_api(State(m): State<Arc<Mock>>, Json(r): Json<OptOutRequest>) -> &'static str {
    set_opted_out(&m, &r.number, r.opted_out);
    "ok\n"
}

#[derive(Deserialize)]
struct UndeliverableRequest {
    number: String,
    #[serde(default)]
    code: Option<String>,
}

async fn undeliverable_api(
    State(m): State<Arc<Mock>>,
    Json(r): Json<UndeliverableRequest>,
) -> &'static str {
    fail_delivery(&m, &r.number, r.code.as_deref());
    "ok\n"
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{MockConfig, MockPlatform};

    #[test]
    fn every_documented_error_renders_as_twilio_does() {
        let cases = [
            ("20003", 401),
            ("20429", 429),
            ("21211", 400),
            ("21602", 400),
            ("21604", 400),
            ("21610", 400),
            ("21611", 400),
            ("21617", 400),
            ("30001", 400),
            ("30003", 400),
            ("30004", 400),
            ("30005", 400),
            ("30006", 400),
            ("30007", 400),
            ("30008", 400),
            ("30032", 400),
            ("30034", 400),
            ("30036", 400),
            ("20503", 503),
        ];
        for (code, status) in cases {
            let (s, body) = error_body(code);
            assert_eq!(s, status, "{code}");
            assert_eq!(
                body["code"],
                code.parse::<u64>().expect("numeric"),
                "{code}"
            );
            assert_eq!(body["status"], status);
            assert_eq!(
                body["more_info"],
                format!("https://www.twilio.com/docs/errors/{code}")
            );
            assert!(
                body["message"].as_str().is_some_and(|m| m != "Bad Request"),
                "{code} has its own message"
            );
        }
    }

    #[test]
    fn signature_matches_twilios_published_example() {
        let p: Vec<(String, String)> = [
            ("CallSid", "CA1234567890ABCDE"),
            ("Caller", "+14158675310"),
            ("Digits", "1234"),
            ("From", "+14158675310"),
            ("To", "+18005551212"),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
        assert_eq!(
            signature("12345", "https://mycompany.com/myapp.php?foo=1&bar=2", &p),
            "GvWf1cFY/Q7PnoempGyD5oXAezc="
        );
    }

    #[test]
    fn segments_and_numbers() {
        assert_eq!(num_segments(&"a".repeat(160)), 1);
        assert_eq!(num_segments(&"a".repeat(161)), 2);
        assert_eq!(num_segments(&"€".repeat(80)), 1);
        assert_eq!(num_segments(&"€".repeat(81)), 2);
        assert_eq!(num_segments(&format!("{}😀", "a".repeat(68))), 1);
        assert_eq!(num_segments(&format!("{}😀", "a".repeat(69))), 2);
        assert_eq!(num_segments(&"ж".repeat(135)), 3);
        assert!(is_e164("+14155550100"));
        assert!(!is_e164("14155550100"));
        assert!(!is_e164("+1415555010a"));
        assert!(!is_e164("+0123456789"));
        assert!(!is_e164("+1234567890123456"));
        assert_eq!(keyword(" stop "), Some(true));
        assert_eq!(keyword("Unstop"), Some(false));
        assert_eq!(keyword("stop please"), None);
        assert_eq!(failure_status("30006"), "undelivered");
        assert_eq!(failure_status("30036"), "failed");
    }

    #[test]
    fn dates_are_rfc2822() {
        assert_eq!(rfc2822(UNIX_EPOCH), "Thu, 01 Jan 1970 00:00:00 +0000");
        assert_eq!(
            rfc2822(UNIX_EPOCH + Duration::from_secs(1_692_853_305)),
            "Thu, 24 Aug 2023 05:01:45 +0000"
        );
    }

    fn post(
        m: &MockPlatform,
        auth: Option<(&str, &str)>,
        form: &[(&str, &str)],
    ) -> reqwest::RequestBuilder {
        let sid = &m.mock.config.twilio_account_sid;
        let mut r = reqwest::Client::new()
            .post(format!(
                "{}/2010-04-01/Accounts/{sid}/Messages.json",
                m.base_url()
            ))
            .form(form);
        if let Some((u, p)) = auth {
            r = r.basic_auth(u, Some(p));
        }
        r
    }

    async fn answer(r: reqwest::RequestBuilder) -> (u16, Value) {
        let res = r.send().await.expect("mock answers");
        let status = res.status().as_u16();
        (status, res.json().await.unwrap_or(Value::Null))
    }

    #[tokio::test]
    async fn messages_resource_checks_like_twilio() {
        let m = MockPlatform::start(MockConfig::default())
            .await
            .expect("mock starts");
        let c = m.mock.config.clone();
        let auth = Some((c.twilio_account_sid.as_str(), c.twilio_auth_token.as_str()));
        let ok = [
            ("To", "+14155550100"),
            ("From", "+15005550006"),
            ("Body", "hello"),
        ];
        let (s, b) = answer(post(&m, auth, &ok)).await;
        assert_eq!(s, 201, "{b}");
        let sid = b["sid"].as_str().expect("sid");
        assert!(sid.starts_with("SM") && sid.len() == 34, "{sid}");
        assert_eq!(b["status"], "queued");
        assert_eq!(b["num_segments"], "1");
        assert_eq!(b["to"], "+14155550100");
        // Wrong credentials.
        let (s, b) = answer(post(&m, Some((&c.twilio_account_sid, "nope")), &ok)).await;
        assert_eq!((s, b["code"].as_u64()), (401, Some(20003)));
        let (s, b) = answer(post(&m, None, &ok)).await;
        assert_eq!((s, b["code"].as_u64()), (401, Some(20003)));
        // Missing or wrong fields.
        let (s, b) = answer(post(&m, auth, &[("From", "+15005550006"), ("Body", "x")])).await;
        assert_eq!((s, b["code"].as_u64()), (400, Some(21604)));
        let (s, b) = answer(post(&m, auth, &[("To", "+14155550100"), ("From", "+1500")])).await;
        assert_eq!((s, b["code"].as_u64()), (400, Some(21602)));
        let (s, b) = answer(post(&m, auth, &[("To", "+14155550100"), ("Body", "x")])).await;
        assert_eq!((s, b["code"].as_u64()), (400, Some(21603)));
        let bad_to = [("To", "555-0100"), ("From", "+15005550006"), ("Body", "x")];
        let (s, b) = answer(post(&m, auth, &bad_to)).await;
        assert_eq!((s, b["code"].as_u64()), (400, Some(21211)));
        let long = "a".repeat(MAX_BODY_CHARS + 1);
        let too_long = [
            ("To", "+14155550100"),
            ("From", "+15005550006"),
            ("Body", long.as_str()),
        ];
        let (s, b) = answer(post(&m, auth, &too_long)).await;
        assert_eq!((s, b["code"].as_u64()), (400, Some(21617)));
        // Opted out; throttled; outage.
        set_opted_out(&m.mock, "+14155550100", true);
        let (s, b) = answer(post(&m, auth, &ok)).await;
        assert_eq!((s, b["code"].as_u64()), (400, Some(21610)));
        set_opted_out(&m.mock, "+14155550100", false);
        m.mock.fail_next(PLATFORM, "20429", 1);
        let (s, b) = answer(post(&m, auth, &ok)).await;
        assert_eq!((s, b["code"].as_u64()), (429, Some(20429)));
        m.mock.fail_next(PLATFORM, "30007", 1);
        let (s, b) = answer(post(&m, auth, &ok)).await;
        assert_eq!((s, b["code"].as_u64()), (400, Some(30007)));
        m.mock.set_knobs(
            PLATFORM,
            crate::Knobs {
                outage: true,
                ..Default::default()
            },
        );
        let (s, b) = answer(post(&m, auth, &ok)).await;
        assert_eq!((s, b["code"].as_u64()), (503, Some(20503)));
        // Every request is in the ledger with what it was answered.
        let l = m.mock.ledger(PLATFORM);
        assert_eq!(l.len(), 12);
        assert_eq!(l[0].status, 201);
        assert_eq!(l[0].address, "+14155550100");
        assert_eq!(l[1].error.as_deref(), Some("20003"));
        assert_eq!(m.mock.accepted(PLATFORM).len(), 1);
    }

    #[tokio::test]
    async fn messaging_service_requests_are_accepted() {
        let m = MockPlatform::start(MockConfig::default())
            .await
            .expect("mock starts");
        let c = m.mock.config.clone();
        let auth = Some((c.twilio_account_sid.as_str(), c.twilio_auth_token.as_str()));
        let (s, b) = answer(post(
            &m,
            auth,
            &[
                ("To", "+14155550100"),
                ("MessagingServiceSid", "MG0123"),
                ("Body", "héllo 😀"),
            ],
        ))
        .await;
        assert_eq!(s, 201);
        assert_eq!(b["status"], "accepted");
        assert_eq!(b["messaging_service_sid"], "MG0123");
        assert_eq!(b["from"], Value::Null);
    }
}
