//! Herald as a child process: the embedded default driven by the CLI, and a SIGKILL in the
//! middle of dispatching 50,000 notifications.

use std::collections::HashMap;
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use herald::proto;
use herald::proto::dispatch_client::DispatchClient;

use crate::harness::{free_addr, RedisServer, Sink};
use crate::support::{webhook_request, SECRET};

const BIN: &str = env!("CARGO_BIN_EXE_herald");

/// A `herald serve` child, killed on drop.
struct HeraldProcess {
    child: Child,
    grpc: String,
}

impl HeraldProcess {
    fn spawn(envs: &[(&str, String)]) -> HeraldProcess {
        let grpc = free_addr();
        let http = free_addr();
        let mut cmd = Command::new(BIN);
        cmd.arg("serve")
            .env("HERALD_SERVER__GRPC_LISTEN", &grpc)
            .env("HERALD_SERVER__HTTP_LISTEN", &http)
            .env("RUST_LOG", "warn")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::inherit());
        for (k, v) in envs {
            cmd.env(k, v);
        }
        let child = cmd.spawn().expect("spawn herald");
        let me = HeraldProcess { child, grpc };
        me.wait_ready();
        me
    }

    fn url(&self) -> String {
        format!("http://{}", self.grpc)
    }

    fn wait_ready(&self) {
        let deadline = Instant::now() + Duration::from_secs(20);
        while std::net::TcpStream::connect(&self.grpc).is_err() {
            assert!(
                Instant::now() < deadline,
                "herald did not listen on {}",
                self.grpc
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    fn kill(&mut self) {
        // SIGKILL: no shutdown, no finishing of batches in hand.
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for HeraldProcess {
    fn drop(&mut self) {
        self.kill();
    }
}

fn cli(args: &[&str]) -> Output {
    Command::new(BIN)
        .args(args)
        .env("RUST_LOG", "warn")
        .output()
        .expect("run herald")
}

#[tokio::test]
async fn embedded_default_send_then_status_shows_delivered_then_read() {
    // The README's run command is `herald serve` with no config: MemoryStore + sandbox.
    // Only the ports are moved off the defaults, so the test never collides with anything.
    let server = HeraldProcess::spawn(&[]);
    let url = server.url();
    let sent = cli(&[
        "send",
        "--server",
        &url,
        "--channel",
        "sandbox",
        "--body",
        "hello",
    ]);
    assert!(
        sent.status.success(),
        "{}",
        String::from_utf8_lossy(&sent.stderr)
    );
    let line = String::from_utf8_lossy(&sent.stdout).to_string();
    let id = line
        .split_whitespace()
        .next()
        .expect("id printed")
        .to_string();
    assert!(line.contains("QUEUED"), "{line}");
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut seen = Vec::new();
    let out = loop {
        let st = cli(&["status", "--server", &url, &id]);
        assert!(
            st.status.success(),
            "{}",
            String::from_utf8_lossy(&st.stderr)
        );
        let text = String::from_utf8_lossy(&st.stdout).to_string();
        let status = text
            .lines()
            .find_map(|l| l.strip_prefix("status:"))
            .map(|s| s.trim().to_string())
            .unwrap_or_default();
        if seen.last() != Some(&status) {
            seen.push(status.clone());
        }
        if status == "READ" {
            break text;
        }
        assert!(Instant::now() < deadline, "statuses seen: {seen:?}");
        std::thread::sleep(Duration::from_millis(20));
    };
    // The receipts show DELIVERED, then READ.
    let receipts: Vec<&str> = out.lines().filter(|l| l.starts_with("receipt ")).collect();
    let d = receipts.iter().position(|l| l.contains("DELIVERED"));
    let r = receipts.iter().position(|l| l.contains("READ"));
    assert!(matches!((d, r), (Some(d), Some(r)) if d < r), "{out}");

    // `herald receipts` (caught up, without --follow) lists both receipts with cursors.
    let rc = cli(&["receipts", "--server", &url]);
    assert!(
        rc.status.success(),
        "{}",
        String::from_utf8_lossy(&rc.stderr)
    );
    let text = String::from_utf8_lossy(&rc.stdout).to_string();
    let mine: Vec<&str> = text.lines().filter(|l| l.contains(&id)).collect();
    assert!(mine.iter().any(|l| l.contains("DELIVERED")), "{text}");
    assert!(mine.iter().any(|l| l.contains("READ")), "{text}");

    // Operators pause and resume a channel and read the policy from the CLI.
    let ok = |args: &[&str]| {
        let o = cli(args);
        assert!(
            o.status.success(),
            "{args:?}: {}",
            String::from_utf8_lossy(&o.stderr)
        );
        String::from_utf8_lossy(&o.stdout).to_string()
    };
    ok(&[
        "channel", "--server", &url, "pause", "sandbox", "--reason", "test",
    ]);
    let st = ok(&["channel", "--server", &url, "status", "sandbox"]);
    assert!(st.lines().any(|l| l.starts_with("sandbox\tyes")), "{st}");
    ok(&["channel", "--server", &url, "resume", "sandbox"]);
    let st = ok(&["channel", "--server", &url, "status"]);
    assert!(st.lines().any(|l| l.starts_with("sandbox\tno")), "{st}");
    let p = ok(&["policy", "--server", &url, "show"]);
    assert!(p.contains("no policy applied"), "{p}");

    // Bad input from the CLI names the field.
    let bad = cli(&[
        "send",
        "--server",
        &url,
        "--channel",
        "webhook",
        "--body",
        "x",
    ]);
    assert!(!bad.status.success());
    assert!(String::from_utf8_lossy(&bad.stderr).contains("recipient"));
}

#[tokio::test]
async fn sigkill_mid_dispatch_loses_nothing() {
    const TOTAL: usize = 50_000;
    let redis = RedisServer::start();
    let sink = Sink::start().await;
    let envs = vec![
        ("HERALD_REDIS__URL", redis.url()),
        ("HERALD_REDIS__SHARDS", "4".to_string()),
        (
            "HERALD_CHANNELS__WEBHOOK__SIGNING_SECRET",
            SECRET.to_string(),
        ),
        ("HERALD_DISPATCH__CLAIM_TIMEOUT", "3s".to_string()),
        ("HERALD_DISPATCH__REQUEST_TIMEOUT", "2s".to_string()),
        ("HERALD_DISPATCH__POLL_INTERVAL", "20ms".to_string()),
    ];
    let mut first = HeraldProcess::spawn(&envs);
    let mut client = DispatchClient::connect(first.url())
        .await
        .expect("connect")
        .max_decoding_message_size(64 * 1024 * 1024);
    let url = sink.url("/crash");
    let mut acked = Vec::with_capacity(TOTAL);
    for b in 0..TOTAL / 10_000 {
        let items = (0..10_000)
            .map(|i| webhook_request(&url, &format!("n{}", b * 10_000 + i)))
            .collect();
        let resp = client
            .send_batch(proto::SendBatchRequest { items })
            .await
            .expect("batch")
            .into_inner();
        for r in resp.results {
            if let Some(proto::send_batch_result::Result::Ok(ok)) = r.result {
                acked.push(ok.notification_id);
            }
        }
    }
    assert_eq!(acked.len(), TOTAL);
    // Kill it while it is dispatching.
    assert!(sink.wait_for_count(5_000, Duration::from_secs(60)).await);
    first.kill();
    let at_kill = sink.count();
    // What the dead process held: entries claimed and not finished.
    let mut in_flight: u64 = 0;
    for key in redis.cmd(&["KEYS", "herald:*:ready:*"]).lines() {
        let pending = redis.cmd(&["XPENDING", key, "herald"]);
        in_flight += pending
            .lines()
            .next()
            .and_then(|n| n.parse::<u64>().ok())
            .unwrap_or(0);
    }
    assert!(at_kill < TOTAL, "the kill came after everything was sent");

    let _second = HeraldProcess::spawn(&envs);
    let deadline = Instant::now() + Duration::from_secs(180);
    let mut counts: HashMap<String, u64> = HashMap::new();
    loop {
        counts.clear();
        for r in sink.requests() {
            *counts
                .entry(r.header("webhook-id").unwrap_or_default().to_string())
                .or_default() += 1;
        }
        if acked.iter().all(|id| counts.contains_key(id)) {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "{} of {TOTAL} acknowledged notifications reached the sink",
            acked.iter().filter(|id| counts.contains_key(*id)).count()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    let total = sink.count() as u64;
    let duplicates = total - counts.len() as u64;
    println!(
        "crash test: {TOTAL} acknowledged, {at_kill} delivered before SIGKILL, \
         in flight at the kill: {in_flight}, duplicates: {duplicates}, lost: 0"
    );
    assert!(
        duplicates <= in_flight,
        "{duplicates} duplicates but only {in_flight} were in flight"
    );
}

#[tokio::test]
async fn the_policy_file_applies_at_start_and_on_sighup_and_a_broken_one_is_refused() {
    let redis = RedisServer::start();
    let dir = tempfile::tempdir().expect("temp dir");
    let path = dir.path().join("policy.toml");
    let v1 = "[channels.sms]\nrate = { per_second = 60, burst = 1, scope = \"sender\" }\n";
    let v2 = "[channels.sms]\nrate = { per_second = 50, burst = 1, scope = \"sender\" }\n";
    std::fs::write(&path, v1).expect("write policy");
    // The file is checked for changes only hourly here: what applies v2 is the SIGHUP.
    let herald = HeraldProcess::spawn(&[
        ("HERALD_REDIS__URL", redis.url()),
        ("HERALD_POLICY__FILE", path.display().to_string()),
        ("HERALD_POLICY__FILE_CHECK_INTERVAL", "1h".to_string()),
    ]);
    let admin = proto::admin_client::AdminClient::connect(herald.url())
        .await
        .expect("admin");
    let policy = |admin: &proto::admin_client::AdminClient<tonic::transport::Channel>| {
        let mut a = admin.clone();
        async move {
            a.get_policy(proto::GetPolicyRequest {})
                .await
                .expect("get policy")
                .into_inner()
        }
    };
    let version = |v: u64| {
        let admin = admin.clone();
        async move {
            crate::harness::eventually(Duration::from_secs(10), || async {
                let p = policy(&admin).await;
                (p.version == v).then_some(p)
            })
            .await
        }
    };
    let first = version(1).await.expect("the file is applied at start");
    assert_eq!(first.document, v1);
    let author = first
        .history
        .iter()
        .find(|h| h.version == 1)
        .map(|h| h.author.clone());
    assert_eq!(author, Some(format!("file:{}", path.display())));

    let hup = |pid: u32| {
        let ok = Command::new("kill")
            .args(["-HUP", &pid.to_string()])
            .status()
            .expect("kill -HUP")
            .success();
        assert!(ok, "kill -HUP {pid}");
    };
    std::fs::write(&path, v2).expect("write policy");
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(policy(&admin).await.version, 1, "no SIGHUP yet");
    hup(herald.child.id());
    let second = version(2).await.expect("SIGHUP applies the edited file");
    assert_eq!(second.document, v2);
    let diff = second
        .history
        .iter()
        .find(|h| h.version == 2)
        .map(|h| h.diff.clone())
        .unwrap_or_default();
    assert!(diff.contains("channels.sms.rate.per_second"), "{diff}");

    // A broken file is refused (the key named in the log); the version in force stays.
    std::fs::write(&path, "[channels.sms]\nrate = { per_second = -5 }\n").expect("write");
    hup(herald.child.id());
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let after = policy(&admin).await;
    assert_eq!(after.version, 2, "{after:?}");
    assert_eq!(after.document, v2);
    // So is an empty one (a file caught half-written), on SIGHUP as when it changes.
    std::fs::write(&path, "").expect("write");
    hup(herald.child.id());
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let after = policy(&admin).await;
    assert_eq!(after.version, 2, "{after:?}");
}

#[tokio::test]
async fn cli_makes_an_api_key_and_calls_a_server_that_requires_it() {
    let out = cli(&["key", "new", "ops", "--scope", "admin", "--scope", "read"]);
    assert!(out.status.success(), "{out:?}");
    let stdout = String::from_utf8(out.stdout).expect("utf-8");
    let (key, entry) = stdout.split_once('\n').expect("key, then the entry");
    assert!(key.starts_with("hk_") && key.len() > 40, "{key}");
    assert!(
        !entry.contains(key),
        "the entry holds only the hash: {entry}"
    );
    assert!(entry.contains("scopes = [\"admin\", \"read\"]"), "{entry}");
    // `key hash` gives the same SHA-256 as the entry.
    let mut hash = Command::new(BIN)
        .args(["key", "hash"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .expect("run herald key hash");
    {
        use std::io::Write;
        let mut stdin = hash.stdin.take().expect("stdin");
        writeln!(stdin, "{key}").expect("write the key");
    }
    let hashed = hash.wait_with_output().expect("key hash");
    let digest = String::from_utf8(hashed.stdout).expect("utf-8");
    assert!(
        entry.contains(&format!("sha256 = \"{}\"", digest.trim())),
        "{digest} vs {entry}"
    );
    // A bad scope fails before printing a key.
    let bad = cli(&["key", "new", "ops", "--scope", "root"]);
    assert!(!bad.status.success());
    assert!(bad.stdout.is_empty());
    assert!(String::from_utf8_lossy(&bad.stderr).contains("root"));

    let dir = tempfile::tempdir().expect("tempdir");
    let keys = dir.path().join("keys.toml");
    std::fs::write(&keys, entry).expect("write keys file");
    let server =
        HeraldProcess::spawn(&[("HERALD_AUTH__API_KEYS_FILE", keys.display().to_string())]);
    let url = server.url();
    let without = cli(&["channel", "status", "--server", &url]);
    assert!(!without.status.success(), "{without:?}");
    assert!(
        String::from_utf8_lossy(&without.stderr).contains("authorization"),
        "{without:?}"
    );
    let with = cli(&["channel", "status", "--server", &url, "--api-key", key]);
    assert!(with.status.success(), "{with:?}");
    assert!(
        String::from_utf8_lossy(&with.stdout).contains("sandbox"),
        "{with:?}"
    );
    let list = cli(&[
        "dead-letters",
        "list",
        "sandbox",
        "--server",
        &url,
        "--api-key",
        key,
    ]);
    assert!(list.status.success(), "{list:?}");
    assert!(String::from_utf8_lossy(&list.stdout).starts_with("notification_id\t"));
    let redrive = cli(&[
        "dead-letters",
        "redrive",
        "sandbox",
        "--server",
        &url,
        "--api-key",
        key,
    ]);
    assert!(redrive.status.success(), "{redrive:?}");
    assert_eq!(
        String::from_utf8_lossy(&redrive.stdout).trim(),
        "0 redriven on sandbox"
    );
    // The same key from the environment; a read+admin key may not send.
    let send = Command::new(BIN)
        .args([
            "send",
            "--channel",
            "sandbox",
            "--body",
            "hi",
            "--server",
            &url,
        ])
        .env("HERALD_API_KEY", key)
        .env("RUST_LOG", "warn")
        .output()
        .expect("run herald send");
    assert!(!send.status.success(), "{send:?}");
    assert!(
        String::from_utf8_lossy(&send.stderr).contains("send"),
        "{send:?}"
    );
}
