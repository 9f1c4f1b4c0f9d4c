//! The APNs mock: `POST /3/device/<token>` over HTTP/2 (h2c with prior knowledge on the mock's
//! one listener), checking the ES256 provider token against the team's key (`kid`, `iss`,
//! signature, age), the `apns-*` headers and the payload as APNs does, and answering APNs'
//! own statuses and `{"reason": …}` bodies with the `apns-id` echoed.

use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, Version};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use axum::Router;
use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use serde::Deserialize;
use serde_json::{json, Value};

use crate::{header_pairs, Gate, LedgerEntry, Mock};

/// The team and key of `tests/fixtures/apns-key.p8`, known to every mock.
pub const TEST_TEAM_ID: &str = "TEAMHERALD";
pub const TEST_KEY_ID: &str = "KEYHERALD1";
/// The bundle id the test team may push to.
pub const TEST_TOPIC: &str = "com.example.herald";
const TEST_PUBLIC_KEY: &str = include_str!("../../tests/fixtures/apns-key.pub.pem");
/// APNs' payload limit (VoIP aside).
pub const MAX_PAYLOAD: usize = 4096;
/// A provider token older than this is expired.
const TOKEN_MAX_AGE_SECS: i64 = 3600;
const PUSH_TYPES: &[&str] = &[
    "alert",
    "background",
    "location",
    "voip",
    "complication",
    "fileprovider",
    "mdm",
    "liveactivity",
    "pushtotalk",
];

pub fn routes() -> Router<Arc<Mock>> {
    Router::new().route("/3/device/{token}", post(push))
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

/// Lets the mock accept provider tokens signed by another key (`kid` = `key_id`, `iss` =
/// `team_id`), and pushes to `topics` with them.
pub fn register_key(m: &Mock, team_id: &str, key_id: &str, public_pem: &str, topics: &[&str]) {
    m.kv_set(&format!("apns:key:{team_id}:{key_id}"), public_pem);
    m.kv_set(
        &format!("apns:topics:{team_id}"),
        serde_json::to_string(topics).unwrap_or_default(),
    );
}

fn public_key(m: &Mock, team_id: &str, key_id: &str) -> Option<String> {
    m.kv_get(&format!("apns:key:{team_id}:{key_id}"))
        .or_else(|| {
            (team_id == TEST_TEAM_ID && key_id == TEST_KEY_ID).then(|| TEST_PUBLIC_KEY.to_string())
        })
}

fn topics(m: &Mock, team_id: &str) -> Vec<String> {
    m.kv_get(&format!("apns:topics:{team_id}"))
        .and_then(|s| serde_json::from_str(&s).ok())
        .unwrap_or_else(|| {
            if team_id == TEST_TEAM_ID {
                vec![TEST_TOPIC.to_string()]
            } else {
                vec![]
            }
        })
}

/// Marks every provider token the mock has seen as expired: the next request carrying one
/// answers 403 ExpiredProviderToken (as when a token outlives its hour).
pub fn expire_provider_tokens(m: &Mock) {
    for t in seen_tokens(m) {
        m.kv_set(&format!("apns:expired:{t}"), "1");
    }
}

/// Provider tokens seen so far, oldest first.
pub fn seen_tokens(m: &Mock) -> Vec<String> {
    m.kv_get("apns:seen")
        .and_then(|s| serde_json::from_str(&s).ok())
        .unwrap_or_default()
}

fn remember(m: &Mock, token: &str) {
    let mut seen = seen_tokens(m);
    if !seen.iter().any(|t| t == token) {
        seen.push(token.to_string());
        // A long load test sees a new token every 40 minutes; keep the list short anyway.
        if seen.len() > 64 {
            seen.remove(0);
        }
        m.kv_set(
            "apns:seen",
            serde_json::to_string(&seen).unwrap_or_default(),
        );
    }
}

/// The HTTP status APNs answers with `reason`.
pub fn status_of(reason: &str) -> u16 {
    match reason {
        "BadCollapseId"
        | "BadDeviceToken"
        | "BadExpirationDate"
        | "BadMessageId"
        | "BadPriority"
        | "BadTopic"
        | "DeviceTokenNotForTopic"
        | "DuplicateHeaders"
        | "IdleTimeout"
        | "InvalidPushType"
        | "MissingDeviceToken"
        | "MissingTopic"
        | "PayloadEmpty"
        | "TopicDisallowed" => 400,
        "BadCertificate"
        | "BadCertificateEnvironment"
        | "ExpiredProviderToken"
        | "Forbidden"
        | "InvalidProviderToken"
        | "MissingProviderToken"
        | "UnrelatedKeyIdInToken"
        | "BadEnvironmentKeyIdInToken" => 403,
        "BadPath" => 404,
        "MethodNotAllowed" => 405,
        "ExpiredToken" | "Unregistered" => 410,
        "PayloadTooLarge" => 413,
        "TooManyProviderTokenUpdates" | "TooManyRequests" => 429,
        "ServiceUnavailable" | "Shutdown" => 503,
        _ => 500,
    }
}

/// APNs' error answer for `reason`: status and body (410 adds the time the token stopped
/// being valid, in milliseconds).
pub fn error_body(reason: &str) -> (u16, Value) {
    let status = status_of(reason);
    let reason = if status == 500 && reason != "InternalServerError" {
        "InternalServerError"
    } else {
        reason
    };
    let body = if status == 410 {
        json!({ "reason": reason, "timestamp": now_ms() })
    } else {
        json!({ "reason": reason })
    };
    (status, body)
}

fn respond(status: u16, body: Option<&Value>, apns_id: &str) -> Response {
    let code = StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    let mut r = match body {
        Some(b) => (code, [("content-type", "application/json")], b.to_string()).into_response(),
        None => code.into_response(),
    };
    if let Ok(v) = HeaderValue::from_str(apns_id) {
        r.headers_mut().insert("apns-id", v);
    }
    r
}

#[derive(Deserialize)]
struct ProviderClaims {
    #[serde(default)]
    iss: String,
    #[serde(default)]
    iat: i64,
}

/// Checks the provider token. Err: the 403 reason.
fn check_provider_token(m: &Mock, headers: &HeaderMap) -> Result<(String, String), &'static str> {
    let auth = headers
        .get("authorization")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    let token = auth
        .split_once(' ')
        .filter(|(scheme, _)| scheme.eq_ignore_ascii_case("bearer"))
        .map(|(_, t)| t.trim())
        .filter(|t| !t.is_empty())
        .ok_or("MissingProviderToken")?;
    let header = jsonwebtoken::decode_header(token).map_err(|_| "InvalidProviderToken")?;
    if header.alg != Algorithm::ES256 {
        return Err("InvalidProviderToken");
    }
    let kid = header.kid.ok_or("InvalidProviderToken")?;
    let unverified = jsonwebtoken::dangerous::insecure_decode::<ProviderClaims>(token)
        .map_err(|_| "InvalidProviderToken")?
        .claims;
    let pem = public_key(m, &unverified.iss, &kid).ok_or("InvalidProviderToken")?;
    let key = DecodingKey::from_ec_pem(pem.as_bytes()).map_err(|_| "InvalidProviderToken")?;
    let mut v = Validation::new(Algorithm::ES256);
    v.required_spec_claims.clear();
    v.validate_exp = false;
    v.validate_aud = false;
    let c = jsonwebtoken::decode::<ProviderClaims>(token, &key, &v)
        .map_err(|_| "InvalidProviderToken")?
        .claims;
    let now = (now_ms() / 1000) as i64;
    if c.iat == 0 || c.iat > now + 60 {
        return Err("InvalidProviderToken");
    }
    remember(m, token);
    if m.kv_get(&format!("apns:expired:{token}")).is_some() || now - c.iat > TOKEN_MAX_AGE_SECS {
        return Err("ExpiredProviderToken");
    }
    Ok((c.iss, token.to_string()))
}

fn is_uuid(s: &str) -> bool {
    let parts: Vec<&str> = s.split('-').collect();
    parts.len() == 5
        && parts
            .iter()
            .zip([8, 4, 4, 4, 12])
            .all(|(p, n)| p.len() == n && p.bytes().all(|b| b.is_ascii_hexdigit()))
}

fn random_uuid() -> String {
    let hex = format!("{:032X}", rand::random::<u128>());
    format!(
        "{}-{}-{}-{}-{}",
        &hex[0..8],
        &hex[8..12],
        &hex[12..16],
        &hex[16..20],
        &hex[20..32]
    )
}

/// Checks the headers and payload. Err: the reason.
fn check_request(
    m: &Mock,
    team: &str,
    device: &str,
    headers: &HeaderMap,
    body: &[u8],
) -> Result<(), &'static str> {
    let h = |name: &str| headers.get(name).and_then(|v| v.to_str().ok());
    for name in [
        "apns-topic",
        "apns-push-type",
        "apns-priority",
        "apns-expiration",
        "apns-id",
        "apns-collapse-id",
    ] {
        if headers.get_all(name).iter().count() > 1 {
            return Err("DuplicateHeaders");
        }
    }
    let topic = h("apns-topic").ok_or("MissingTopic")?;
    if !topics(m, team).iter().any(|t| t == topic) {
        return Err("TopicDisallowed");
    }
    if device.is_empty() {
        return Err("MissingDeviceToken");
    }
    if device.len() < 64 || device.len() > 200 || !device.bytes().all(|b| b.is_ascii_hexdigit()) {
        return Err("BadDeviceToken");
    }
    let push_type = h("apns-push-type");
    if let Some(t) = push_type {
        if !PUSH_TYPES.contains(&t) {
            return Err("InvalidPushType");
        }
    }
    if let Some(p) = h("apns-priority") {
        if !matches!(p, "1" | "5" | "10") {
            return Err("BadPriority");
        }
        // Apple: background notifications must be sent at priority 5.
        if push_type == Some("background") && p == "10" {
            return Err("BadPriority");
        }
    }
    if let Some(e) = h("apns-expiration") {
        if e.parse::<u64>().is_err() {
            return Err("BadExpirationDate");
        }
    }
    if let Some(id) = h("apns-id") {
        if !is_uuid(id) {
            return Err("BadMessageId");
        }
    }
    if let Some(c) = h("apns-collapse-id") {
        if c.len() > 64 {
            return Err("BadCollapseId");
        }
    }
    if body.is_empty() {
        return Err("PayloadEmpty");
    }
    if body.len() > MAX_PAYLOAD {
        return Err("PayloadTooLarge");
    }
    Ok(())
}

async fn push(
    State(m): State<Arc<Mock>>,
    Path(device): Path<String>,
    version: Version,
    uri: axum::http::Uri,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let requested_id = headers
        .get("apns-id")
        .and_then(|v| v.to_str().ok())
        .filter(|v| is_uuid(v))
        .map(str::to_string);
    let apns_id = requested_id.unwrap_or_else(random_uuid);
    let mut entry = LedgerEntry {
        platform: "apns".into(),
        method: "POST".into(),
        path: uri.path().to_string(),
        query: uri.query().unwrap_or("").to_string(),
        headers: header_pairs(&headers),
        body: body.to_vec(),
        address: device.clone(),
        status: 200,
        error: None,
        at: SystemTime::now(),
    };
    // APNs speaks HTTP/2 only; a client that fell back to HTTP/1.1 is caught here.
    if version != Version::HTTP_2 {
        entry.status = 505;
        entry.error = Some("HTTP/2 required".into());
        m.record(entry);
        return respond(505, Some(&json!({"reason": "HTTP/2 required"})), &apns_id);
    }
    let checked = check_provider_token(&m, &headers)
        .and_then(|(team, _)| check_request(&m, &team, &device, &headers, &body));
    let reason: Option<String> = match checked {
        Err(r) => Some(r.to_string()),
        Ok(()) => match m.gate("apns", &device).await {
            Gate::Pass => None,
            Gate::Error(code) => Some(code),
            Gate::Throttle => Some("TooManyRequests".into()),
            Gate::Outage => Some("ServiceUnavailable".into()),
        },
    };
    match reason {
        None => {
            m.record(entry);
            respond(200, None, &apns_id)
        }
        Some(r) => {
            let (status, body) = error_body(&r);
            entry.status = status;
            entry.error = body["reason"].as_str().map(str::to_string);
            m.record(entry);
            respond(status, Some(&body), &apns_id)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::MockConfig;

    #[test]
    fn every_documented_reason_has_its_status() {
        for (r, s) in [
            ("BadDeviceToken", 400),
            ("DeviceTokenNotForTopic", 400),
            ("BadCollapseId", 400),
            ("IdleTimeout", 400),
            ("ExpiredProviderToken", 403),
            ("InvalidProviderToken", 403),
            ("MissingProviderToken", 403),
            ("BadPath", 404),
            ("MethodNotAllowed", 405),
            ("Unregistered", 410),
            ("ExpiredToken", 410),
            ("PayloadTooLarge", 413),
            ("TooManyRequests", 429),
            ("TooManyProviderTokenUpdates", 429),
            ("InternalServerError", 500),
            ("ServiceUnavailable", 503),
            ("Shutdown", 503),
        ] {
            let (status, body) = error_body(r);
            assert_eq!(status, s, "{r}");
            assert_eq!(body["reason"], r, "{r}");
            assert_eq!(body.get("timestamp").is_some(), s == 410, "{r}");
        }
        let (status, body) = error_body("Nonsense");
        assert_eq!(
            (status, body["reason"].as_str()),
            (500, Some("InternalServerError"))
        );
    }

    #[test]
    fn requests_are_checked() {
        let m = Mock::new(MockConfig::default());
        let device = "ab".repeat(32);
        let mut h = HeaderMap::new();
        let check = |h: &HeaderMap, d: &str, b: &[u8]| check_request(&m, TEST_TEAM_ID, d, h, b);
        assert_eq!(check(&h, &device, b"{}"), Err("MissingTopic"));
        h.insert("apns-topic", HeaderValue::from_static("com.other.app"));
        assert_eq!(check(&h, &device, b"{}"), Err("TopicDisallowed"));
        h.insert("apns-topic", HeaderValue::from_static(TEST_TOPIC));
        assert_eq!(check(&h, &device, b"{}"), Ok(()));
        assert_eq!(check(&h, "xyz", b"{}"), Err("BadDeviceToken"));
        assert_eq!(check(&h, &device, b""), Err("PayloadEmpty"));
        assert_eq!(check(&h, &device, &[b' '; 4097]), Err("PayloadTooLarge"));
        h.insert("apns-push-type", HeaderValue::from_static("background"));
        h.insert("apns-priority", HeaderValue::from_static("10"));
        assert_eq!(check(&h, &device, b"{}"), Err("BadPriority"));
        h.insert("apns-priority", HeaderValue::from_static("5"));
        h.insert("apns-id", HeaderValue::from_static("nope"));
        assert_eq!(check(&h, &device, b"{}"), Err("BadMessageId"));
        h.insert(
            "apns-id",
            HeaderValue::from_static("123e4567-e89b-12d3-a456-426655440000"),
        );
        h.insert("apns-expiration", HeaderValue::from_static("soon"));
        assert_eq!(check(&h, &device, b"{}"), Err("BadExpirationDate"));
        h.insert("apns-expiration", HeaderValue::from_static("0"));
        h.append("apns-topic", HeaderValue::from_static(TEST_TOPIC));
        assert_eq!(check(&h, &device, b"{}"), Err("DuplicateHeaders"));
    }

    #[test]
    fn provider_tokens_are_checked() {
        let m = Mock::new(MockConfig::default());
        let mut h = HeaderMap::new();
        assert_eq!(check_provider_token(&m, &h), Err("MissingProviderToken"));
        h.insert(
            "authorization",
            HeaderValue::from_static("bearer not.a.jwt"),
        );
        assert_eq!(check_provider_token(&m, &h), Err("InvalidProviderToken"));

        let key = jsonwebtoken::EncodingKey::from_ec_pem(include_bytes!(
            "../../tests/fixtures/apns-key.p8"
        ))
        .expect("fixture key");
        let now = (now_ms() / 1000) as i64;
        let sign = |kid: &str, iss: &str, iat: i64| {
            let mut header = jsonwebtoken::Header::new(Algorithm::ES256);
            header.kid = Some(kid.into());
            jsonwebtoken::encode(&header, &json!({"iss": iss, "iat": iat}), &key).expect("sign")
        };
        let mut with = |t: String| {
            h.insert(
                "authorization",
                HeaderValue::from_str(&format!("bearer {t}")).expect("header"),
            );
            check_provider_token(&m, &h).map(|(team, _)| team)
        };
        let good = sign(TEST_KEY_ID, TEST_TEAM_ID, now);
        assert_eq!(with(good.clone()), Ok(TEST_TEAM_ID.to_string()));
        assert_eq!(
            with(sign("OTHERKEY00", TEST_TEAM_ID, now)),
            Err("InvalidProviderToken")
        );
        assert_eq!(
            with(sign(TEST_KEY_ID, "OTHERTEAM0", now)),
            Err("InvalidProviderToken")
        );
        assert_eq!(
            with(sign(TEST_KEY_ID, TEST_TEAM_ID, now - 3700)),
            Err("ExpiredProviderToken")
        );
        assert_eq!(
            with(sign(TEST_KEY_ID, TEST_TEAM_ID, now + 600)),
            Err("InvalidProviderToken")
        );
        // A tampered signature fails.
        let mut bad = good.clone();
        bad.pop();
        bad.push(if good.ends_with('A') { 'B' } else { 'A' });
        assert_eq!(with(bad), Err("InvalidProviderToken"));
        expire_provider_tokens(&m);
        assert_eq!(with(good), Err("ExpiredProviderToken"));
        let fresh = sign(TEST_KEY_ID, TEST_TEAM_ID, now + 1);
        assert_eq!(with(fresh), Ok(TEST_TEAM_ID.to_string()));
    }

    #[test]
    fn uuids() {
        assert!(is_uuid(&random_uuid()));
        assert!(!is_uuid("123e4567e89b12d3a456426655440000"));
    }
}
