//! `webhook`: a JSON POST to the recipient's `webhook_url`, signed per the Standard Webhooks
//! specification (`webhook-id`, `webhook-timestamp`, `webhook-signature: v1,<base64>` with a
//! `whsec_` secret), so receivers verify it with that specification's libraries.

use std::collections::BTreeMap;
use std::time::Duration;

use async_trait::async_trait;
use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine;
use hmac::{Hmac, Mac};
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Bytes;
use hyper::header::{HeaderValue, CONTENT_TYPE, RETRY_AFTER, USER_AGENT};
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use serde::Serialize;
use sha2::Sha256;

use super::{parse_retry_after, Channel, Delivery, SendContext};
use crate::model::{self, Detail, Notification, Outcome};

pub use crate::config::decode_whsec as decode_secret;

/// A fresh random secret in `whsec_` form.
pub fn generate_secret() -> String {
    let key: [u8; 32] = rand::random();
    format!("whsec_{}", B64.encode(key))
}

/// `v1,<base64 HMAC-SHA256(key, "{id}.{timestamp}.{body}")>`.
pub fn sign(key: &[u8], msg_id: &str, timestamp: i64, body: &[u8]) -> String {
    // HMAC accepts keys of any length; new_from_slice cannot fail for it.
    let mut mac = match Hmac::<Sha256>::new_from_slice(key) {
        Ok(m) => m,
        Err(_) => return String::new(),
    };
    mac.update(msg_id.as_bytes());
    mac.update(b".");
    mac.update(timestamp.to_string().as_bytes());
    mac.update(b".");
    mac.update(body);
    format!("v1,{}", B64.encode(mac.finalize().into_bytes()))
}

/// The JSON body a receiver gets (Standard Webhooks' `type`, `timestamp`, `data` shape),
/// serialized straight from the notification. Keys are in sorted order, as a `serde_json::Value`
/// would write them, so the bytes are the same as building a `Value` first (and about a third
/// of the CPU: no copies, no map of maps).
pub fn payload(n: &Notification, attempt: u32, now_secs: i64) -> Vec<u8> {
    let c = &n.content;
    let body = Body {
        data: Data {
            actions: &c.actions,
            attempt,
            body: &c.body,
            campaign_id: &n.campaign_id,
            category: n.category.name(),
            contact_id: &n.recipient.contact_id,
            data: &c.data,
            image_url: &c.image_url,
            labels: &n.labels,
            notification_id: &n.id,
            priority: n.priority.name(),
            title: &c.title,
        },
        timestamp: httpdate_rfc3339(now_secs),
        kind: "notification.send",
    };
    // Plain strings and string maps: serializing them to a Vec cannot fail.
    serde_json::to_vec(&body).unwrap_or_default()
}

/// The payload's top level; fields in sorted key order.
#[derive(Serialize)]
struct Body<'a> {
    data: Data<'a>,
    timestamp: String,
    #[serde(rename = "type")]
    kind: &'static str,
}

/// The payload's `data`; fields in sorted key order.
#[derive(Serialize)]
struct Data<'a> {
    actions: &'a [model::Action],
    attempt: u32,
    body: &'a str,
    campaign_id: &'a str,
    category: &'static str,
    contact_id: &'a str,
    data: &'a BTreeMap<String, String>,
    image_url: &'a str,
    labels: &'a BTreeMap<String, String>,
    notification_id: &'a str,
    priority: &'static str,
    title: &'a str,
}

/// Seconds since the epoch as an RFC 3339 UTC timestamp.
fn httpdate_rfc3339(secs: i64) -> String {
    let days = secs.div_euclid(86_400);
    let rem = secs.rem_euclid(86_400);
    // Civil-from-days (Howard Hinnant's algorithm).
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let y = yoe + era * 400;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = if m <= 2 { y + 1 } else { y };
    format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}Z",
        rem / 3600,
        (rem % 3600) / 60,
        rem % 60
    )
}

/// A webhook URL as written, parsed (IDNA hosts, default ports) and, for `http` and `https`,
/// as the request URI the channel sends to.
struct Target {
    raw: String,
    url: reqwest::Url,
    uri: Option<hyper::Uri>,
}

thread_local! {
    /// The last webhook URL this thread parsed. A batch or a campaign names the same URL over
    /// and over; parsing each (with IDNA) was a tenth of SendBatch's CPU at ingest and about 1%
    /// of e2e's at send.
    static LAST_TARGET: std::cell::RefCell<Option<Target>> =
        const { std::cell::RefCell::new(None) };
}

/// `pick` of `raw` parsed, from the thread's last one when it is the same string; `None` when
/// `raw` is not a URL.
fn remembered<T>(raw: &str, pick: impl Fn(&Target) -> T) -> Option<T> {
    LAST_TARGET.with(|last| {
        let mut last = last.borrow_mut();
        if last.as_ref().is_none_or(|t| t.raw != raw) {
            let url = reqwest::Url::parse(raw).ok()?;
            let uri = matches!(url.scheme(), "http" | "https")
                .then(|| url.as_str().parse().ok())
                .flatten();
            *last = Some(Target {
                raw: raw.to_string(),
                url,
                uri,
            });
        }
        last.as_ref().map(pick)
    })
}

/// `raw` parsed. Ingest checks webhook URLs with it.
pub(crate) fn target(raw: &str) -> Option<reqwest::Url> {
    remembered(raw, |t| t.url.clone())
}

/// `raw` as the request URI the channel sends to: `http` or `https` only.
fn target_uri(raw: &str) -> Option<hyper::Uri> {
    remembered(raw, |t| t.uri.clone()).flatten()
}

/// What of a receiver's answer is read (so that its connection goes back to the pool); the
/// rest closes the connection.
const ANSWER_LIMIT: usize = 64 * 1024;

const AGENT: &str = concat!("herald/", env!("CARGO_PKG_VERSION"));

type Https = hyper_rustls::HttpsConnector<HttpConnector>;

/// Webhooks go out on hyper's client directly (TLS by rustls with the system's roots, HTTP/1.1
/// or HTTP/2 by ALPN, keep-alive pool): a webhook is one signed POST, and nothing of reqwest's
/// layers is needed. Redirects are not followed (a 3xx is the receiver's answer); the whole
/// exchange, connecting included, has `timeout`.
pub struct Webhook {
    client: Client<Https, Full<Bytes>>,
    timeout: Duration,
    key: Vec<u8>,
}

impl Webhook {
    /// `secret` in `whsec_` form.
    pub fn new(secret: &str, timeout: Duration) -> Result<Self, String> {
        let key = decode_secret(secret)?;
        let mut http = HttpConnector::new();
        http.enforce_http(false);
        http.set_nodelay(true);
        http.set_connect_timeout(Some(timeout.min(Duration::from_secs(5))));
        // The system's roots, as reqwest's `rustls-tls-native-roots` loads them: certificates
        // that do not parse are skipped, and none at all only fails https sends.
        let mut roots = rustls::RootCertStore::empty();
        for cert in rustls_native_certs::load_native_certs().certs {
            let _ = roots.add(cert);
        }
        let tls = rustls::ClientConfig::builder_with_provider(std::sync::Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .map_err(|e| format!("tls: {e}"))?
        .with_root_certificates(roots)
        .with_no_client_auth();
        let https = hyper_rustls::HttpsConnectorBuilder::new()
            .with_tls_config(tls)
            .https_or_http()
            .enable_http1()
            .enable_http2()
            .wrap_connector(http);
        let client = Client::builder(TokioExecutor::new())
            .pool_max_idle_per_host(super::MAX_IDLE_PER_HOST)
            .pool_idle_timeout(Duration::from_secs(90))
            .build(https);
        Ok(Self {
            client,
            timeout,
            key,
        })
    }
}

/// An error and its causes, for a failure's detail.
fn chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut cause = e.source();
    while let Some(c) = cause {
        s.push_str(": ");
        s.push_str(&c.to_string());
        cause = c.source();
    }
    s
}

/// Classifies a receiver's answer.
pub fn classify(status: u16, retry_after: Option<Duration>, provider_id: String) -> Outcome {
    let detail = || {
        Detail::new(
            format!("http_{status}"),
            format!("receiver answered {status}"),
        )
    };
    match status {
        200..=299 => Outcome::Sent { provider_id },
        429 => Outcome::Throttled {
            after: retry_after,
            detail: detail(),
        },
        408 | 425 | 500..=599 => Outcome::Retry {
            after: retry_after,
            detail: detail(),
        },
        404 | 410 => Outcome::DeadAddress { detail: detail() },
        401 | 403 => Outcome::Misconfigured { detail: detail() },
        _ => Outcome::BadPayload { detail: detail() },
    }
}

#[async_trait]
impl Channel for Webhook {
    fn kind(&self) -> model::Channel {
        model::Channel::Webhook
    }

    fn accept_is_delivery(&self) -> bool {
        true
    }

    async fn send(&self, n: &Notification, ctx: &SendContext<'_>) -> Delivery {
        Delivery::of(self.post(n, ctx.attempt).await)
    }
}

impl Webhook {
    async fn post(&self, n: &Notification, attempt: u32) -> Outcome {
        let url = &n.recipient.webhook_url;
        if url.is_empty() {
            return Outcome::DeadAddress {
                detail: Detail::new("no_address", "recipient has no webhook_url"),
            };
        }
        let Some(uri) = target_uri(url) else {
            return Outcome::BadPayload {
                detail: Detail::new("bad_url", format!("not an http(s) URL: {url}")),
            };
        };
        let now = model::now_ms() / 1000;
        let body = payload(n, attempt, now);
        let sig = sign(&self.key, &n.id, now, &body);
        let req = hyper::Request::post(uri)
            .header(CONTENT_TYPE, HeaderValue::from_static("application/json"))
            .header(USER_AGENT, HeaderValue::from_static(AGENT))
            .header("webhook-id", &n.id)
            .header("webhook-timestamp", now)
            .header("webhook-signature", sig)
            .body(Full::new(Bytes::from(body)));
        let req = match req {
            Ok(r) => r,
            Err(e) => {
                return Outcome::BadPayload {
                    detail: Detail::new("bad_request", e.to_string()),
                }
            }
        };
        let exchange = async {
            let res = self.client.request(req).await?;
            let status = res.status().as_u16();
            let retry_after = res
                .headers()
                .get(RETRY_AFTER)
                .and_then(|v| v.to_str().ok())
                .and_then(parse_retry_after);
            // The answer is read so its connection can be used again; what it says does not
            // change the outcome, so a failure to read it does not either.
            let _ = Limited::new(res.into_body(), ANSWER_LIMIT).collect().await;
            Ok::<_, hyper_util::client::legacy::Error>((status, retry_after))
        };
        match tokio::time::timeout(self.timeout, exchange).await {
            Ok(Ok((status, retry_after))) => classify(status, retry_after, n.id.clone()),
            Ok(Err(e)) => Outcome::Retry {
                after: None,
                detail: Detail::new("connect", chain(&e)),
            },
            Err(_) => Outcome::Retry {
                after: None,
                detail: Detail::new(
                    "timeout",
                    format!("no answer within {} ms", self.timeout.as_millis()),
                ),
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::SocketAddr;
    use std::sync::{Arc, Mutex};

    use axum::extract::{ConnectInfo, State};
    use axum::http::{HeaderMap, StatusCode};
    use axum::response::{IntoResponse, Response};
    use axum::routing::post;

    /// What the test receiver saw: per request, its path, the peer (one per connection) and
    /// its headers.
    type Seen = Arc<Mutex<Vec<(String, SocketAddr, HeaderMap, Vec<u8>)>>>;

    /// A receiver on a free loopback port: `/ok` answers 200 with a body, `/busy` 503 with
    /// Retry-After 7, `/moved` a redirect to `/ok`, `/slow` after 3 s.
    async fn receiver() -> (String, Seen) {
        async fn answer(
            State(seen): State<Seen>,
            ConnectInfo(peer): ConnectInfo<SocketAddr>,
            uri: axum::http::Uri,
            headers: HeaderMap,
            body: Bytes,
        ) -> Response {
            let path = uri.path().to_string();
            seen.lock()
                .expect("lock")
                .push((path.clone(), peer, headers, body.to_vec()));
            match path.as_str() {
                "/ok" => (StatusCode::OK, "received, thanks").into_response(),
                "/busy" => {
                    (StatusCode::SERVICE_UNAVAILABLE, [("retry-after", "7")]).into_response()
                }
                "/moved" => (StatusCode::FOUND, [("location", "/ok")]).into_response(),
                "/slow" => {
                    tokio::time::sleep(Duration::from_secs(3)).await;
                    StatusCode::OK.into_response()
                }
                _ => StatusCode::NOT_FOUND.into_response(),
            }
        }
        let seen: Seen = Arc::default();
        let app = axum::Router::new()
            .fallback(post(answer))
            .with_state(seen.clone());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let addr = listener.local_addr().expect("addr");
        tokio::spawn(async move {
            let _ = axum::serve(
                listener,
                app.into_make_service_with_connect_info::<SocketAddr>(),
            )
            .await;
        });
        (format!("http://{addr}"), seen)
    }

    fn to(url: &str) -> Notification {
        Notification {
            id: model::make_id(3),
            recipient: model::Recipient {
                webhook_url: url.to_string(),
                ..Default::default()
            },
            route: vec![model::Channel::Webhook],
            content: model::Content {
                body: "hello".into(),
                ..Default::default()
            },
            ..Default::default()
        }
    }

    #[tokio::test]
    async fn posts_are_signed_kept_alive_and_their_answers_classified() {
        let (base, seen) = receiver().await;
        let secret = generate_secret();
        let wh = Webhook::new(&secret, Duration::from_millis(500)).expect("client");

        // Three posts in a row: signed, each answer read, one connection for all.
        for _ in 0..3 {
            let n = to(&format!("{base}/ok"));
            assert!(
                matches!(wh.post(&n, 1).await, Outcome::Sent { provider_id } if provider_id == n.id)
            );
        }
        {
            let seen = seen.lock().expect("lock");
            assert_eq!(seen.len(), 3);
            let peers: std::collections::HashSet<_> = seen.iter().map(|r| r.1).collect();
            assert_eq!(peers.len(), 1, "the connection was used again");
            let (_, _, headers, body) = &seen[2];
            assert_eq!(headers["content-type"], "application/json");
            assert!(headers["user-agent"]
                .to_str()
                .expect("ascii")
                .starts_with("herald/"));
            let verifier = standardwebhooks::Webhook::new(&secret).expect("secret");
            verifier
                .verify(body, headers)
                .expect("the signature verifies");
        }

        // A 503 with Retry-After is retried after it.
        match wh.post(&to(&format!("{base}/busy")), 1).await {
            Outcome::Retry { after, detail } => {
                assert_eq!(after, Some(Duration::from_secs(7)));
                assert_eq!(detail.code, "http_503");
            }
            other => panic!("expected a retry, got {other:?}"),
        }

        // A redirect is the receiver's answer, not followed.
        let before = seen.lock().expect("lock").len();
        match wh.post(&to(&format!("{base}/moved")), 1).await {
            Outcome::BadPayload { detail } => assert_eq!(detail.code, "http_302"),
            other => panic!("expected the 302 as the answer, got {other:?}"),
        }
        let after: Vec<String> = seen.lock().expect("lock")[before..]
            .iter()
            .map(|r| r.0.clone())
            .collect();
        assert_eq!(after, vec!["/moved"]);

        // No answer within the timeout.
        match wh.post(&to(&format!("{base}/slow")), 1).await {
            Outcome::Retry { detail, .. } => assert_eq!(detail.code, "timeout"),
            other => panic!("expected a timeout, got {other:?}"),
        }
    }

    #[tokio::test]
    async fn unreachable_and_malformed_targets_are_told_apart() {
        let wh = Webhook::new(&generate_secret(), Duration::from_secs(2)).expect("client");
        // A port nobody listens on: bound, then released.
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .expect("free port")
            .port();
        match wh.post(&to(&format!("http://127.0.0.1:{port}/x")), 1).await {
            Outcome::Retry { detail, .. } => {
                assert_eq!(detail.code, "connect");
                assert!(!detail.message.is_empty());
            }
            other => panic!("expected a connect failure, got {other:?}"),
        }
        for bad in ["ftp://127.0.0.1/x", "not a url"] {
            match wh.post(&to(bad), 1).await {
                Outcome::BadPayload { detail } => assert_eq!(detail.code, "bad_url", "{bad}"),
                other => panic!("expected bad_url for {bad}, got {other:?}"),
            }
        }
        match wh.post(&to(""), 1).await {
            Outcome::DeadAddress { detail } => assert_eq!(detail.code, "no_address"),
            other => panic!("expected no address, got {other:?}"),
        }
    }

    #[test]
    fn secrets_are_checked() {
        assert!(decode_secret("nope").is_err());
        assert!(decode_secret("whsec_!!!").is_err());
        assert!(decode_secret("whsec_c2hvcnQ=").is_err());
        let s = generate_secret();
        assert_eq!(decode_secret(&s).expect("valid").len(), 32);
    }

    #[test]
    fn signature_verifies_with_the_standard_webhooks_library() {
        let secret = generate_secret();
        let key = decode_secret(&secret).expect("valid");
        let ts = model::now_ms() / 1000;
        let body = br#"{"hello":"world"}"#;
        let sig = sign(&key, "msg_1", ts, body);
        let wh = standardwebhooks::Webhook::new(&secret).expect("library accepts the secret");
        let mut headers = http::HeaderMap::new();
        headers.insert("webhook-id", "msg_1".parse().expect("header"));
        headers.insert("webhook-timestamp", ts.to_string().parse().expect("header"));
        headers.insert("webhook-signature", sig.parse().expect("header"));
        wh.verify(body, &headers).expect("signature verifies");
        // A changed body no longer verifies.
        assert!(wh.verify(br#"{"hello":"there"}"#, &headers).is_err());
    }

    #[test]
    fn answers_are_classified() {
        let ra = Some(Duration::from_secs(2));
        assert!(matches!(
            classify(204, None, "x".into()),
            Outcome::Sent { .. }
        ));
        assert!(matches!(
            classify(503, ra, String::new()),
            Outcome::Retry { after: Some(d), .. } if d == Duration::from_secs(2)
        ));
        assert!(matches!(
            classify(429, ra, String::new()),
            Outcome::Throttled { .. }
        ));
        assert!(matches!(
            classify(410, None, String::new()),
            Outcome::DeadAddress { .. }
        ));
        assert!(matches!(
            classify(401, None, String::new()),
            Outcome::Misconfigured { .. }
        ));
        assert!(matches!(
            classify(400, None, String::new()),
            Outcome::BadPayload { .. }
        ));
    }

    #[test]
    fn the_payload_is_what_a_json_value_of_it_writes() {
        let mut n = Notification {
            id: "01J0000000000000000000000W".into(),
            campaign_id: "spring \"sale\"".into(),
            labels: [("k".into(), "v\n".into()), ("a".into(), "é".into())].into(),
            ..Default::default()
        };
        n.recipient.contact_id = "c-1".into();
        n.content.title = "Hi".into();
        n.content.body = "<b>50%</b> off \u{1F600}".into();
        n.content.image_url = "https://img.example/x.png".into();
        n.content.actions = vec![model::Action {
            label: "Open".into(),
            url: "https://a.example/o".into(),
        }];
        n.content.data = [("deep".into(), "link".into())].into();
        let c = &n.content;
        let by_value = serde_json::json!({
            "type": "notification.send",
            "timestamp": httpdate_rfc3339(1_700_000_000),
            "data": {
                "notification_id": n.id,
                "campaign_id": n.campaign_id,
                "category": n.category.name(),
                "priority": n.priority.name(),
                "labels": n.labels,
                "contact_id": n.recipient.contact_id,
                "title": c.title,
                "body": c.body,
                "image_url": c.image_url,
                "actions": c.actions.iter().map(|a| serde_json::json!({"label": a.label, "url": a.url})).collect::<Vec<_>>(),
                "data": c.data,
                "attempt": 3,
            }
        });
        let bytes = payload(&n, 3, 1_700_000_000);
        assert_eq!(
            String::from_utf8(bytes).expect("utf-8"),
            by_value.to_string()
        );
    }

    #[test]
    fn a_remembered_target_is_the_url_asked_for() {
        let a = target("http://a.example/h?x=1").expect("a");
        let b = target("https://b.example/other").expect("b");
        assert_eq!(a.as_str(), "http://a.example/h?x=1");
        assert_eq!(b.as_str(), "https://b.example/other");
        assert_eq!(target("https://b.example/other").expect("b again"), b);
        assert!(target("not a url").is_none());
        assert_eq!(target("http://a.example/h?x=1").expect("a again"), a);
    }

    #[test]
    fn timestamps_are_rfc3339() {
        assert_eq!(httpdate_rfc3339(0), "1970-01-01T00:00:00Z");
        assert_eq!(httpdate_rfc3339(1_700_000_000), "2023-11-14T22:13:20Z");
    }
}
