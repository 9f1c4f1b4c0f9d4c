//! Wiring only: builds the parts from config, starts the roles (api, worker) and the HTTP port,
//! and shuts everything down on one cancellation token.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use tokio::net::TcpListener;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tonic::service::interceptor::InterceptedService;
use tracing::{info, warn};

use crate::api::{AdminService, DispatchService};
use crate::channels::sandbox::Sandbox;
use crate::channels::webhook::{self, Webhook};
use crate::channels::{apns, email, fcm, messenger, sms, webpush, whatsapp, Channels, Deps};
use crate::config::Config;
use crate::dispatch::Dispatcher;
use crate::ingest::Ingest;
use crate::live::Live;
use crate::model::Channel;
use crate::proto;
use crate::store::{MemoryStore, RedisStore, Store};
use crate::webhooks::WebhookState;
use crate::{http, receipts, telemetry};

/// A started Herald: its bound addresses and a handle to stop it.
pub struct Running {
    pub grpc_addr: Option<SocketAddr>,
    pub http_addr: SocketAddr,
    pub store: Arc<dyn Store>,
    stop: CancellationToken,
    tasks: Vec<JoinHandle<()>>,
    grace: Duration,
}

impl Running {
    pub fn stop_token(&self) -> CancellationToken {
        self.stop.clone()
    }

    /// Stops accepting, lets in-flight batches finish (up to the grace period), returns.
    pub async fn shutdown(self) {
        self.stop.cancel();
        let all = futures::future::join_all(self.tasks);
        if tokio::time::timeout(self.grace, all).await.is_err() {
            warn!("shutdown grace period over; some work will be taken over by other instances");
        }
    }

    /// Waits until the stop token fires (a signal), then shuts down.
    pub async fn run_until_stopped(self) {
        self.stop.cancelled().await;
        self.shutdown().await;
    }
}

/// The route used when a request names no channels (the policy engine will own this).
fn default_route(cfg: &Config, enabled: &[Channel]) -> Vec<Channel> {
    if cfg.redis.url.is_none() {
        return vec![Channel::Sandbox];
    }
    [
        Channel::Messenger,
        Channel::Whatsapp,
        Channel::Fcm,
        Channel::Apns,
        Channel::Webpush,
        Channel::Sms,
        Channel::Email,
        Channel::Webhook,
    ]
    .into_iter()
    .filter(|c| enabled.contains(c))
    .collect()
}

pub async fn start(cfg: Config) -> anyhow::Result<Running> {
    let prometheus = telemetry::prometheus();
    // Before anything starts: a keys file that does not load stops the start.
    let auth = match &cfg.auth.api_keys_file {
        Some(path) => Some((crate::api::auth::Auth::load(path)?, path.clone())),
        None => None,
    };
    let store: Arc<dyn Store> = match &cfg.redis.url {
        Some(_) => Arc::new(
            RedisStore::connect(&cfg.redis)
                .await
                .context("connecting to redis (redis.url)")?
                .with_idempotency_ttl(cfg.ingest.idempotency_ttl.0),
        ),
        None => {
            warn!(
                "no redis.url configured: running on the embedded MemoryStore; nothing is durable"
            );
            Arc::new(MemoryStore::new(cfg.ingest.idempotency_ttl.0, 100_000))
        }
    };
    let stop = CancellationToken::new();
    let mut tasks = Vec::new();
    let auth = match auth {
        Some((auth, path)) => {
            info!(path = %path.display(), "API keys required (auth.api_keys_file)");
            tasks.push(auth.watch(path, cfg.policy.file_check_interval.0, stop.clone()));
            auth
        }
        None => {
            if cfg.server.has_role("api") {
                warn!(
                    "auth.api_keys_file is not set: every gRPC caller is tenant \"default\" \
                     with every scope, Admin included (development only)"
                );
            }
            crate::api::auth::Auth::disabled()
        }
    };
    let live = Live::new(store.clone());
    if let Err(e) = live.refresh().await {
        warn!(error = %e, "cannot read the policy and pauses at start; following the store");
    }
    tasks.push(
        live.clone()
            .follow(cfg.policy.poll_interval.0, stop.clone()),
    );
    if let Some(path) = &cfg.policy.file {
        // The file is applied at start, whenever it changes, and on SIGHUP.
        info!(path = %path.display(), "following the policy file");
        tasks.push(crate::live::watch_file(
            live.clone(),
            path.clone(),
            cfg.policy.file_check_interval.0,
            stop.clone(),
        ));
    }

    let (receipt_sink, receipts_task) = receipts::spawn_writer(store.clone(), 65_536);
    tasks.push(receipts_task);
    let mut list: Vec<Arc<dyn crate::channels::Channel>> = Vec::new();
    if cfg.channels.sandbox.enabled {
        list.push(Arc::new(Sandbox::new(
            cfg.channels.sandbox.clone(),
            receipt_sink.clone(),
        )));
    }
    if cfg.channels.webhook.enabled {
        let secret = match (
            &cfg.channels.webhook.signing_secret,
            &cfg.channels.webhook.signing_secret_file,
        ) {
            (Some(s), _) => s.clone(),
            (None, Some(p)) => std::fs::read_to_string(p)
                .with_context(|| format!("channels.webhook.signing_secret_file {}", p.display()))?
                .trim()
                .to_string(),
            (None, None) => {
                warn!("channels.webhook.signing_secret is not set: signing webhooks with a random secret receivers cannot know");
                webhook::generate_secret()
            }
        };
        let wh = Webhook::new(&secret, cfg.dispatch.request_timeout.0)
            .map_err(|e| anyhow::anyhow!("channels.webhook.signing_secret: {e}"))?;
        list.push(Arc::new(wh));
    }
    let deps = Deps {
        receipts: receipt_sink.clone(),
        public_url: cfg.server.public_url.clone(),
        request_timeout: cfg.dispatch.request_timeout.0,
    };
    let c = &cfg.channels;
    type Built = Option<Result<Arc<dyn crate::channels::Channel>, String>>;
    let platforms: Vec<(&str, Built)> = vec![
        (
            "messenger",
            c.messenger
                .as_ref()
                .filter(|x| x.enabled)
                .map(|x| messenger::build(x, &deps)),
        ),
        (
            "whatsapp",
            c.whatsapp
                .as_ref()
                .filter(|x| x.enabled)
                .map(|x| whatsapp::build(x, &deps)),
        ),
        (
            "fcm",
            c.fcm
                .as_ref()
                .filter(|x| x.enabled)
                .map(|x| fcm::build(x, &deps)),
        ),
        (
            "apns",
            c.apns
                .as_ref()
                .filter(|x| x.enabled)
                .map(|x| apns::build(x, &deps)),
        ),
        (
            "webpush",
            c.webpush
                .as_ref()
                .filter(|x| x.enabled)
                .map(|x| webpush::build(x, &deps)),
        ),
        (
            "sms",
            c.sms
                .as_ref()
                .filter(|x| x.enabled)
                .map(|x| sms::build(x, &deps)),
        ),
        (
            "email",
            c.email
                .as_ref()
                .filter(|x| x.enabled)
                .map(|x| email::build(x, &deps)),
        ),
    ];
    drop(deps);
    drop(receipt_sink);
    for (name, built) in platforms {
        if let Some(built) = built {
            list.push(built.map_err(|e| anyhow::anyhow!("channels.{name}: {e}"))?);
        }
    }
    let channels = Channels::new(list);
    let enabled = channels.kinds();

    let mut grpc_addr = None;
    if cfg.server.has_role("api") {
        let ingest = Arc::new(
            Ingest::new(
                store.clone(),
                cfg.ingest.clone(),
                enabled.clone(),
                default_route(&cfg, &enabled),
            )
            .https_webhooks_only(!cfg.channels.webhook.allow_http)
            .write_timeout(cfg.redis.command_timeout.0),
        );
        let listener = TcpListener::bind(&cfg.server.grpc_listen)
            .await
            .with_context(|| format!("server.grpc_listen {}", cfg.server.grpc_listen))?;
        grpc_addr = Some(listener.local_addr()?);
        let (health, health_service) = tonic_health::server::health_reporter();
        health
            .set_serving::<proto::dispatch_server::DispatchServer<DispatchService>>()
            .await;
        health
            .set_serving::<proto::admin_server::AdminServer<AdminService>>()
            .await;
        let reflection = tonic_reflection::server::Builder::configure()
            .register_encoded_file_descriptor_set(proto::FILE_DESCRIPTOR_SET)
            .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
            .build_v1()
            .context("building gRPC reflection")?;
        let dispatch = InterceptedService::new(
            proto::dispatch_server::DispatchServer::new(DispatchService::new(
                ingest,
                store.clone(),
            ))
            .max_decoding_message_size(64 * 1024 * 1024),
            auth.clone(),
        );
        let admin = InterceptedService::new(
            proto::admin_server::AdminServer::new(AdminService::new(
                store.clone(),
                live.clone(),
                enabled.clone(),
            )),
            auth,
        );
        let stop2 = stop.clone();
        tasks.push(tokio::spawn(async move {
            // Small gRPC answers must leave at once: without TCP_NODELAY, Nagle and the
            // peer's delayed ACK add ~40 ms to a fraction of calls (the unary p99).
            let incoming =
                tonic::transport::server::TcpIncoming::from(listener).with_nodelay(Some(true));
            let res = tonic::transport::Server::builder()
                .add_service(health_service)
                .add_service(reflection)
                .add_service(dispatch)
                .add_service(admin)
                .serve_with_incoming_shutdown(incoming, stop2.cancelled_owned())
                .await;
            if let Err(e) = res {
                warn!(error = %e, "gRPC server stopped");
            }
        }));
    }

    if cfg.server.has_role("worker") {
        let dispatcher = Arc::new(Dispatcher::new(
            store.clone(),
            channels.clone(),
            cfg.dispatch.clone(),
            live.clone(),
        ));
        tasks.extend(dispatcher.spawn(stop.clone()));
    }

    let http_listener = TcpListener::bind(&cfg.server.http_listen)
        .await
        .with_context(|| format!("server.http_listen {}", cfg.server.http_listen))?;
    let http_addr = http_listener.local_addr()?;
    let router = http::router(
        store.clone(),
        prometheus,
        WebhookState {
            store: store.clone(),
            config: Arc::new(cfg.clone()),
        },
    );
    let stop2 = stop.clone();
    tasks.push(tokio::spawn(async move {
        let res = axum::serve(http_listener, router)
            .with_graceful_shutdown(stop2.cancelled_owned())
            .await;
        if let Err(e) = res {
            warn!(error = %e, "HTTP server stopped");
        }
    }));

    tasks.push(tokio::spawn(sample_depth(store.clone(), stop.clone())));

    let summary = cfg.redacted_summary();
    info!(
        grpc = ?grpc_addr,
        http = %http_addr,
        store = %summary.get("store").cloned().unwrap_or_default(),
        channels = ?enabled,
        "herald started"
    );
    Ok(Running {
        grpc_addr,
        http_addr,
        store,
        stop,
        tasks,
        grace: cfg.server.shutdown_grace.0,
    })
}

/// Keeps the queue-depth gauges and the store-up gauge current.
async fn sample_depth(store: Arc<dyn Store>, stop: CancellationToken) {
    while !stop.is_cancelled() {
        match store.queue_depth().await {
            Ok(d) => {
                telemetry::store_up(true);
                for ((c, p), n) in d.ready {
                    telemetry::queue_depth(c, p, n);
                }
                telemetry::delayed_depth(d.delayed);
            }
            Err(_) => telemetry::store_up(false),
        }
        tokio::select! {
            _ = stop.cancelled() => {}
            _ = tokio::time::sleep(Duration::from_secs(5)) => {}
        }
    }
}
