//! Herald in-process for tests: config tuned for quick tests, a gRPC client, helpers.
#![allow(dead_code)]

use std::time::Duration;

use herald::app::{self, Running};
use herald::config::{Config, HumanDuration};
use herald::proto;
use herald::proto::dispatch_client::DispatchClient;
use tonic::transport::Channel as GrpcChannel;

pub const SECRET: &str = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";

pub struct Herald {
    pub running: Option<Running>,
    pub client: DispatchClient<GrpcChannel>,
    pub grpc_url: String,
    pub http_url: String,
}

/// A config for tests: ephemeral ports, quick polling and backoff.
pub fn test_config(redis_url: Option<String>) -> Config {
    let mut c = Config::default();
    c.server.grpc_listen = "127.0.0.1:0".into();
    c.server.http_listen = "127.0.0.1:0".into();
    c.redis.url = redis_url;
    c.redis.shards = 4;
    c.redis.command_timeout = HumanDuration(Duration::from_millis(1500));
    c.channels.webhook.signing_secret = Some(SECRET.into());
    c.channels.sandbox.deliver_after = HumanDuration(Duration::from_millis(20));
    c.channels.sandbox.read_after = HumanDuration(Duration::from_millis(20));
    c.dispatch.poll_interval = HumanDuration(Duration::from_millis(20));
    c.dispatch.promote_interval = HumanDuration(Duration::from_millis(50));
    c.dispatch.backoff_base = HumanDuration(Duration::from_millis(100));
    c.dispatch.backoff_cap = HumanDuration(Duration::from_secs(2));
    c.dispatch.request_timeout = HumanDuration(Duration::from_secs(3));
    c.dispatch.claim_timeout = HumanDuration(Duration::from_secs(5));
    c.server.shutdown_grace = HumanDuration(Duration::from_secs(3));
    c
}

impl Herald {
    pub async fn start(cfg: Config) -> Herald {
        cfg.validate().expect("test config is valid");
        let running = app::start(cfg).await.expect("herald starts");
        let grpc = running.grpc_addr.expect("api role");
        let grpc_url = format!("http://{grpc}");
        let http_url = format!("http://{}", running.http_addr);
        let client = DispatchClient::connect(grpc_url.clone())
            .await
            .expect("connect to herald");
        Herald {
            running: Some(running),
            client,
            grpc_url,
            http_url,
        }
    }

    pub fn client(&self) -> DispatchClient<GrpcChannel> {
        self.client.clone()
    }

    pub async fn get(&self, id: &str) -> proto::Notification {
        self.client()
            .get_notification(proto::GetNotificationRequest {
                notification_id: id.to_string(),
            })
            .await
            .expect("get notification")
            .into_inner()
    }

    /// Waits until the notification reaches `status`; returns it.
    pub async fn wait_status(
        &self,
        id: &str,
        status: i32,
        timeout: Duration,
    ) -> proto::Notification {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            let n = self.get(id).await;
            if n.status == status {
                return n;
            }
            if tokio::time::Instant::now() > deadline {
                panic!("{id} stayed {} (wanted {status}): {n:?}", n.status);
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    pub async fn stop(&mut self) {
        if let Some(r) = self.running.take() {
            r.shutdown().await;
        }
    }
}

pub fn webhook_request(url: &str, body: &str) -> proto::SendRequest {
    proto::SendRequest {
        recipient: Some(proto::Recipient {
            webhook_url: url.to_string(),
            ..Default::default()
        }),
        channels: vec![proto::Channel::Webhook as i32],
        content: Some(proto::Content {
            title: "Order shipped".into(),
            body: body.to_string(),
            ..Default::default()
        }),
        ..Default::default()
    }
}

pub fn ts_in(ms: i64) -> prost_types::Timestamp {
    let at = herald::model::now_ms() + ms;
    prost_types::Timestamp {
        seconds: at.div_euclid(1000),
        nanos: (at.rem_euclid(1000) * 1_000_000) as i32,
    }
}

/// The field names of a status's `google.rpc.BadRequest` details.
pub fn violated_fields(s: &tonic::Status) -> Vec<String> {
    use tonic_types::StatusExt;
    s.get_details_bad_request()
        .map(|b| b.field_violations.into_iter().map(|v| v.field).collect())
        .unwrap_or_default()
}

pub const DELIVERED: i32 = proto::Status::Delivered as i32;
pub const READ: i32 = proto::Status::Read as i32;
pub const FAILED: i32 = proto::Status::Failed as i32;
pub const EXPIRED: i32 = proto::Status::Expired as i32;
pub const CANCELED: i32 = proto::Status::Canceled as i32;
pub const SCHEDULED: i32 = proto::Status::Scheduled as i32;

/// Redis, the mock platforms and Herald wired together: the mock calls Herald's webhooks
/// back, Herald's `public_url` is its real HTTP address.
pub struct Stack {
    pub redis: crate::harness::RedisServer,
    pub mock: herald_mock::MockPlatform,
    pub herald: Herald,
}

/// Starts a stack; `configure` adds the channel sections (pointing at `mock.base_url()`).
pub async fn stack(
    mock_config: herald_mock::MockConfig,
    configure: impl FnOnce(&mut Config, &herald_mock::MockPlatform),
) -> Stack {
    let redis = crate::harness::RedisServer::start();
    let http = crate::harness::free_addr();
    let mut mc = mock_config;
    mc.herald_url = Some(format!("http://{http}"));
    let mock = herald_mock::MockPlatform::start(mc)
        .await
        .expect("mock platform starts");
    let mut cfg = test_config(Some(redis.url()));
    cfg.server.http_listen = http.clone();
    cfg.server.public_url = format!("http://{http}");
    configure(&mut cfg, &mock);
    let herald = Herald::start(cfg).await;
    Stack {
        redis,
        mock,
        herald,
    }
}

/// `load-tests/herald-mock.toml`'s channel sections, pointed at `mock` (whose ports are free
/// ones, not the file's standard 9090 / 2525).
pub fn mock_channels(mock: &herald_mock::MockPlatform) -> herald::config::ChannelsConfig {
    let text = std::fs::read_to_string("load-tests/herald-mock.toml")
        .expect("load-tests/herald-mock.toml")
        .replace("http://127.0.0.1:9090", &mock.base_url())
        .replace("smtp://127.0.0.1:2525", &mock.smtp_url());
    Config::from_toml(&text)
        .expect("load-tests/herald-mock.toml is valid")
        .channels
}
