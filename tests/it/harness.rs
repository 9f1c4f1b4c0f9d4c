#![allow(dead_code)]
//! Test-support helpers for Herald's integration tests.
//!
//! Self-contained: depends only on tokio, axum, serde_json and tempfile (plus std).
//!
//! * [`RedisServer`] — a real `redis-server` child process on a free loopback port.
//! * [`Sink`] — an in-process HTTP server standing in for a customer's webhook receiver;
//!   records every request and answers with programmable replies.
//! * [`free_port`], [`free_addr`], [`eventually`] — small utilities.

use std::future::Future;
use std::io::{self, BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpListener as StdTcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use axum::body::{Body, Bytes};
use axum::extract::{DefaultBodyLimit, State};
use axum::http::{HeaderMap, HeaderName, HeaderValue, Method, StatusCode, Uri};
use axum::response::Response;
use axum::Router;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

// ---------------------------------------------------------------------------------------------
// Ports
// ---------------------------------------------------------------------------------------------

/// A loopback TCP port that was free a moment ago, from below the kernel's ephemeral range
/// (32768–60999 on Linux): a port the kernel handed out for `bind(0)` and that was released
/// may be given to the next outgoing connection of any process on the machine before the
/// caller binds it; ports below the range are never handed out that way.
///
/// Another test may still pick the same port in between: rare, as ports are drawn at random.
pub fn free_port() -> u16 {
    for _ in 0..1000 {
        let port = rand::random_range(20_000..32_768);
        if StdTcpListener::bind(("127.0.0.1", port)).is_ok() {
            return port;
        }
    }
    panic!("no free loopback port between 20000 and 32767");
}

/// `"127.0.0.1:P"` for a port from [`free_port`].
pub fn free_addr() -> String {
    format!("127.0.0.1:{}", free_port())
}

// ---------------------------------------------------------------------------------------------
// eventually
// ---------------------------------------------------------------------------------------------

/// Polls `f` every 20 ms until it returns `Some`, or until `timeout` has passed (then `None`).
///
/// `f` is always called at least once, and once more at the deadline.
pub async fn eventually<F, Fut, T>(timeout: Duration, mut f: F) -> Option<T>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        if let Some(v) = f().await {
            return Some(v);
        }
        let now = tokio::time::Instant::now();
        if now >= deadline {
            return None;
        }
        let next = (now + Duration::from_millis(20)).min(deadline);
        tokio::time::sleep_until(next).await;
    }
}

// ---------------------------------------------------------------------------------------------
// RedisServer
// ---------------------------------------------------------------------------------------------

const REDIS_MISSING: &str = "redis-server not found on PATH: install it (apt-get install \
                             redis-server) — the integration tests need a real Redis";
const REDIS_READY_TIMEOUT: Duration = Duration::from_secs(10);

/// A throwaway `redis-server` child process bound to `127.0.0.1` on a free port (never 6379),
/// with persistence off and its working directory in a temp dir.
///
/// All methods are blocking (std I/O and `std::thread::sleep`); calling them from a
/// `#[tokio::test]` is fine, they just block the calling runtime thread briefly.
/// Dropping it kills the process and removes the temp dir.
pub struct RedisServer {
    port: u16,
    child: Option<Child>,
    dir: tempfile::TempDir,
}

impl RedisServer {
    /// Starts `redis-server` on a free loopback port and waits (up to 10 s) until it answers PING.
    ///
    /// Panics if `redis-server` is not installed or does not come up.
    pub fn start() -> RedisServer {
        Self::start_with(&[])
    }

    /// [`RedisServer::start`] with extra `redis-server` arguments (`extra(port)` gives them
    /// for the port the server will have).
    fn start_with(extra: &[&str]) -> RedisServer {
        let dir = tempfile::Builder::new()
            .prefix("herald-redis-")
            .tempdir()
            .expect("create a temp dir for redis-server");
        let mut last_err = String::new();
        // The free port can be stolen between probing and redis binding it: retry on fresh ports.
        for _ in 0..5 {
            let port = loop {
                let p = free_port();
                if p != 6379 {
                    break p;
                }
            };
            let mut child = spawn_redis(port, dir.path(), extra);
            match wait_ready(&mut child, port, dir.path(), REDIS_READY_TIMEOUT) {
                Ok(()) => {
                    return RedisServer {
                        port,
                        child: Some(child),
                        dir,
                    }
                }
                Err(e) => {
                    last_err = e;
                    kill_and_reap(child);
                }
            }
        }
        panic!("redis-server did not start: {last_err}");
    }

    /// `"redis://127.0.0.1:P"`.
    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    /// The TCP port the server listens on (stable across [`RedisServer::restart`]).
    pub fn port(&self) -> u16 {
        self.port
    }

    /// `"127.0.0.1:P"`.
    pub fn addr(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    /// The server's working directory (holds `redis.log`).
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// Whether the child process is still alive.
    pub fn is_running(&mut self) -> bool {
        match self.child.as_mut() {
            Some(child) => matches!(child.try_wait(), Ok(None)),
            None => false,
        }
    }

    /// Kills the process (SIGKILL) and reaps it. Idempotent.
    pub fn stop(&mut self) {
        if let Some(child) = self.child.take() {
            kill_and_reap(child);
        }
    }

    /// Stops the server if running, then starts a fresh one on the SAME port with an empty
    /// dataset, and waits for PING. Retries for a few seconds if the port is briefly busy.
    pub fn restart(&mut self) {
        self.stop();
        // Persistence is off, but make sure nothing can be reloaded.
        let _ = std::fs::remove_file(self.dir.path().join("dump.rdb"));
        let _ = std::fs::remove_dir_all(self.dir.path().join("appendonlydir"));

        let deadline = Instant::now() + Duration::from_secs(5);
        loop {
            let mut child = spawn_redis(self.port, self.dir.path(), &[]);
            match wait_ready(&mut child, self.port, self.dir.path(), REDIS_READY_TIMEOUT) {
                Ok(()) => {
                    self.child = Some(child);
                    return;
                }
                Err(e) => {
                    kill_and_reap(child);
                    if Instant::now() >= deadline {
                        panic!("redis-server did not restart on port {}: {e}", self.port);
                    }
                }
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// Sends one command over a fresh raw RESP connection and renders the reply as a string:
    /// simple strings and bulk strings as text, integers in decimal, arrays as their rendered
    /// elements joined with `'\n'` (nested arrays flattened), errors as `"ERR:<message>"`,
    /// and nil replies as `"(nil)"`.
    ///
    /// Panics if the server cannot be reached; see [`RedisServer::try_cmd`].
    pub fn cmd(&self, args: &[&str]) -> String {
        self.try_cmd(args)
            .unwrap_or_else(|e| panic!("redis command {args:?} on port {} failed: {e}", self.port))
    }

    /// Like [`RedisServer::cmd`], but returns an I/O error instead of panicking (e.g. when the
    /// server is stopped).
    pub fn try_cmd(&self, args: &[&str]) -> io::Result<String> {
        let addr = SocketAddr::from(([127, 0, 0, 1], self.port));
        let stream = TcpStream::connect_timeout(&addr, Duration::from_secs(2))?;
        stream.set_read_timeout(Some(Duration::from_secs(10)))?;
        stream.set_write_timeout(Some(Duration::from_secs(10)))?;
        stream.set_nodelay(true)?;
        let mut req = Vec::with_capacity(64);
        req.extend_from_slice(format!("*{}\r\n", args.len()).as_bytes());
        for a in args {
            req.extend_from_slice(format!("${}\r\n", a.len()).as_bytes());
            req.extend_from_slice(a.as_bytes());
            req.extend_from_slice(b"\r\n");
        }
        (&stream).write_all(&req)?;
        let mut reader = BufReader::new(&stream);
        let mut out = Vec::new();
        read_reply(&mut reader, &mut out)?;
        Ok(out.join("\n"))
    }

    /// The last `max_bytes` of `redis.log`, for diagnostics.
    pub fn log_tail(&self, max_bytes: usize) -> String {
        log_tail(self.dir.path(), max_bytes)
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        self.stop();
    }
}

/// A Redis Cluster of three primaries (no replicas), each a [`RedisServer`] on free loopback
/// ports (its cluster bus on another free port), the 16,384 slots split evenly. Dropping it
/// stops every node.
pub struct RedisCluster {
    pub nodes: Vec<RedisServer>,
}

impl RedisCluster {
    /// Starts three cluster-enabled nodes, assigns slots, joins them, and waits (up to 20 s)
    /// until every node reports `cluster_state:ok` and knows the other two.
    pub fn start() -> RedisCluster {
        let nodes: Vec<RedisServer> = (0..3).map(|_| Self::node()).collect();
        let ranges = [("0", "5460"), ("5461", "10922"), ("10923", "16383")];
        for (node, (from, to)) in nodes.iter().zip(ranges) {
            let r = node.cmd(&["CLUSTER", "ADDSLOTSRANGE", from, to]);
            assert_eq!(r, "OK", "CLUSTER ADDSLOTSRANGE {from} {to}");
        }
        for other in &nodes[1..] {
            Self::meet(&nodes[0], other);
        }
        wait_for("the cluster to form", || {
            nodes.iter().all(|n| {
                let info = n.cmd(&["CLUSTER", "INFO"]);
                info.contains("cluster_state:ok") && info.contains("cluster_known_nodes:3")
            })
        });
        RedisCluster { nodes }
    }

    /// A cluster-enabled `redis-server`, its bus on a free port of its own.
    fn node() -> RedisServer {
        let bus = free_port().to_string();
        RedisServer::start_with(&[
            "--cluster-enabled",
            "yes",
            "--cluster-config-file",
            "nodes.conf",
            "--cluster-node-timeout",
            "5000",
            "--cluster-port",
            &bus,
        ])
    }

    /// Introduces `other` to the cluster through `member` (its port and bus port).
    fn meet(member: &RedisServer, other: &RedisServer) {
        let port = other.port().to_string();
        let bus = other
            .cmd(&["CONFIG", "GET", "cluster-port"])
            .lines()
            .nth(1)
            .unwrap_or_default()
            .to_string();
        let r = member.cmd(&["CLUSTER", "MEET", "127.0.0.1", &port, &bus]);
        assert_eq!(r, "OK", "CLUSTER MEET {port} {bus}");
    }

    /// Starts a node, joins it to the cluster as a replica of node `of`, and waits (up to
    /// 20 s) until it has the primary's data; returns its index.
    pub fn add_replica(&mut self, of: usize) -> usize {
        let node = Self::node();
        Self::meet(&self.nodes[0], &node);
        let primary = self.nodes[of].cmd(&["CLUSTER", "MYID"]).trim().to_string();
        // It can follow a primary only once it knows it.
        wait_for("the new node to meet the cluster", || {
            node.cmd(&["CLUSTER", "NODES"]).contains(&primary)
        });
        let r = node.cmd(&["CLUSTER", "REPLICATE", &primary]);
        assert_eq!(r, "OK", "CLUSTER REPLICATE");
        wait_for("the replica to sync", || {
            node.cmd(&["INFO", "replication"])
                .contains("master_link_status:up")
        });
        self.nodes.push(node);
        self.nodes.len() - 1
    }

    /// Promotes replica `i` with a manual failover (`CLUSTER FAILOVER`: the primary stops
    /// taking writes, the replica catches up, then takes over; nothing acknowledged is lost)
    /// and waits (up to 20 s) until every node sees it serve `key`'s slot.
    pub fn fail_over_to(&self, i: usize, key: &str) {
        let r = self.nodes[i].cmd(&["CLUSTER", "FAILOVER"]);
        assert_eq!(r, "OK", "CLUSTER FAILOVER");
        let slot = self.slot_of(key);
        wait_for("the failover", || {
            self.nodes[i].cmd(&["ROLE"]).starts_with("master")
                && self
                    .nodes
                    .iter()
                    .all(|n| self.holder_seen_by(n, slot) == Some(i))
        });
    }

    /// Every node's `redis://` URL.
    pub fn urls(&self) -> Vec<String> {
        self.nodes.iter().map(RedisServer::url).collect()
    }

    /// Moves `key`'s slot, and every key in it, from the node that holds it to node `to`, the
    /// way `redis-cli --cluster reshard` does: IMPORTING and MIGRATING, `MIGRATE` of the keys
    /// in bunches, then `SETSLOT … NODE` on every node. Returns the index of the node it left.
    pub fn move_slot(&self, key: &str, to: usize) -> usize {
        let from = self.holder_of(key);
        assert_ne!(from, to, "the slot is on node {to} already");
        let slot = self.slot_of(key).to_string();
        let slot = slot.as_str();
        let id = |i: usize| self.nodes[i].cmd(&["CLUSTER", "MYID"]).trim().to_string();
        let (from_id, to_id) = (id(from), id(to));
        let r = self.nodes[to].cmd(&["CLUSTER", "SETSLOT", slot, "IMPORTING", &from_id]);
        assert_eq!(r, "OK", "SETSLOT IMPORTING");
        let r = self.nodes[from].cmd(&["CLUSTER", "SETSLOT", slot, "MIGRATING", &to_id]);
        assert_eq!(r, "OK", "SETSLOT MIGRATING");
        let port = self.nodes[to].port().to_string();
        loop {
            let keys = self.nodes[from].cmd(&["CLUSTER", "GETKEYSINSLOT", slot, "100"]);
            let keys: Vec<&str> = keys.lines().filter(|k| !k.is_empty()).collect();
            if keys.is_empty() {
                break;
            }
            let mut args = vec!["MIGRATE", "127.0.0.1", &port, "", "0", "10000", "KEYS"];
            args.extend(keys);
            let r = self.nodes[from].cmd(&args);
            assert_eq!(r, "OK", "MIGRATE");
        }
        for n in [to, from]
            .into_iter()
            .chain((0..self.nodes.len()).filter(|&i| i != to && i != from))
        {
            let r = self.nodes[n].cmd(&["CLUSTER", "SETSLOT", slot, "NODE", &to_id]);
            assert_eq!(r, "OK", "SETSLOT NODE on node {n}");
        }
        from
    }

    /// `key`'s slot.
    fn slot_of(&self, key: &str) -> u16 {
        let slot = self.nodes[0].cmd(&["CLUSTER", "KEYSLOT", key]);
        slot.trim().parse().expect("slot number")
    }

    /// The index of the node that serves `slot`, as `view`'s `CLUSTER NODES` tells it.
    fn holder_seen_by(&self, view: &RedisServer, slot: u16) -> Option<usize> {
        let nodes = view.cmd(&["CLUSTER", "NODES"]);
        for line in nodes.lines() {
            let f: Vec<&str> = line.split_whitespace().collect();
            let Some(addr) = f.get(1) else { continue };
            let serves = f.iter().skip(8).any(|r| {
                let mut ends = r.split('-').map(|n| n.parse::<u16>());
                match (ends.next(), ends.next()) {
                    (Some(Ok(a)), Some(Ok(b))) => (a..=b).contains(&slot),
                    (Some(Ok(a)), None) => a == slot,
                    _ => false,
                }
            });
            if serves {
                let port = addr.split(['@', ':']).nth(1).unwrap_or_default();
                return self.nodes.iter().position(|n| n.port().to_string() == port);
            }
        }
        None
    }

    /// The node that holds `key`'s slot (by asking any node).
    pub fn node_for(&self, key: &str) -> &RedisServer {
        &self.nodes[self.holder_of(key)]
    }

    /// The index of the node that holds `key`'s slot, as node 0 sees it.
    pub fn holder_of(&self, key: &str) -> usize {
        let slot = self.slot_of(key);
        self.holder_seen_by(&self.nodes[0], slot)
            .unwrap_or_else(|| panic!("no node serves slot {slot}"))
    }
}

/// Polls `ok` every 50 ms until it holds; fails the test, naming `what`, after 20 s.
fn wait_for(what: &str, mut ok: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(20);
    while !ok() {
        assert!(Instant::now() < deadline, "waited 20 s for {what}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Spawns `redis-server`; panics with install instructions if the binary is missing.
fn spawn_redis(port: u16, dir: &Path, extra: &[&str]) -> Child {
    let log: PathBuf = dir.join("redis.log");
    let spawned = Command::new("redis-server")
        .arg("--port")
        .arg(port.to_string())
        .args(["--bind", "127.0.0.1"])
        .args(["--save", ""])
        .args(["--appendonly", "no"])
        .arg("--dir")
        .arg(dir)
        .args(["--protected-mode", "no"])
        .arg("--logfile")
        .arg(&log)
        .args(extra)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn();
    match spawned {
        Ok(child) => child,
        Err(e) if e.kind() == io::ErrorKind::NotFound => panic!("{REDIS_MISSING}"),
        Err(e) => panic!("failed to spawn redis-server: {e}"),
    }
}

fn kill_and_reap(mut child: Child) {
    let _ = child.kill();
    let _ = child.wait();
}

/// Waits until `child` answers PING on `port`, or fails if it exits or `timeout` passes.
fn wait_ready(child: &mut Child, port: u16, dir: &Path, timeout: Duration) -> Result<(), String> {
    let deadline = Instant::now() + timeout;
    let addr = SocketAddr::from(([127, 0, 0, 1], port));
    loop {
        if let Ok(Some(status)) = child.try_wait() {
            return Err(format!(
                "redis-server on port {port} exited early ({status}); log:\n{}",
                log_tail(dir, 2000)
            ));
        }
        if ping(&addr) {
            // Make sure it was *our* process that answered, not a stranger on that port.
            return match child.try_wait() {
                Ok(None) => Ok(()),
                _ => Err(format!(
                    "port {port} answered PING but our redis-server is gone; log:\n{}",
                    log_tail(dir, 2000)
                )),
            };
        }
        if Instant::now() >= deadline {
            return Err(format!(
                "redis-server on port {port} did not answer PING within {timeout:?}; log:\n{}",
                log_tail(dir, 2000)
            ));
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn ping(addr: &SocketAddr) -> bool {
    let Ok(mut stream) = TcpStream::connect_timeout(addr, Duration::from_millis(200)) else {
        return false;
    };
    if stream
        .set_read_timeout(Some(Duration::from_millis(500)))
        .is_err()
    {
        return false;
    }
    if stream.write_all(b"*1\r\n$4\r\nPING\r\n").is_err() {
        return false;
    }
    let mut buf = [0u8; 64];
    let mut got = 0;
    while got < 5 {
        match stream.read(&mut buf[got..]) {
            Ok(0) | Err(_) => return false,
            Ok(n) => got += n,
        }
    }
    buf[..got].starts_with(b"+PONG")
}

fn log_tail(dir: &Path, max_bytes: usize) -> String {
    match std::fs::read(dir.join("redis.log")) {
        Ok(bytes) => {
            let start = bytes.len().saturating_sub(max_bytes);
            String::from_utf8_lossy(&bytes[start..]).into_owned()
        }
        Err(e) => format!("(no redis.log: {e})"),
    }
}

fn read_line<R: BufRead>(r: &mut R) -> io::Result<String> {
    let mut line = Vec::new();
    r.read_until(b'\n', &mut line)?;
    if !line.ends_with(b"\r\n") {
        return Err(io::Error::new(
            io::ErrorKind::UnexpectedEof,
            "truncated RESP line",
        ));
    }
    line.truncate(line.len() - 2);
    Ok(String::from_utf8_lossy(&line).into_owned())
}

fn parse_len(s: &str) -> io::Result<i64> {
    s.parse::<i64>().map_err(|e| {
        io::Error::new(
            io::ErrorKind::InvalidData,
            format!("bad RESP length {s:?}: {e}"),
        )
    })
}

/// Reads one RESP2 reply (plus the common RESP3 scalars), pushing rendered lines into `out`.
fn read_reply<R: BufRead>(r: &mut R, out: &mut Vec<String>) -> io::Result<()> {
    let line = read_line(r)?;
    let (kind, rest) = match line.chars().next() {
        Some(c) => (c, &line[c.len_utf8()..]),
        None => {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                "empty RESP line",
            ))
        }
    };
    match kind {
        '+' | ':' | ',' | '(' => out.push(rest.to_string()),
        '#' => out.push(if rest == "t" { "1" } else { "0" }.to_string()),
        '_' => out.push("(nil)".to_string()),
        '-' => out.push(format!("ERR:{rest}")),
        '$' => {
            let len = parse_len(rest)?;
            if len < 0 {
                out.push("(nil)".to_string());
            } else {
                let len = usize::try_from(len)
                    .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e))?;
                let mut buf = vec![0u8; len + 2];
                r.read_exact(&mut buf)?;
                buf.truncate(len);
                out.push(String::from_utf8_lossy(&buf).into_owned());
            }
        }
        '*' | '~' | '>' => {
            let n = parse_len(rest)?;
            if n < 0 {
                out.push("(nil)".to_string());
            }
            for _ in 0..n.max(0) {
                read_reply(r, out)?;
            }
        }
        '%' => {
            let n = parse_len(rest)?;
            for _ in 0..n.max(0) * 2 {
                read_reply(r, out)?;
            }
        }
        other => {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                format!("unsupported RESP type {other:?} in {line:?}"),
            ))
        }
    }
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// Sink
// ---------------------------------------------------------------------------------------------

/// One request received by a [`Sink`].
#[derive(Clone, Debug)]
pub struct Recorded {
    /// HTTP method (extra; the sink accepts any method, Herald sends POST).
    pub method: String,
    /// URI path, without the query string.
    pub path: String,
    /// Query string without the leading `?` (extra; empty if none).
    pub query: String,
    /// Headers in arrival order, names lowercased; values decoded lossily as UTF-8.
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
    /// When the handler received the request (before any programmed delay).
    pub at: Instant,
}

impl Recorded {
    /// First value of header `name` (case-insensitive).
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    /// The body parsed as JSON. Panics (test helper) if it is not JSON.
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body).unwrap_or_else(|e| {
            panic!(
                "sink request body on {} is not JSON ({e}): {}",
                self.path,
                String::from_utf8_lossy(&self.body)
            )
        })
    }

    /// The body as (lossy) UTF-8 text.
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }
}

/// One programmed response of a [`Sink`].
#[derive(Clone, Debug)]
pub struct Reply {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: String,
    /// Wait this long before answering.
    pub delay: Duration,
}

impl Reply {
    /// 200 with body `"ok"`.
    pub fn ok() -> Reply {
        Reply {
            status: 200,
            headers: Vec::new(),
            body: "ok".to_string(),
            delay: Duration::ZERO,
        }
    }

    /// `code` with an empty body.
    pub fn status(code: u16) -> Reply {
        Reply {
            status: code,
            headers: Vec::new(),
            body: String::new(),
            delay: Duration::ZERO,
        }
    }

    /// Adds a response header.
    pub fn header(mut self, name: &str, value: &str) -> Reply {
        self.headers.push((name.to_string(), value.to_string()));
        self
    }

    /// Sets the response body.
    pub fn body(mut self, body: impl Into<String>) -> Reply {
        self.body = body.into();
        self
    }

    /// Delays the response by `d`.
    pub fn delay(mut self, d: Duration) -> Reply {
        self.delay = d;
        self
    }

    fn validate(&self) -> Result<(), String> {
        StatusCode::from_u16(self.status).map_err(|e| format!("status {}: {e}", self.status))?;
        for (k, v) in &self.headers {
            HeaderName::try_from(k.as_str()).map_err(|e| format!("header name {k:?}: {e}"))?;
            HeaderValue::try_from(v.as_str()).map_err(|e| format!("header value {v:?}: {e}"))?;
        }
        Ok(())
    }

    fn to_response(&self) -> Response {
        let mut builder = Response::builder().status(self.status);
        for (k, v) in &self.headers {
            builder = builder.header(k.as_str(), v.as_str());
        }
        builder
            .body(Body::from(self.body.clone()))
            .unwrap_or_else(|e| {
                let mut resp =
                    Response::new(Body::from(format!("sink: bad programmed reply: {e}")));
                *resp.status_mut() = StatusCode::INTERNAL_SERVER_ERROR;
                resp
            })
    }
}

struct Plan {
    prefix: String,
    replies: Vec<Reply>,
    next: usize,
}

#[derive(Default)]
struct SinkState {
    records: Mutex<Vec<Recorded>>,
    plans: Mutex<Vec<Plan>>,
}

/// Locks a mutex, ignoring poisoning (a panicking test thread must not cascade).
fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl SinkState {
    fn next_reply(&self, path: &str) -> Option<Reply> {
        let mut plans = lock(&self.plans);
        let plan = plans
            .iter_mut()
            .filter(|p| path.starts_with(p.prefix.as_str()))
            .max_by_key(|p| p.prefix.len())?;
        let idx = plan.next.min(plan.replies.len().saturating_sub(1));
        let reply = plan.replies.get(idx).cloned();
        if plan.next < plan.replies.len() {
            plan.next += 1;
        }
        reply
    }
}

/// An HTTP/1.1 server on `127.0.0.1:0` standing in for a customer's webhook receiver.
///
/// Every request (any method, any path) is recorded; responses follow the plans set with
/// [`Sink::respond`] (default: 200 `"ok"`). Dropping it stops the server.
pub struct Sink {
    addr: SocketAddr,
    state: Arc<SinkState>,
    stop_tx: Mutex<Option<oneshot::Sender<()>>>,
    task: JoinHandle<()>,
}

impl Sink {
    /// Binds `127.0.0.1:0` and serves in a background task on the current tokio runtime.
    pub async fn start() -> Sink {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("sink: bind 127.0.0.1:0");
        let addr = listener.local_addr().expect("sink: local_addr");
        let state = Arc::new(SinkState::default());
        let app = Router::new()
            .fallback(handle)
            .layer(DefaultBodyLimit::max(64 * 1024 * 1024))
            .with_state(state.clone());
        let (stop_tx, stop_rx) = oneshot::channel::<()>();
        let task = tokio::spawn(async move {
            // Resolves on send *or* on the sender being dropped.
            let signal = async move {
                let _ = stop_rx.await;
            };
            let _ = axum::serve(listener, app)
                .with_graceful_shutdown(signal)
                .await;
        });
        Sink {
            addr,
            state,
            stop_tx: Mutex::new(Some(stop_tx)),
            task,
        }
    }

    /// `http://127.0.0.1:P<path>` (a leading `/` is added if missing).
    pub fn url(&self, path: &str) -> String {
        if path.starts_with('/') {
            format!("http://{}{path}", self.addr)
        } else {
            format!("http://{}/{path}", self.addr)
        }
    }

    /// The bound socket address.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Programs the replies for requests whose path starts with `path_prefix` (longest
    /// matching prefix wins). Replies are used in order; the last one then repeats forever.
    /// Calling it again for the same prefix replaces (and rewinds) that plan; an empty `plan`
    /// removes it. Panics on an invalid status code or header.
    pub fn respond(&self, path_prefix: &str, plan: Vec<Reply>) {
        for r in &plan {
            if let Err(e) = r.validate() {
                panic!("sink: invalid reply for prefix {path_prefix:?}: {e}");
            }
        }
        let mut plans = lock(&self.state.plans);
        plans.retain(|p| p.prefix != path_prefix);
        if !plan.is_empty() {
            plans.push(Plan {
                prefix: path_prefix.to_string(),
                replies: plan,
                next: 0,
            });
        }
    }

    /// Removes every plan (back to 200 `"ok"` everywhere).
    pub fn clear_plans(&self) {
        lock(&self.state.plans).clear();
    }

    /// Forgets every recorded request.
    pub fn clear_requests(&self) {
        lock(&self.state.records).clear();
    }

    /// All recorded requests, in arrival order.
    pub fn requests(&self) -> Vec<Recorded> {
        lock(&self.state.records).clone()
    }

    /// Number of recorded requests.
    pub fn count(&self) -> usize {
        lock(&self.state.records).len()
    }

    /// Recorded requests whose path starts with `path_prefix`, in arrival order.
    pub fn requests_for(&self, path_prefix: &str) -> Vec<Recorded> {
        lock(&self.state.records)
            .iter()
            .filter(|r| r.path.starts_with(path_prefix))
            .cloned()
            .collect()
    }

    /// Waits (polling every 10 ms) until at least `n` requests have been recorded.
    /// Returns whether that happened within `timeout`.
    pub async fn wait_for_count(&self, n: usize, timeout: Duration) -> bool {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            if self.count() >= n {
                return true;
            }
            if tokio::time::Instant::now() >= deadline {
                return false;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    /// Stops accepting connections and closes idle keep-alive connections (in-flight requests,
    /// including delayed ones, are still answered). Idempotent.
    pub fn shutdown(&self) {
        if let Some(tx) = lock(&self.stop_tx).take() {
            let _ = tx.send(());
        }
        // Drops the listener right away; per-connection tasks still see the signal above.
        self.task.abort();
    }
}

impl Drop for Sink {
    fn drop(&mut self) {
        self.shutdown();
    }
}

async fn handle(
    State(state): State<Arc<SinkState>>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let path = uri.path().to_string();
    let reply = state.next_reply(&path);
    let rec = Recorded {
        method: method.as_str().to_string(),
        query: uri.query().unwrap_or_default().to_string(),
        headers: headers
            .iter()
            .map(|(k, v)| {
                (
                    k.as_str().to_string(),
                    String::from_utf8_lossy(v.as_bytes()).into_owned(),
                )
            })
            .collect(),
        body: body.to_vec(),
        at: Instant::now(),
        path,
    };
    lock(&state.records).push(rec);
    match reply {
        Some(reply) => {
            if !reply.delay.is_zero() {
                tokio::time::sleep(reply.delay).await;
            }
            reply.to_response()
        }
        None => Response::new(Body::from("ok")),
    }
}
