//! Configuration: built-in defaults, then the TOML file, then `HERALD_<SECTION>__<KEY>`
//! environment variables; validated with messages that name the key.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Deserializer};

use crate::model::Channel;

pub mod apns;
pub mod email;
pub mod fcm;
pub mod messenger;
pub mod secrets;
pub mod sms;
pub mod webpush;
pub mod whatsapp;

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read config file {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("config: {0}")]
    Parse(String),
    #[error("config: {key}: {message}")]
    Invalid { key: String, message: String },
}

fn invalid(key: &str, message: impl Into<String>) -> ConfigError {
    ConfigError::Invalid {
        key: key.to_string(),
        message: message.into(),
    }
}

/// A duration written as `"500ms"`, `"30s"`, `"10m"`, `"24h"`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HumanDuration(pub Duration);

impl<'de> Deserialize<'de> for HumanDuration {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        humantime::parse_duration(&s)
            .map(HumanDuration)
            .map_err(|e| serde::de::Error::custom(format!("invalid duration {s:?}: {e}")))
    }
}

#[derive(Debug, Clone, Deserialize, Default)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    pub server: ServerConfig,
    pub redis: RedisConfig,
    pub policy: PolicyConfig,
    pub auth: AuthConfig,
    pub ingest: IngestConfig,
    pub dispatch: DispatchConfig,
    pub channels: ChannelsConfig,
    pub log: LogConfig,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ServerConfig {
    pub grpc_listen: String,
    pub http_listen: String,
    pub public_url: String,
    pub roles: Vec<String>,
    /// How long shutdown waits for in-flight batches.
    pub shutdown_grace: HumanDuration,
}

impl Default for ServerConfig {
    fn default() -> Self {
        Self {
            grpc_listen: "127.0.0.1:50051".into(),
            http_listen: "127.0.0.1:8080".into(),
            public_url: "http://127.0.0.1:8080".into(),
            roles: vec!["api".into(), "worker".into()],
            shutdown_grace: HumanDuration(Duration::from_secs(10)),
        }
    }
}

impl ServerConfig {
    pub fn has_role(&self, role: &str) -> bool {
        self.roles.iter().any(|r| r == role)
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RedisConfig {
    /// Absent: the embedded, non-durable MemoryStore.
    pub url: Option<String>,
    pub cluster: bool,
    /// Extra seed nodes for cluster mode.
    pub cluster_nodes: Vec<String>,
    pub shards: u16,
    pub wait_replicas: u32,
    pub wait_timeout: HumanDuration,
    /// How long one Redis command may take before the caller gets UNAVAILABLE.
    pub command_timeout: HumanDuration,
    /// Receipts kept per shard for `WatchReceipts` resumption (approximate cap).
    pub receipts_max_len: u64,
    /// How long a finished notification's record is kept for `GetNotification`.
    pub retention: HumanDuration,
}

impl Default for RedisConfig {
    fn default() -> Self {
        Self {
            url: None,
            cluster: false,
            cluster_nodes: Vec::new(),
            shards: 16,
            wait_replicas: 0,
            wait_timeout: HumanDuration(Duration::from_millis(500)),
            command_timeout: HumanDuration(Duration::from_secs(2)),
            receipts_max_len: 1_000_000,
            retention: HumanDuration(Duration::from_secs(7 * 24 * 3600)),
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct PolicyConfig {
    /// A policy document applied at start, whenever it changes and on SIGHUP.
    pub file: Option<PathBuf>,
    /// How often `file` is checked for a change (SIGHUP re-reads it at once).
    pub file_check_interval: HumanDuration,
    /// How often every instance looks for a new policy version and for pauses.
    pub poll_interval: HumanDuration,
}

impl Default for PolicyConfig {
    fn default() -> Self {
        Self {
            file: None,
            file_check_interval: HumanDuration(Duration::from_secs(2)),
            poll_interval: HumanDuration(Duration::from_millis(500)),
        }
    }
}

#[derive(Debug, Clone, Deserialize, Default)]
#[serde(deny_unknown_fields, default)]
pub struct AuthConfig {
    pub api_keys_file: Option<PathBuf>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct IngestConfig {
    pub max_batch: usize,
    /// Largest `content.body` accepted, in bytes.
    pub max_body_bytes: usize,
    /// Largest whole encoded notification accepted, in bytes.
    pub max_notification_bytes: usize,
    pub idempotency_ttl: HumanDuration,
}

impl Default for IngestConfig {
    fn default() -> Self {
        Self {
            max_batch: 10_000,
            max_body_bytes: 4096,
            max_notification_bytes: 64 * 1024,
            idempotency_ttl: HumanDuration(Duration::from_secs(24 * 3600)),
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct DispatchConfig {
    /// Entries one worker claims per round trip.
    pub batch_size: usize,
    /// Workers per channel and shard taking every lane (each with a batch in flight); one
    /// more per channel and shard takes the HIGH lane only.
    pub workers: usize,
    /// Sends one worker has in flight at once.
    pub concurrency: usize,
    /// Idle time after which another worker takes over a claimed entry. Must exceed the
    /// longest a worker can hold a batch (platform timeout included).
    pub claim_timeout: HumanDuration,
    /// How long a worker sleeps when its queues are empty (a local send wakes it at once).
    pub poll_interval: HumanDuration,
    /// How often due scheduled sends and retries are promoted.
    pub promote_interval: HumanDuration,
    pub max_attempts: u32,
    pub max_age: HumanDuration,
    pub backoff_base: HumanDuration,
    pub backoff_cap: HumanDuration,
    /// Timeout of one platform request.
    pub request_timeout: HumanDuration,
    /// How long a channel stops sending after the platform refused our credentials or
    /// configuration (class A), so the queue waits instead of burning its attempts.
    pub auth_pause: HumanDuration,
    /// Consecutive transient or auth failures on a channel that open its circuit.
    pub circuit_failures: u32,
    /// How long an open circuit sends nothing before one probe is let through.
    pub circuit_open: HumanDuration,
}

impl Default for DispatchConfig {
    fn default() -> Self {
        Self {
            batch_size: 64,
            workers: 2,
            concurrency: 64,
            claim_timeout: HumanDuration(Duration::from_secs(60)),
            poll_interval: HumanDuration(Duration::from_millis(100)),
            promote_interval: HumanDuration(Duration::from_millis(100)),
            max_attempts: 8,
            max_age: HumanDuration(Duration::from_secs(24 * 3600)),
            backoff_base: HumanDuration(Duration::from_secs(1)),
            backoff_cap: HumanDuration(Duration::from_secs(600)),
            request_timeout: HumanDuration(Duration::from_secs(10)),
            auth_pause: HumanDuration(Duration::from_secs(60)),
            circuit_failures: 50,
            circuit_open: HumanDuration(Duration::from_secs(10)),
        }
    }
}

#[derive(Debug, Clone, Deserialize, Default)]
#[serde(deny_unknown_fields, default)]
pub struct ChannelsConfig {
    pub sandbox: SandboxConfig,
    pub webhook: WebhookConfig,
    /// A platform channel runs when its section is present (and not `enabled = false`).
    pub messenger: Option<messenger::MessengerConfig>,
    pub whatsapp: Option<whatsapp::WhatsappConfig>,
    pub fcm: Option<fcm::FcmConfig>,
    pub apns: Option<apns::ApnsConfig>,
    pub webpush: Option<webpush::WebpushConfig>,
    pub sms: Option<sms::SmsConfig>,
    pub email: Option<email::EmailConfig>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SandboxConfig {
    pub enabled: bool,
    /// Simulated platform latency per send.
    pub latency: HumanDuration,
    /// Share of sends answered with a transient error (0..1).
    pub failure_rate: f64,
    /// Share of sends answered as a dead address (0..1).
    pub dead_rate: f64,
    pub deliver_after: HumanDuration,
    pub read_after: HumanDuration,
    /// Share of delivered sandbox notifications that are also read (0..1).
    pub read_rate: f64,
}

impl Default for SandboxConfig {
    fn default() -> Self {
        Self {
            enabled: true,
            latency: HumanDuration(Duration::from_millis(0)),
            failure_rate: 0.0,
            dead_rate: 0.0,
            deliver_after: HumanDuration(Duration::from_millis(50)),
            read_after: HumanDuration(Duration::from_millis(200)),
            read_rate: 1.0,
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct WebhookConfig {
    pub enabled: bool,
    /// Standard Webhooks secret, `whsec_<base64>`.
    pub signing_secret: Option<String>,
    pub signing_secret_file: Option<PathBuf>,
    /// Allow `http://` webhook URLs (TLS is expected in production).
    pub allow_http: bool,
}

impl Default for WebhookConfig {
    fn default() -> Self {
        Self {
            enabled: true,
            signing_secret: None,
            signing_secret_file: None,
            allow_http: true,
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LogConfig {
    /// `text` or `json`.
    pub format: String,
    /// An `EnvFilter` directive; `RUST_LOG` wins when set.
    pub level: String,
}

impl Default for LogConfig {
    fn default() -> Self {
        Self {
            format: "text".into(),
            level: "info".into(),
        }
    }
}

impl Config {
    /// Defaults, then `path` (if any), then `HERALD_*` variables from `env`; then validated.
    pub fn load(
        path: Option<&Path>,
        env: impl IntoIterator<Item = (String, String)>,
    ) -> Result<Self, ConfigError> {
        let mut table = match path {
            Some(p) => {
                let text = std::fs::read_to_string(p).map_err(|source| ConfigError::Read {
                    path: p.to_path_buf(),
                    source,
                })?;
                text.parse::<toml::Table>()
                    .map_err(|e| ConfigError::Parse(format!("{}: {e}", p.display())))?
            }
            None => toml::Table::new(),
        };
        apply_env(&mut table, env)?;
        let cfg: Config = toml::Value::Table(table)
            .try_into()
            .map_err(|e: toml::de::Error| ConfigError::Parse(e.to_string()))?;
        cfg.validate()?;
        Ok(cfg)
    }

    pub fn from_toml(text: &str) -> Result<Self, ConfigError> {
        let cfg: Config = toml::from_str(text).map_err(|e| ConfigError::Parse(e.to_string()))?;
        cfg.validate()?;
        Ok(cfg)
    }

    pub fn validate(&self) -> Result<(), ConfigError> {
        let s = &self.server;
        for (key, addr) in [
            ("server.grpc_listen", &s.grpc_listen),
            ("server.http_listen", &s.http_listen),
        ] {
            addr.parse::<std::net::SocketAddr>()
                .map_err(|e| invalid(key, format!("{addr:?} is not host:port ({e})")))?;
        }
        if s.roles.is_empty() {
            return Err(invalid(
                "server.roles",
                "must name at least one of api, worker",
            ));
        }
        for r in &s.roles {
            if r != "api" && r != "worker" {
                return Err(invalid(
                    "server.roles",
                    format!("unknown role {r:?} (api, worker)"),
                ));
            }
        }
        let r = &self.redis;
        if let Some(url) = &r.url {
            if !(url.starts_with("redis://")
                || url.starts_with("rediss://")
                || url.starts_with("redis+unix://")
                || url.starts_with("unix://"))
            {
                return Err(invalid(
                    "redis.url",
                    format!("{url:?} is not a redis:// URL"),
                ));
            }
        }
        if r.shards == 0 || r.shards > 1024 {
            return Err(invalid("redis.shards", "must be between 1 and 1024"));
        }
        if r.command_timeout.0.is_zero() {
            return Err(invalid("redis.command_timeout", "must be > 0"));
        }
        let i = &self.ingest;
        if i.max_batch == 0 || i.max_batch > 10_000 {
            return Err(invalid("ingest.max_batch", "must be between 1 and 10000"));
        }
        if i.max_body_bytes == 0 {
            return Err(invalid("ingest.max_body_bytes", "must be > 0"));
        }
        let d = &self.dispatch;
        if d.batch_size == 0 || d.batch_size > 10_000 {
            return Err(invalid(
                "dispatch.batch_size",
                "must be between 1 and 10000",
            ));
        }
        if d.concurrency == 0 {
            return Err(invalid("dispatch.concurrency", "must be > 0"));
        }
        if d.workers == 0 || d.workers > 64 {
            return Err(invalid("dispatch.workers", "must be between 1 and 64"));
        }
        if d.max_attempts == 0 {
            return Err(invalid("dispatch.max_attempts", "must be > 0"));
        }
        if d.claim_timeout.0 <= d.request_timeout.0 {
            return Err(invalid(
                "dispatch.claim_timeout",
                "must be longer than dispatch.request_timeout, or slow sends are taken over and sent twice",
            ));
        }
        if d.backoff_base.0.is_zero() || d.backoff_cap.0 < d.backoff_base.0 {
            return Err(invalid(
                "dispatch.backoff_cap",
                "must be >= dispatch.backoff_base > 0",
            ));
        }
        if d.poll_interval.0.is_zero() || d.promote_interval.0.is_zero() {
            return Err(invalid("dispatch.poll_interval", "must be > 0"));
        }
        let sb = &self.channels.sandbox;
        for (key, v) in [
            ("channels.sandbox.failure_rate", sb.failure_rate),
            ("channels.sandbox.dead_rate", sb.dead_rate),
            ("channels.sandbox.read_rate", sb.read_rate),
        ] {
            if !(0.0..=1.0).contains(&v) {
                return Err(invalid(key, "must be between 0 and 1"));
            }
        }
        if let Some(secret) = &self.channels.webhook.signing_secret {
            decode_whsec(secret).map_err(|e| invalid("channels.webhook.signing_secret", e))?;
        }
        let c = &self.channels;
        if let Some(x) = c.messenger.as_ref().filter(|x| x.enabled) {
            x.validate()?;
        }
        if let Some(x) = c.whatsapp.as_ref().filter(|x| x.enabled) {
            x.validate()?;
        }
        if let Some(x) = c.fcm.as_ref().filter(|x| x.enabled) {
            x.validate()?;
        }
        if let Some(x) = c.apns.as_ref().filter(|x| x.enabled) {
            x.validate()?;
        }
        if let Some(x) = c.webpush.as_ref().filter(|x| x.enabled) {
            x.validate()?;
        }
        if let Some(x) = c.sms.as_ref().filter(|x| x.enabled) {
            x.validate()?;
        }
        if let Some(x) = c.email.as_ref().filter(|x| x.enabled) {
            x.validate()?;
        }
        if self.log.format != "text" && self.log.format != "json" {
            return Err(invalid("log.format", "must be text or json"));
        }
        Ok(())
    }

    /// Channels that have a worker: enabled and configured.
    pub fn enabled_channels(&self) -> Vec<Channel> {
        let mut v = Vec::new();
        if self.channels.sandbox.enabled {
            v.push(Channel::Sandbox);
        }
        if self.channels.webhook.enabled {
            v.push(Channel::Webhook);
        }
        let c = &self.channels;
        for (ch, on) in [
            (
                Channel::Messenger,
                c.messenger.as_ref().is_some_and(|x| x.enabled),
            ),
            (
                Channel::Whatsapp,
                c.whatsapp.as_ref().is_some_and(|x| x.enabled),
            ),
            (Channel::Apns, c.apns.as_ref().is_some_and(|x| x.enabled)),
            (Channel::Fcm, c.fcm.as_ref().is_some_and(|x| x.enabled)),
            (
                Channel::Webpush,
                c.webpush.as_ref().is_some_and(|x| x.enabled),
            ),
            (Channel::Sms, c.sms.as_ref().is_some_and(|x| x.enabled)),
            (Channel::Email, c.email.as_ref().is_some_and(|x| x.enabled)),
        ] {
            if on {
                v.push(ch);
            }
        }
        v
    }

    /// A summary of the effective configuration without secrets, for the start-up log.
    pub fn redacted_summary(&self) -> BTreeMap<&'static str, String> {
        let mut m = BTreeMap::new();
        m.insert("grpc_listen", self.server.grpc_listen.clone());
        m.insert("http_listen", self.server.http_listen.clone());
        m.insert("roles", self.server.roles.join(","));
        m.insert(
            "store",
            match &self.redis.url {
                Some(u) => format!("redis ({})", redact_url(u)),
                None => "memory (not durable)".into(),
            },
        );
        m.insert("shards", self.redis.shards.to_string());
        m
    }
}

/// Decodes a Standard Webhooks `whsec_<base64>` secret into the HMAC key.
pub fn decode_whsec(s: &str) -> Result<Vec<u8>, String> {
    use base64::Engine;
    let b = s
        .strip_prefix("whsec_")
        .ok_or_else(|| "must start with whsec_ (Standard Webhooks secret)".to_string())?;
    let key = base64::engine::general_purpose::STANDARD
        .decode(b)
        .map_err(|e| format!("the part after whsec_ is not base64: {e}"))?;
    if key.len() < 24 || key.len() > 64 {
        return Err(format!(
            "the key must be 24 to 64 bytes (it is {})",
            key.len()
        ));
    }
    Ok(key)
}

/// `redis://user:secret@host:6379/0` → `redis://host:6379/0`.
pub fn redact_url(url: &str) -> String {
    match (url.find("://"), url.rfind('@')) {
        (Some(scheme_end), Some(at)) if at > scheme_end => {
            format!("{}{}", &url[..scheme_end + 3], &url[at + 1..])
        }
        _ => url.to_string(),
    }
}

/// Overlays `HERALD_<SECTION>__<KEY>[__<KEY>…]=value` onto the file's table. Values parse as
/// TOML (numbers, booleans, arrays) and fall back to plain strings.
fn apply_env(
    table: &mut toml::Table,
    env: impl IntoIterator<Item = (String, String)>,
) -> Result<(), ConfigError> {
    for (name, value) in env {
        let Some(rest) = name.strip_prefix("HERALD_") else {
            continue;
        };
        let path: Vec<String> = rest.split("__").map(|p| p.to_ascii_lowercase()).collect();
        if path.len() < 2 || path.iter().any(|p| p.is_empty()) {
            continue;
        }
        let parsed = format!("v = {value}")
            .parse::<toml::Table>()
            .ok()
            .and_then(|mut t| t.remove("v"))
            .unwrap_or(toml::Value::String(value.clone()));
        let mut cur = &mut *table;
        for seg in &path[..path.len() - 1] {
            let entry = cur
                .entry(seg.clone())
                .or_insert_with(|| toml::Value::Table(toml::Table::new()));
            cur = match entry {
                toml::Value::Table(t) => t,
                _ => {
                    return Err(invalid(
                        &path.join("."),
                        format!("{name} addresses a key inside a value that is not a table"),
                    ))
                }
            };
        }
        cur.insert(path[path.len() - 1].clone(), parsed);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_are_valid() {
        let c = Config::load(None, Vec::new()).expect("defaults load");
        assert!(c.redis.url.is_none());
        assert_eq!(c.redis.shards, 16);
    }

    #[test]
    fn env_overrides_file() {
        let dir = tempfile::tempdir().expect("tempdir");
        let p = dir.path().join("h.toml");
        std::fs::write(&p, "[redis]\nurl = \"redis://a:1\"\nshards = 4\n").expect("write");
        let c = Config::load(
            Some(&p),
            vec![
                ("HERALD_REDIS__URL".into(), "redis://b:2".into()),
                ("HERALD_DISPATCH__BATCH_SIZE".into(), "7".into()),
                ("HERALD_SERVER__ROLES".into(), "[\"api\"]".into()),
                ("PATH".into(), "/bin".into()),
            ],
        )
        .expect("loads");
        assert_eq!(c.redis.url.as_deref(), Some("redis://b:2"));
        assert_eq!(c.redis.shards, 4);
        assert_eq!(c.dispatch.batch_size, 7);
        assert_eq!(c.server.roles, vec!["api".to_string()]);
    }

    #[test]
    fn errors_name_the_key() {
        let e = Config::from_toml("[redis]\nshards = 0\n").expect_err("invalid");
        assert!(e.to_string().contains("redis.shards"), "{e}");
        let e = Config::from_toml("[redis]\nurl = \"http://x\"\n").expect_err("invalid");
        assert!(e.to_string().contains("redis.url"), "{e}");
        let e = Config::from_toml("[server]\ngrpc_listen = \"nope\"\n").expect_err("invalid");
        assert!(e.to_string().contains("server.grpc_listen"), "{e}");
        let e = Config::from_toml("[redis]\nbogus = 1\n").expect_err("unknown key");
        assert!(e.to_string().contains("bogus"), "{e}");
        let e = Config::from_toml("[dispatch]\nclaim_timeout = \"1s\"\n").expect_err("invalid");
        assert!(e.to_string().contains("dispatch.claim_timeout"), "{e}");
        let e = Config::from_toml("[channels.webhook]\nsigning_secret = \"nope\"\n")
            .expect_err("invalid");
        assert!(
            e.to_string().contains("channels.webhook.signing_secret"),
            "{e}"
        );
    }

    #[test]
    fn the_example_config_loads() {
        let text = include_str!("../../config.example.toml");
        let c = Config::from_toml(text).expect("config.example.toml is valid");
        assert_eq!(c.dispatch.batch_size, 64);
        assert_eq!(c.redis.retention.0, Duration::from_secs(7 * 24 * 3600));
    }

    #[test]
    fn the_deploy_config_parses() {
        let text = include_str!("../../deploy/herald.toml");
        let c = Config::from_toml(text).expect("deploy/herald.toml is valid");
        assert_eq!(c.redis.url.as_deref(), Some("redis://redis:6379"));
    }

    #[test]
    fn urls_are_redacted() {
        assert_eq!(redact_url("redis://u:pw@h:1/0"), "redis://h:1/0");
        assert_eq!(redact_url("redis://h:1"), "redis://h:1");
    }
}
