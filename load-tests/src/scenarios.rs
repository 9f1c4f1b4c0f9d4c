//! The scenarios. Each starts its own Redis and Herald (and mock sink), runs bounded in time
//! and count, stops by itself, and measures its baseline in the same run.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use herald::proto::dispatch_client::DispatchClient;
use herald::proto::{
    send_batch_result, Category, Channel as PChannel, Content, GetCampaignRequest, Priority,
    Recipient, SendBatchRequest, SendRequest,
};
use prost::Message;
use serde::Serialize;
use tokio_stream::wrappers::ReceiverStream;
use tonic::transport::{Channel, Endpoint};

use crate::baseline;
use crate::env::{cpu_pct, start_bare_grpc, Bins, Env};
use crate::sink::{now_us, raw_hyper, webhook_like_body, Sink};
use crate::stats::{Baseline, Latency, ScenarioResult, Target, Timeline};

pub const SCENARIOS: &[&str] = &["unary", "batch", "stream", "e2e", "priority", "scheduled"];

pub struct Ctx {
    pub bins: Bins,
    /// `smoke`, `run` or `full`.
    pub mode: String,
}

/// A scenario's bounds. Every loop stops at `count` or `duration`, whichever comes first.
#[derive(Debug, Clone, Copy, Serialize)]
pub struct Params {
    pub duration_s: f64,
    pub count: u64,
    pub concurrency: usize,
    /// Bytes of `content.body`.
    pub body_len: usize,
    /// `scheduled`: the spread of `send_at`; `priority`: the HIGH send rate per second.
    pub window_s: f64,
}

impl Params {
    /// The smoke counts (whole smoke < 2 min) or the (`full`).
    pub fn defaults(scenario: &str, full: bool) -> Self {
        let p = |duration_s: f64, count: u64, concurrency: usize, window_s: f64| Self {
            duration_s,
            count,
            concurrency,
            body_len: 120,
            window_s,
        };
        match (scenario, full) {
            ("unary", false) => p(5.0, 1_000_000, 64, 0.0),
            ("unary", true) => p(60.0, 100_000_000, 64, 0.0),
            ("batch", false) => p(30.0, 100_000, 4, 0.0),
            ("batch", true) => p(300.0, 1_000_000, 4, 0.0),
            ("stream", false) => p(30.0, 100_000, 1, 0.0),
            ("stream", true) => p(300.0, 1_000_000, 1, 0.0),
            ("e2e", false) => p(10.0, 10_000_000, 2, 0.0),
            ("e2e", true) => p(60.0, 100_000_000, 2, 0.0),
            ("priority", false) => p(60.0, 30_000, 2, 50.0),
            ("priority", true) => p(900.0, 1_000_000, 2, 50.0),
            ("scheduled", false) => p(60.0, 20_000, 2, 10.0),
            (_, _) => p(600.0, 1_000_000, 2, 60.0),
        }
    }

    fn duration(&self) -> Duration {
        Duration::from_secs_f64(self.duration_s.max(0.1))
    }

    fn timeline_secs(&self) -> usize {
        (self.duration_s as usize).saturating_add(120).min(3_600)
    }
}

pub async fn run(ctx: &Ctx, scenario: &str, p: Params) -> Result<ScenarioResult> {
    let mut r = match scenario {
        "unary" => unary(ctx, p).await,
        "batch" => batch(ctx, p).await,
        "stream" => stream(ctx, p).await,
        "e2e" => e2e(ctx, p).await,
        "priority" => priority(ctx, p).await,
        "scheduled" => scheduled(ctx, p).await,
        other => bail!(
            "unknown scenario {other:?} (one of {})",
            SCENARIOS.join(", ")
        ),
    }
    .with_context(|| format!("scenario {scenario}"))?;
    r.scenario = scenario.to_string();
    r.mode = ctx.mode.clone();
    r.params = serde_json::to_value(p)?;
    r.finished_at = now_us() / 1_000_000;
    Ok(r)
}

// ---------------------------------------------------------------- requests

fn content(body_len: usize) -> Content {
    Content {
        title: "Load test".into(),
        body: "x".repeat(body_len),
        ..Default::default()
    }
}

struct Shape {
    class: &'static str,
    campaign: String,
    sink_url: String,
    content: Content,
    priority: Priority,
    category: Category,
    /// Whether each request carries its send time (`t0`) in its labels, for the sink to time
    /// it: not for a campaign that is only queued, whose labels are then the same for all.
    stamped: bool,
}

impl Shape {
    fn new(class: &'static str, campaign: String, sink_url: String, body_len: usize) -> Self {
        Self {
            class,
            campaign,
            sink_url,
            content: content(body_len),
            priority: Priority::Normal,
            category: Category::Transactional,
            stamped: true,
        }
    }

    /// One request; `t0` (now, Unix µs) rides in the labels to the sink.
    fn req(&self, i: u64, idem: Option<String>, send_at_us: Option<u64>) -> SendRequest {
        let mut labels = std::collections::HashMap::new();
        labels.insert("lg".to_string(), self.class.to_string());
        if self.stamped {
            labels.insert("t0".to_string(), now_us().to_string());
        }
        if let Some(sa) = send_at_us {
            labels.insert("sa".to_string(), sa.to_string());
        }
        SendRequest {
            idempotency_key: idem.unwrap_or_default(),
            campaign_id: self.campaign.clone(),
            labels,
            recipient: Some(Recipient {
                contact_id: format!("c{i}"),
                webhook_url: self.sink_url.clone(),
                ..Default::default()
            }),
            channels: vec![PChannel::Webhook as i32],
            content: Some(self.content.clone()),
            category: self.category as i32,
            priority: self.priority as i32,
            send_at: send_at_us.map(|us| prost_types::Timestamp {
                seconds: (us / 1_000_000) as i64,
                nanos: ((us % 1_000_000) * 1000) as i32,
            }),
            expire_at: None,
        }
    }
}

type Make = Arc<dyn Fn(u64) -> SendRequest + Send + Sync>;

async fn connect(url: &str, n: usize) -> Result<Vec<DispatchClient<Channel>>> {
    let mut v = Vec::new();
    for _ in 0..n.max(1) {
        let ch = Endpoint::from_shared(url.to_string())?
            .tcp_nodelay(true)
            .connect()
            .await
            .with_context(|| format!("connecting to {url}"))?;
        v.push(
            DispatchClient::new(ch)
                .max_decoding_message_size(64 << 20)
                .max_encoding_message_size(64 << 20),
        );
    }
    Ok(v)
}

/// What a client loop measured.
struct LoopOut {
    ok: u64,
    errors: u64,
    latency: Latency,
    elapsed: Duration,
    timeline: Vec<(f64, f64)>,
    first_error: Option<String>,
}

impl LoopOut {
    fn throughput(&self) -> f64 {
        self.ok as f64 / self.elapsed.as_secs_f64().max(1e-9)
    }

    fn as_baseline(&self, name: &str) -> Baseline {
        Baseline {
            name: name.into(),
            ops: self.ok,
            elapsed_s: self.elapsed.as_secs_f64(),
            throughput: self.throughput(),
            latency: self.latency.percentiles(),
            errors: self.errors,
        }
    }
}

struct Shared {
    next: AtomicU64,
    ok: AtomicU64,
    errors: AtomicU64,
    latency: Latency,
    timeline: Timeline,
    first_error: Mutex<Option<String>>,
}

impl Shared {
    fn new(start: Instant, secs: usize) -> Arc<Self> {
        Arc::new(Self {
            next: AtomicU64::new(0),
            ok: AtomicU64::new(0),
            errors: AtomicU64::new(0),
            latency: Latency::new(),
            timeline: Timeline::new(start, secs),
            first_error: Mutex::new(None),
        })
    }

    fn error(&self, n: u64, e: impl std::fmt::Display) {
        self.errors.fetch_add(n, Ordering::Relaxed);
        let mut f = self.first_error.lock().unwrap_or_else(|e| e.into_inner());
        if f.is_none() {
            *f = Some(e.to_string());
        }
    }

    fn finish(self: Arc<Self>, elapsed: Duration) -> LoopOut {
        let timeline = self.timeline.series();
        let first_error = self
            .first_error
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone();
        let ok = self.ok.load(Ordering::Relaxed);
        let errors = self.errors.load(Ordering::Relaxed);
        let latency = match Arc::try_unwrap(self) {
            Ok(s) => s.latency,
            Err(_) => Latency::new(),
        };
        LoopOut {
            ok,
            errors,
            latency,
            elapsed,
            timeline,
            first_error,
        }
    }
}

/// `conc` tasks each sending one `Send` after another.
async fn unary_loop(clients: &[DispatchClient<Channel>], p: &Params, make: Make) -> LoopOut {
    let start = Instant::now();
    let deadline = start + p.duration();
    let sh = Shared::new(start, p.timeline_secs());
    let mut tasks = Vec::new();
    for t in 0..p.concurrency.max(1) {
        let mut client = clients[t % clients.len()].clone();
        let (sh, make, count) = (sh.clone(), make.clone(), p.count);
        tasks.push(tokio::spawn(async move {
            loop {
                let i = sh.next.fetch_add(1, Ordering::Relaxed);
                if i >= count || Instant::now() >= deadline {
                    break;
                }
                let req = make(i);
                let t0 = Instant::now();
                match client.send(req).await {
                    Ok(_) => {
                        sh.latency.record(t0.elapsed());
                        sh.ok.fetch_add(1, Ordering::Relaxed);
                        sh.timeline.add(1);
                    }
                    Err(e) => sh.error(1, e),
                }
            }
        }));
    }
    for t in tasks {
        let _ = t.await;
    }
    sh.finish(start.elapsed())
}

/// `conc` tasks each sending `SendBatch` of `batch` items; `hold(accepted)` pauses the feed
/// while it is true (the e2e backlog bound).
async fn batch_loop(
    clients: &[DispatchClient<Channel>],
    p: &Params,
    batch: usize,
    make: Make,
    hold: Option<Arc<dyn Fn(u64) -> bool + Send + Sync>>,
) -> LoopOut {
    let start = Instant::now();
    let deadline = start + p.duration();
    let sh = Shared::new(start, p.timeline_secs());
    let mut tasks = Vec::new();
    for t in 0..p.concurrency.max(1) {
        let mut client = clients[t % clients.len()].clone();
        let (sh, make, hold, count) = (sh.clone(), make.clone(), hold.clone(), p.count);
        tasks.push(tokio::spawn(async move {
            loop {
                if let Some(h) = &hold {
                    while h(sh.ok.load(Ordering::Relaxed)) && Instant::now() < deadline {
                        tokio::time::sleep(Duration::from_millis(2)).await;
                    }
                }
                if Instant::now() >= deadline {
                    break;
                }
                let from = sh.next.fetch_add(batch as u64, Ordering::Relaxed);
                if from >= count {
                    break;
                }
                let to = (from + batch as u64).min(count);
                let items: Vec<SendRequest> = (from..to).map(|i| make(i)).collect();
                let t0 = Instant::now();
                match client.send_batch(SendBatchRequest { items }).await {
                    Ok(resp) => {
                        sh.latency.record(t0.elapsed());
                        let mut ok = 0;
                        for r in resp.into_inner().results {
                            match r.result {
                                Some(send_batch_result::Result::Ok(_)) => ok += 1,
                                Some(send_batch_result::Result::Error(e)) => {
                                    sh.error(1, format!("{}: {}", e.field, e.message))
                                }
                                None => sh.error(1, "empty result"),
                            }
                        }
                        sh.ok.fetch_add(ok, Ordering::Relaxed);
                        sh.timeline.add(ok);
                    }
                    Err(e) => sh.error(to - from, e),
                }
            }
        }));
    }
    for t in tasks {
        let _ = t.await;
    }
    sh.finish(start.elapsed())
}

/// `conc` `SendStream` calls, each carrying its share of `count`.
async fn stream_loop(clients: &[DispatchClient<Channel>], p: &Params, make: Make) -> LoopOut {
    let start = Instant::now();
    let deadline = start + p.duration();
    let sh = Shared::new(start, p.timeline_secs());
    let conc = p.concurrency.max(1) as u64;
    let mut tasks = Vec::new();
    for s in 0..conc {
        let mut client = clients[s as usize % clients.len()].clone();
        let (sh, make) = (sh.clone(), make.clone());
        let (from, to) = (p.count * s / conc, p.count * (s + 1) / conc);
        tasks.push(tokio::spawn(async move {
            let (tx, rx) = tokio::sync::mpsc::channel::<SendRequest>(4096);
            let sent: Arc<Mutex<VecDeque<Instant>>> = Arc::new(Mutex::new(VecDeque::new()));
            let sent2 = sent.clone();
            let producer = tokio::spawn(async move {
                for i in from..to {
                    if Instant::now() >= deadline || tx.send(make(i)).await.is_err() {
                        break;
                    }
                    sent2
                        .lock()
                        .unwrap_or_else(|e| e.into_inner())
                        .push_back(Instant::now());
                }
            });
            match client.send_stream(ReceiverStream::new(rx)).await {
                Ok(resp) => {
                    let mut inbound = resp.into_inner();
                    loop {
                        match inbound.message().await {
                            Ok(Some(m)) => {
                                let t = sent.lock().unwrap_or_else(|e| e.into_inner()).pop_front();
                                if let Some(t) = t {
                                    sh.latency.record(t.elapsed());
                                }
                                if let Some(e) = m.error {
                                    sh.error(1, format!("{}: {}", e.field, e.message));
                                } else {
                                    sh.ok.fetch_add(1, Ordering::Relaxed);
                                    sh.timeline.add(1);
                                }
                            }
                            Ok(None) => break,
                            Err(e) => {
                                sh.error(1, e);
                                break;
                            }
                        }
                    }
                }
                Err(e) => sh.error(to - from, e),
            }
            let _ = producer.await;
        }));
    }
    for t in tasks {
        let _ = t.await;
    }
    sh.finish(start.elapsed())
}

fn note_error(r: &mut ScenarioResult, what: &str, out: &LoopOut) {
    if let Some(e) = &out.first_error {
        r.notes
            .push(format!("{what}: {} errors, first: {e}", out.errors));
    }
}

fn bytes_per(mem0: u64, mem1: u64, n: u64) -> Option<f64> {
    (n > 0).then(|| mem1.saturating_sub(mem0) as f64 / n as f64)
}

/// Waits until `f()` or the timeout.
async fn wait_until(timeout: Duration, f: impl Fn() -> bool) -> bool {
    let deadline = Instant::now() + timeout;
    while !f() {
        if Instant::now() >= deadline {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    true
}

// ---------------------------------------------------------------- scenarios

/// `Send` at fixed concurrency against Herald (api role only: nothing is dispatched, so the
/// CPU is the ingest path's), then against the bare tonic server with the same requests.
async fn unary(ctx: &Ctx, p: Params) -> Result<ScenarioResult> {
    let mut env = Env::start(&ctx.bins, "unary", Some(&["api"])).await?;
    let mem0 = env.used_memory().await?;
    let clients = connect(&env.grpc_url(), 2).await?;
    let nonce = now_us();
    let shape = Arc::new(Shape::new(
        "e2e",
        String::new(),
        "http://127.0.0.1:9/hook".into(),
        p.body_len,
    ));
    let s2 = shape.clone();
    let make: Make = Arc::new(move |i| s2.req(i, Some(format!("lg-{nonce}-{i}")), None));
    let cpu0 = env.cpu_ticks();
    let out = unary_loop(&clients, &p, make.clone()).await;
    let cpu1 = env.cpu_ticks();
    let rss = env.herald_peak_rss_mb();
    let mem1 = env.used_memory().await?;
    env.stop().await;

    let (mut bare, port) = start_bare_grpc(&ctx.bins.this).await?;
    let bclients = connect(&format!("http://127.0.0.1:{port}"), 2).await?;
    let base = unary_loop(&bclients, &p, make).await;
    let _ = bare.kill().await;

    let mut r = ScenarioResult {
        unit: "Send requests".into(),
        ops: out.ok,
        elapsed_s: out.elapsed.as_secs_f64(),
        throughput: out.throughput(),
        latency: out.latency.percentiles(),
        latency_of: format!("Send round trip, {} in flight", p.concurrency),
        errors: out.errors,
        herald_cpu_pct: cpu_pct(cpu0.herald, cpu1.herald, out.elapsed),
        redis_cpu_pct: cpu_pct(cpu0.redis, cpu1.redis, out.elapsed),
        loadgen_cpu_pct: cpu_pct(cpu0.this, cpu1.this, out.elapsed),
        herald_peak_rss_mb: rss,
        redis_bytes_per_notification: bytes_per(mem0, mem1, out.ok),
        baseline: Some(base.as_baseline("bare-tonic")),
        ratio: Some(out.throughput() / base.throughput().max(1e-9)),
        timeline: out.timeline.clone(),
        ..Default::default()
    };
    r.targets.push(Target::at_least(
        "unary Send vs bare tonic server",
        0.5,
        r.ratio.unwrap_or(0.0),
        "x",
    ));
    if let Some(l) = r.latency {
        r.targets
            .push(Target::at_most("unary Send p99", 15.0, l.p99_ms, "ms"));
    }
    rss_target(&mut r, rss);
    r.notes
        .push("each Send carries an idempotency key, so Redis bytes include its 24 h key".into());
    note_error(&mut r, "herald", &out);
    note_error(&mut r, "bare-tonic", &base);
    Ok(r)
}

/// `SendBatch` of 1,000 at `concurrency` batches in flight, api role only; then raw pipelined
/// XADD of the same count and payload size (the encoded request) into the same Redis.
async fn batch(ctx: &Ctx, p: Params) -> Result<ScenarioResult> {
    let mut env = Env::start(&ctx.bins, "batch", Some(&["api"])).await?;
    let mem0 = env.used_memory().await?;
    let clients = connect(&env.grpc_url(), 2).await?;
    let mut shape = Shape::new(
        "bulk",
        format!("lg-batch-{}", now_us()),
        "http://127.0.0.1:9/hook".into(),
        p.body_len,
    );
    shape.stamped = false;
    let shape = Arc::new(shape);
    let payload_len = shape.req(0, None, None).encoded_len();
    let s2 = shape.clone();
    let make: Make = Arc::new(move |i| s2.req(i, None, None));
    let cpu0 = env.cpu_ticks();
    let out = batch_loop(&clients, &p, 1000, make, None).await;
    let cpu1 = env.cpu_ticks();
    let rss = env.herald_peak_rss_mb();
    let mem1 = env.used_memory().await?;
    env.stop_herald().await;
    let (n, el, lat) = baseline::raw_xadd(
        env.redis_port,
        out.ok.max(1000),
        payload_len,
        1000,
        p.concurrency,
    )
    .await?;
    env.stop().await;
    let base = Baseline {
        name: format!("redis-xadd ({payload_len} B, pipelines of 1000)"),
        ops: n,
        elapsed_s: el.as_secs_f64(),
        throughput: n as f64 / el.as_secs_f64().max(1e-9),
        latency: lat.percentiles(),
        errors: 0,
    };
    let mut r = ScenarioResult {
        unit: "notifications accepted".into(),
        ops: out.ok,
        elapsed_s: out.elapsed.as_secs_f64(),
        throughput: out.throughput(),
        latency: out.latency.percentiles(),
        latency_of: "SendBatch of 1,000 round trip".into(),
        errors: out.errors,
        herald_cpu_pct: cpu_pct(cpu0.herald, cpu1.herald, out.elapsed),
        redis_cpu_pct: cpu_pct(cpu0.redis, cpu1.redis, out.elapsed),
        loadgen_cpu_pct: cpu_pct(cpu0.this, cpu1.this, out.elapsed),
        herald_peak_rss_mb: rss,
        redis_bytes_per_notification: bytes_per(mem0, mem1, out.ok),
        ratio: Some(out.throughput() / base.throughput.max(1e-9)),
        baseline: Some(base),
        timeline: out.timeline.clone(),
        ..Default::default()
    };
    r.targets.push(Target::at_least(
        "SendBatch ingest",
        150_000.0,
        r.throughput,
        "/s",
    ));
    r.targets.push(Target::at_least(
        "SendBatch vs raw pipelined XADD",
        0.3,
        r.ratio.unwrap_or(0.0),
        "x",
    ));
    rss_target(&mut r, rss);
    note_error(&mut r, "herald", &out);
    Ok(r)
}

/// A `SendStream` campaign of `count` recipients with shared content (api role only, so
/// what is queued stays queued and Redis memory per queued notification is measured).
async fn stream(ctx: &Ctx, p: Params) -> Result<ScenarioResult> {
    let mut env = Env::start(&ctx.bins, "stream", Some(&["api"])).await?;
    let mem0 = env.used_memory().await?;
    let clients = connect(&env.grpc_url(), 1).await?;
    let mut shape = Shape::new(
        "bulk",
        format!("lg-stream-{}", now_us()),
        "http://127.0.0.1:9/hook".into(),
        p.body_len,
    );
    shape.priority = Priority::Bulk;
    shape.category = Category::Marketing;
    shape.stamped = false;
    let shape = Arc::new(shape);
    let payload_len = shape.req(0, None, None).encoded_len();
    let s2 = shape.clone();
    let make: Make = Arc::new(move |i| s2.req(i, None, None));
    let cpu0 = env.cpu_ticks();
    let out = stream_loop(&clients, &p, make).await;
    let cpu1 = env.cpu_ticks();
    let rss = env.herald_peak_rss_mb();
    let mem1 = env.used_memory().await?;
    env.stop_herald().await;
    let (n, el, lat) =
        baseline::raw_xadd(env.redis_port, out.ok.max(1000), payload_len, 1000, 2).await?;
    env.stop().await;
    let base = Baseline {
        name: format!("redis-xadd ({payload_len} B, pipelines of 1000)"),
        ops: n,
        elapsed_s: el.as_secs_f64(),
        throughput: n as f64 / el.as_secs_f64().max(1e-9),
        latency: lat.percentiles(),
        errors: 0,
    };
    let bpn = bytes_per(mem0, mem1, out.ok);
    let mut r = ScenarioResult {
        unit: "campaign notifications accepted".into(),
        ops: out.ok,
        elapsed_s: out.elapsed.as_secs_f64(),
        throughput: out.throughput(),
        latency: out.latency.percentiles(),
        latency_of: "SendStream item sent -> its response".into(),
        errors: out.errors,
        herald_cpu_pct: cpu_pct(cpu0.herald, cpu1.herald, out.elapsed),
        redis_cpu_pct: cpu_pct(cpu0.redis, cpu1.redis, out.elapsed),
        loadgen_cpu_pct: cpu_pct(cpu0.this, cpu1.this, out.elapsed),
        herald_peak_rss_mb: rss,
        redis_bytes_per_notification: bpn,
        ratio: Some(out.throughput() / base.throughput.max(1e-9)),
        baseline: Some(base),
        timeline: out.timeline.clone(),
        ..Default::default()
    };
    if let Some(b) = bpn {
        r.targets.push(Target::at_most(
            "Redis memory per queued campaign notification",
            200.0,
            b,
            "B",
        ));
    }
    rss_target(&mut r, rss);
    note_error(&mut r, "herald", &out);
    Ok(r)
}

/// accept -> dispatch -> mock sink -> DELIVERED: SendBatch feeds Herald (api + worker) for
/// `duration`, holding while more than 20,000 accepted wait undelivered; deliveries are
/// counted at the sink. Then the queue drains, GetCampaign confirms the DELIVERED receipts,
/// and a raw hyper client posts the same body size to the same kind of sink.
async fn e2e(ctx: &Ctx, p: Params) -> Result<ScenarioResult> {
    let env = Env::start(&ctx.bins, "e2e", Some(&["api", "worker"])).await?;
    let sink = Sink::start(p.timeline_secs()).await?;
    let clients = connect(&env.grpc_url(), 2).await?;
    let campaign = format!("lg-e2e-{}", now_us());
    let shape = Arc::new(Shape::new("e2e", campaign.clone(), sink.url(), p.body_len));
    let s2 = shape.clone();
    let make: Make = Arc::new(move |i| s2.req(i, None, None));
    let ledger = sink.ledger.clone();
    let l2 = ledger.clone();
    let hold: Arc<dyn Fn(u64) -> bool + Send + Sync> =
        Arc::new(move |accepted| accepted.saturating_sub(l2.class("e2e")) > 20_000);
    let cpu0 = env.cpu_ticks();
    let start = Instant::now();
    let feed = batch_loop(&clients, &p, 500, make, Some(hold)).await;
    let window = start.elapsed();
    let in_window = ledger.class("e2e");
    let drained = wait_until(Duration::from_secs(60), || ledger.class("e2e") >= feed.ok).await;
    let total_elapsed = start.elapsed();
    let cpu1 = env.cpu_ticks();
    let rss = env.herald_peak_rss_mb();
    // The receipts: every notification of the campaign DELIVERED, per Herald.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let delivered_receipts = clients[0]
        .clone()
        .get_campaign(GetCampaignRequest {
            campaign_id: campaign.clone(),
        })
        .await
        .map(|c| {
            c.into_inner()
                .by_status
                .get("STATUS_DELIVERED")
                .copied()
                .unwrap_or(0)
        });
    env.stop().await;

    let raw_sink = Sink::start(60).await?;
    let raw_secs = p.duration_s.min(10.0);
    let (n, errs, lat, el) = raw_hyper(
        raw_sink.port,
        64,
        Duration::from_secs_f64(raw_secs),
        webhook_like_body(p.body_len),
    )
    .await?;
    drop(raw_sink);
    let base = Baseline {
        name: "raw-hyper -> sink (64 keep-alive conns)".into(),
        ops: n,
        elapsed_s: el.as_secs_f64(),
        throughput: n as f64 / el.as_secs_f64().max(1e-9),
        latency: lat.percentiles(),
        errors: errs,
    };
    let thr = in_window as f64 / window.as_secs_f64().max(1e-9);
    let mut r = ScenarioResult {
        unit: "deliveries (at the sink)".into(),
        ops: in_window,
        elapsed_s: window.as_secs_f64(),
        throughput: thr,
        latency: ledger.latency.get("e2e").and_then(|l| l.percentiles()),
        latency_of: "SendBatch sent -> platform request at the sink".into(),
        errors: feed.errors + feed.ok.saturating_sub(ledger.class("e2e")),
        herald_cpu_pct: cpu_pct(cpu0.herald, cpu1.herald, total_elapsed),
        redis_cpu_pct: cpu_pct(cpu0.redis, cpu1.redis, total_elapsed),
        loadgen_cpu_pct: cpu_pct(cpu0.this, cpu1.this, total_elapsed),
        herald_peak_rss_mb: rss,
        redis_bytes_per_notification: None,
        ratio: Some(thr / base.throughput.max(1e-9)),
        baseline: Some(base),
        timeline: ledger.timeline.series(),
        ..Default::default()
    };
    r.notes.push(format!(
        "{} accepted, {} delivered at the sink ({} within the {:.1} s feed window), drained: {drained}; \
         GetCampaign STATUS_DELIVERED: {}",
        feed.ok,
        ledger.class("e2e"),
        in_window,
        window.as_secs_f64(),
        match &delivered_receipts {
            Ok(n) => n.to_string(),
            Err(e) => format!("error {e}"),
        }
    ));
    r.targets.push(Target::at_least(
        "e2e deliveries with receipts",
        20_000.0,
        thr,
        "/s",
    ));
    r.targets.push(Target::at_least(
        "e2e vs raw hyper -> mock",
        0.3,
        r.ratio.unwrap_or(0.0),
        "x",
    ));
    if let Ok(d) = delivered_receipts {
        r.targets.push(Target {
            name: "every accepted notification has its DELIVERED receipt".into(),
            target: format!("{}", feed.ok),
            measured: format!("{d}"),
            pass: d >= feed.ok,
        });
    }
    rss_target(&mut r, rss);
    note_error(&mut r, "feed", &feed);
    Ok(r)
}

/// A BULK campaign of `count` is queued (SendBatch) and drains to the sink; meanwhile HIGH
/// notifications are sent one by one at `window_s` per second, and their accept -> platform
/// request latency is measured at the sink.
async fn priority(ctx: &Ctx, p: Params) -> Result<ScenarioResult> {
    let env = Env::start(&ctx.bins, "priority", Some(&["api", "worker"])).await?;
    let sink = Sink::start(p.timeline_secs()).await?;
    let clients = connect(&env.grpc_url(), 2).await?;
    let mut bulk = Shape::new(
        "bulk",
        format!("lg-bulk-{}", now_us()),
        sink.url(),
        p.body_len,
    );
    bulk.priority = Priority::Bulk;
    bulk.category = Category::Marketing;
    let bulk = Arc::new(bulk);
    let mut high = Shape::new("high", String::new(), sink.url(), p.body_len);
    high.priority = Priority::High;
    let ledger = sink.ledger.clone();
    let b2 = bulk.clone();
    let make: Make = Arc::new(move |i| b2.req(i, None, None));
    let cpu0 = env.cpu_ticks();
    let start = Instant::now();
    let ingest = batch_loop(&clients, &p, 1000, make, None).await;
    let ingest_s = start.elapsed().as_secs_f64();
    let backlog_at_high_start = ingest.ok.saturating_sub(ledger.class("bulk"));

    // HIGH one by one while the bulk drains.
    let interval = Duration::from_secs_f64(1.0 / p.window_s.max(1.0));
    let deadline = start + p.duration();
    let mut client = clients[1 % clients.len()].clone();
    let (mut high_sent, mut high_during, mut high_err) = (0u64, 0u64, 0u64);
    let mut tick = tokio::time::interval(interval);
    while ledger.class("bulk") < ingest.ok && Instant::now() < deadline {
        tick.tick().await;
        match client.send(high.req(high_sent, None, None)).await {
            Ok(_) => {
                high_sent += 1;
                if ledger.class("bulk") < ingest.ok {
                    high_during += 1;
                }
            }
            Err(_) => high_err += 1,
        }
    }
    let drain_s = start.elapsed().as_secs_f64();
    let _ = wait_until(Duration::from_secs(10), || {
        ledger.class("high") >= high_sent
    })
    .await;
    let cpu1 = env.cpu_ticks();
    let rss = env.herald_peak_rss_mb();
    env.stop().await;

    let bulk_done = ledger.class("bulk");
    let hl = ledger.latency.get("high").and_then(|l| l.percentiles());
    let mut r = ScenarioResult {
        unit: "BULK deliveries".into(),
        ops: bulk_done,
        elapsed_s: drain_s,
        throughput: bulk_done as f64 / drain_s.max(1e-9),
        latency: hl,
        latency_of: "HIGH Send -> platform request, during the BULK drain".into(),
        errors: ingest.errors + high_err + ingest.ok.saturating_sub(bulk_done),
        herald_cpu_pct: cpu_pct(cpu0.herald, cpu1.herald, start.elapsed()),
        redis_cpu_pct: cpu_pct(cpu0.redis, cpu1.redis, start.elapsed()),
        loadgen_cpu_pct: cpu_pct(cpu0.this, cpu1.this, start.elapsed()),
        herald_peak_rss_mb: rss,
        timeline: ledger.timeline.series(),
        ..Default::default()
    };
    r.notes.push(format!(
        "BULK {} queued in {ingest_s:.1} s ({} waiting when HIGH began), {bulk_done} delivered by {drain_s:.1} s; \
         HIGH {high_sent} sent ({high_during} while BULK was still draining), {} reached the sink",
        ingest.ok,
        backlog_at_high_start,
        ledger.class("high"),
    ));
    if let Some(l) = hl {
        r.targets.push(Target::at_most(
            "HIGH p99 accept -> platform request during BULK drain",
            100.0,
            l.p99_ms,
            "ms",
        ));
    }
    rss_target(&mut r, rss);
    note_error(&mut r, "bulk ingest", &ingest);
    Ok(r)
}

/// `count` notifications with `send_at` spread evenly over `window_s`, starting a lead time
/// after the run begins (enough to queue them all first); lateness = platform request at the
/// sink − send_at.
async fn scheduled(ctx: &Ctx, p: Params) -> Result<ScenarioResult> {
    let mut env = Env::start(&ctx.bins, "scheduled", Some(&["api", "worker"])).await?;
    let sink = Sink::start(p.timeline_secs()).await?;
    let clients = connect(&env.grpc_url(), 2).await?;
    let shape = Arc::new(Shape::new(
        "sched",
        format!("lg-sched-{}", now_us()),
        sink.url(),
        p.body_len,
    ));
    // Lead: queue everything before the first send_at (at a conservative 20k/s).
    let lead_s = 3.0 + p.count as f64 / 20_000.0;
    let base_us = now_us() + (lead_s * 1e6) as u64;
    let window_us = (p.window_s * 1e6) as u64;
    let n = p.count.max(1);
    let s2 = shape.clone();
    let make: Make = Arc::new(move |i| s2.req(i, None, Some(base_us + i * window_us / n)));
    let mem0 = env.used_memory().await?;
    let cpu0 = env.cpu_ticks();
    let start = Instant::now();
    let ingest = batch_loop(&clients, &p, 1000, make, None).await;
    let ingest_done_us = now_us();
    let mem1 = env.used_memory().await?;
    let ledger = sink.ledger.clone();
    let first_send_at_passed = ingest_done_us > base_us;
    let wait_end = Duration::from_secs_f64(lead_s + p.window_s + 30.0);
    let _ = wait_until(wait_end.saturating_sub(start.elapsed()), || {
        ledger.class("sched") >= ingest.ok
    })
    .await;
    let cpu1 = env.cpu_ticks();
    let rss = env.herald_peak_rss_mb();
    env.stop().await;

    let got = ledger.class("sched");
    let late = ledger.lateness.percentiles();
    let over_2s = ledger.lateness.count_above_us(2_000_000);
    let mut r = ScenarioResult {
        unit: "scheduled deliveries".into(),
        ops: got,
        elapsed_s: p.window_s,
        throughput: got as f64 / p.window_s.max(1e-9),
        latency: late,
        latency_of: "platform request - send_at (lateness)".into(),
        errors: ingest.errors + ingest.ok.saturating_sub(got),
        herald_cpu_pct: cpu_pct(cpu0.herald, cpu1.herald, start.elapsed()),
        redis_cpu_pct: cpu_pct(cpu0.redis, cpu1.redis, start.elapsed()),
        loadgen_cpu_pct: cpu_pct(cpu0.this, cpu1.this, start.elapsed()),
        herald_peak_rss_mb: rss,
        redis_bytes_per_notification: (!first_send_at_passed)
            .then(|| bytes_per(mem0, mem1, ingest.ok))
            .flatten(),
        timeline: ledger.timeline.series(),
        ..Default::default()
    };
    r.notes.push(format!(
        "{} queued in {:.1} s (first send_at {lead_s:.1} s after the start{}), {got} delivered, \
         {} early, {over_2s} more than 2 s late",
        ingest.ok,
        (ingest_done_us.saturating_sub(base_us - (lead_s * 1e6) as u64)) as f64 / 1e6,
        if first_send_at_passed {
            "; queuing overran it"
        } else {
            ""
        },
        ledger.early.load(Ordering::Relaxed),
    ));
    r.targets.push(Target {
        name: "every scheduled notification sent within 2 s of send_at".into(),
        target: format!("{} within 2 s", ingest.ok),
        measured: format!("{} within 2 s", got.saturating_sub(over_2s)),
        pass: got >= ingest.ok && over_2s == 0 && ingest.ok == p.count,
    });
    rss_target(&mut r, rss);
    note_error(&mut r, "ingest", &ingest);
    Ok(r)
}

/// The memory target, checked on every scenario that ran Herald.
fn rss_target(r: &mut ScenarioResult, rss: Option<f64>) {
    if let Some(m) = rss {
        r.targets
            .push(Target::at_most("Herald peak RSS", 200.0, m, "MB"));
    }
}
