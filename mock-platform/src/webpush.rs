//! The Web Push mock: a push service (RFC 8030) taking `POST /push/{id}` for the subscription
//! endpoints `<mock base>/push/<id>`, checking what a real one checks — the VAPID
//! `Authorization` (RFC 8292: ES256 signature with `k`, `aud` = this origin, `exp` in the
//! next 24 h, `sub`), `TTL`, `Content-Encoding: aes128gcm`, `Topic`, `Urgency`, the size and
//! the aes128gcm header of the body (RFC 8188/8291) — and answering like Mozilla's autopush:
//! 201 with `Location`, or `{"code","errno","error","message","more_info"}` errors.
//!
//! It cannot decrypt: it has no subscription private key, like a real push service.
//!
//! Documented codes for `fail_next` / `fail_address` / error mixes: "400", "401", "403",
//! "404", "410", "413", "429", "500", "502", "503".

use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use axum::{Json, Router};
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use serde_json::json;

use crate::{header_pairs, Gate, LedgerEntry, Mock};

const PLATFORM: &str = "webpush";
/// The largest body a push service must take (RFC 8291 §4).
pub const MAX_BODY_BYTES: usize = 4096;
/// RFC 8292 §2: `exp` no more than 24 hours after the request.
const MAX_EXP_AHEAD_SECS: i64 = 24 * 3600;
const MORE_INFO: &str = "http://autopush.readthedocs.io/en/latest/http.html#error-codes";

pub fn routes() -> Router<Arc<Mock>> {
    Router::new().route("/push/{id}", post(push))
}

/// The endpoint of subscription `id` on a mock at `base_url`.
pub fn endpoint(base_url: &str, id: &str) -> String {
    format!("{}/push/{id}", base_url.trim_end_matches('/'))
}

/// The person revoked permission (or the browser dropped the subscription): every later push
/// to `id` answers 410 Gone.
pub fn unsubscribe(mock: &Mock, id: &str) {
    mock.fail_address(PLATFORM, id, Some("410"));
}

/// The subscription `id` was created with `applicationServerKey` = `public_key` (base64url):
/// pushes signed with another VAPID key answer 403, as Chrome's push service does.
pub fn bind_key(mock: &Mock, id: &str, public_key: &str) {
    mock.kv_set(&format!("webpush:key:{id}"), public_key);
}

/// An error answer: HTTP status, autopush `errno`, message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reject {
    pub status: u16,
    pub errno: u16,
    pub message: String,
}

impl Reject {
    fn new(status: u16, errno: u16, message: impl Into<String>) -> Self {
        Self {
            status,
            errno,
            message: message.into(),
        }
    }

    fn unauthorized(message: impl Into<String>) -> Self {
        Self::new(401, 109, message)
    }

    fn bad_request(errno: u16, message: impl Into<String>) -> Self {
        Self::new(400, errno, message)
    }

    /// autopush's error body (and `Retry-After` on 429).
    pub fn response(&self) -> Response {
        let status = StatusCode::from_u16(self.status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
        let body = json!({
            "code": self.status,
            "errno": self.errno,
            "error": status.canonical_reason().unwrap_or("Error"),
            "message": self.message,
            "more_info": MORE_INFO,
        });
        let mut r = (status, Json(body)).into_response();
        if self.status == 429 {
            // Short so tests finish quickly; autopush uses about two minutes.
            r.headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
        }
        r
    }
}

/// Each documented error, as autopush words it.
pub fn error_for(code: &str) -> Reject {
    match code {
        "400" => Reject::bad_request(110, "Invalid crypto keys specified"),
        "401" => Reject::unauthorized("Request did not validate Invalid bearer token"),
        "403" => Reject::new(
            403,
            109,
            "The key in the authorization header does not correspond to the sender that the \
             subscription was created for",
        ),
        "404" => Reject::new(404, 102, "Request did not validate invalid token"),
        "410" => Reject::new(410, 106, "Request did not validate invalid subscription"),
        "413" => Reject::new(413, 104, "Data payload too large"),
        "429" => Reject::new(429, 201, "Use exponential back-off for retries"),
        "500" => Reject::new(500, 999, "Unknown error"),
        "502" => Reject::new(
            502,
            902,
            "An error occurred while establishing a connection",
        ),
        "503" => Reject::new(503, 201, "Use exponential back-off for retries"),
        other => Reject::new(500, 999, format!("mock: undocumented error code {other:?}")),
    }
}

pub fn error_response(code: &str) -> Response {
    error_for(code).response()
}

/// `vapid t=<jwt>, k=<key>` → (t, k).
pub fn parse_vapid(value: &str) -> Option<(&str, &str)> {
    let (scheme, params) = value.trim().split_once(' ')?;
    if !scheme.eq_ignore_ascii_case("vapid") {
        return None;
    }
    let (mut t, mut k) = (None, None);
    for p in params.split(',') {
        match p.trim().split_once('=') {
            Some(("t", v)) => t = Some(v.trim()),
            Some(("k", v)) => k = Some(v.trim()),
            _ => {}
        }
    }
    Some((t.filter(|v| !v.is_empty())?, k.filter(|v| !v.is_empty())?))
}

/// Checks the VAPID `Authorization` as a push service does; returns `k` on success.
pub fn check_vapid(
    authorization: Option<&str>,
    origin: &str,
    now_secs: i64,
) -> Result<String, Reject> {
    let value = authorization.ok_or_else(|| {
        Reject::unauthorized("Request did not validate missing authorization header")
    })?;
    let (token, k) = parse_vapid(value).ok_or_else(|| {
        Reject::unauthorized("Request did not validate Invalid Authorization Header")
    })?;
    let point = URL_SAFE_NO_PAD
        .decode(k.trim_end_matches('='))
        .ok()
        .filter(|p| p.len() == 65 && p256::PublicKey::from_sec1_bytes(p).is_ok())
        .ok_or_else(|| {
            Reject::unauthorized("Request did not validate Invalid Authorization Header: k is not a P-256 public key")
        })?;
    let invalid = |why: &str| {
        Reject::unauthorized(format!(
            "Request did not validate Invalid bearer token: {why}"
        ))
    };
    let header = jsonwebtoken::decode_header(token).map_err(|_| invalid("not a JWT"))?;
    if header.alg != Algorithm::ES256 {
        return Err(invalid("alg must be ES256"));
    }
    let mut v = Validation::new(Algorithm::ES256);
    v.set_audience(&[origin]);
    v.set_required_spec_claims(&["exp", "aud"]);
    v.leeway = 0;
    let claims =
        jsonwebtoken::decode::<serde_json::Value>(token, &DecodingKey::from_ec_der(&point), &v)
            .map_err(|e| {
                use jsonwebtoken::errors::ErrorKind as K;
                match e.kind() {
                    K::ExpiredSignature => invalid("Auth expired"),
                    K::InvalidAudience => invalid(&format!("aud must be {origin}")),
                    K::InvalidSignature => invalid("signature does not verify with k"),
                    K::MissingRequiredClaim(c) => invalid(&format!("missing {c}")),
                    _ => invalid(&e.to_string()),
                }
            })?
            .claims;
    let exp = claims["exp"].as_i64().unwrap_or(0);
    if exp > now_secs + MAX_EXP_AHEAD_SECS {
        return Err(invalid("exp is more than 24 hours ahead"));
    }
    let sub = claims["sub"].as_str().unwrap_or("");
    if !(sub.starts_with("mailto:") || sub.starts_with("https:")) {
        return Err(invalid("sub must be a mailto: or https: URI"));
    }
    Ok(k.trim_end_matches('=').to_string())
}

/// The headers RFC 8030 / 8291 ask for, and the aes128gcm shape of the body.
pub fn check_message(headers: &HeaderMap, body: &[u8]) -> Result<(), Reject> {
    let text = |name: &str| {
        headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .map(str::trim)
    };
    let ttl = text("ttl").ok_or_else(|| Reject::bad_request(111, "Missing TTL Header"))?;
    if ttl.parse::<u32>().is_err() {
        return Err(Reject::bad_request(112, "Invalid TTL header value"));
    }
    if let Some(topic) = text("topic") {
        let ok = !topic.is_empty()
            && topic.len() <= 32
            && topic
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_');
        if !ok {
            return Err(Reject::bad_request(113, "Invalid Topic header value"));
        }
    }
    if let Some(u) = text("urgency") {
        if !["very-low", "low", "normal", "high"].contains(&u) {
            return Err(Reject::bad_request(111, "Invalid Urgency header value"));
        }
    }
    if body.len() > MAX_BODY_BYTES {
        return Err(Reject::new(413, 104, "Data payload too large"));
    }
    if body.is_empty() {
        // A push without data needs no encryption.
        return Ok(());
    }
    match text("content-encoding") {
        None => return Err(Reject::bad_request(111, "Missing Content-Encoding header")),
        Some(e) if !e.eq_ignore_ascii_case("aes128gcm") => {
            return Err(Reject::bad_request(
                110,
                "Unsupported Content-Encoding (want aes128gcm)",
            ))
        }
        Some(_) => {}
    }
    check_aes128gcm(body)
}

/// salt(16) | rs(4) | idlen(1) | keyid(idlen) | at least one record (a delimiter and the
/// 16-byte tag). RFC 8291 §4 fixes idlen at 65: the sender's uncompressed P-256 key.
pub fn check_aes128gcm(body: &[u8]) -> Result<(), Reject> {
    let bad = |why: &str| Reject::bad_request(110, format!("Invalid crypto keys specified: {why}"));
    if body.len() < 21 {
        return Err(bad("body shorter than the aes128gcm header"));
    }
    let rs = u32::from_be_bytes([body[16], body[17], body[18], body[19]]);
    if rs < 18 {
        return Err(bad("record size below 18"));
    }
    let idlen = usize::from(body[20]);
    if idlen != 65 {
        return Err(bad("idlen must be 65"));
    }
    if body.len() < 21 + 65 + 17 {
        return Err(bad("no ciphertext"));
    }
    if p256::PublicKey::from_sec1_bytes(&body[21..86]).is_err() {
        return Err(bad("keyid is not a P-256 public key"));
    }
    Ok(())
}

fn now_secs() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0)
}

async fn push(
    State(mock): State<Arc<Mock>>,
    Path(id): Path<String>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    // This push service's origin, as the VAPID audience must name it.
    let host = headers
        .get(header::HOST)
        .and_then(|h| h.to_str().ok())
        .unwrap_or("127.0.0.1");
    let origin = format!("http://{host}");
    let checked = check_vapid(
        headers
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok()),
        &origin,
        now_secs(),
    )
    .and_then(|k| match mock.kv_get(&format!("webpush:key:{id}")) {
        Some(bound) if bound != k => Err(error_for("403")),
        _ => Ok(()),
    })
    .and_then(|()| check_message(&headers, &body));
    let answer = match checked {
        Err(r) => Err(r),
        Ok(()) => match mock.gate(PLATFORM, &id).await {
            Gate::Pass => Ok(()),
            Gate::Error(code) => Err(error_for(&code)),
            Gate::Throttle => Err(error_for("429")),
            Gate::Outage => Err(error_for("503")),
        },
    };
    let (status, error, response) = match answer {
        Ok(()) => {
            let location = format!("{origin}/m/{:016x}", mock.next_seq());
            let mut r = StatusCode::CREATED.into_response();
            if let Ok(v) = HeaderValue::from_str(&location) {
                r.headers_mut().insert(header::LOCATION, v);
            }
            // RFC 8030 §5.2: the push service says which TTL it keeps the message for.
            if let Some(ttl) = headers.get("ttl") {
                r.headers_mut().insert("ttl", ttl.clone());
            }
            (201, None, r)
        }
        Err(rej) => (rej.status, Some(rej.status.to_string()), rej.response()),
    };
    mock.record(LedgerEntry {
        platform: PLATFORM.into(),
        method: "POST".into(),
        path: format!("/push/{id}"),
        query: String::new(),
        headers: header_pairs(&headers),
        body: body.to_vec(),
        address: id,
        status,
        error,
        at: SystemTime::now(),
    });
    response
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{MockConfig, MockPlatform};
    use jsonwebtoken::{EncodingKey, Header};
    use p256::elliptic_curve::sec1::ToEncodedPoint;
    use p256::pkcs8::EncodePrivateKey;

    fn key() -> p256::SecretKey {
        loop {
            if let Ok(k) = p256::SecretKey::from_slice(&rand::random::<[u8; 32]>()) {
                return k;
            }
        }
    }

    fn public(k: &p256::SecretKey) -> String {
        URL_SAFE_NO_PAD.encode(k.public_key().to_encoded_point(false).as_bytes())
    }

    fn token(k: &p256::SecretKey, claims: serde_json::Value) -> String {
        let der = k.to_pkcs8_der().expect("pkcs8");
        jsonwebtoken::encode(
            &Header::new(Algorithm::ES256),
            &claims,
            &EncodingKey::from_ec_der(der.as_bytes()),
        )
        .expect("sign")
    }

    fn auth(k: &p256::SecretKey, aud: &str, exp: i64, sub: &str) -> String {
        let t = token(k, json!({"aud": aud, "exp": exp, "sub": sub}));
        format!("vapid t={t}, k={}", public(k))
    }

    /// An aes128gcm-shaped body: the mock checks the header, not the ciphertext.
    fn body(len: usize) -> Vec<u8> {
        let mut b = vec![7u8; 16];
        b.extend_from_slice(&4096u32.to_be_bytes());
        b.push(65);
        b.extend_from_slice(key().public_key().to_encoded_point(false).as_bytes());
        b.resize(len.max(b.len() + 17), 0xab);
        b
    }

    #[test]
    fn errors_render_like_autopush() {
        for (code, status, errno) in [
            ("400", 400, 110),
            ("401", 401, 109),
            ("403", 403, 109),
            ("404", 404, 102),
            ("410", 410, 106),
            ("413", 413, 104),
            ("429", 429, 201),
            ("500", 500, 999),
            ("502", 502, 902),
            ("503", 503, 201),
        ] {
            let r = error_for(code);
            assert_eq!((r.status, r.errno), (status, errno), "{code}");
            let resp = r.response();
            assert_eq!(resp.status().as_u16(), status);
            assert_eq!(
                resp.headers().get(header::RETRY_AFTER).is_some(),
                status == 429,
                "{code}"
            );
        }
    }

    #[test]
    fn vapid_header_parses() {
        assert_eq!(parse_vapid("vapid t=a.b.c, k=BXY"), Some(("a.b.c", "BXY")));
        assert_eq!(parse_vapid("vapid k=BXY,t=a.b.c"), Some(("a.b.c", "BXY")));
        assert_eq!(parse_vapid("Bearer a.b.c"), None);
        assert_eq!(parse_vapid("vapid t=a.b.c"), None);
        assert_eq!(parse_vapid("vapid t=, k=x"), None);
    }

    #[test]
    fn vapid_is_checked() {
        let k = key();
        let origin = "http://127.0.0.1:4000";
        let now = now_secs();
        let good = auth(&k, origin, now + 12 * 3600, "mailto:ops@example.com");
        assert_eq!(check_vapid(Some(&good), origin, now), Ok(public(&k)));
        let msg = |r: Result<String, Reject>| {
            let r = r.expect_err("refused");
            assert_eq!(r.status, 401);
            r.message
        };
        assert!(msg(check_vapid(None, origin, now)).contains("missing authorization"));
        assert!(msg(check_vapid(Some("Bearer x"), origin, now)).contains("Invalid Authorization"));
        assert!(msg(check_vapid(Some(&good), "http://127.0.0.1:4001", now)).contains("aud"));
        let expired = auth(&k, origin, now - 10, "mailto:ops@example.com");
        assert!(msg(check_vapid(Some(&expired), origin, now)).contains("expired"));
        let far = auth(&k, origin, now + 25 * 3600, "mailto:ops@example.com");
        assert!(msg(check_vapid(Some(&far), origin, now)).contains("24 hours"));
        let nosub = auth(&k, origin, now + 3600, "ops@example.com");
        assert!(msg(check_vapid(Some(&nosub), origin, now)).contains("sub"));
        // Signed by one key, presented with another.
        let other = key();
        let t = token(
            &k,
            json!({"aud": origin, "exp": now + 3600, "sub": "mailto:a@b.c"}),
        );
        let swapped = format!("vapid t={t}, k={}", public(&other));
        assert!(msg(check_vapid(Some(&swapped), origin, now)).contains("signature"));
        let badk = format!("vapid t={t}, k=AAAA");
        assert!(msg(check_vapid(Some(&badk), origin, now)).contains("P-256"));
    }

    #[test]
    fn messages_are_checked() {
        let mut h = HeaderMap::new();
        h.insert("ttl", HeaderValue::from_static("60"));
        h.insert("content-encoding", HeaderValue::from_static("aes128gcm"));
        h.insert("urgency", HeaderValue::from_static("high"));
        h.insert("topic", HeaderValue::from_static("order-1"));
        assert_eq!(check_message(&h, &body(200)), Ok(()));
        assert_eq!(
            check_message(&h, &body(4097)).map_err(|r| r.status),
            Err(413)
        );
        let errno = |h: &HeaderMap, b: &[u8]| check_message(h, b).expect_err("refused").errno;
        let mut x = h.clone();
        x.remove("ttl");
        assert_eq!(errno(&x, &body(200)), 111);
        x.insert("ttl", HeaderValue::from_static("-1"));
        assert_eq!(errno(&x, &body(200)), 112);
        let mut x = h.clone();
        x.insert("topic", HeaderValue::from_static("has space"));
        assert_eq!(errno(&x, &body(200)), 113);
        let mut x = h.clone();
        x.insert("content-encoding", HeaderValue::from_static("aesgcm"));
        assert_eq!(errno(&x, &body(200)), 110);
        let mut b = body(200);
        b[20] = 64;
        assert_eq!(errno(&h, &b), 110);
        let mut b = body(200);
        b[21] = 0x05;
        assert_eq!(errno(&h, &b), 110);
        assert_eq!(errno(&h, &body(200)[..90]), 110);
        // A push without data needs no encryption headers.
        let mut x = h.clone();
        x.remove("content-encoding");
        assert_eq!(check_message(&x, &[]), Ok(()));
    }

    #[tokio::test]
    async fn pushes_are_taken_refused_and_recorded() {
        let p = MockPlatform::start(MockConfig::default())
            .await
            .expect("mock");
        let k = key();
        let origin = p.base_url();
        let http = reqwest::Client::new();
        let send = |id: &str, authz: String| {
            http.post(endpoint(&p.base_url(), id))
                .header("authorization", authz)
                .header("ttl", "60")
                .header("content-encoding", "aes128gcm")
                .body(body(300))
                .send()
        };
        let a = auth(&k, &origin, now_secs() + 3600, "mailto:ops@example.com");
        let r = send("sub-1", a.clone()).await.expect("send");
        assert_eq!(r.status().as_u16(), 201);
        let loc = r.headers()[header::LOCATION]
            .to_str()
            .expect("ascii")
            .to_string();
        assert!(loc.starts_with(&format!("{origin}/m/")), "{loc}");
        assert_eq!(r.headers()["ttl"], "60");

        unsubscribe(&p.mock, "sub-2");
        let r = send("sub-2", a.clone()).await.expect("send");
        assert_eq!(r.status().as_u16(), 410);
        let j: serde_json::Value = r.json().await.expect("json");
        assert_eq!(j["errno"], 106);

        bind_key(&p.mock, "sub-3", &public(&key()));
        assert_eq!(
            send("sub-3", a.clone())
                .await
                .expect("send")
                .status()
                .as_u16(),
            403
        );

        let wrong_aud = auth(
            &k,
            "https://push.example.net",
            now_secs() + 3600,
            "mailto:a@b.c",
        );
        assert_eq!(
            send("sub-1", wrong_aud)
                .await
                .expect("send")
                .status()
                .as_u16(),
            401
        );

        p.mock.set_knobs(
            PLATFORM,
            crate::Knobs {
                outage: true,
                ..Default::default()
            },
        );
        assert_eq!(send("sub-1", a).await.expect("send").status().as_u16(), 503);

        let ledger = p.mock.ledger(PLATFORM);
        let statuses: Vec<_> = ledger
            .iter()
            .map(|e| (e.address.as_str(), e.status))
            .collect();
        assert_eq!(
            statuses,
            vec![
                ("sub-1", 201),
                ("sub-2", 410),
                ("sub-3", 403),
                ("sub-1", 401),
                ("sub-1", 503)
            ]
        );
        assert_eq!(ledger[1].error.as_deref(), Some("410"));
        assert_eq!(ledger[0].path, "/push/sub-1");
        assert_eq!(p.mock.accepted(PLATFORM).len(), 1);
    }
}
