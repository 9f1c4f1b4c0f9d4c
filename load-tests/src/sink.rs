//! The mock webhook platform the end-to-end scenarios deliver to: an HTTP/1.1 keep-alive
//! server with no rate limit that answers 200 to every POST (a 2xx is the webhook channel's
//! DELIVERED receipt) and keeps a ledger: a count, a per-second timeline, and for each
//! request the time from the label the generator stamped at accept (`t0`, Unix µs) or from
//! the `send_at` it asked for (`sa`, Unix µs). Also the raw hyper client of the
//! `raw-hyper` baseline, against the same sink.

use std::collections::HashMap;
use std::convert::Infallible;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{Context, Result};
use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Request, Response};
use hyper_util::rt::TokioIo;
use serde::Deserialize;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::oneshot;

use crate::stats::{Latency, Timeline};

pub fn now_us() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_micros() as u64)
        .unwrap_or(0)
}

/// What the sink saw.
pub struct Ledger {
    pub total: AtomicU64,
    /// Requests by the `lg` label (`e2e`, `bulk`, `high`, `sched`, …).
    pub by_class: HashMap<&'static str, AtomicU64>,
    /// accept (`t0` label) → this request, by class.
    pub latency: HashMap<&'static str, Latency>,
    /// this request − `send_at` (`sa` label), for the ones that came at or after it.
    pub lateness: Latency,
    /// Came before their `send_at`.
    pub early: AtomicU64,
    pub unparsed: AtomicU64,
    pub timeline: Timeline,
}

pub const CLASSES: &[&str] = &["e2e", "bulk", "high", "sched", "raw"];

impl Ledger {
    fn new(start: Instant, max_secs: usize) -> Self {
        Self {
            total: AtomicU64::new(0),
            by_class: CLASSES.iter().map(|c| (*c, AtomicU64::new(0))).collect(),
            latency: CLASSES.iter().map(|c| (*c, Latency::new())).collect(),
            lateness: Latency::new(),
            early: AtomicU64::new(0),
            unparsed: AtomicU64::new(0),
            timeline: Timeline::new(start, max_secs),
        }
    }

    pub fn class(&self, c: &str) -> u64 {
        self.by_class
            .get(c)
            .map(|a| a.load(Ordering::Relaxed))
            .unwrap_or(0)
    }

    fn record(&self, body: &[u8]) {
        let at = now_us();
        self.total.fetch_add(1, Ordering::Relaxed);
        self.timeline.add(1);
        let hook: Hook = match serde_json::from_slice(body) {
            Ok(h) => h,
            Err(_) => {
                self.unparsed.fetch_add(1, Ordering::Relaxed);
                return;
            }
        };
        let labels = hook.data.labels;
        let class = labels
            .get("lg")
            .and_then(|c| CLASSES.iter().find(|k| **k == c.as_str()))
            .copied()
            .unwrap_or("raw");
        if let Some(a) = self.by_class.get(class) {
            a.fetch_add(1, Ordering::Relaxed);
        }
        if let Some(t0) = labels.get("t0").and_then(|v| v.parse::<u64>().ok()) {
            if let Some(l) = self.latency.get(class) {
                l.record_us(at.saturating_sub(t0));
            }
        }
        if let Some(sa) = labels.get("sa").and_then(|v| v.parse::<u64>().ok()) {
            if at >= sa {
                self.lateness.record_us(at - sa);
            } else {
                self.early.fetch_add(1, Ordering::Relaxed);
            }
        }
    }
}

#[derive(Deserialize)]
struct Hook {
    data: HookData,
}

#[derive(Deserialize)]
struct HookData {
    #[serde(default)]
    labels: HashMap<String, String>,
}

/// A running sink; stops when dropped.
pub struct Sink {
    pub ledger: Arc<Ledger>,
    pub port: u16,
    _stop: oneshot::Sender<()>,
}

impl Sink {
    pub async fn start(max_secs: usize) -> Result<Self> {
        let listener = TcpListener::bind("127.0.0.1:0")
            .await
            .context("binding the mock sink")?;
        let port = listener.local_addr()?.port();
        let ledger = Arc::new(Ledger::new(Instant::now(), max_secs));
        let (tx, mut rx) = oneshot::channel::<()>();
        let l2 = ledger.clone();
        tokio::spawn(async move {
            loop {
                let accepted = tokio::select! {
                    a = listener.accept() => a,
                    _ = &mut rx => return,
                };
                let Ok((stream, _)) = accepted else { continue };
                let _ = stream.set_nodelay(true);
                let ledger = l2.clone();
                tokio::spawn(async move {
                    let svc = service_fn(move |req: Request<Incoming>| {
                        let ledger = ledger.clone();
                        async move {
                            if let Ok(body) = req.into_body().collect().await {
                                ledger.record(&body.to_bytes());
                            }
                            Ok::<_, Infallible>(Response::new(Full::new(Bytes::from_static(b""))))
                        }
                    });
                    let _ = http1::Builder::new()
                        .keep_alive(true)
                        .serve_connection(TokioIo::new(stream), svc)
                        .await;
                });
            }
        });
        Ok(Self {
            ledger,
            port,
            _stop: tx,
        })
    }

    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}/hook", self.port)
    }
}

/// A body of the shape and size Herald's webhook channel posts.
pub fn webhook_like_body(body_len: usize) -> Bytes {
    let v = serde_json::json!({
        "type": "notification.send",
        "timestamp": "2025-01-01T00:00:00Z",
        "data": {
            "notification_id": "01JGZZZZZZZZZZZZZZZZZZZZZZ",
            "campaign_id": "load",
            "category": "transactional",
            "priority": "normal",
            "labels": {"lg": "raw"},
            "contact_id": "",
            "title": "Load test",
            "body": "x".repeat(body_len),
            "image_url": "",
            "actions": [],
            "data": {},
            "attempt": 1,
        }
    });
    Bytes::from(v.to_string())
}

/// The `raw-hyper` baseline: `conns` keep-alive HTTP/1.1 connections each posting one request
/// after another until `duration` is up. Returns (requests, errors, latency, elapsed).
pub async fn raw_hyper(
    port: u16,
    conns: usize,
    duration: Duration,
    body: Bytes,
) -> Result<(u64, u64, Latency, Duration)> {
    let ok = Arc::new(AtomicU64::new(0));
    let errors = Arc::new(AtomicU64::new(0));
    let lat = Arc::new(Latency::new());
    let start = Instant::now();
    let deadline = start + duration;
    let mut tasks = Vec::new();
    for _ in 0..conns {
        let (ok, errors, lat, body) = (ok.clone(), errors.clone(), lat.clone(), body.clone());
        tasks.push(tokio::spawn(async move {
            let stream = TcpStream::connect(("127.0.0.1", port)).await?;
            stream.set_nodelay(true)?;
            let (mut sender, conn) =
                hyper::client::conn::http1::handshake(TokioIo::new(stream)).await?;
            tokio::spawn(conn);
            while Instant::now() < deadline {
                let req = Request::post("/hook")
                    .header("host", "127.0.0.1")
                    .header("content-type", "application/json")
                    .header("webhook-id", "01JGZZZZZZZZZZZZZZZZZZZZZZ")
                    .header("webhook-timestamp", "1735689600")
                    .header(
                        "webhook-signature",
                        "v1,K5oZfzN95Z9UVu1EsfQmfVNQhnkZ2pj9o9NDN/H/pI4=",
                    )
                    .body(Full::new(body.clone()))?;
                let t = Instant::now();
                match sender.send_request(req).await {
                    Ok(resp) => {
                        let good = resp.status().is_success();
                        let _ = resp.into_body().collect().await;
                        if good {
                            ok.fetch_add(1, Ordering::Relaxed);
                            lat.record(t.elapsed());
                        } else {
                            errors.fetch_add(1, Ordering::Relaxed);
                        }
                    }
                    Err(_) => {
                        errors.fetch_add(1, Ordering::Relaxed);
                        break;
                    }
                }
            }
            anyhow::Ok(())
        }));
    }
    for t in tasks {
        t.await??;
    }
    let elapsed = start.elapsed();
    let lat = Arc::try_unwrap(lat).unwrap_or_default();
    Ok((
        ok.load(Ordering::Relaxed),
        errors.load(Ordering::Relaxed),
        lat,
        elapsed,
    ))
}
