//! Mock platforms for Herald's tests and load tests: every platform endpoint Herald speaks to,
//! on loopback, answering with each platform's real success and error bodies (see
//! `shared/platforms.md`), so that pointing Herald at the real platform is a change of base
//! URL and credentials only.
//!
//! Per platform there are knobs (latency, an error mix by documented code, a rate limit
//! enforced with the platform's own throttle error, an outage switch), forced errors for the
//! next requests or for one address, a ledger of every request received (for exactly-once
//! checks), and callbacks: the mock posts correctly signed receipts to Herald's webhooks
//! (Messenger watermarks, WhatsApp statuses, Twilio status callbacks, SendGrid events).
//!
//! Every platform module has the same shape: `routes()` (its endpoints, nested under the
//! mock's one HTTP listener), request checks that answer the platform's own "bad request"
//! error, `error_response(code)` rendering each documented error exactly, and callbacks.

pub mod apns;
pub mod fcm;
pub mod messenger;
pub mod sendgrid;
pub mod smtp;
pub mod twilio;
pub mod webpush;
pub mod whatsapp;

use std::collections::{HashMap, VecDeque};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant, SystemTime};

use axum::extract::{Path, Query, State};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde::{Deserialize, Serialize};
use tokio::net::TcpListener;
use tokio::sync::oneshot;

/// The platforms the mock speaks for (ledger and knob names).
pub const PLATFORMS: &[&str] = &[
    "messenger",
    "whatsapp",
    "fcm",
    "apns",
    "webpush",
    "twilio",
    "sendgrid",
    "smtp",
];

/// Knobs of one platform.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(default)]
pub struct Knobs {
    /// Added to every answer.
    pub latency_ms: u64,
    /// Share of requests (0..1) answered with one of `error_codes`, picked at random.
    pub error_rate: f64,
    /// Documented error codes of this platform (e.g. "613", "131026", "UNAVAILABLE",
    /// "BadDeviceToken", "21211", "421").
    pub error_codes: Vec<String>,
    /// Requests per second the platform takes; beyond that it answers with its own
    /// throttle error (Messenger 613, WhatsApp 130429, FCM QUOTA_EXCEEDED, APNs 429
    /// TooManyRequests, Web Push 429, Twilio 20429, SendGrid 429, SMTP 421).
    pub rate_limit_per_sec: Option<u32>,
    /// While true every request gets the platform's outage answer (5xx / 421).
    pub outage: bool,
    /// Graph only (Messenger): calls the app may make in a rolling hour. Every answer then
    /// reports the share used in `X-App-Usage` (`call_count`, percent), and at 100% requests
    /// get error 4, "Application request limit reached". None: usage stays at 1%.
    pub app_calls_per_hour: Option<u32>,
}

/// Configuration of a mock run.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default)]
pub struct MockConfig {
    /// Herald's HTTP base (e.g. `http://127.0.0.1:8080`): receipts and inbound messages are
    /// posted to `<herald_url>/webhooks/<platform>`. None: no callbacks.
    pub herald_url: Option<String>,
    /// Whether accepted messages produce delivery (and read) callbacks.
    pub receipts: bool,
    pub deliver_after_ms: u64,
    pub read_after_ms: u64,
    /// Secrets the platforms sign callbacks with / check requests against.
    pub messenger_app_secret: String,
    pub messenger_page_token: String,
    pub whatsapp_app_secret: String,
    pub whatsapp_token: String,
    pub twilio_account_sid: String,
    pub twilio_auth_token: String,
    pub sendgrid_api_key: String,
    /// Knobs per platform at start.
    pub knobs: HashMap<String, Knobs>,
}

impl Default for MockConfig {
    fn default() -> Self {
        Self {
            herald_url: None,
            receipts: true,
            deliver_after_ms: 20,
            read_after_ms: 40,
            messenger_app_secret: "mock-messenger-app-secret".into(),
            messenger_page_token: "mock-page-token".into(),
            whatsapp_app_secret: "mock-whatsapp-app-secret".into(),
            whatsapp_token: "mock-whatsapp-token".into(),
            twilio_account_sid: "ACmock0000000000000000000000000000".into(),
            twilio_auth_token: "mock-twilio-auth-token".into(),
            sendgrid_api_key: "SG.mock-key".into(),
            knobs: HashMap::new(),
        }
    }
}

/// One request the mock received, and what it answered.
#[derive(Debug, Clone, Serialize)]
pub struct LedgerEntry {
    pub platform: String,
    pub method: String,
    pub path: String,
    pub query: String,
    /// Lowercased names.
    pub headers: Vec<(String, String)>,
    #[serde(with = "body_text")]
    pub body: Vec<u8>,
    /// The address the request was for (PSID, number, token, endpoint id, email).
    pub address: String,
    /// HTTP status (or SMTP reply code) answered.
    pub status: u16,
    /// The error code answered, if any.
    pub error: Option<String>,
    #[serde(with = "unix_ms")]
    pub at: SystemTime,
}

impl LedgerEntry {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body).unwrap_or(serde_json::Value::Null)
    }

    /// `application/x-www-form-urlencoded` body as pairs.
    pub fn form(&self) -> Vec<(String, String)> {
        url_decode_pairs(&String::from_utf8_lossy(&self.body))
    }
}

mod body_text {
    pub fn serialize<S: serde::Serializer>(b: &[u8], s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&String::from_utf8_lossy(b))
    }
}

mod unix_ms {
    use std::time::{SystemTime, UNIX_EPOCH};
    pub fn serialize<S: serde::Serializer>(t: &SystemTime, s: S) -> Result<S::Ok, S::Error> {
        let ms = t
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_millis() as u64)
            .unwrap_or(0);
        s.serialize_u64(ms)
    }
}

/// What the gate decided for one request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Gate {
    /// Go on and answer success (if the request itself is valid).
    Pass,
    /// Answer this documented error code.
    Error(String),
    /// Over the rate limit: answer the platform's throttle error.
    Throttle,
    /// Outage: answer the platform's unavailable error.
    Outage,
}

#[derive(Default)]
struct PlatformState {
    knobs: Knobs,
    forced: VecDeque<String>,
    by_address: HashMap<String, String>,
    window: VecDeque<Instant>,
    /// Calls in the last hour, for `app_calls_per_hour`.
    hour: VecDeque<Instant>,
}

/// The shared state of a running mock.
pub struct Mock {
    pub config: MockConfig,
    platforms: Mutex<HashMap<String, PlatformState>>,
    ledger: Mutex<Vec<LedgerEntry>>,
    /// Platform-specific state under namespaced keys (e.g. `messenger:inbound:<psid>`).
    kv: Mutex<HashMap<String, String>>,
    /// For callbacks to Herald.
    pub http: reqwest::Client,
    seq: Mutex<u64>,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // A panic while holding a mock lock is a bug in a test helper; keep serving.
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl Mock {
    pub fn new(config: MockConfig) -> Arc<Self> {
        let mut platforms = HashMap::new();
        for (name, k) in &config.knobs {
            platforms.insert(
                name.clone(),
                PlatformState {
                    knobs: k.clone(),
                    ..Default::default()
                },
            );
        }
        Arc::new(Self {
            config,
            platforms: Mutex::new(platforms),
            ledger: Mutex::new(Vec::new()),
            kv: Mutex::new(HashMap::new()),
            http: reqwest::Client::new(),
            seq: Mutex::new(0),
        })
    }

    /// Applies latency, then decides: outage, forced error (next requests, then per
    /// address), rate limit, random error mix, or pass.
    pub async fn gate(&self, platform: &str, address: &str) -> Gate {
        let latency = {
            let p = lock(&self.platforms);
            p.get(platform).map(|s| s.knobs.latency_ms).unwrap_or(0)
        };
        if latency > 0 {
            tokio::time::sleep(Duration::from_millis(latency)).await;
        }
        let mut all = lock(&self.platforms);
        let s = all.entry(platform.to_string()).or_default();
        if s.knobs.outage {
            return Gate::Outage;
        }
        if let Some(code) = s.forced.pop_front() {
            return Gate::Error(code);
        }
        if let Some(code) = s.by_address.get(address) {
            return Gate::Error(code.clone());
        }
        if let Some(budget) = s.knobs.app_calls_per_hour {
            let now = Instant::now();
            while s
                .hour
                .front()
                .is_some_and(|t| now.duration_since(*t) >= Duration::from_secs(3600))
            {
                s.hour.pop_front();
            }
            if s.hour.len() as u32 >= budget {
                return Gate::Error("4".into());
            }
            s.hour.push_back(now);
        }
        if let Some(limit) = s.knobs.rate_limit_per_sec {
            let now = Instant::now();
            while s
                .window
                .front()
                .is_some_and(|t| now.duration_since(*t) >= Duration::from_secs(1))
            {
                s.window.pop_front();
            }
            if s.window.len() as u32 >= limit {
                return Gate::Throttle;
            }
            s.window.push_back(now);
        }
        if s.knobs.error_rate > 0.0 && !s.knobs.error_codes.is_empty() {
            let (hit, pick) = {
                let mut rng = rand::rng();
                use rand::Rng;
                (
                    rng.random_bool(s.knobs.error_rate.clamp(0.0, 1.0)),
                    rng.random_range(0..s.knobs.error_codes.len()),
                )
            };
            if hit {
                return Gate::Error(s.knobs.error_codes[pick].clone());
            }
        }
        Gate::Pass
    }

    /// The percentage of `platform`'s hourly app budget used (`app_calls_per_hour`); None
    /// without a budget.
    pub fn app_usage_percent(&self, platform: &str) -> Option<u32> {
        let all = lock(&self.platforms);
        let s = all.get(platform)?;
        let budget = s.knobs.app_calls_per_hour?.max(1);
        let used = u32::try_from(s.hour.len()).unwrap_or(u32::MAX);
        Some((used.saturating_mul(100) / budget).min(100))
    }

    pub fn set_knobs(&self, platform: &str, knobs: Knobs) {
        lock(&self.platforms)
            .entry(platform.to_string())
            .or_default()
            .knobs = knobs;
    }

    pub fn knobs(&self, platform: &str) -> Knobs {
        lock(&self.platforms)
            .get(platform)
            .map(|s| s.knobs.clone())
            .unwrap_or_default()
    }

    /// The next `n` requests to `platform` answer `code`.
    pub fn fail_next(&self, platform: &str, code: &str, n: usize) {
        let mut all = lock(&self.platforms);
        let s = all.entry(platform.to_string()).or_default();
        for _ in 0..n {
            s.forced.push_back(code.to_string());
        }
    }

    /// Every request for `address` answers `code` (None: clears it).
    pub fn fail_address(&self, platform: &str, address: &str, code: Option<&str>) {
        let mut all = lock(&self.platforms);
        let s = all.entry(platform.to_string()).or_default();
        match code {
            Some(c) => {
                s.by_address.insert(address.to_string(), c.to_string());
            }
            None => {
                s.by_address.remove(address);
            }
        }
    }

    pub fn record(&self, entry: LedgerEntry) {
        lock(&self.ledger).push(entry);
    }

    /// Every request received by `platform` (all platforms with "").
    pub fn ledger(&self, platform: &str) -> Vec<LedgerEntry> {
        lock(&self.ledger)
            .iter()
            .filter(|e| platform.is_empty() || e.platform == platform)
            .cloned()
            .collect()
    }

    /// Requests `platform` accepted (2xx, or SMTP 250).
    pub fn accepted(&self, platform: &str) -> Vec<LedgerEntry> {
        self.ledger(platform)
            .into_iter()
            .filter(|e| (200..300).contains(&e.status) || e.status == 250)
            .collect()
    }

    pub fn clear(&self) {
        lock(&self.ledger).clear();
        lock(&self.platforms).clear();
    }

    pub fn kv_get(&self, key: &str) -> Option<String> {
        lock(&self.kv).get(key).cloned()
    }

    pub fn kv_set(&self, key: &str, value: impl Into<String>) {
        lock(&self.kv).insert(key.to_string(), value.into());
    }

    /// A fresh number for message ids.
    pub fn next_seq(&self) -> u64 {
        let mut s = lock(&self.seq);
        *s += 1;
        *s
    }

    /// Posts to Herald's `<herald_url><path>` now; returns Herald's HTTP status (so a test
    /// knows the callback was taken).
    pub async fn post_now(
        &self,
        path: &str,
        headers: Vec<(String, String)>,
        body: Vec<u8>,
    ) -> Result<u16, String> {
        let base = self
            .config
            .herald_url
            .clone()
            .ok_or("the mock has no herald_url to post to")?;
        let mut req = self.http.post(format!("{base}{path}")).body(body);
        for (k, v) in headers {
            req = req.header(k, v);
        }
        req.send()
            .await
            .map(|r| r.status().as_u16())
            .map_err(|e| format!("posting to herald {path}: {e}"))
    }

    /// Posts to Herald's `<herald_url><path>` after `delay`, in the background. Returns at
    /// once; failures are logged to stderr (a mock has no one else to tell).
    pub fn callback(
        self: &Arc<Self>,
        delay: Duration,
        path: String,
        headers: Vec<(String, String)>,
        body: Vec<u8>,
    ) {
        let Some(base) = self.config.herald_url.clone() else {
            return;
        };
        let http = self.http.clone();
        tokio::spawn(async move {
            tokio::time::sleep(delay).await;
            let mut req = http.post(format!("{base}{path}")).body(body);
            for (k, v) in headers {
                req = req.header(k, v);
            }
            if let Err(e) = req.send().await {
                eprintln!("mock-platform: callback to {path} failed: {e}");
            }
        });
    }
}

/// Decodes `a=1&b=x%20y` into pairs.
pub fn url_decode_pairs(s: &str) -> Vec<(String, String)> {
    s.split('&')
        .filter(|p| !p.is_empty())
        .map(|p| {
            let (k, v) = p.split_once('=').unwrap_or((p, ""));
            (percent_decode(k), percent_decode(v))
        })
        .collect()
}

fn percent_decode(s: &str) -> String {
    let hex = |b: u8| (b as char).to_digit(16).map(|d| d as u8);
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'+' => out.push(b' '),
            b'%' if i + 2 < bytes.len() => match (hex(bytes[i + 1]), hex(bytes[i + 2])) {
                (Some(h), Some(l)) => {
                    out.push(h * 16 + l);
                    i += 2;
                }
                _ => out.push(b'%'),
            },
            b => out.push(b),
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Headers as lowercased pairs, for the ledger.
pub fn header_pairs(h: &axum::http::HeaderMap) -> Vec<(String, String)> {
    h.iter()
        .map(|(k, v)| {
            (
                k.as_str().to_ascii_lowercase(),
                String::from_utf8_lossy(v.as_bytes()).into_owned(),
            )
        })
        .collect()
}

/// A running mock: one HTTP listener for every platform, plus an SMTP listener.
pub struct MockPlatform {
    pub mock: Arc<Mock>,
    pub addr: SocketAddr,
    pub smtp_addr: SocketAddr,
    stop: Option<oneshot::Sender<()>>,
}

impl MockPlatform {
    /// Starts on ephemeral loopback ports.
    pub async fn start(config: MockConfig) -> anyhow::Result<Self> {
        Self::start_on("127.0.0.1:0", "127.0.0.1:0", config).await
    }

    pub async fn start_on(http: &str, smtp: &str, config: MockConfig) -> anyhow::Result<Self> {
        let mock = Mock::new(config);
        let listener = TcpListener::bind(http).await?;
        let addr = listener.local_addr()?;
        let smtp_listener = TcpListener::bind(smtp).await?;
        let smtp_addr = smtp_listener.local_addr()?;
        let app = router(mock.clone());
        let (tx, rx) = oneshot::channel::<()>();
        tokio::spawn(async move {
            let _ = axum::serve(listener, app)
                .with_graceful_shutdown(async {
                    let _ = rx.await;
                })
                .await;
        });
        tokio::spawn(smtp::serve(smtp_listener, mock.clone()));
        Ok(Self {
            mock,
            addr,
            smtp_addr,
            stop: Some(tx),
        })
    }

    /// `http://127.0.0.1:<port>`: the base URL for every HTTP platform.
    pub fn base_url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// `smtp://127.0.0.1:<port>`.
    pub fn smtp_url(&self) -> String {
        format!("smtp://{}", self.smtp_addr)
    }
}

impl Drop for MockPlatform {
    fn drop(&mut self) {
        if let Some(tx) = self.stop.take() {
            let _ = tx.send(());
        }
    }
}

/// Every platform's routes plus the control API under `/_mock`.
pub fn router(mock: Arc<Mock>) -> Router {
    Router::new()
        .merge(messenger::routes())
        .merge(whatsapp::routes())
        .merge(fcm::routes())
        .merge(apns::routes())
        .merge(webpush::routes())
        .merge(twilio::routes())
        .merge(sendgrid::routes())
        .route("/_mock/ledger", get(ledger_api))
        .route("/_mock/knobs/{platform}", get(get_knobs).put(put_knobs))
        .route("/_mock/fail/{platform}", post(fail_api))
        .route("/_mock/reset", post(reset_api))
        .with_state(mock)
}

#[derive(Deserialize)]
struct LedgerQuery {
    #[serde(default)]
    platform: String,
}

async fn ledger_api(
    State(m): State<Arc<Mock>>,
    Query(q): Query<LedgerQuery>,
) -> Json<Vec<LedgerEntry>> {
    Json(m.ledger(&q.platform))
}

async fn get_knobs(State(m): State<Arc<Mock>>, Path(p): Path<String>) -> Json<Knobs> {
    Json(m.knobs(&p))
}

async fn put_knobs(
    State(m): State<Arc<Mock>>,
    Path(p): Path<String>,
    Json(k): Json<Knobs>,
) -> Json<Knobs> {
    m.set_knobs(&p, k.clone());
    Json(k)
}

#[derive(Deserialize)]
struct FailRequest {
    code: String,
    #[serde(default)]
    count: Option<usize>,
    #[serde(default)]
    address: Option<String>,
}

async fn fail_api(
    State(m): State<Arc<Mock>>,
    Path(p): Path<String>,
    Json(f): Json<FailRequest>,
) -> &'static str {
    match f.address {
        Some(a) => m.fail_address(&p, &a, Some(&f.code)),
        None => m.fail_next(&p, &f.code, f.count.unwrap_or(1)),
    }
    "ok\n"
}

async fn reset_api(State(m): State<Arc<Mock>>) -> &'static str {
    m.clear();
    "ok\n"
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn gate_order_and_rate_limit() {
        let m = Mock::new(MockConfig::default());
        assert_eq!(m.gate("sms", "a").await, Gate::Pass);
        m.fail_next("sms", "21211", 1);
        m.fail_address("sms", "b", Some("30006"));
        assert_eq!(m.gate("sms", "a").await, Gate::Error("21211".into()));
        assert_eq!(m.gate("sms", "a").await, Gate::Pass);
        assert_eq!(m.gate("sms", "b").await, Gate::Error("30006".into()));
        m.set_knobs(
            "sms",
            Knobs {
                rate_limit_per_sec: Some(2),
                ..Default::default()
            },
        );
        assert_eq!(m.gate("sms", "a").await, Gate::Pass);
        assert_eq!(m.gate("sms", "a").await, Gate::Pass);
        assert_eq!(m.gate("sms", "a").await, Gate::Throttle);
        m.set_knobs(
            "sms",
            Knobs {
                outage: true,
                ..Default::default()
            },
        );
        assert_eq!(m.gate("sms", "a").await, Gate::Outage);
    }

    #[test]
    fn form_decoding() {
        let p = url_decode_pairs("To=%2B14155550100&Body=hi+there&X=");
        assert_eq!(
            p,
            vec![
                ("To".to_string(), "+14155550100".to_string()),
                ("Body".to_string(), "hi there".to_string()),
                ("X".to_string(), String::new())
            ]
        );
    }
}
