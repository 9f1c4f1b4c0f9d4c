//! The `herald` command: `serve`, and client commands for people and scripts (`send`,
//! `status`, `receipts`).

use std::collections::HashMap;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::{bail, Context};
use clap::{Args, Parser, Subcommand};
use futures::StreamExt;

use crate::api::convert::{ms_to_ts, ts_to_ms};
use crate::config::Config;
use crate::model::{Category, Channel, Priority, Status};
use crate::proto;
use crate::proto::dispatch_client::DispatchClient;

#[derive(Parser, Debug)]
#[command(name = "herald", version, about = "Notification dispatch gateway")]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Subcommand, Debug)]
pub enum Command {
    /// Run the gateway (API and workers). Without redis.url it runs on the embedded,
    /// non-durable store and the sandbox channel.
    Serve {
        /// TOML config file; HERALD_<SECTION>__<KEY> variables override it.
        #[arg(long, short)]
        config: Option<PathBuf>,
    },
    /// Send one notification.
    Send(Box<SendArgs>),
    /// Show a notification's status, attempts and receipts.
    Status {
        id: String,
        #[command(flatten)]
        conn: Conn,
    },
    /// Print receipts as they happen.
    Receipts {
        /// Keep watching (otherwise stop once caught up).
        #[arg(long)]
        follow: bool,
        #[arg(long)]
        campaign: Option<String>,
        /// Resume after this cursor (printed with each receipt).
        #[arg(long)]
        cursor: Option<String>,
        #[command(flatten)]
        conn: Conn,
    },
    /// Pause, resume or inspect channels (on every instance).
    Channel {
        #[command(subcommand)]
        action: ChannelAction,
        #[command(flatten)]
        conn: Conn,
    },
    /// The policy in force and its history.
    Policy {
        #[command(subcommand)]
        action: PolicyAction,
        #[command(flatten)]
        conn: Conn,
    },
    /// What gave up, and sending it again.
    DeadLetters {
        #[command(subcommand)]
        action: DeadLetterAction,
        #[command(flatten)]
        conn: Conn,
    },
    /// API keys for `auth.api_keys_file`.
    Key {
        #[command(subcommand)]
        action: KeyAction,
    },
}

#[derive(Subcommand, Debug)]
pub enum DeadLetterAction {
    /// The newest dead letters of a channel, with their last error.
    List {
        channel: String,
        #[arg(long, default_value_t = 100)]
        limit: u32,
    },
    /// Queue dead letters on their channel again: the ids given, or all of the channel.
    Redrive { channel: String, ids: Vec<String> },
}

#[derive(Subcommand, Debug)]
pub enum KeyAction {
    /// Make a new random key: prints the key (give it to the caller) and the keys-file entry
    /// that holds only its SHA-256.
    New {
        /// The key's name in logs and metrics.
        name: String,
        #[arg(long, default_value = crate::api::auth::DEFAULT_TENANT)]
        tenant: String,
        /// send, read, admin (repeatable; default send and read).
        #[arg(long = "scope")]
        scopes: Vec<String>,
    },
    /// Print the SHA-256 of a key read from standard input.
    Hash,
}

#[derive(Subcommand, Debug)]
pub enum ChannelAction {
    /// Stop sending on a channel; what is queued waits.
    Pause {
        channel: String,
        #[arg(long, default_value = "")]
        reason: String,
    },
    /// Send again on a paused channel.
    Resume { channel: String },
    /// Paused or not, queue depth; every channel without a name.
    Status { channel: Option<String> },
}

#[derive(Subcommand, Debug)]
pub enum PolicyAction {
    /// Print the policy document in force, then its history.
    Show,
    /// What applying FILE would change, and its impact on what is queued now (a dry run).
    Diff { file: PathBuf },
    /// Apply FILE as the next version (refused if someone applied another meanwhile).
    Apply {
        file: PathBuf,
        #[arg(long)]
        dry_run: bool,
        /// Recorded in the history.
        #[arg(long, env = "USER", default_value = "cli")]
        author: String,
    },
}

#[derive(Args, Debug, Clone)]
pub struct Conn {
    /// Herald's gRPC address.
    #[arg(
        long,
        env = "HERALD_SERVER",
        default_value = "http://127.0.0.1:50051",
        global = true
    )]
    pub server: String,
    /// API key, sent as `authorization: Bearer <key>` (when the server has keys).
    #[arg(long, env = "HERALD_API_KEY", hide_env_values = true, global = true)]
    pub api_key: Option<String>,
}

/// Adds the API key to every call.
#[derive(Clone)]
pub struct BearerKey(Option<tonic::metadata::AsciiMetadataValue>);

impl tonic::service::Interceptor for BearerKey {
    fn call(&mut self, mut req: tonic::Request<()>) -> Result<tonic::Request<()>, tonic::Status> {
        if let Some(v) = &self.0 {
            req.metadata_mut().insert("authorization", v.clone());
        }
        Ok(req)
    }
}

type Authed = tonic::service::interceptor::InterceptedService<tonic::transport::Channel, BearerKey>;

impl Conn {
    async fn channel(&self) -> anyhow::Result<(tonic::transport::Channel, BearerKey)> {
        let key = match &self.api_key {
            Some(k) => Some(
                format!("Bearer {k}")
                    .parse()
                    .context("--api-key must be printable ASCII")?,
            ),
            None => None,
        };
        let ch = tonic::transport::Endpoint::from_shared(self.server.clone())
            .with_context(|| format!("--server {:?}", self.server))?
            .connect()
            .await
            .with_context(|| format!("connecting to {}", self.server))?;
        Ok((ch, BearerKey(key)))
    }
}

#[derive(Args, Debug)]
pub struct SendArgs {
    /// Channel in preference order (repeat for a fallback list): sandbox, webhook, …
    #[arg(long = "channel")]
    pub channels: Vec<String>,
    #[arg(long)]
    pub body: String,
    #[arg(long, default_value = "")]
    pub title: String,
    #[arg(long)]
    pub webhook_url: Option<String>,
    #[arg(long)]
    pub phone: Option<String>,
    #[arg(long)]
    pub email: Option<String>,
    #[arg(long)]
    pub contact_id: Option<String>,
    #[arg(long)]
    pub idempotency_key: Option<String>,
    #[arg(long)]
    pub campaign: Option<String>,
    /// transactional, utility, marketing, authentication
    #[arg(long)]
    pub category: Option<String>,
    /// high, normal, bulk
    #[arg(long)]
    pub priority: Option<String>,
    /// When to send: RFC 3339 (2026-01-02T09:00:00Z) or a delay (+30s, +5m).
    #[arg(long)]
    pub send_at: Option<String>,
    /// Drop it if not sent by then: RFC 3339 or a delay.
    #[arg(long)]
    pub expire_at: Option<String>,
    /// key=value, repeatable.
    #[arg(long = "label")]
    pub labels: Vec<String>,
    #[command(flatten)]
    pub conn: Conn,
}

fn parse_time(s: &str, what: &str) -> anyhow::Result<prost_types::Timestamp> {
    let ms = if let Some(rel) = s.strip_prefix('+') {
        let d = humantime::parse_duration(rel).with_context(|| format!("--{what} {s:?}"))?;
        crate::model::now_ms() + d.as_millis() as i64
    } else {
        let t = humantime::parse_rfc3339_weak(s).with_context(|| format!("--{what} {s:?}"))?;
        t.duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_millis() as i64)
            .unwrap_or(0)
    };
    ms_to_ts(ms).with_context(|| format!("--{what} must be after 1970"))
}

async fn client(conn: &Conn) -> anyhow::Result<DispatchClient<Authed>> {
    let (ch, key) = conn.channel().await?;
    Ok(DispatchClient::with_interceptor(ch, key))
}

fn status_name(n: i32) -> String {
    u8::try_from(n)
        .ok()
        .and_then(Status::from_number)
        .map(|s| s.name().to_ascii_uppercase())
        .unwrap_or_else(|| format!("UNKNOWN({n})"))
}

fn channel_name(n: i32) -> String {
    u8::try_from(n)
        .ok()
        .and_then(Channel::from_number)
        .map(|c| c.name().to_string())
        .unwrap_or_else(|| "-".into())
}

fn fmt_ts(t: &Option<prost_types::Timestamp>) -> String {
    match t {
        Some(t) => {
            let ms = ts_to_ms(t).max(0) as u64;
            humantime::format_rfc3339_millis(std::time::UNIX_EPOCH + Duration::from_millis(ms))
                .to_string()
        }
        None => "-".into(),
    }
}

pub async fn send(a: SendArgs) -> anyhow::Result<()> {
    let mut channels = Vec::new();
    for c in &a.channels {
        let ch =
            Channel::from_name(c).with_context(|| format!("--channel {c:?} is not a channel"))?;
        channels.push(i32::from(ch.number()));
    }
    let category = match &a.category {
        Some(c) => i32::from(
            Category::from_name(c)
                .with_context(|| format!("--category {c:?}"))?
                .number(),
        ),
        None => 0,
    };
    let priority = match &a.priority {
        Some(p) => i32::from(
            Priority::from_name(p)
                .with_context(|| format!("--priority {p:?}"))?
                .number(),
        ),
        None => 0,
    };
    let mut labels = HashMap::new();
    for l in &a.labels {
        let (k, v) = l
            .split_once('=')
            .with_context(|| format!("--label {l:?} must be key=value"))?;
        labels.insert(k.to_string(), v.to_string());
    }
    let req = proto::SendRequest {
        idempotency_key: a.idempotency_key.clone().unwrap_or_default(),
        campaign_id: a.campaign.clone().unwrap_or_default(),
        labels,
        recipient: Some(proto::Recipient {
            contact_id: a.contact_id.clone().unwrap_or_default(),
            webhook_url: a.webhook_url.clone().unwrap_or_default(),
            phone: a.phone.clone().unwrap_or_default(),
            email: a.email.clone().unwrap_or_default(),
            ..Default::default()
        }),
        channels,
        content: Some(proto::Content {
            title: a.title.clone(),
            body: a.body.clone(),
            ..Default::default()
        }),
        category,
        priority,
        send_at: a
            .send_at
            .as_deref()
            .map(|s| parse_time(s, "send-at"))
            .transpose()?,
        expire_at: a
            .expire_at
            .as_deref()
            .map(|s| parse_time(s, "expire-at"))
            .transpose()?,
    };
    let mut c = client(&a.conn).await?;
    let r = c.send(req).await.map_err(describe)?.into_inner();
    println!(
        "{}\t{}{}",
        r.notification_id,
        status_name(r.status),
        if r.duplicate { "\t(duplicate)" } else { "" }
    );
    Ok(())
}

/// A gRPC error as a person reads it, with the fields it names.
fn describe(s: tonic::Status) -> anyhow::Error {
    use tonic_types::StatusExt;
    let mut msg = format!("{:?}: {}", s.code(), s.message());
    if let Some(br) = s.get_details_bad_request() {
        for v in br.field_violations {
            msg.push_str(&format!("\n  {}: {}", v.field, v.description));
        }
    }
    anyhow::anyhow!(msg)
}

pub async fn status(id: String, conn: Conn) -> anyhow::Result<()> {
    let mut c = client(&conn).await?;
    let n = c
        .get_notification(proto::GetNotificationRequest {
            notification_id: id,
        })
        .await
        .map_err(describe)?
        .into_inner();
    println!("id:       {}", n.notification_id);
    println!("status:   {}", status_name(n.status));
    println!("channel:  {}", channel_name(n.channel));
    println!(
        "route:    {}",
        n.route
            .iter()
            .map(|c| channel_name(*c))
            .collect::<Vec<_>>()
            .join(" → ")
    );
    if !n.campaign_id.is_empty() {
        println!("campaign: {}", n.campaign_id);
    }
    println!("created:  {}", fmt_ts(&n.created_at));
    for a in &n.attempts {
        println!(
            "attempt {} {} {} {}{}",
            a.number,
            channel_name(a.channel),
            fmt_ts(&a.finished_at),
            a.outcome,
            if a.error_code.is_empty() {
                String::new()
            } else {
                format!(" ({}: {})", a.error_code, a.error_message)
            }
        );
    }
    for r in &n.receipts {
        println!(
            "receipt {} {} {}",
            status_name(r.status),
            channel_name(r.channel),
            fmt_ts(&r.time)
        );
    }
    Ok(())
}

pub async fn receipts(
    follow: bool,
    campaign: Option<String>,
    cursor: Option<String>,
    conn: Conn,
) -> anyhow::Result<()> {
    let mut c = client(&conn).await?;
    let req = proto::WatchReceiptsRequest {
        campaign_id: campaign.unwrap_or_default(),
        from_start: cursor.is_none(),
        cursor: cursor.unwrap_or_default(),
        ..Default::default()
    };
    let mut stream = c.watch_receipts(req).await.map_err(describe)?.into_inner();
    loop {
        let next = if follow {
            stream.next().await
        } else {
            match tokio::time::timeout(Duration::from_millis(500), stream.next()).await {
                Ok(n) => n,
                Err(_) => return Ok(()),
            }
        };
        match next {
            Some(Ok(r)) => println!(
                "{}\t{}\t{}\t{}\t{}",
                fmt_ts(&r.time),
                r.notification_id,
                channel_name(r.channel),
                status_name(r.status),
                r.cursor
            ),
            Some(Err(s)) => bail!(describe(s)),
            None => return Ok(()),
        }
    }
}

fn channel_number(name: &str) -> anyhow::Result<i32> {
    Channel::from_name(name)
        .map(|c| i32::from(c.number()))
        .with_context(|| format!("{name:?} is not a channel"))
}

async fn admin(conn: &Conn) -> anyhow::Result<proto::admin_client::AdminClient<Authed>> {
    let (ch, key) = conn.channel().await?;
    Ok(proto::admin_client::AdminClient::with_interceptor(ch, key))
}

pub async fn dead_letters(action: DeadLetterAction, conn: Conn) -> anyhow::Result<()> {
    let mut c = admin(&conn).await?;
    match action {
        DeadLetterAction::List { channel, limit } => {
            // Page by page (at most 1,000 each) until `limit` are printed or none are left.
            println!("notification_id\tat\terror_code\terror_message");
            let mut left = limit;
            let mut page_token = String::new();
            while left > 0 {
                let list = c
                    .list_dead_letters(proto::ListDeadLettersRequest {
                        channel: channel_number(&channel)?,
                        limit: left.min(1000),
                        page_token,
                    })
                    .await
                    .map_err(describe)?
                    .into_inner();
                for d in &list.dead_letters {
                    println!(
                        "{}\t{}\t{}\t{}",
                        d.notification_id,
                        fmt_ts(&d.at),
                        d.error_code,
                        d.error_message
                    );
                }
                left = left.saturating_sub(list.dead_letters.len() as u32);
                if list.next_page_token.is_empty() || list.dead_letters.is_empty() {
                    break;
                }
                page_token = list.next_page_token;
            }
        }
        DeadLetterAction::Redrive { channel, ids } => {
            let out = c
                .redrive_dead_letters(proto::RedriveDeadLettersRequest {
                    channel: channel_number(&channel)?,
                    notification_ids: ids,
                })
                .await
                .map_err(describe)?
                .into_inner();
            println!("{} redriven on {channel}", out.redriven);
        }
    }
    Ok(())
}

pub async fn channel(action: ChannelAction, conn: Conn) -> anyhow::Result<()> {
    let mut c = admin(&conn).await?;
    match action {
        ChannelAction::Pause { channel, reason } => {
            c.pause_channel(proto::PauseChannelRequest {
                channel: channel_number(&channel)?,
                account: String::new(),
                reason,
            })
            .await
            .map_err(describe)?;
            println!("{channel} paused");
        }
        ChannelAction::Resume { channel } => {
            c.resume_channel(proto::ResumeChannelRequest {
                channel: channel_number(&channel)?,
                account: String::new(),
            })
            .await
            .map_err(describe)?;
            println!("{channel} resumed");
        }
        ChannelAction::Status { channel } => {
            let n = channel
                .as_deref()
                .map(channel_number)
                .transpose()?
                .unwrap_or(0);
            let st = c
                .get_channel_status(proto::GetChannelStatusRequest { channel: n })
                .await
                .map_err(describe)?
                .into_inner();
            println!("channel\tpaused\tqueue_depth");
            for s in st.channels {
                println!(
                    "{}\t{}\t{}",
                    channel_name(s.channel),
                    if s.paused { "yes" } else { "no" },
                    s.queue_depth
                );
            }
        }
    }
    Ok(())
}

pub async fn policy(action: PolicyAction, conn: Conn) -> anyhow::Result<()> {
    let mut c = admin(&conn).await?;
    match action {
        PolicyAction::Show => {
            let p = c
                .get_policy(proto::GetPolicyRequest {})
                .await
                .map_err(describe)?
                .into_inner();
            if p.version == 0 {
                println!("# no policy applied: channel defaults are in force");
            } else {
                println!("# version {}", p.version);
                print!("{}", p.document);
                if !p.document.ends_with('\n') {
                    println!();
                }
            }
            for h in p.history.iter() {
                println!(
                    "# v{} {} by {}{}",
                    h.version,
                    fmt_ts(&h.applied_at),
                    h.author,
                    if h.diff.is_empty() {
                        String::new()
                    } else {
                        format!(": {}", h.diff.replace('\n', "; "))
                    }
                );
            }
        }
        PolicyAction::Diff { file } => apply_file(&mut c, &file, true, String::new()).await?,
        PolicyAction::Apply {
            file,
            dry_run,
            author,
        } => apply_file(&mut c, &file, dry_run, author).await?,
    }
    Ok(())
}

async fn apply_file(
    c: &mut proto::admin_client::AdminClient<Authed>,
    file: &std::path::Path,
    dry_run: bool,
    author: String,
) -> anyhow::Result<()> {
    let document =
        std::fs::read_to_string(file).with_context(|| format!("reading {}", file.display()))?;
    let current = c
        .get_policy(proto::GetPolicyRequest {})
        .await
        .map_err(describe)?
        .into_inner()
        .version;
    let r = c
        .apply_policy(proto::ApplyPolicyRequest {
            document,
            dry_run,
            expected_version: current,
            author,
        })
        .await
        .map_err(describe)?
        .into_inner();
    if r.diff.is_empty() {
        println!("# no change");
    } else {
        println!("{}", r.diff);
    }
    if let Some(i) = r.impact {
        println!(
            "# impact on what is queued now: {} rerouted, {} suppressed, {} deferred, cost {:+.6}",
            i.rerouted,
            i.suppressed,
            i.deferred,
            i.cost_delta_micros as f64 / 1e6
        );
    }
    if dry_run {
        println!(
            "# dry run: nothing applied (version {} stays in force)",
            r.version
        );
    } else {
        println!("# applied as version {}", r.version);
    }
    Ok(())
}

pub async fn serve(config: Option<PathBuf>) -> anyhow::Result<()> {
    let cfg = Config::load(config.as_deref(), std::env::vars())?;
    crate::telemetry::init_tracing(&cfg.log.level, &cfg.log.format);
    let running = crate::app::start(cfg).await?;
    let stop = running.stop_token();
    tokio::spawn(async move {
        wait_for_signal().await;
        tracing::info!("shutting down");
        stop.cancel();
    });
    running.run_until_stopped().await;
    Ok(())
}

async fn wait_for_signal() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{signal, SignalKind};
        match signal(SignalKind::terminate()) {
            Ok(mut term) => {
                tokio::select! {
                    _ = term.recv() => {}
                    _ = tokio::signal::ctrl_c() => {}
                }
            }
            Err(_) => {
                let _ = tokio::signal::ctrl_c().await;
            }
        }
    }
    #[cfg(not(unix))]
    {
        let _ = tokio::signal::ctrl_c().await;
    }
}

pub async fn run(cli: Cli) -> anyhow::Result<()> {
    match cli.command {
        Command::Serve { config } => serve(config).await,
        Command::Send(a) => send(*a).await,
        Command::Status { id, conn } => status(id, conn).await,
        Command::Receipts {
            follow,
            campaign,
            cursor,
            conn,
        } => receipts(follow, campaign, cursor, conn).await,
        Command::Channel { action, conn } => channel(action, conn).await,
        Command::Policy { action, conn } => policy(action, conn).await,
        Command::DeadLetters { action, conn } => dead_letters(action, conn).await,
        Command::Key { action } => key(action),
    }
}

fn key(action: KeyAction) -> anyhow::Result<()> {
    use base64::Engine;
    use std::io::Read;
    match action {
        KeyAction::New {
            name,
            tenant,
            scopes,
        } => {
            let key = format!(
                "hk_{}",
                base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(rand::random::<[u8; 32]>())
            );
            let scopes = if scopes.is_empty() {
                vec!["send".to_string(), "read".to_string()]
            } else {
                scopes
            };
            let entry = key_entry(&name, &tenant, &key, &scopes);
            // The same checks the server makes, so a bad name or scope fails here.
            crate::api::auth::KeyRing::parse(&entry).map_err(|e| anyhow::anyhow!("{e}"))?;
            eprintln!("# the key (shown once; give it to the caller):");
            println!("{key}");
            eprintln!("# add to auth.api_keys_file:");
            println!("{entry}");
            Ok(())
        }
        KeyAction::Hash => {
            let mut key = String::new();
            std::io::stdin()
                .read_to_string(&mut key)
                .context("reading the key from standard input")?;
            let key = key.trim();
            anyhow::ensure!(!key.is_empty(), "no key on standard input");
            println!("{}", crate::model::hex(&crate::api::auth::key_hash(key)));
            Ok(())
        }
    }
}

/// A keys-file entry for `key` that holds only its hash.
fn key_entry(name: &str, tenant: &str, key: &str, scopes: &[String]) -> String {
    let quoted = |s: &str| toml::Value::String(s.to_string()).to_string();
    format!(
        "[[keys]]\nname = {}\ntenant = {}\nsha256 = \"{}\"\nscopes = [{}]\n",
        quoted(name),
        quoted(tenant),
        crate::model::hex(&crate::api::auth::key_hash(key)),
        scopes
            .iter()
            .map(|s| quoted(s))
            .collect::<Vec<_>>()
            .join(", ")
    )
}
