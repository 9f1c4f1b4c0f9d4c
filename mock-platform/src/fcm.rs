//! The FCM mock: Google's OAuth2 token endpoint (`POST /token`, verifying the service
//! account's RS256 assertion) and FCM HTTP v1 `POST /v1/projects/{p}/messages:send`, checking
//! the access token and the message as FCM does and answering FCM's own success and
//! `google.rpc` error bodies.
//!
//! Token requests go to the ledger under the platform name `fcm_oauth` (so `accepted("fcm")`
//! counts messages only); forced errors for the token endpoint use that name too (codes
//! `invalid_grant`, `invalid_client`, `invalid_scope`, `unauthorized_client`).

use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use axum::Router;
use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};

use crate::{header_pairs, url_decode_pairs, Gate, LedgerEntry, Mock};

/// The ledger and knob name of the token endpoint.
pub const OAUTH: &str = "fcm_oauth";
/// The service account of `tests/fixtures/fcm-service-account.json`, known to every mock.
pub const TEST_CLIENT_EMAIL: &str = "herald-push@herald-test.iam.gserviceaccount.com";
pub const TEST_PROJECT_ID: &str = "herald-test";
const TEST_PUBLIC_KEY: &str = include_str!("../../tests/fixtures/fcm-service-account.pub.pem");
/// The scope FCM requires; `cloud-platform` covers it too.
pub const SCOPE: &str = "https://www.googleapis.com/auth/firebase.messaging";
const CLOUD_PLATFORM: &str = "https://www.googleapis.com/auth/cloud-platform";
const GRANT_TYPE: &str = "urn:ietf:params:oauth:grant-type:jwt-bearer";
/// FCM's limit on notification + data.
pub const MAX_PAYLOAD: usize = 4096;
const FCM_ERROR: &str = "type.googleapis.com/google.firebase.fcm.v1.FcmError";
/// `Retry-After` the mock sends with UNAVAILABLE (short, so tests retry soon).
pub const OUTAGE_RETRY_AFTER_SECS: u64 = 1;

pub fn routes() -> Router<Arc<Mock>> {
    Router::new()
        .route("/token", post(token_endpoint))
        .route("/v1/projects/{project}/messages:send", post(send))
}

#[derive(Serialize, Deserialize)]
struct Account {
    project_id: String,
    public_key: String,
}

#[derive(Serialize, Deserialize)]
struct Minted {
    project_id: String,
    scope: String,
    expires_at_ms: u64,
    epoch: u64,
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

/// Lets the token endpoint accept assertions of another service account.
pub fn register_service_account(m: &Mock, client_email: &str, project_id: &str, public_pem: &str) {
    let a = Account {
        project_id: project_id.into(),
        public_key: public_pem.into(),
    };
    m.kv_set(
        &format!("fcm:sa:{client_email}"),
        serde_json::to_string(&a).unwrap_or_default(),
    );
}

fn account(m: &Mock, client_email: &str) -> Option<Account> {
    if let Some(a) = m
        .kv_get(&format!("fcm:sa:{client_email}"))
        .and_then(|s| serde_json::from_str(&s).ok())
    {
        return Some(a);
    }
    (client_email == TEST_CLIENT_EMAIL).then(|| Account {
        project_id: TEST_PROJECT_ID.into(),
        public_key: TEST_PUBLIC_KEY.into(),
    })
}

/// How long access tokens minted from now on live (`expires_in`, and when `messages:send`
/// starts refusing them). Default one hour, like Google.
pub fn set_token_lifetime(m: &Mock, lifetime: Duration) {
    m.kv_set("fcm:lifetime_s", lifetime.as_secs().max(1).to_string());
}

fn token_lifetime(m: &Mock) -> u64 {
    m.kv_get("fcm:lifetime_s")
        .and_then(|s| s.parse().ok())
        .unwrap_or(3600)
}

/// Revokes every access token minted so far: `messages:send` answers them 401 UNAUTHENTICATED.
pub fn revoke_tokens(m: &Mock) {
    let e = epoch(m) + 1;
    m.kv_set("fcm:epoch", e.to_string());
}

fn epoch(m: &Mock) -> u64 {
    m.kv_get("fcm:epoch")
        .and_then(|s| s.parse().ok())
        .unwrap_or(0)
}

/// Access tokens the token endpoint has handed out.
pub fn tokens_minted(m: &Mock) -> usize {
    m.accepted(OAUTH).len()
}

/// The access tokens handed out, oldest first.
pub fn minted_tokens(m: &Mock) -> Vec<String> {
    m.accepted(OAUTH).into_iter().map(|e| e.address).collect()
}

fn oauth_error(status: u16, error: &str, description: &str) -> (u16, Value) {
    (
        status,
        json!({ "error": error, "error_description": description }),
    )
}

/// The token endpoint's answer to a forced error code.
pub fn oauth_error_response(code: &str) -> (u16, Value) {
    match code {
        "invalid_grant" => oauth_error(400, "invalid_grant", "Invalid JWT Signature."),
        "invalid_client" => oauth_error(401, "invalid_client", "The OAuth client was not found."),
        "invalid_scope" => oauth_error(
            400,
            "invalid_scope",
            "Invalid OAuth scope or ID token audience provided.",
        ),
        "unauthorized_client" => oauth_error(
            401,
            "unauthorized_client",
            "Client is unauthorized to retrieve access tokens using this method.",
        ),
        "temporarily_unavailable" => {
            oauth_error(503, "temporarily_unavailable", "Try again later.")
        }
        other => oauth_error(400, other, "mock-platform: forced error"),
    }
}

#[derive(Deserialize)]
struct AssertionClaims {
    #[serde(default)]
    iss: String,
    #[serde(default)]
    scope: String,
    #[serde(default)]
    aud: String,
    #[serde(default)]
    iat: i64,
    #[serde(default)]
    exp: i64,
}

/// Where this mock's token endpoint is, as the client reached it: the `aud` it must sign.
fn own_token_uri(headers: &HeaderMap, uri: &axum::http::Uri) -> String {
    let host = headers
        .get("host")
        .and_then(|v| v.to_str().ok())
        .map(str::to_string)
        .or_else(|| uri.authority().map(|a| a.to_string()))
        .unwrap_or_default();
    format!("http://{host}/token")
}

/// Checks an assertion as Google does. Ok: (client_email, project_id, scope).
fn check_assertion(
    m: &Mock,
    assertion: &str,
    expected_aud: &str,
) -> Result<(String, String, String), (u16, Value)> {
    let bad_sig = || oauth_error(400, "invalid_grant", "Invalid JWT Signature.");
    let header = jsonwebtoken::decode_header(assertion).map_err(|_| bad_sig())?;
    if header.alg != Algorithm::RS256 {
        return Err(bad_sig());
    }
    let unverified = jsonwebtoken::dangerous::insecure_decode::<AssertionClaims>(assertion)
        .map_err(|_| bad_sig())?
        .claims;
    let Some(acct) = account(m, &unverified.iss) else {
        return Err(oauth_error(
            400,
            "invalid_grant",
            "Invalid grant: account not found",
        ));
    };
    let key = DecodingKey::from_rsa_pem(acct.public_key.as_bytes()).map_err(|_| bad_sig())?;
    let mut v = Validation::new(Algorithm::RS256);
    v.required_spec_claims.clear();
    v.validate_exp = false;
    v.validate_aud = false;
    let c = jsonwebtoken::decode::<AssertionClaims>(assertion, &key, &v)
        .map_err(|_| bad_sig())?
        .claims;
    if c.aud != expected_aud {
        return Err(oauth_error(
            400,
            "invalid_grant",
            &format!("Invalid JWT: Failed audience check. The right audience is {expected_aud}"),
        ));
    }
    let now = (now_ms() / 1000) as i64;
    // Google: exp at most an hour after iat, and the token must be current (a minute of skew).
    if c.exp <= now || c.iat > now + 60 || c.exp - c.iat > 3600 || c.exp <= c.iat {
        return Err(oauth_error(
            400,
            "invalid_grant",
            "Invalid JWT: Token must be a short-lived token (60 minutes) and in a reasonable timeframe. Check your iat and exp values in the JWT claim.",
        ));
    }
    if c.scope.trim().is_empty() {
        return Err(oauth_error(
            400,
            "invalid_scope",
            "Invalid OAuth scope or ID token audience provided.",
        ));
    }
    Ok((c.iss, acct.project_id, c.scope))
}

fn json_response(status: u16, body: &Value, extra: &[(&str, String)]) -> Response {
    let mut r = (
        StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR),
        [("content-type", "application/json; charset=UTF-8")],
        body.to_string(),
    )
        .into_response();
    for (k, v) in extra {
        if let Ok(v) = HeaderValue::from_str(v) {
            if let Ok(k) = axum::http::HeaderName::from_bytes(k.as_bytes()) {
                r.headers_mut().insert(k, v);
            }
        }
    }
    r
}

async fn token_endpoint(
    State(m): State<Arc<Mock>>,
    uri: axum::http::Uri,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let form = url_decode_pairs(&String::from_utf8_lossy(&body));
    let field = |k: &str| {
        form.iter()
            .find(|(n, _)| n == k)
            .map(|(_, v)| v.clone())
            .unwrap_or_default()
    };
    let mut entry = LedgerEntry {
        platform: OAUTH.into(),
        method: "POST".into(),
        path: uri.path().to_string(),
        query: uri.query().unwrap_or("").to_string(),
        headers: header_pairs(&headers),
        body: body.to_vec(),
        address: String::new(),
        status: 200,
        error: None,
        at: SystemTime::now(),
    };
    let result = (|| {
        let grant = field("grant_type");
        if grant != GRANT_TYPE {
            return Err(oauth_error(
                400,
                "unsupported_grant_type",
                &format!("Invalid grant_type: {grant}"),
            ));
        }
        let assertion = field("assertion");
        if assertion.is_empty() {
            return Err(oauth_error(
                400,
                "invalid_request",
                "Missing required parameter: assertion",
            ));
        }
        check_assertion(&m, &assertion, &own_token_uri(&headers, &uri))
    })();
    let (email, project, scope) = match result {
        Ok(v) => v,
        Err((status, body)) => {
            entry.status = status;
            entry.error = body["error"].as_str().map(str::to_string);
            m.record(entry);
            return json_response(status, &body, &[]);
        }
    };
    let (status, body) = match m.gate(OAUTH, &email).await {
        Gate::Pass => {
            let lifetime = token_lifetime(&m);
            let token = format!("ya29.mock-{}-{:016x}", m.next_seq(), rand::random::<u64>());
            let minted = Minted {
                project_id: project,
                scope,
                expires_at_ms: now_ms() + lifetime * 1000,
                epoch: epoch(&m),
            };
            m.kv_set(
                &format!("fcm:token:{token}"),
                serde_json::to_string(&minted).unwrap_or_default(),
            );
            entry.address = token.clone();
            (
                200,
                json!({"access_token": token, "expires_in": lifetime, "token_type": "Bearer"}),
            )
        }
        Gate::Error(code) => oauth_error_response(&code),
        Gate::Throttle => oauth_error(429, "rate_limit_exceeded", "Rate limit exceeded."),
        Gate::Outage => oauth_error(
            503,
            "temporarily_unavailable",
            "The service is currently unavailable.",
        ),
    };
    entry.status = status;
    if status != 200 {
        entry.address = email;
        entry.error = body["error"].as_str().map(str::to_string);
    }
    m.record(entry);
    json_response(status, &body, &[])
}

/// An answer: HTTP status, JSON body, extra headers.
pub type Answer = (u16, Value, Vec<(&'static str, String)>);

/// A `google.rpc.Status` error body; `fcm_code` adds the `FcmError` detail.
pub fn rpc_error(code: u16, status: &str, message: &str, details: Vec<Value>) -> Value {
    json!({"error": {"code": code, "message": message, "status": status, "details": details}})
}

fn fcm_detail(code: &str) -> Value {
    json!({"@type": FCM_ERROR, "errorCode": code})
}

fn bad_request(message: &str, field: &str) -> Answer {
    (
        400,
        rpc_error(
            400,
            "INVALID_ARGUMENT",
            message,
            vec![
                fcm_detail("INVALID_ARGUMENT"),
                json!({"@type": "type.googleapis.com/google.rpc.BadRequest",
                       "fieldViolations": [{"field": field, "description": message}]}),
            ],
        ),
        vec![],
    )
}

fn error_info(reason: &str) -> Value {
    json!({
        "@type": "type.googleapis.com/google.rpc.ErrorInfo",
        "reason": reason,
        "domain": "googleapis.com",
        "metadata": {"service": "fcm.googleapis.com", "method": "google.firebase.fcm.v1.FcmService.SendMessage"}
    })
}

/// FCM's answer for each documented error code: HTTP status, body, extra headers.
/// `INVALID_ARGUMENT:token` is INVALID_ARGUMENT blaming the registration token;
/// `UNAUTHENTICATED` / `PERMISSION_DENIED` are refusals of the OAuth access token.
pub fn error_response(code: &str) -> Answer {
    let fcm = |http: u16, status: &str, message: &str, code: &str| {
        (
            http,
            rpc_error(http, status, message, vec![fcm_detail(code)]),
            vec![],
        )
    };
    match code {
        "UNREGISTERED" => fcm(404, "NOT_FOUND", "Requested entity was not found.", "UNREGISTERED"),
        "INVALID_ARGUMENT" => fcm(
            400,
            "INVALID_ARGUMENT",
            "Request contains an invalid argument.",
            "INVALID_ARGUMENT",
        ),
        "INVALID_ARGUMENT:token" => bad_request(
            "The registration token is not a valid FCM registration token",
            "message.token",
        ),
        "SENDER_ID_MISMATCH" => fcm(403, "PERMISSION_DENIED", "SenderId mismatch", "SENDER_ID_MISMATCH"),
        "QUOTA_EXCEEDED" => fcm(
            429,
            "RESOURCE_EXHAUSTED",
            "Quota exceeded for quota metric 'Send requests' and limit 'Send requests per minute' of service 'fcm.googleapis.com'.",
            "QUOTA_EXCEEDED",
        ),
        "UNAVAILABLE" => {
            let (s, b, _) = fcm(503, "UNAVAILABLE", "The service is currently unavailable.", "UNAVAILABLE");
            (s, b, vec![("retry-after", OUTAGE_RETRY_AFTER_SECS.to_string())])
        }
        "INTERNAL" => fcm(500, "INTERNAL", "Internal error encountered.", "INTERNAL"),
        "THIRD_PARTY_AUTH_ERROR" => fcm(
            401,
            "UNAUTHENTICATED",
            "Auth error from APNS or Web Push Service",
            "THIRD_PARTY_AUTH_ERROR",
        ),
        "UNAUTHENTICATED" => (
            401,
            rpc_error(
                401,
                "UNAUTHENTICATED",
                "Request had invalid authentication credentials. Expected OAuth 2 access token, login cookie or other valid authentication credential. See https://developers.google.com/identity/sign-in/web/devconsole-project.",
                vec![error_info("ACCESS_TOKEN_EXPIRED")],
            ),
            vec![("www-authenticate", "Bearer realm=\"https://accounts.google.com/\", error=\"invalid_token\"".to_string())],
        ),
        "PERMISSION_DENIED" => (
            403,
            rpc_error(
                403,
                "PERMISSION_DENIED",
                "Permission 'cloudmessaging.messages.create' denied on resource (or it may not exist).",
                vec![error_info("IAM_PERMISSION_DENIED")],
            ),
            vec![],
        ),
        other => (
            500,
            rpc_error(500, "INTERNAL", &format!("mock-platform: unknown fcm error code {other}"), vec![]),
            vec![],
        ),
    }
}

fn unauthenticated(reason: &str, message: &str) -> Answer {
    let (s, _, h) = error_response("UNAUTHENTICATED");
    (
        s,
        rpc_error(401, "UNAUTHENTICATED", message, vec![error_info(reason)]),
        h,
    )
}

/// Checks the bearer token as Google does. Ok: nothing to say.
fn check_access(m: &Mock, headers: &HeaderMap, project: &str) -> Result<(), Answer> {
    let auth = headers
        .get("authorization")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    let Some(token) = auth
        .strip_prefix("Bearer ")
        .or_else(|| auth.strip_prefix("bearer "))
        .map(str::trim)
        .filter(|t| !t.is_empty())
    else {
        return Err(unauthenticated(
            "CREDENTIALS_MISSING",
            "Request is missing required authentication credential. Expected OAuth 2 access token, login cookie or other valid authentication credential. See https://developers.google.com/identity/sign-in/web/devconsole-project.",
        ));
    };
    let Some(minted) = m
        .kv_get(&format!("fcm:token:{token}"))
        .and_then(|s| serde_json::from_str::<Minted>(&s).ok())
    else {
        return Err(unauthenticated(
            "ACCESS_TOKEN_TYPE_UNSUPPORTED",
            "Request had invalid authentication credentials. Expected OAuth 2 access token, login cookie or other valid authentication credential. See https://developers.google.com/identity/sign-in/web/devconsole-project.",
        ));
    };
    if minted.expires_at_ms <= now_ms() || minted.epoch < epoch(m) {
        return Err(error_response("UNAUTHENTICATED"));
    }
    let scopes: Vec<&str> = minted.scope.split_whitespace().collect();
    if !scopes.contains(&SCOPE) && !scopes.contains(&CLOUD_PLATFORM) {
        return Err((
            403,
            rpc_error(
                403,
                "PERMISSION_DENIED",
                "Request had insufficient authentication scopes.",
                vec![error_info("ACCESS_TOKEN_SCOPE_INSUFFICIENT")],
            ),
            vec![],
        ));
    }
    if minted.project_id != project {
        return Err((
            403,
            rpc_error(
                403,
                "PERMISSION_DENIED",
                &format!("Permission 'cloudmessaging.messages.create' denied on resource '//cloudresourcemanager.googleapis.com/projects/{project}' (or it may not exist)."),
                vec![error_info("IAM_PERMISSION_DENIED")],
            ),
            vec![],
        ));
    }
    Ok(())
}

const MESSAGE_FIELDS: &[&str] = &[
    "name",
    "data",
    "notification",
    "android",
    "webpush",
    "apns",
    "fcm_options",
    "token",
    "topic",
    "condition",
];
const NOTIFICATION_FIELDS: &[&str] = &["title", "body", "image"];
const ANDROID_FIELDS: &[&str] = &[
    "collapse_key",
    "priority",
    "ttl",
    "restricted_package_name",
    "data",
    "notification",
    "fcm_options",
    "direct_boot_ok",
];

fn unknown_field(name: &str, at: &str) -> Answer {
    let msg = format!(
        "Invalid JSON payload received. Unknown name \"{name}\" at '{at}': Cannot find field."
    );
    (
        400,
        rpc_error(
            400,
            "INVALID_ARGUMENT",
            &msg,
            vec![json!({"@type": "type.googleapis.com/google.rpc.BadRequest",
                        "fieldViolations": [{"field": at, "description": msg}]})],
        ),
        vec![],
    )
}

fn is_registration_token(t: &str) -> bool {
    t.len() >= 20
        && t.len() <= 4096
        && t.bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'-' | b':' | b'.'))
}

/// Checks a `messages:send` body as FCM does. Ok: the target token.
fn check_message(body: &[u8]) -> Result<String, Answer> {
    let v: Value = serde_json::from_slice(body)
        .map_err(|e| bad_request(&format!("Invalid JSON payload received. {e}"), ""))?;
    let Some(msg) = v.get("message").and_then(Value::as_object) else {
        return Err(bad_request(
            "Request contains an invalid argument.",
            "message",
        ));
    };
    if let Some(obj) = v.as_object() {
        if let Some(k) = obj
            .keys()
            .find(|k| *k != "message" && *k != "validate_only")
        {
            return Err(unknown_field(k, ""));
        }
    }
    if let Some(k) = msg.keys().find(|k| !MESSAGE_FIELDS.contains(&k.as_str())) {
        return Err(unknown_field(k, "message"));
    }
    let targets = ["token", "topic", "condition"]
        .iter()
        .filter(|t| msg.contains_key(**t))
        .count();
    if targets != 1 {
        return Err(bad_request(
            "Exactly one of token, topic or condition must be given.",
            "message",
        ));
    }
    let token = msg
        .get("token")
        .and_then(Value::as_str)
        .unwrap_or("")
        .to_string();
    if !is_registration_token(&token) {
        return Err(error_response("INVALID_ARGUMENT:token"));
    }
    if let Some(n) = msg.get("notification") {
        let Some(n) = n.as_object() else {
            return Err(bad_request(
                "Invalid value at 'message.notification'",
                "message.notification",
            ));
        };
        if let Some(k) = n
            .keys()
            .find(|k| !NOTIFICATION_FIELDS.contains(&k.as_str()))
        {
            return Err(unknown_field(k, "message.notification"));
        }
        if n.values().any(|x| !x.is_string()) {
            return Err(bad_request(
                "Invalid value at 'message.notification' (TYPE_STRING)",
                "message.notification",
            ));
        }
    }
    if let Some(d) = msg.get("data") {
        let Some(d) = d.as_object() else {
            return Err(bad_request(
                "Invalid value at 'message.data'",
                "message.data",
            ));
        };
        for (k, x) in d {
            if !x.is_string() {
                return Err(bad_request(
                    &format!("Invalid value at 'message.data[{k}].value' (TYPE_STRING)"),
                    &format!("message.data[{k}].value"),
                ));
            }
            if k == "from"
                || k == "message_type"
                || k.starts_with("google.")
                || k.starts_with("gcm.")
            {
                return Err(bad_request(
                    &format!("Invalid data payload key: {k}"),
                    "message.data",
                ));
            }
        }
    }
    if let Some(a) = msg.get("android") {
        let Some(a) = a.as_object() else {
            return Err(bad_request(
                "Invalid value at 'message.android'",
                "message.android",
            ));
        };
        if let Some(k) = a.keys().find(|k| !ANDROID_FIELDS.contains(&k.as_str())) {
            return Err(unknown_field(k, "message.android"));
        }
        if let Some(p) = a.get("priority") {
            if !matches!(p.as_str(), Some("HIGH") | Some("NORMAL")) {
                return Err(bad_request(
                    &format!("Invalid value at 'message.android.priority' (type.googleapis.com/google.firebase.fcm.v1.AndroidMessagePriority), {p}"),
                    "message.android.priority",
                ));
            }
        }
        if let Some(t) = a.get("ttl") {
            let ok = t
                .as_str()
                .and_then(|s| s.strip_suffix('s'))
                .and_then(|s| s.parse::<f64>().ok())
                .is_some_and(|s| (0.0..=2_419_200.0).contains(&s));
            if !ok {
                return Err(bad_request(
                    "Invalid value at 'message.android.ttl' (type.googleapis.com/google.protobuf.Duration)",
                    "message.android.ttl",
                ));
            }
        }
    }
    let size: usize = ["notification", "data"]
        .iter()
        .filter_map(|k| msg.get(*k))
        .map(|x| x.to_string().len())
        .sum();
    if size > MAX_PAYLOAD {
        return Err((
            400,
            rpc_error(
                400,
                "INVALID_ARGUMENT",
                "Message is too big",
                vec![fcm_detail("INVALID_ARGUMENT")],
            ),
            vec![],
        ));
    }
    Ok(token)
}

async fn send(
    State(m): State<Arc<Mock>>,
    Path(project): Path<String>,
    uri: axum::http::Uri,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let address = serde_json::from_slice::<Value>(&body)
        .ok()
        .and_then(|v| v["message"]["token"].as_str().map(str::to_string))
        .unwrap_or_default();
    let mut entry = LedgerEntry {
        platform: "fcm".into(),
        method: "POST".into(),
        path: uri.path().to_string(),
        query: uri.query().unwrap_or("").to_string(),
        headers: header_pairs(&headers),
        body: body.to_vec(),
        address: address.clone(),
        status: 200,
        error: None,
        at: SystemTime::now(),
    };
    let checked = check_access(&m, &headers, &project).and_then(|_| check_message(&body));
    let (status, answer, extra) = match checked {
        Err(e) => e,
        Ok(token) => match m.gate("fcm", &token).await {
            Gate::Pass => {
                let micros = SystemTime::now()
                    .duration_since(UNIX_EPOCH)
                    .map(|d| d.as_micros())
                    .unwrap_or(0);
                let id = format!("0:{micros}%{:016x}", m.next_seq());
                (
                    200,
                    json!({"name": format!("projects/{project}/messages/{id}")}),
                    vec![],
                )
            }
            Gate::Error(code) => error_response(&code),
            Gate::Throttle => error_response("QUOTA_EXCEEDED"),
            Gate::Outage => error_response("UNAVAILABLE"),
        },
    };
    entry.status = status;
    if status != 200 {
        entry.error = Some(error_code_of(&answer));
    }
    m.record(entry);
    let extra: Vec<(&str, String)> = extra.into_iter().collect();
    json_response(status, &answer, &extra)
}

/// The code a ledger entry records for an error body: the FcmError code, else the status.
fn error_code_of(body: &Value) -> String {
    let e = &body["error"];
    e["details"]
        .as_array()
        .and_then(|d| {
            d.iter()
                .find(|x| x["@type"] == FCM_ERROR)
                .and_then(|x| x["errorCode"].as_str())
        })
        .or_else(|| e["status"].as_str())
        .unwrap_or("UNKNOWN")
        .to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_documented_error_renders_as_fcm_does() {
        for (code, http, status) in [
            ("UNREGISTERED", 404, "NOT_FOUND"),
            ("INVALID_ARGUMENT", 400, "INVALID_ARGUMENT"),
            ("SENDER_ID_MISMATCH", 403, "PERMISSION_DENIED"),
            ("QUOTA_EXCEEDED", 429, "RESOURCE_EXHAUSTED"),
            ("UNAVAILABLE", 503, "UNAVAILABLE"),
            ("INTERNAL", 500, "INTERNAL"),
            ("THIRD_PARTY_AUTH_ERROR", 401, "UNAUTHENTICATED"),
        ] {
            let (s, body, _) = error_response(code);
            assert_eq!(s, http, "{code}");
            assert_eq!(body["error"]["code"], http, "{code}");
            assert_eq!(body["error"]["status"], status, "{code}");
            assert_eq!(body["error"]["details"][0]["@type"], FCM_ERROR, "{code}");
            assert_eq!(body["error"]["details"][0]["errorCode"], code, "{code}");
            assert!(body["error"]["message"]
                .as_str()
                .is_some_and(|m| !m.is_empty()));
            assert_eq!(error_code_of(&body), code);
        }
        let (_, _, h) = error_response("UNAVAILABLE");
        assert_eq!(h, vec![("retry-after", "1".to_string())]);
        let (s, body, _) = error_response("INVALID_ARGUMENT:token");
        assert_eq!(s, 400);
        assert_eq!(
            body["error"]["details"][1]["fieldViolations"][0]["field"],
            "message.token"
        );
        // Refusals of the access token carry no FcmError.
        for code in ["UNAUTHENTICATED", "PERMISSION_DENIED"] {
            let (_, body, _) = error_response(code);
            assert_eq!(error_code_of(&body), code);
        }
    }

    #[test]
    fn messages_are_checked() {
        let ok = json!({"message": {"token": "fcm-token-0123456789abcdef", "notification": {"title": "t"},
                        "android": {"priority": "HIGH", "ttl": "3600s"}, "data": {"k": "v"}}});
        assert_eq!(
            check_message(ok.to_string().as_bytes()).expect("valid"),
            "fcm-token-0123456789abcdef"
        );
        let code = |v: Value| {
            check_message(v.to_string().as_bytes())
                .map(|_| String::new())
                .unwrap_or_else(|(s, b, _)| {
                    format!("{s} {}", b["error"]["message"].as_str().unwrap_or(""))
                })
        };
        assert!(code(json!({"message": {"token": "short"}})).contains("registration token"));
        assert!(
            code(json!({"message": {"token": "fcm-token-0123456789abcdef", "bogus": 1}}))
                .contains("Unknown name \"bogus\"")
        );
        assert!(code(
            json!({"message": {"token": "fcm-token-0123456789abcdef", "data": {"k": 1}}})
        )
        .starts_with("400"));
        assert!(code(
            json!({"message": {"token": "fcm-token-0123456789abcdef", "data": {"from": "x"}}})
        )
        .contains("from"));
        assert!(code(json!({"message": {"token": "fcm-token-0123456789abcdef", "android": {"priority": "URGENT"}}})).contains("priority"));
        assert!(code(
            json!({"message": {"token": "fcm-token-0123456789abcdef", "android": {"ttl": "1h"}}})
        )
        .contains("ttl"));
        assert!(
            code(json!({"message": {"token": "fcm-token-0123456789abcdef", "topic": "x"}}))
                .contains("Exactly one")
        );
        assert!(code(json!({"message": {"token": "fcm-token-0123456789abcdef", "data": {"k": "x".repeat(5000)}}})).contains("too big"));
        assert!(code(json!({"msg": {}})).starts_with("400"));
    }

    #[test]
    fn oauth_errors_render() {
        let (s, b) = oauth_error_response("invalid_grant");
        assert_eq!(s, 400);
        assert_eq!(b["error"], "invalid_grant");
        let (s, _) = oauth_error_response("invalid_client");
        assert_eq!(s, 401);
    }
}
