//! `RedisStore`: the production store (Redis 7 or Redis Cluster). Per-shard ready streams with
//! consumer groups, a delayed sorted set, records, receipts; every multi-key step is one Lua
//! script over keys sharing the shard's hash tag.

use std::collections::{BTreeMap, HashMap};
use std::time::Duration;

use async_trait::async_trait;
use redis::aio::{ConnectionLike, ConnectionManager, ConnectionManagerConfig};
use redis::{
    Cmd, FromRedisValue, IntoConnectionInfo, Pipeline, RedisError, RedisFuture, Script, Value,
};

use super::{
    CampaignStats, CancelOutcome, CancelTarget, Claimed, Completion, DeadLetter, DeadLetterPage,
    Disposition, Enqueued, EntryRef, NewNotification, NotificationView, QueueDepth, QueueSignal,
    ReceiptPage, Redriven, Store, StoreError,
};
use crate::config::RedisConfig;
use crate::model::{
    shard_of, AttemptRecord, Channel, ContactChange, ContactKey, ContactState, Content, ErrorClass,
    Millis, Notification, Priority, ProviderReceipt, Receipt, Status,
};

const PRELUDE: &str = include_str!("lua/prelude.lua");

/// The queue's Lua: one Redis function library, `herald_<hash>`, made of the prelude (helpers,
/// loaded once) and one function per body, `herald_<body>_<hash>`. Each call runs `begin`, its
/// body, then `done`: the campaign counters it moved written once per campaign and field, the
/// ready-stream entries it acknowledged (one XACK and one trim per stream), the packed records
/// it unpacked (one HDEL per bucket).
///
/// A function library rather than EVALSHA scripts: a script runs its prelude on every call
/// (defining some fifty helpers), which was a quarter of the Redis time of a one-item enqueue
/// (48 → 37 µs per call in `redis-benchmark`). The hash in the names lets two Herald versions
/// share a Redis during a rolling upgrade, each with its own library.
struct Library {
    /// 12 hex digits of the SHA-1 of the prelude and bodies.
    hash: String,
    code: String,
}

impl Library {
    const BODIES: [(&'static str, &'static str); 8] = [
        ("enqueue", include_str!("lua/enqueue.lua")),
        ("claim", include_str!("lua/claim.lua")),
        ("finish", include_str!("lua/finish.lua")),
        ("promote", include_str!("lua/promote.lua")),
        ("receipt", include_str!("lua/receipt.lua")),
        ("cancel", include_str!("lua/cancel.lua")),
        ("depth", include_str!("lua/depth.lua")),
        ("redrive", include_str!("lua/redrive.lua")),
    ];

    fn new() -> Self {
        use sha1::{Digest, Sha1};
        let mut h = Sha1::new();
        h.update(PRELUDE);
        for (name, body) in Self::BODIES {
            h.update(name);
            h.update(body);
        }
        let hash: String = h.finalize()[..6]
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect();
        let mut code = format!("#!lua name=herald_{hash}\n{PRELUDE}\n");
        for (body_name, body) in Self::BODIES {
            code.push_str(&format!(
                "local function {body_name}_body()\n{body}\nend\n\
                 redis.register_function('{}', function(keys, args) begin(keys, args) return done({body_name}_body()) end)\n",
                Self::function_name(&hash, body_name)
            ));
        }
        Self { hash, code }
    }

    fn function_name(hash: &str, body: &str) -> String {
        format!("herald_{body}_{hash}")
    }

    fn function(&self, body: &str) -> Code {
        Code::Function(Self::function_name(&self.hash, body))
    }
}

/// What a call runs: a function of the library, or a script of its own (EVALSHA).
enum Code {
    Function(String),
    Script(Script),
}

/// One call: what it runs, its one key (the shard prefix for the library's functions), its
/// arguments.
type ScriptCall<'a> = (&'a Code, Vec<u8>, Vec<Vec<u8>>);

/// Sets a contact's last inbound time only forward. KEYS[1] = contact hash.
const INBOUND_MAX: &str = "local c = tonumber(redis.call('HGET', KEYS[1], 'li')) or 0 \
if tonumber(ARGV[1]) > c then redis.call('HSET', KEYS[1], 'li', ARGV[1]) end \
redis.call('PEXPIRE', KEYS[1], ARGV[2]) return 1";

/// Links a provider message id to its notification and hands back the receipts that arrived
/// before the link (the platform was faster than our record of the send). KEYS[1] = link;
/// ARGV[3] = the early receipts' key (same hash tag, so the same slot).
const LINK: &str = "redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2]) \
local early = redis.call('LRANGE', ARGV[3], 0, -1) \
if #early > 0 then redis.call('DEL', ARGV[3]) end return early";

/// How long early receipts wait for their send to be finished.
const EARLY_RECEIPT_MS: i64 = 3600 * 1000;

/// `herald:pm:{<channel>:<provider id>}` (the link) and `herald:pr:{…}` (early receipts).
fn provider_keys(ch: Channel, pid: &str) -> (String, String) {
    (
        format!("herald:pm:{{{}:{pid}}}", ch.name()),
        format!("herald:pr:{{{}:{pid}}}", ch.name()),
    )
}

/// An early receipt kept as `status \x1f at \x1f class \x1f code`.
fn encode_early(r: &ProviderReceipt) -> String {
    format!(
        "{}\u{1f}{}\u{1f}{}\u{1f}{}",
        r.status.number(),
        r.at,
        r.error_class.map(|c| c.number()).unwrap_or(0),
        r.error_code
    )
}

fn decode_early(ch: Channel, pid: &str, id: &str, s: &str) -> Option<ProviderReceipt> {
    let f: Vec<&str> = s.split('\u{1f}').collect();
    if f.len() < 4 {
        return None;
    }
    Some(ProviderReceipt {
        channel: ch,
        notification_id: id.to_string(),
        provider_id: pid.to_string(),
        status: Status::from_number(f[0].parse().ok()?)?,
        error_class: f[2].parse().ok().and_then(ErrorClass::from_number),
        error_code: f[3].to_string(),
        at: f[1].parse().unwrap_or(0),
    })
}

/// Applies a policy version. KEYS[1] = current, ARGV: expected version ('' = any), document,
/// author, diff, now, history key (same hash tag), history length. Returns {applied 1|0,
/// version}.
const APPLY_POLICY: &str = "local cur = tonumber(redis.call('HGET', KEYS[1], 'v')) or 0 \
if ARGV[1] ~= '' and tonumber(ARGV[1]) ~= cur then return {0, cur} end \
local v = cur + 1 \
redis.call('HSET', KEYS[1], 'v', v, 'doc', ARGV[2], 'author', ARGV[3], 'diff', ARGV[4], 'at', ARGV[5]) \
redis.call('LPUSH', ARGV[6], cjson.encode({version = v, document = ARGV[2], author = ARGV[3], diff = ARGV[4], applied_at = tonumber(ARGV[5])})) \
redis.call('LTRIM', ARGV[6], 0, tonumber(ARGV[7]) - 1) \
return {1, v}";

const POLICY_CURRENT: &str = "herald:{policy}:current";
const POLICY_HISTORY_KEY: &str = "herald:{policy}:history";
const PAUSED_KEY: &str = "herald:{policy}:paused";
const INSTANCES_KEY: &str = "herald:{policy}:instances";

/// Contact state lives a little over a year after its last change.
const CONTACT_KEEP_MS: i64 = 400 * 24 * 3600 * 1000;

/// `herald:<kind>:{<channel>:<address digest>}`: one hash slot per address.
fn contact_key(kind: &str, k: &ContactKey) -> String {
    use sha2::{Digest, Sha256};
    let d = Sha256::digest(k.address.as_bytes());
    let hex = crate::model::hex(&d[..12]);
    format!("herald:{kind}:{{{}:{hex}}}", k.channel.name())
}

struct Scripts {
    library: Library,
    apply_policy: Code,
    inbound: Script,
    link: Code,
    enqueue: Code,
    claim: Code,
    finish: Code,
    promote: Code,
    receipt: Code,
    cancel: Code,
    depth: Code,
    redrive: Code,
}

impl Scripts {
    fn new() -> Self {
        let library = Library::new();
        Self {
            apply_policy: Code::Script(Script::new(APPLY_POLICY)),
            inbound: Script::new(INBOUND_MAX),
            link: Code::Script(Script::new(LINK)),
            enqueue: library.function("enqueue"),
            claim: library.function("claim"),
            finish: library.function("finish"),
            promote: library.function("promote"),
            receipt: library.function("receipt"),
            cancel: library.function("cancel"),
            depth: library.function("depth"),
            redrive: library.function("redrive"),
            library,
        }
    }
}

/// One connection type for a single Redis and for Redis Cluster.
#[derive(Clone)]
enum Conn {
    Single(ConnectionManager),
    Cluster(redis::cluster_async::ClusterConnection),
}

impl ConnectionLike for Conn {
    fn req_packed_command<'a>(&'a mut self, cmd: &'a Cmd) -> RedisFuture<'a, Value> {
        match self {
            Conn::Single(c) => c.req_packed_command(cmd),
            Conn::Cluster(c) => c.req_packed_command(cmd),
        }
    }

    fn req_packed_commands<'a>(
        &'a mut self,
        pipeline: &'a Pipeline,
        offset: usize,
        count: usize,
    ) -> RedisFuture<'a, Vec<Value>> {
        match self {
            Conn::Single(c) => c.req_packed_commands(pipeline, offset, count),
            Conn::Cluster(c) => c.req_packed_commands(pipeline, offset, count),
        }
    }

    fn get_db(&self) -> i64 {
        match self {
            Conn::Single(c) => c.get_db(),
            Conn::Cluster(c) => c.get_db(),
        }
    }
}

/// The hash tag of `cmd`'s key (`herald:{3}:n:…` → `3`): the key after the key count for
/// FCALL and EVALSHA, else the first argument. None for a command without a tagged key there.
fn hash_tag(cmd: &Cmd) -> Option<&[u8]> {
    let args: Vec<&[u8]> = cmd
        .args_iter()
        .filter_map(|a| match a {
            redis::Arg::Simple(b) => Some(b),
            _ => None,
        })
        .collect();
    let name = args.first()?;
    let key = if [
        &b"FCALL"[..],
        b"FCALL_RO",
        b"EVALSHA",
        b"EVALSHA_RO",
        b"EVAL",
        b"EVAL_RO",
    ]
    .iter()
    .any(|n| name.eq_ignore_ascii_case(n))
    {
        if args.get(2).is_none_or(|n| *n == b"0") {
            return None;
        }
        args.get(3)?
    } else {
        args.get(1)?
    };
    let open = key.iter().position(|b| *b == b'{')?;
    let len = key[open + 1..].iter().position(|b| *b == b'}')?;
    (len > 0).then(|| &key[open + 1..open + 1 + len])
}

/// A pipeline on Redis Cluster, which runs one only when all its keys are in one slot:
/// split by hash tag (a shard, a contact, the policy), each part a pipeline to its node, all
/// at once; a command without a tagged key goes alone so that the client routes it (WAIT,
/// SCRIPT LOAD and FUNCTION LOAD go to every primary). The replies come back in order.
async fn cluster_query(
    conn: &Conn,
    pipe: &Pipeline,
    tolerant: bool,
) -> Result<Vec<Value>, StoreError> {
    let cmds: Vec<&Cmd> = pipe.cmd_iter().collect();
    let mut groups: Vec<(Option<&[u8]>, Vec<usize>)> = Vec::new();
    for (i, cmd) in cmds.iter().enumerate() {
        match hash_tag(cmd) {
            Some(tag) => match groups.iter_mut().find(|(t, _)| *t == Some(tag)) {
                Some((_, idx)) => idx.push(i),
                None => groups.push((Some(tag), vec![i])),
            },
            None => groups.push((None, vec![i])),
        }
    }
    if let [(Some(_), _)] = groups.as_slice() {
        let mut c = conn.clone();
        return pipe
            .query_async::<Vec<Value>>(&mut c)
            .await
            .map_err(map_err);
    }
    let parts = groups.iter().map(|(tag, idx)| {
        let mut c = conn.clone();
        let cmds = &cmds;
        async move {
            if tag.is_none() {
                let v = cmds[idx[0]]
                    .query_async::<Value>(&mut c)
                    .await
                    .map_err(map_err)?;
                return Ok::<_, StoreError>(vec![v]);
            }
            let mut p = redis::pipe();
            p.ignore_errors();
            for i in idx {
                p.add_command(cmds[*i].clone());
            }
            p.query_async::<Vec<Value>>(&mut c).await.map_err(map_err)
        }
    });
    let replies = futures::future::try_join_all(parts).await?;
    let mut out = vec![Value::Nil; cmds.len()];
    for ((_, idx), values) in groups.iter().zip(replies) {
        for (i, v) in idx.iter().zip(values) {
            out[*i] = v;
        }
    }
    if !tolerant {
        out = out
            .into_iter()
            .map(|v| v.extract_error().map_err(map_err))
            .collect::<Result<_, _>>()?;
    }
    Ok(out)
}

pub struct RedisStore {
    conn: Conn,
    /// Notifications' worth of work sent on the shared connection and not yet answered (see
    /// `query_w`): it bounds how long a HIGH command waits behind it in Redis.
    queued: WorkGate,
    /// The HIGH lane's own connection (`super::high_lane`): Redis answers a connection's
    /// commands in order, so on the shared one a HIGH claim would queue behind every BULK
    /// script already sent.
    conn_high: Conn,
    scripts: Scripts,
    shards: u16,
    signal: QueueSignal,
    receipts_max_len: u64,
    retention_ms: i64,
    idem_ttl_ms: i64,
    wait_replicas: u32,
    wait_timeout_ms: u64,
    timeout: Duration,
    /// Campaign content by hash: immutable, so cached for good (bounded).
    contents: std::sync::Mutex<HashMap<String, std::sync::Arc<Content>>>,
}

/// TCP options of every connection to Redis: `TCP_NODELAY`, as Redis sets on its side. redis-rs
/// leaves Nagle's algorithm on by default, and a pipelined command written while earlier bytes
/// are unacknowledged could then wait for a delayed ACK. (Measured in `herald-load run e2e`:
/// no change within the noise on loopback; it is what a pipelining client should ask for.)
fn tcp_settings() -> redis::io::tcp::TcpSettings {
    redis::io::tcp::TcpSettings::default().set_nodelay(true)
}

/// Notifications' worth of dispatch work (claims, finishes) the shared connection has in
/// flight at most: enough to keep Redis busy, little enough that a HIGH command on its own
/// connection waits a few milliseconds behind it in Redis, not the hundred a whole BULK
/// drain's scripts took (HIGH p99 accept → platform 269 → 129 ms, `herald-load run priority`).
const QUEUED_WORK: usize = 128;

/// The weight of a dispatch batch's reads of contact state, budgets and recent sends: they go
/// around the gate. They are plain `HMGET`/`GET`/`ZCOUNT`s of one batch's keys (a fraction of
/// a millisecond of Redis time, nothing a HIGH command notices), yet queued in the gate's
/// line they waited behind whole claim and finish scripts: 45-70 ms per batch of 64 in
/// `herald-load run e2e`, a third of a dispatch worker's cycle.
const READ_AROUND_GATE: usize = 0;

/// Bounds the work sent on the shared connection and not yet answered; the HIGH lane and
/// work of weight 0 (`READ_AROUND_GATE`) pass.
struct WorkGate {
    room: tokio::sync::Semaphore,
    /// The most one pipeline takes (half: two big ones are always in flight together).
    max_weight: usize,
}

impl WorkGate {
    fn new(capacity: usize) -> Self {
        Self {
            room: tokio::sync::Semaphore::new(capacity),
            max_weight: (capacity / 2).max(1),
        }
    }

    /// Waits until `weight` more fits; the permit is the turn, held until the answer is in.
    async fn enter(
        &self,
        weight: usize,
    ) -> Result<Option<tokio::sync::SemaphorePermit<'_>>, StoreError> {
        if weight == 0 || super::in_high_lane() {
            return Ok(None);
        }
        self.take(weight.min(self.max_weight)).await.map(Some)
    }

    /// Waits for `n` units of room, whatever the caller.
    async fn take(&self, n: usize) -> Result<tokio::sync::SemaphorePermit<'_>, StoreError> {
        self.room
            .acquire_many(n as u32)
            .await
            .map_err(|_| StoreError::Internal("the Redis work gate is closed".into()))
    }
}

/// Content cached in process at most (then the cache starts over).
const CONTENT_CACHE: usize = 4096;
/// How long shared content outlives the time its notifications are due: the retention of
/// finished records plus a week for retries, waits and fallbacks.
const CONTENT_MARGIN_MS: i64 = 7 * 24 * 3600 * 1000;

/// Turns a notification into what its record's `d` field holds: it without what its key and
/// other fields say already (id, campaign, labels, a `created_at` its id carries) and, for a
/// campaign's notifications, without the content, which is kept once per shard under
/// `cn:<hash>` (returned here) and then not even as an empty field (`SharedRecord`). Small
/// records stay in Redis's compact hash encoding, and most of a campaign's fit in a bucket.
/// Consumes what it leaves out: the caller reads id, campaign and labels first.
fn stored_record(mut n: Notification) -> (Vec<u8>, Option<Content>) {
    if id_time(&n.id) == Some(n.created_at) {
        n.created_at = 0;
    }
    if n.campaign_id.is_empty() {
        n.id.clear();
        // Labels are written beside it (`lb`, for the receipts): not twice.
        n.labels.clear();
        return (n.encode(), None);
    }
    let record = SharedRecord {
        tenant: n.tenant,
        idempotency_key: n.idempotency_key,
        recipient: n.recipient,
        route: n.route,
        category: n.category,
        priority: n.priority,
        send_at: n.send_at,
        expire_at: n.expire_at,
        created_at: n.created_at,
    };
    (crate::model::msgpack(&record), Some(n.content))
}

/// The record of a notification whose content is shared: the fields of `Notification` that are
/// not written elsewhere. Encoded as an array of 9 (first byte 0x99), where a whole notification
/// is an array of 13 (0x9d), so `decode_record` tells them apart.
#[derive(serde::Serialize, serde::Deserialize)]
struct SharedRecord {
    tenant: String,
    idempotency_key: String,
    recipient: crate::model::Recipient,
    route: Vec<Channel>,
    category: crate::model::Category,
    priority: Priority,
    send_at: Millis,
    expire_at: Millis,
    created_at: Millis,
}

/// A notification from a record blob of either shape (see `stored_record`); id, campaign,
/// labels and shared content are the caller's to fill in.
fn decode_record(blob: &[u8]) -> Result<Notification, StoreError> {
    if blob.first() != Some(&0x99) {
        return Notification::decode(blob).map_err(StoreError::Internal);
    }
    let r: SharedRecord = rmp_serde::from_slice(blob)
        .map_err(|e| StoreError::Internal(format!("corrupt notification record: {e}")))?;
    Ok(Notification {
        tenant: r.tenant,
        idempotency_key: r.idempotency_key,
        recipient: r.recipient,
        route: r.route,
        category: r.category,
        priority: r.priority,
        send_at: r.send_at,
        expire_at: r.expire_at,
        created_at: r.created_at,
        ..Default::default()
    })
}

/// One item of an enqueue call, as the script takes it (see enqueue.lua).
struct EnqueueRow {
    id: String,
    idem: String,
    fingerprint: String,
    record: Vec<u8>,
    channel: Channel,
    priority: u8,
    due: Millis,
    expire_at: Millis,
    created_at: Millis,
    campaign: String,
    labels: Vec<u8>,
    content_hash: String,
    content: Vec<u8>,
}

/// The most records one bucket holds: with its header (at most 6 fields) it stays within
/// Redis's default `hash-max-listpack-entries` (128), so the bucket keeps the compact encoding.
const PACK_RUN: usize = 120;
/// The longest record blob a bucket takes: with the status digit in front, within Redis's
/// default `hash-max-listpack-value` (64 bytes).
const PACKED_MAX: usize = 63;

/// Gives runs of like campaign notifications (shared content, and the same first channel,
/// priority, campaign, labels, expiry and creation time) ids of one bucket each, so the
/// script packs them into it (see prelude.lua, "Packed records"), and returns where those
/// runs are, in order: each is passed to the script as one item. A run of one keeps its id.
fn pack_runs(shard: u16, rows: &mut [EnqueueRow]) -> Vec<std::ops::Range<usize>> {
    fn packable(r: &EnqueueRow) -> bool {
        !r.content_hash.is_empty()
            && r.record.len() <= PACKED_MAX
            && r.campaign.len() <= 64
            && r.labels.len() <= 64
    }
    fn alike(a: &EnqueueRow, b: &EnqueueRow) -> bool {
        a.channel == b.channel
            && a.priority == b.priority
            && a.created_at == b.created_at
            && a.expire_at == b.expire_at
            && a.content_hash == b.content_hash
            && a.campaign == b.campaign
            && a.labels == b.labels
    }
    let mut runs = Vec::new();
    let mut from = 0;
    while from < rows.len() {
        let mut to = from + 1;
        if packable(&rows[from]) {
            while to < rows.len() && packable(&rows[to]) && alike(&rows[from], &rows[to]) {
                to += 1;
            }
        }
        if to - from > 1 {
            // Buckets of near-equal size, none of one.
            let buckets = (to - from).div_ceil(PACK_RUN);
            let size = (to - from).div_ceil(buckets);
            let mut at = from;
            for chunk in rows[from..to].chunks_mut(size) {
                let ids = packed_ids(shard, chunk[0].created_at, chunk.len());
                for (row, id) in chunk.iter_mut().zip(ids) {
                    row.id = id;
                }
                runs.push(at..at + chunk.len());
                at += chunk.len();
            }
        }
        from = to;
    }
    runs
}

/// `n` ids made at `at` (ms) for one bucket: their ULIDs share the time and the first 40
/// random bits (whose top bit is `model::PACKED_MARK`); the last 40 bits count up from a
/// random start, so they differ.
fn packed_ids(shard: u16, at: Millis, n: usize) -> Vec<String> {
    const LOW: u128 = (1 << 40) - 1;
    let at = u64::try_from(at).unwrap_or(0);
    let bucket = (rand::random::<u128>() & (LOW << 40)) | crate::model::PACKED_MARK;
    let start = rand::random::<u128>() & LOW;
    (0..n as u128)
        .map(|k| {
            crate::model::id_text(
                ulid::Ulid::from_parts(at, bucket | ((start + k) & LOW)),
                shard,
            )
        })
        .collect()
}

/// Whether `id` was made for a bucket (see `packed_ids`), and then its bucket key and field.
fn bucket_of(shard: u16, id: &str) -> Option<(String, String)> {
    let mark = *id.as_bytes().get(10)?;
    if id.len() < 26 || mark < b'G' {
        return None;
    }
    Some((
        format!("{}b:{}", prefix(shard), id.get(..18)?),
        id.get(18..26)?.to_string(),
    ))
}

/// The header fields of a bucket (prelude.lua's HEAD) and the record fields they stand for.
const BUCKET_HEAD: [(&str, &str); 6] = [
    ("c", "c"),
    ("p", "p"),
    ("m", "cmp"),
    ("n", "cn"),
    ("e", "exp"),
    ("l", "lb"),
];

/// A packed record as the fields of a record of its own (`s`, `d` and the header's), from the
/// reply of `HMGET <bucket> c p m n e l <field>`; None if the field is not there.
fn unpack_record(reply: Value) -> Result<Option<HashMap<String, Value>>, StoreError> {
    let mut vals: Vec<Option<Vec<u8>>> = parse(reply)?;
    let Some(Some(v)) = vals.pop() else {
        return Ok(None);
    };
    let Some((st, blob)) = v.split_first() else {
        return Ok(None);
    };
    let mut rec = HashMap::new();
    rec.insert("s".into(), Value::BulkString(vec![*st]));
    rec.insert("d".into(), Value::BulkString(blob.to_vec()));
    for ((_, field), v) in BUCKET_HEAD.iter().zip(vals) {
        if let Some(v) = v.filter(|v| !v.is_empty()) {
            rec.insert((*field).to_string(), Value::BulkString(v));
        }
    }
    Ok(Some(rec))
}

/// The name shared content is kept under: its encoding's SHA-256, first 12 bytes in hex.
fn content_hash(blob: &[u8]) -> String {
    use sha2::Digest;
    let digest = sha2::Sha256::digest(blob);
    crate::model::hex(&digest[..12])
}

/// The fields after `d` holding the rest of a record blob of 65 to 256 bytes, in 64-byte parts
/// (see enqueue.lua): every value of the hash then stays within Redis's compact encoding.
const RECORD_PARTS: [&str; 3] = ["d1", "d2", "d3"];

/// A record blob from its first part and the parts after it (absent ones end it).
fn join_parts(mut blob: Vec<u8>, parts: impl IntoIterator<Item = Option<Vec<u8>>>) -> Vec<u8> {
    for part in parts.into_iter().map_while(|p| p) {
        blob.extend(part);
    }
    blob
}

/// A record's history entries (attempts and receipts), oldest first: fields `h1`..`h<hn>`,
/// each in 64-byte parts `h<k>`, `h<k>.1`, `h<k>.2`, … (prelude.lua's `save`). Records written
/// before history moved into them keep it in an `ev:` list, read before these.
fn history(rec: &HashMap<String, Value>) -> Vec<Vec<u8>> {
    let n: usize = rec
        .get("hn")
        .map(text)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    (1..=n)
        .filter_map(|k| {
            let first = rec.get(&format!("h{k}")).map(bytes)?;
            let parts = (1..).map(|p| rec.get(&format!("h{k}.{p}")).map(bytes));
            Some(join_parts(first, parts))
        })
        .collect()
}

/// The time a notification id (`<ULID>-<shard>`) was made at, in ms.
fn id_time(id: &str) -> Option<Millis> {
    let u = id.get(..26)?;
    let t = ulid::Ulid::from_string(u).ok()?.timestamp_ms();
    Millis::try_from(t).ok()
}

/// A notification from its record: `blob` (see `stored_record`), its id, campaign and shared
/// content. Content that is gone (kept far past any retry) makes it expired, never sent.
fn restore(
    id: &str,
    blob: &[u8],
    campaign: &str,
    labels: &[u8],
    content_hash: &str,
    contents: &HashMap<String, std::sync::Arc<Content>>,
) -> Result<Notification, StoreError> {
    let mut n = decode_record(blob)?;
    n.id = id.to_string();
    if n.labels.is_empty() && !labels.is_empty() {
        n.labels = rmp_serde::from_slice(labels)
            .map_err(|e| StoreError::Internal(format!("corrupt labels of {id}: {e}")))?;
    }
    if n.created_at == 0 {
        n.created_at = id_time(id).unwrap_or(0);
    }
    if n.campaign_id.is_empty() {
        n.campaign_id = campaign.to_string();
    }
    if !content_hash.is_empty() {
        match contents.get(content_hash) {
            Some(c) => n.content = Content::clone(c),
            None => {
                tracing::warn!(
                    id,
                    content = content_hash,
                    "shared content is gone; the notification expires"
                );
                n.expire_at = 1;
            }
        }
    }
    Ok(n)
}

fn map_err(e: RedisError) -> StoreError {
    use redis::{ErrorKind, ServerErrorKind};
    match e.kind() {
        ErrorKind::Server(ServerErrorKind::ResponseError) | ErrorKind::Extension
            if !e.is_io_error() =>
        {
            StoreError::Internal(e.to_string())
        }
        ErrorKind::Parse | ErrorKind::UnexpectedReturnType => StoreError::Internal(e.to_string()),
        _ => StoreError::Unavailable(e.to_string()),
    }
}

fn parse<T: FromRedisValue>(v: Value) -> Result<T, StoreError> {
    T::from_redis_value(v).map_err(|e| StoreError::Internal(format!("unexpected reply: {e}")))
}

/// Whether a call failed because Redis does not have its code (after a restart without
/// persistence, a `SCRIPT FLUSH` or `FUNCTION FLUSH`, or on a new node).
fn is_missing(code: &Code, v: &Value) -> bool {
    let Value::ServerError(e) = v else {
        return false;
    };
    match code {
        Code::Script(_) => e.code() == "NOSCRIPT",
        Code::Function(_) => e
            .details()
            .is_some_and(|d| d.contains("Function not found")),
    }
}

fn prefix(shard: u16) -> String {
    format!("herald:{{{shard}}}:")
}

fn text(v: &Value) -> String {
    match v {
        Value::BulkString(b) => String::from_utf8_lossy(b).into_owned(),
        Value::SimpleString(s) => s.clone(),
        Value::Int(i) => i.to_string(),
        Value::Okay => "OK".into(),
        _ => String::new(),
    }
}

fn bytes(v: &Value) -> Vec<u8> {
    match v {
        Value::BulkString(b) => b.clone(),
        Value::SimpleString(s) => s.as_bytes().to_vec(),
        _ => Vec::new(),
    }
}

/// `[k1, v1, k2, v2, …]` or a RESP3 map, as a map.
fn pairs(v: Value) -> HashMap<String, Value> {
    match v {
        Value::Array(items) => {
            let mut m = HashMap::new();
            let mut it = items.into_iter();
            while let (Some(k), Some(v)) = (it.next(), it.next()) {
                m.insert(text(&k), v);
            }
            m
        }
        Value::Map(items) => items.into_iter().map(|(k, v)| (text(&k), v)).collect(),
        _ => HashMap::new(),
    }
}

fn status_of(v: Option<&Value>) -> Option<Status> {
    v.and_then(|v| text(v).parse::<u8>().ok())
        .and_then(Status::from_number)
}

/// Stream entry id `ms-seq` as a sortable pair.
fn entry_id(s: &str) -> (u64, u64) {
    let (a, b) = s.split_once('-').unwrap_or((s, "0"));
    (a.parse().unwrap_or(0), b.parse().unwrap_or(0))
}

impl RedisStore {
    /// Packed records (see `bucket_of`) of `ids`, in order: None for an id not made for a
    /// bucket or no longer in it. One round trip, none when no id is packed.
    async fn packed(
        &self,
        ids: &[(u16, &str)],
    ) -> Result<Vec<Option<HashMap<String, Value>>>, StoreError> {
        let buckets: Vec<Option<(String, String)>> =
            ids.iter().map(|(s, id)| bucket_of(*s, id)).collect();
        let mut p = redis::pipe();
        for (bucket, field) in buckets.iter().flatten() {
            p.cmd("HMGET")
                .arg(bucket)
                .arg(&BUCKET_HEAD.map(|(h, _)| h)[..])
                .arg(field);
        }
        let mut replies = if buckets.iter().any(Option::is_some) {
            self.query(&p).await?.into_iter()
        } else {
            Vec::new().into_iter()
        };
        let mut out = Vec::with_capacity(ids.len());
        for b in &buckets {
            out.push(match b {
                Some(_) => unpack_record(replies.next().unwrap_or(Value::Nil))?,
                None => None,
            });
        }
        Ok(out)
    }

    pub async fn connect(cfg: &RedisConfig) -> Result<Self, StoreError> {
        let url = cfg
            .url
            .clone()
            .ok_or_else(|| StoreError::Internal("redis.url is not set".into()))?;
        let timeout = cfg.command_timeout.0;
        let (conn, conn_high) = if cfg.cluster {
            let mut nodes = vec![url];
            nodes.extend(cfg.cluster_nodes.iter().cloned());
            let client = redis::cluster::ClusterClientBuilder::new(nodes)
                .tcp_settings(tcp_settings())
                .connection_timeout(timeout)
                .response_timeout(timeout)
                .build()
                .map_err(map_err)?;
            let shared = client.get_async_connection().await.map_err(map_err)?;
            let high = client.get_async_connection().await.map_err(map_err)?;
            (Conn::Cluster(shared), Conn::Cluster(high))
        } else {
            let info = url
                .as_str()
                .into_connection_info()
                .map_err(map_err)?
                .set_tcp_settings(tcp_settings());
            let client = redis::Client::open(info).map_err(map_err)?;
            let mc = ConnectionManagerConfig::new()
                .set_connection_timeout(Some(timeout))
                .set_response_timeout(Some(timeout))
                .set_number_of_retries(1)
                .set_max_delay(Duration::from_millis(500));
            let shared = client
                .get_connection_manager_with_config(mc.clone())
                .await
                .map_err(map_err)?;
            let high = client
                .get_connection_manager_with_config(mc)
                .await
                .map_err(map_err)?;
            (Conn::Single(shared), Conn::Single(high))
        };
        let store = Self {
            conn,
            queued: WorkGate::new(QUEUED_WORK),
            conn_high,
            scripts: Scripts::new(),
            shards: cfg.shards,
            signal: QueueSignal::new(),
            receipts_max_len: cfg.receipts_max_len,
            retention_ms: cfg.retention.0.as_millis() as i64,
            idem_ttl_ms: 24 * 3600 * 1000,
            wait_replicas: cfg.wait_replicas,
            wait_timeout_ms: cfg.wait_timeout.0.as_millis() as u64,
            timeout,
            contents: std::sync::Mutex::new(HashMap::new()),
        };
        // Loaded now so the first calls need not fail to find it; a Redis without functions
        // (before 7.0) is refused here rather than on every call.
        store.load_library().await.map_err(|e| match e {
            StoreError::Internal(e) => StoreError::Internal(format!(
                "loading Herald's function library into Redis failed (Redis 7.0 or later is needed): {e}"
            )),
            e => e,
        })?;
        Ok(store)
    }

    /// Takes all the room in the work gate until the permit drops, as a drain's queued batch
    /// scripts do. For tests of what waits behind them and what does not.
    #[doc(hidden)]
    pub async fn fill_work_gate(&self) -> Result<tokio::sync::SemaphorePermit<'_>, StoreError> {
        self.queued.take(QUEUED_WORK).await
    }

    /// Idempotency window (default 24 h).
    pub fn with_idempotency_ttl(mut self, ttl: Duration) -> Self {
        self.idem_ttl_ms = ttl.as_millis() as i64;
        self
    }

    fn conn(&self) -> Conn {
        if super::in_high_lane() {
            self.conn_high.clone()
        } else {
            self.conn.clone()
        }
    }

    /// Runs one pipeline with a bound on how long it may take.
    async fn query(&self, pipe: &Pipeline) -> Result<Vec<Value>, StoreError> {
        self.query_w(pipe, 1).await
    }

    /// `query` for a pipeline doing about `weight` notifications' work. Outside the HIGH lane
    /// it first takes that much of `queued`: Redis runs a connection's commands in order and
    /// whole, so what is sent and not yet answered is what a HIGH command would wait behind.
    /// The wait for the gate counts against `redis.command_timeout` too: while Redis is away
    /// a call fails in that time, not after everything ahead of it has failed.
    async fn query_w(&self, pipe: &Pipeline, weight: usize) -> Result<Vec<Value>, StoreError> {
        self.query_with(pipe, weight, false).await
    }

    /// `query_w`; `tolerant` when `pipe` ignores errors (a failed command is a
    /// `Value::ServerError` among the replies rather than an error of the whole call).
    async fn query_with(
        &self,
        pipe: &Pipeline,
        weight: usize,
        tolerant: bool,
    ) -> Result<Vec<Value>, StoreError> {
        let call = async {
            let _turn = self.queued.enter(weight).await?;
            let mut c = self.conn();
            if matches!(c, Conn::Cluster(_)) {
                return cluster_query(&c, pipe, tolerant).await;
            }
            pipe.query_async::<Vec<Value>>(&mut c)
                .await
                .map_err(map_err)
        };
        self.in_time(call).await
    }

    /// `call`, failing as unavailable past `redis.command_timeout`.
    async fn in_time<T>(
        &self,
        call: impl std::future::Future<Output = Result<T, StoreError>>,
    ) -> Result<T, StoreError> {
        tokio::time::timeout(self.timeout, call)
            .await
            .unwrap_or_else(|_| {
                Err(StoreError::Unavailable(
                    "redis did not answer in time".into(),
                ))
            })
    }

    /// Loads the function library (every primary of a cluster). `REPLACE`: another instance
    /// of the same version may have loaded the same code a moment ago. A single command, not
    /// a pipeline: a cluster sends it to every primary.
    async fn load_library(&self) -> Result<(), StoreError> {
        let mut c = self.conn();
        let mut cmd = redis::cmd("FUNCTION");
        cmd.arg("LOAD")
            .arg("REPLACE")
            .arg(&self.scripts.library.code);
        self.in_time(async { cmd.query_async::<Value>(&mut c).await.map_err(map_err) })
            .await
            .map(|_| ())
    }

    /// Runs calls in one pipeline; where Redis has lost their code (a restart), loads it and
    /// runs just those calls again. Server errors become `StoreError::Internal`.
    async fn run(&self, calls: Vec<ScriptCall<'_>>) -> Result<Vec<Value>, StoreError> {
        self.run_w(calls, 1).await
    }

    /// `run` for calls doing about `weight` notifications' work (see `query_w`).
    async fn run_w(
        &self,
        calls: Vec<ScriptCall<'_>>,
        weight: usize,
    ) -> Result<Vec<Value>, StoreError> {
        if calls.is_empty() {
            return Ok(Vec::new());
        }
        let build = |idx: &[usize]| {
            let mut p = redis::pipe();
            p.ignore_errors();
            for i in idx {
                let (code, key, args) = &calls[*i];
                match code {
                    Code::Function(name) => {
                        let c = p.cmd("FCALL").arg(name).arg(1).arg(key.as_slice());
                        for a in args {
                            c.arg(a.as_slice());
                        }
                    }
                    Code::Script(s) => {
                        let mut inv = s.prepare_invoke();
                        inv.key(key.as_slice());
                        for a in args {
                            inv.arg(a.as_slice());
                        }
                        p.invoke_script(&inv);
                    }
                }
            }
            p
        };
        let all: Vec<usize> = (0..calls.len()).collect();
        let mut out = self.query_with(&build(&all), weight, true).await?;
        let missing: Vec<usize> = all
            .iter()
            .copied()
            .filter(|i| is_missing(calls[*i].0, &out[*i]))
            .collect();
        if !missing.is_empty() {
            let mut load = redis::pipe();
            let mut seen = Vec::new();
            let mut library = false;
            for i in &missing {
                match calls[*i].0 {
                    Code::Script(s) => {
                        if !seen.contains(&s.get_hash()) {
                            seen.push(s.get_hash());
                            load.load_script(s);
                        }
                    }
                    Code::Function(_) => library = true,
                }
            }
            if library {
                self.load_library().await?;
            }
            if !seen.is_empty() {
                self.query(&load).await?;
            }
            let again = self.query_with(&build(&missing), weight, true).await?;
            for (i, v) in missing.into_iter().zip(again) {
                out[i] = v;
            }
        }
        for v in &out {
            if let Value::ServerError(e) = v {
                return Err(StoreError::Internal(format!(
                    "script failed: {} {}",
                    e.code(),
                    e.details().unwrap_or("")
                )));
            }
        }
        Ok(out)
    }

    /// The shared contents named by `hashes` (empty ones skipped): from the process cache,
    /// the rest in one round trip. One missing from Redis too is left out.
    async fn contents(
        &self,
        shard: u16,
        hashes: &[String],
    ) -> Result<HashMap<String, std::sync::Arc<Content>>, StoreError> {
        let mut found = HashMap::new();
        let mut missing: Vec<&String> = Vec::new();
        {
            let cache = self
                .contents
                .lock()
                .map_err(|_| StoreError::Internal("content cache poisoned".into()))?;
            for h in hashes {
                if h.is_empty() || found.contains_key(h) || missing.contains(&h) {
                    continue;
                }
                match cache.get(h) {
                    Some(c) => {
                        found.insert(h.clone(), c.clone());
                    }
                    None => missing.push(h),
                }
            }
        }
        if missing.is_empty() {
            return Ok(found);
        }
        let mut p = redis::pipe();
        for h in &missing {
            p.cmd("GET").arg(format!("{}cn:{h}", prefix(shard)));
        }
        let blobs = self.query(&p).await?;
        let mut cache = self
            .contents
            .lock()
            .map_err(|_| StoreError::Internal("content cache poisoned".into()))?;
        if cache.len() + missing.len() > CONTENT_CACHE {
            cache.clear();
        }
        for (h, v) in missing.into_iter().zip(blobs) {
            let blob: Option<Vec<u8>> = parse(v)?;
            let Some(blob) = blob else { continue };
            let content: Content = rmp_serde::from_slice(&blob)
                .map_err(|e| StoreError::Internal(format!("corrupt content {h}: {e}")))?;
            let content = std::sync::Arc::new(content);
            cache.insert(h.clone(), content.clone());
            found.insert(h.clone(), content);
        }
        Ok(found)
    }

    fn common_args(&self, now: Millis) -> Vec<Vec<u8>> {
        vec![
            now.to_string().into_bytes(),
            self.receipts_max_len.to_string().into_bytes(),
            self.retention_ms.to_string().into_bytes(),
        ]
    }

    async fn wait_for_replicas(&self) -> Result<(), StoreError> {
        if self.wait_replicas == 0 {
            return Ok(());
        }
        let mut p = redis::pipe();
        p.cmd("WAIT")
            .arg(self.wait_replicas)
            .arg(self.wait_timeout_ms);
        let v = self.query(&p).await?;
        let acked: i64 = v.into_iter().next().map(parse).transpose()?.unwrap_or(0);
        if acked < i64::from(self.wait_replicas) {
            return Err(StoreError::Unavailable(format!(
                "only {acked} of {} replicas acknowledged the write",
                self.wait_replicas
            )));
        }
        Ok(())
    }

    /// On one Redis (not a cluster, where a call stays in one slot), the per-shard enqueue
    /// calls of a small write become one: each shard's items after the first follow an `s`
    /// marker and their shard's prefix (enqueue.lua). A call's fixed cost in Redis (the FCALL,
    /// the first item's setup) was most of a one-item enqueue, and unary sends written
    /// together (ingest's coalescer) fall on a shard each. Calls are merged only up to
    /// `MERGED_ITEMS` items, so no one call keeps Redis from HIGH work for longer than a
    /// batch's per-shard call did.
    fn merge_small_enqueues<'a>(
        &self,
        calls: Vec<ScriptCall<'a>>,
        order: Vec<Vec<usize>>,
    ) -> (Vec<ScriptCall<'a>>, Vec<Vec<usize>>) {
        const MERGED_ITEMS: usize = 64;
        /// Arguments before the items: now, receipts cap, retention, idempotency TTL, content
        /// TTL.
        const HEAD: usize = 5;
        if calls.len() < 2 || matches!(self.conn, Conn::Cluster(_)) {
            return (calls, order);
        }
        let mut out_calls: Vec<ScriptCall<'a>> = Vec::with_capacity(calls.len());
        let mut out_order: Vec<Vec<usize>> = Vec::with_capacity(order.len());
        for ((code, key, args), idx) in calls.into_iter().zip(order) {
            if let (Some((_, _, merged)), Some(into)) = (out_calls.last_mut(), out_order.last_mut())
            {
                if into.len() + idx.len() <= MERGED_ITEMS
                    && args.len() >= HEAD
                    && merged.len() >= HEAD
                {
                    // The content TTL covers the latest-due item of either.
                    let ttl = |a: &[Vec<u8>]| {
                        std::str::from_utf8(&a[HEAD - 1])
                            .ok()
                            .and_then(|t| t.parse::<i64>().ok())
                            .unwrap_or(0)
                    };
                    let cttl = ttl(merged).max(ttl(&args));
                    merged[HEAD - 1] = arg(cttl);
                    merged.push(b"s".to_vec());
                    merged.push(key);
                    merged.extend(args.into_iter().skip(HEAD));
                    into.extend(idx);
                    continue;
                }
            }
            out_calls.push((code, key, args));
            out_order.push(idx);
        }
        (out_calls, out_order)
    }

    fn shard_for(&self, id: &str) -> Option<u16> {
        shard_of(id).filter(|s| *s < self.shards)
    }
}

/// A stream entry id `<ms>-<seq>` as numbers, for ordering.
fn stream_id(eid: &str) -> Option<(u64, u64)> {
    let (ms, seq) = eid.split_once('-')?;
    Some((ms.parse().ok()?, seq.parse().ok()?))
}

fn arg(s: impl ToString) -> Vec<u8> {
    s.to_string().into_bytes()
}

/// A receipt-stream entry: `id`, `r` (the receipt as its history entry holds it, see
/// `split_receipt`), `cmp`, `lb`. Entries written before that format have a field per part
/// (`st`, `ch`, `at`, …) and are read as well.
fn decode_receipt(fields: HashMap<String, Value>, cursor: String) -> Option<Receipt> {
    let g = |k: &str| fields.get(k).map(text).unwrap_or_default();
    let labels = fields
        .get("lb")
        .map(bytes)
        .filter(|b| !b.is_empty())
        .and_then(|b| rmp_serde::from_slice(&b).ok())
        .unwrap_or_default();
    let packed = g("r");
    let mut r = if packed.is_empty() {
        let parts: Vec<String> = ["st", "ch", "at", "pid", "ec", "code", "att", "cost", "cur"]
            .iter()
            .map(|k| g(k))
            .collect();
        receipt_of(&parts)?
    } else {
        receipt_of(&split_receipt(&packed)?)?
    };
    r.notification_id = g("id");
    r.campaign_id = g("cmp");
    r.labels = labels;
    r.cursor = cursor;
    Some(r)
}

/// A receipt as one string, `st ch at pid ec code att cost cur` joined by U+001F.
fn split_receipt(s: &str) -> Option<Vec<&str>> {
    let f: Vec<&str> = s.split('\u{1f}').collect();
    (f.len() >= 9).then_some(f)
}

/// A receipt from its nine parts (see `split_receipt`); ids, labels and cursor left empty.
fn receipt_of<S: AsRef<str>>(f: &[S]) -> Option<Receipt> {
    let f = |i: usize| f[i].as_ref();
    Some(Receipt {
        notification_id: String::new(),
        campaign_id: String::new(),
        channel: Channel::from_name(f(1)),
        status: Status::from_number(f(0).parse().ok()?)?,
        provider_id: f(3).to_string(),
        error_class: f(4).parse().ok().and_then(ErrorClass::from_number),
        error_code: f(5).to_string(),
        attempt: f(6).parse().unwrap_or(0),
        cost_micros: f(7).parse().unwrap_or(0),
        currency: f(8).to_string(),
        at: f(2).parse().unwrap_or(0),
        labels: Default::default(),
        cursor: String::new(),
    })
}

/// A receipt kept in a notification's history: `st ch at pid ec code att cost cur`.
fn decode_history_receipt(n: &Notification, s: &str) -> Option<Receipt> {
    let mut r = receipt_of(&split_receipt(s)?)?;
    r.notification_id = n.id.clone();
    r.campaign_id = n.campaign_id.clone();
    r.labels = n.labels.clone();
    Some(r)
}

/// Cursor over every shard's receipt stream: `r1:<id>,<id>,…` (one stream id per shard).
fn encode_cursor(pos: &[String]) -> String {
    format!("r1:{}", pos.join(","))
}

fn decode_cursor(c: &str, shards: u16) -> Result<Vec<String>, StoreError> {
    let bad = || StoreError::Internal(format!("invalid cursor {c:?}"));
    let body = c.strip_prefix("r1:").ok_or_else(bad)?;
    let pos: Vec<String> = body.split(',').map(str::to_string).collect();
    if pos.len() != usize::from(shards) || pos.iter().any(|p| !p.contains('-')) {
        return Err(bad());
    }
    Ok(pos)
}

#[async_trait]
impl Store for RedisStore {
    fn shards(&self) -> u16 {
        self.shards
    }

    fn signal(&self) -> &QueueSignal {
        &self.signal
    }

    async fn enqueue(&self, batch: Vec<NewNotification>) -> Result<Vec<Enqueued>, StoreError> {
        let now = crate::model::now_ms();
        // Group by shard, remembering each item's place in the request.
        let mut by_shard: BTreeMap<u16, Vec<(usize, NewNotification)>> = BTreeMap::new();
        for (i, item) in batch.into_iter().enumerate() {
            by_shard.entry(item.shard).or_default().push((i, item));
        }
        let total: usize = by_shard.values().map(Vec::len).sum();
        let mut calls = Vec::with_capacity(by_shard.len());
        let mut order = Vec::with_capacity(by_shard.len());
        let mut woken = Vec::new();
        let mut created = Vec::with_capacity(total);
        for (shard, items) in by_shard {
            // Shared content lives as long as the latest-due notification of this call needs.
            let due = items
                .iter()
                .map(|(_, item)| item.notification.send_at)
                .max()
                .unwrap_or(0);
            let content_ttl = (due - now).max(0) + self.retention_ms + CONTENT_MARGIN_MS;
            let mut args = self.common_args(now);
            // At most 12 per item (fewer in runs): one allocation, not a doubling per power of 2.
            args.reserve(2 + 12 * items.len());
            args.push(arg(self.idem_ttl_ms));
            args.push(arg(content_ttl));
            let mut idx = Vec::with_capacity(items.len());
            // Each distinct content of this call, encoded and hashed once; sent with its first
            // notification, named by the others.
            let mut contents: HashMap<Content, String> = HashMap::new();
            let mut last: Option<(Content, String)> = None;
            let mut rows = Vec::with_capacity(items.len());
            for (i, item) in items {
                let n = item.notification;
                let first = n.route.first().copied().ok_or_else(|| {
                    StoreError::Internal(format!("notification {} has no route", n.id))
                })?;
                if !woken.contains(&first) {
                    woken.push(first);
                }
                let (ik, fp) = match item.idem {
                    Some(k) => (k.key, k.fingerprint),
                    None => (String::new(), String::new()),
                };
                let labels = if n.labels.is_empty() {
                    Vec::new()
                } else {
                    rmp_serde::to_vec(&n.labels).unwrap_or_default()
                };
                let row = EnqueueRow {
                    id: n.id.clone(),
                    idem: ik,
                    fingerprint: fp,
                    record: Vec::new(),
                    channel: first,
                    priority: n.priority.number(),
                    due: n.send_at,
                    expire_at: n.expire_at,
                    created_at: n.created_at,
                    campaign: n.campaign_id.clone(),
                    labels,
                    content_hash: String::new(),
                    content: Vec::new(),
                };
                let (record, shared) = stored_record(n);
                let (content_hash, content) = match shared {
                    None => (String::new(), Vec::new()),
                    // A campaign's items share one content, so the previous item's is compared
                    // first: hashing every item's content for the map was 4% of SendBatch's CPU.
                    Some(content) => match &last {
                        Some((c, hash)) if *c == content => (hash.clone(), Vec::new()),
                        _ => {
                            let (hash, blob) = match contents.get(&content) {
                                Some(hash) => (hash.clone(), Vec::new()),
                                None => {
                                    let blob = crate::model::msgpack(&content);
                                    let hash = content_hash(&blob);
                                    contents.insert(content.clone(), hash.clone());
                                    (hash, blob)
                                }
                            };
                            last = Some((content, hash.clone()));
                            (hash, blob)
                        }
                    },
                };
                rows.push(EnqueueRow {
                    record,
                    content_hash,
                    content,
                    ..row
                });
                idx.push(i);
            }
            // The script's rule: SCHEDULED when due after now, else QUEUED.
            let status = |due: Millis| {
                if due > now {
                    Status::Scheduled
                } else {
                    Status::Queued
                }
            };
            let runs = pack_runs(shard, &mut rows);
            let mut rows = rows.into_iter();
            let mut at = 0;
            for run in runs.into_iter().map(Some).chain([None]) {
                let singles = run.as_ref().map_or(usize::MAX, |r| r.start - at);
                for row in rows.by_ref().take(singles) {
                    created.push(Enqueued::Created {
                        id: row.id.clone(),
                        status: status(row.due),
                    });
                    args.extend([
                        arg(row.id),
                        arg(row.idem),
                        arg(row.fingerprint),
                        row.record,
                        arg(row.channel.name()),
                        arg(row.priority),
                        arg(row.due),
                        arg(row.expire_at),
                        arg(row.campaign),
                        row.labels,
                        arg(row.content_hash),
                        row.content,
                    ]);
                }
                let Some(run) = run else { break };
                at = run.end;
                let mut run: Vec<EnqueueRow> = rows.by_ref().take(run.len()).collect();
                let with_idem = run.iter().any(|r| !r.idem.is_empty());
                // The content goes with the first item that carries it, if any does.
                let content = run
                    .iter_mut()
                    .find(|r| !r.content.is_empty())
                    .map(|r| std::mem::take(&mut r.content))
                    .unwrap_or_default();
                let head = &run[0];
                args.extend([
                    arg(if with_idem { "r" } else { "q" }),
                    arg(run.len()),
                    arg(head.channel.name()),
                    arg(head.priority),
                    arg(head.expire_at),
                    arg(&head.campaign),
                    head.labels.clone(),
                    arg(&head.content_hash),
                    content,
                ]);
                for row in run {
                    created.push(Enqueued::Created {
                        id: row.id.clone(),
                        status: status(row.due),
                    });
                    args.extend([arg(row.id), row.record, arg(row.due)]);
                    if with_idem {
                        args.extend([arg(row.idem), arg(row.fingerprint)]);
                    }
                }
            }
            calls.push((&self.scripts.enqueue, prefix(shard).into_bytes(), args));
            order.push(idx);
        }
        let (calls, order) = self.merge_small_enqueues(calls, order);
        // Weight 1: a caller waits on it, and how much a caller sends at once is bounded by
        // its own requests in flight; the gate is for the dispatch drain's batch scripts.
        let replies = self.run(calls).await?;
        self.wait_for_replicas().await?;
        // Every item was created unless the reply names it (its place in the call, 1-based).
        let mut out: Vec<Option<Enqueued>> = vec![None; total];
        for (i, c) in order.iter().flatten().zip(created) {
            out[*i] = Some(c);
        }
        for (reply, idx) in replies.into_iter().zip(order) {
            let rows: Vec<(usize, String, String, u8)> = parse(reply)?;
            for (place, kind, id, st) in rows {
                let i = place
                    .checked_sub(1)
                    .and_then(|p| idx.get(p))
                    .ok_or_else(|| {
                        StoreError::Internal(format!("enqueue reply names item {place}"))
                    })?;
                let status = Status::from_number(st).unwrap_or(Status::Accepted);
                out[*i] = Some(match kind.as_str() {
                    "dup" => Enqueued::Duplicate { id, status },
                    _ => Enqueued::Conflict { id },
                });
            }
        }
        for c in woken {
            self.signal.notify(c);
        }
        out.into_iter()
            .map(|o| o.ok_or_else(|| StoreError::Internal("enqueue reply too short".into())))
            .collect()
    }

    async fn claim(
        &self,
        channel: Channel,
        shard: u16,
        consumer: &str,
        count: usize,
        last: Priority,
        reclaim_idle: Option<Duration>,
        now: Millis,
    ) -> Result<Vec<Claimed>, StoreError> {
        let mut args = self.common_args(now);
        args.extend([
            arg(channel.name()),
            arg(consumer),
            arg(count),
            arg(reclaim_idle.map(|d| d.as_millis()).unwrap_or(0)),
            arg(last.number()),
        ]);
        let reply = self
            .run_w(
                vec![(&self.scripts.claim, prefix(shard).into_bytes(), args)],
                count,
            )
            .await?
            .pop()
            .unwrap_or(Value::Nil);
        type Row = (
            u8,
            String,
            Vec<u8>,
            String,
            String,
            String,
            String,
            String,
            String,
            Vec<u8>,
        );
        let rows: Vec<Row> = parse(reply)?;
        let hashes: Vec<String> = rows.iter().map(|r| r.6.clone()).collect();
        let contents = self.contents(shard, &hashes).await?;
        let mut out = Vec::with_capacity(rows.len());
        for (p, eid, blob, ri, a, ca, cn, id, cmp, lb) in rows {
            let notification = restore(&id, &blob, &cmp, &lb, &cn, &contents)?;
            out.push(Claimed {
                entry: EntryRef {
                    priority: Priority::from_number(p).unwrap_or(Priority::Normal),
                    entry_id: eid,
                },
                notification,
                route_index: ri.parse().unwrap_or(0),
                attempts: a.parse().unwrap_or(0),
                channel_attempts: ca.parse().unwrap_or(0),
            });
        }
        Ok(out)
    }

    async fn finish(
        &self,
        channel: Channel,
        shard: u16,
        consumer: &str,
        done: &[Completion],
        now: Millis,
    ) -> Result<usize, StoreError> {
        if done.is_empty() {
            return Ok(0);
        }
        let n_done = done.len();
        let mut args = self.common_args(now);
        args.extend([arg(channel.name()), arg(consumer)]);
        let mut provider_ids = Vec::new();
        let mut watermarks = Vec::new();
        // (key, Some(id) = a send time to add | None = spend to add, micros)
        let mut tallies: Vec<(String, Option<String>, i64)> = Vec::new();
        let mut woken = Vec::new();
        for c in done {
            let att = c
                .attempt
                .as_ref()
                .map(|a| rmp_serde::to_vec(a).unwrap_or_default())
                .unwrap_or_default();
            let (act, a1, a2, pid, ec, code, cost, cur) = match &c.disposition {
                Disposition::Sent {
                    status,
                    provider_id,
                    cost_micros,
                    currency,
                    watermark,
                    counters,
                } => {
                    for counter in counters {
                        match counter {
                            super::Counter::Budget(k) if *cost_micros != 0 => {
                                tallies.push((
                                    format!("herald:budget:{{{k}}}"),
                                    None,
                                    *cost_micros,
                                ));
                            }
                            super::Counter::Budget(_) => {}
                            super::Counter::Recent(k) => {
                                tallies.push((
                                    format!("herald:recent:{{{k}}}"),
                                    Some(c.id.clone()),
                                    0,
                                ));
                            }
                        }
                    }
                    if let Some(k) = watermark {
                        // The platform's watermark is its own time for the message; the
                        // request's start is the closest we know.
                        let at = c.attempt.as_ref().map_or(now, |a| a.started_at);
                        watermarks.push((contact_key("wm", k), at, c.id.clone()));
                    }
                    // Linked so later receipts find the notification; one delivered on accept
                    // (a webhook) gets none, so it costs no link.
                    if !provider_id.is_empty() && *status != Status::Delivered {
                        provider_ids.push((c.channel, provider_id.clone(), c.id.clone()));
                    }
                    (
                        "sent",
                        arg(status.number()),
                        Vec::new(),
                        arg(provider_id),
                        Vec::new(),
                        Vec::new(),
                        arg(cost_micros),
                        arg(currency),
                    )
                }
                Disposition::Retry { due, class, code } => (
                    "retry",
                    arg(due),
                    Vec::new(),
                    Vec::new(),
                    arg(class.number()),
                    arg(code),
                    arg(0),
                    Vec::new(),
                ),
                Disposition::Fallback {
                    route_index,
                    channel: next,
                } => {
                    woken.push(*next);
                    (
                        "fallback",
                        arg(route_index),
                        arg(next.name()),
                        Vec::new(),
                        Vec::new(),
                        Vec::new(),
                        arg(0),
                        Vec::new(),
                    )
                }
                Disposition::Failed {
                    class,
                    code,
                    message,
                    dead_letter,
                } => (
                    "fail",
                    arg(if *dead_letter { 1 } else { 0 }),
                    arg(message),
                    Vec::new(),
                    arg(class.number()),
                    arg(code),
                    arg(0),
                    Vec::new(),
                ),
                Disposition::Final(st) => (
                    "final",
                    arg(st.number()),
                    Vec::new(),
                    Vec::new(),
                    Vec::new(),
                    Vec::new(),
                    arg(0),
                    Vec::new(),
                ),
                Disposition::Requeue => {
                    woken.push(channel);
                    (
                        "requeue",
                        Vec::new(),
                        Vec::new(),
                        Vec::new(),
                        Vec::new(),
                        Vec::new(),
                        arg(0),
                        Vec::new(),
                    )
                }
            };
            args.extend([
                arg(c.entry.priority.number()),
                arg(&c.entry.entry_id),
                arg(&c.id),
                arg(act),
                a1,
                a2,
                att,
                pid,
                ec,
                code,
                cost,
                cur,
            ]);
        }
        let reply = self
            .run_w(
                vec![(&self.scripts.finish, prefix(shard).into_bytes(), args)],
                n_done,
            )
            .await?
            .pop()
            .unwrap_or(Value::Nil);
        let applied: usize = parse(reply)?;
        if !watermarks.is_empty() || !tallies.is_empty() {
            // The per-address index behind watermark receipts; budgets and frequency counts.
            let mut p = redis::pipe();
            for (key, id, micros) in tallies {
                match id {
                    None => {
                        p.cmd("INCRBY").arg(&key).arg(micros).ignore();
                        // A day's budget key is read for a day; keep it two for safety.
                        p.cmd("PEXPIRE")
                            .arg(&key)
                            .arg(2 * 24 * 3600 * 1000)
                            .ignore();
                    }
                    Some(id) => {
                        p.cmd("ZADD").arg(&key).arg(now).arg(id).ignore();
                        p.cmd("ZREMRANGEBYSCORE")
                            .arg(&key)
                            .arg("-inf")
                            .arg(now - super::RECENT_KEEP_MS)
                            .ignore();
                        p.cmd("PEXPIRE")
                            .arg(&key)
                            .arg(super::RECENT_KEEP_MS)
                            .ignore();
                    }
                }
            }
            for (key, at, id) in watermarks {
                p.cmd("ZADD").arg(&key).arg(at).arg(id).ignore();
                p.cmd("ZREMRANGEBYSCORE")
                    .arg(&key)
                    .arg("-inf")
                    .arg(now - super::WATERMARK_KEEP_MS)
                    .ignore();
                p.cmd("PEXPIRE")
                    .arg(&key)
                    .arg(super::WATERMARK_KEEP_MS)
                    .ignore();
            }
            self.query(&p).await?;
        }
        if !provider_ids.is_empty() {
            // Provider message id → notification, so later receipts find their notification;
            // receipts that came before this link are applied now.
            let calls: Vec<ScriptCall<'_>> = provider_ids
                .iter()
                .map(|(ch, pid, id)| {
                    let (link, early) = provider_keys(*ch, pid);
                    (
                        &self.scripts.link,
                        link.into_bytes(),
                        vec![arg(id), arg(self.retention_ms), early.into_bytes()],
                    )
                })
                .collect();
            let replies = self.run(calls).await?;
            let mut early = Vec::new();
            for ((ch, pid, id), v) in provider_ids.iter().zip(replies) {
                let list: Vec<String> = parse(v)?;
                early.extend(list.iter().filter_map(|s| decode_early(*ch, pid, id, s)));
            }
            if !early.is_empty() {
                self.record_receipts(early).await?;
            }
        }
        for c in woken {
            self.signal.notify(c);
        }
        Ok(applied)
    }

    async fn promote_due(&self, now: Millis, limit: usize) -> Result<usize, StoreError> {
        let calls = (0..self.shards)
            .map(|s| {
                let mut args = self.common_args(now);
                args.push(arg(limit));
                (&self.scripts.promote, prefix(s).into_bytes(), args)
            })
            .collect();
        let mut moved = 0;
        for v in self.run(calls).await? {
            moved += parse::<usize>(v)?;
        }
        if moved > 0 {
            self.signal.notify_all();
        }
        Ok(moved)
    }

    async fn record_receipts(&self, receipts: Vec<ProviderReceipt>) -> Result<(), StoreError> {
        if receipts.is_empty() {
            return Ok(());
        }
        // Receipts that name only a provider message id: look their notification up first.
        let unknown: Vec<usize> = receipts
            .iter()
            .enumerate()
            .filter(|(_, r)| r.notification_id.is_empty())
            .map(|(i, _)| i)
            .collect();
        let mut ids: Vec<String> = receipts.iter().map(|r| r.notification_id.clone()).collect();
        if !unknown.is_empty() {
            let mut p = redis::pipe();
            for i in &unknown {
                let r = &receipts[*i];
                p.cmd("GET").arg(provider_keys(r.channel, &r.provider_id).0);
            }
            let mut stash = redis::pipe();
            let mut stashed = false;
            for (i, v) in unknown.iter().zip(self.query(&p).await?) {
                ids[*i] = text(&v);
                if ids[*i].is_empty() {
                    // The platform was faster than our record of the send: keep it for the
                    // finish that links the provider id.
                    let r = &receipts[*i];
                    let key = provider_keys(r.channel, &r.provider_id).1;
                    stash.cmd("RPUSH").arg(&key).arg(encode_early(r)).ignore();
                    stash
                        .cmd("PEXPIRE")
                        .arg(&key)
                        .arg(EARLY_RECEIPT_MS)
                        .ignore();
                    stashed = true;
                }
            }
            if stashed {
                self.query(&stash).await?;
            }
        }
        let mut by_shard: BTreeMap<u16, Vec<Vec<u8>>> = BTreeMap::new();
        for (r, id) in receipts.iter().zip(ids) {
            let Some(shard) = self.shard_for(&id) else {
                continue;
            };
            by_shard.entry(shard).or_default().extend([
                arg(&id),
                arg(r.status.number()),
                arg(r.channel.name()),
                arg(r.at),
                arg(&r.provider_id),
                r.error_class.map(|c| arg(c.number())).unwrap_or_default(),
                arg(&r.error_code),
            ]);
        }
        let now = crate::model::now_ms();
        let calls = by_shard
            .into_iter()
            .map(|(s, items)| {
                let mut args = self.common_args(now);
                args.extend(items);
                (&self.scripts.receipt, prefix(s).into_bytes(), args)
            })
            .collect();
        self.run(calls).await?;
        Ok(())
    }

    async fn cancel(&self, target: CancelTarget, now: Millis) -> Result<CancelOutcome, StoreError> {
        match target {
            CancelTarget::Notification(id) => {
                let Some(shard) = self.shard_for(&id) else {
                    return Ok(CancelOutcome {
                        canceled: 0,
                        status: None,
                    });
                };
                let mut args = self.common_args(now);
                args.extend([arg("n"), arg(&id)]);
                let v = self
                    .run(vec![(
                        &self.scripts.cancel,
                        prefix(shard).into_bytes(),
                        args,
                    )])
                    .await?
                    .pop()
                    .unwrap_or(Value::Nil);
                let (n, st): (u64, u8) = parse(v)?;
                Ok(CancelOutcome {
                    canceled: n,
                    status: Status::from_number(st),
                })
            }
            CancelTarget::Campaign(c) => {
                let calls = (0..self.shards)
                    .map(|s| {
                        let mut args = self.common_args(now);
                        args.extend([arg("c"), arg(&c)]);
                        (&self.scripts.cancel, prefix(s).into_bytes(), args)
                    })
                    .collect();
                let mut total = 0;
                for v in self.run(calls).await? {
                    let (n, _): (u64, u8) = parse(v)?;
                    total += n;
                }
                // Wake workers so queued ones are canceled now rather than at the next poll.
                self.signal.notify_all();
                Ok(CancelOutcome {
                    canceled: total,
                    status: None,
                })
            }
        }
    }

    async fn get(&self, id: &str) -> Result<Option<NotificationView>, StoreError> {
        let Some(shard) = self.shard_for(id) else {
            return Ok(None);
        };
        let p0 = prefix(shard);
        let mut p = redis::pipe();
        p.cmd("HGETALL").arg(format!("{p0}n:{id}"));
        p.cmd("LRANGE").arg(format!("{p0}ev:{id}")).arg(0).arg(-1);
        let mut r = self.query(&p).await?.into_iter();
        let mut rec = pairs(r.next().unwrap_or(Value::Nil));
        let mut events: Vec<Vec<u8>> = parse(r.next().unwrap_or(Value::Nil))?;
        if rec.is_empty() {
            if let Some(packed) = self.packed(&[(shard, id)]).await?.pop().flatten() {
                rec = packed;
            }
        }
        events.extend(history(&rec));
        let Some(blob) = rec.get("d").map(bytes) else {
            return Ok(None);
        };
        let blob = join_parts(blob, RECORD_PARTS.map(|k| rec.get(k).map(bytes)));
        let cn = rec.get("cn").map(text).unwrap_or_default();
        let cmp = rec.get("cmp").map(text).unwrap_or_default();
        let lb = rec.get("lb").map(bytes).unwrap_or_default();
        let contents = self.contents(shard, std::slice::from_ref(&cn)).await?;
        let notification = restore(id, &blob, &cmp, &lb, &cn, &contents)?;
        let status = status_of(rec.get("s")).unwrap_or(Status::Accepted);
        let channel = rec.get("c").and_then(|v| Channel::from_name(&text(v)));
        let mut attempts = Vec::new();
        let mut receipts = Vec::new();
        for e in events {
            match e.split_first() {
                Some((b'a', rest)) => {
                    if let Ok(a) = rmp_serde::from_slice::<AttemptRecord>(rest) {
                        attempts.push(a);
                    }
                }
                Some((b'r', rest)) => {
                    if let Some(r) =
                        decode_history_receipt(&notification, &String::from_utf8_lossy(rest))
                    {
                        receipts.push(r);
                    }
                }
                _ => {}
            }
        }
        Ok(Some(NotificationView {
            status,
            channel,
            attempts,
            receipts,
            cost_micros: rec
                .get("cost")
                .map(text)
                .and_then(|s| s.parse().ok())
                .unwrap_or(0),
            currency: rec.get("cur").map(text).unwrap_or_default(),
            notification,
        }))
    }

    async fn read_receipts(
        &self,
        cursor: Option<&str>,
        from_start: bool,
        limit: usize,
    ) -> Result<ReceiptPage, StoreError> {
        let mut pos = match cursor {
            Some(c) => decode_cursor(c, self.shards)?,
            None if from_start => vec!["0-0".to_string(); usize::from(self.shards)],
            None => {
                let mut p = redis::pipe();
                for s in 0..self.shards {
                    p.cmd("XREVRANGE")
                        .arg(format!("{}receipts", prefix(s)))
                        .arg("+")
                        .arg("-")
                        .arg("COUNT")
                        .arg(1);
                }
                let mut pos = Vec::with_capacity(usize::from(self.shards));
                for v in self.query(&p).await? {
                    let rows: Vec<(String, Value)> = parse(v)?;
                    pos.push(
                        rows.into_iter()
                            .next()
                            .map(|(id, _)| id)
                            .unwrap_or_else(|| "0-0".into()),
                    );
                }
                pos
            }
        };
        let mut p = redis::pipe();
        for (s, at) in pos.iter().enumerate() {
            p.cmd("XRANGE")
                .arg(format!("{}receipts", prefix(s as u16)))
                .arg(format!("({at}"))
                .arg("+")
                .arg("COUNT")
                .arg(limit);
        }
        let mut merged: Vec<((u64, u64), usize, String, HashMap<String, Value>)> = Vec::new();
        for (s, v) in self.query(&p).await?.into_iter().enumerate() {
            let rows: Vec<(String, Value)> = parse(v)?;
            for (id, fields) in rows {
                merged.push((entry_id(&id), s, id, pairs(fields)));
            }
        }
        merged.sort_by_key(|a| (a.0, a.1));
        let mut receipts = Vec::with_capacity(merged.len());
        for (_, s, id, fields) in merged {
            pos[s] = id;
            if let Some(r) = decode_receipt(fields, encode_cursor(&pos)) {
                receipts.push(r);
            }
        }
        Ok(ReceiptPage {
            receipts,
            cursor: encode_cursor(&pos),
        })
    }

    async fn campaign(&self, campaign_id: &str) -> Result<CampaignStats, StoreError> {
        let mut p = redis::pipe();
        for s in 0..self.shards {
            p.cmd("HGETALL")
                .arg(format!("{}camp:{campaign_id}", prefix(s)));
            p.cmd("EXISTS")
                .arg(format!("{}cxl:{campaign_id}", prefix(s)));
        }
        let mut stats = CampaignStats::default();
        let mut it = self.query(&p).await?.into_iter();
        while let (Some(h), Some(x)) = (it.next(), it.next()) {
            if parse::<i64>(x)? > 0 {
                stats.canceled = true;
            }
            for (k, v) in pairs(h) {
                let n: i64 = text(&v).parse().unwrap_or(0);
                if k == "total" {
                    stats.total += n.max(0) as u64;
                } else if k == "cost" {
                    stats.cost_micros += n;
                } else if let Some(st) = k.strip_prefix('s') {
                    if let Some(st) = st.parse().ok().and_then(Status::from_number) {
                        *stats.by_status.entry(st).or_default() += n.max(0) as u64;
                    }
                } else if let Some(rest) = k.strip_prefix('c') {
                    if let Some((ch, st)) = rest.split_once(':') {
                        if let (Some(ch), Some(st)) = (
                            Channel::from_name(ch),
                            st.parse().ok().and_then(Status::from_number),
                        ) {
                            *stats
                                .by_channel
                                .entry(ch)
                                .or_default()
                                .entry(st)
                                .or_default() += n.max(0) as u64;
                        }
                    }
                }
            }
        }
        stats.by_status.retain(|_, v| *v > 0);
        for m in stats.by_channel.values_mut() {
            m.retain(|_, v| *v > 0);
        }
        stats.by_channel.retain(|_, m| !m.is_empty());
        Ok(stats)
    }

    async fn dead_letters(
        &self,
        channel: Channel,
        limit: usize,
        page: Option<&str>,
    ) -> Result<DeadLetterPage, StoreError> {
        // Newest first across shards: by stream entry id, then shard, both descending. A
        // page token is the last letter's `<entry id>.<shard>`: the next page is what comes
        // after it in that order (on shards before its own, its entry id itself included).
        let after = match page {
            None => None,
            Some(t) => {
                let bad = || StoreError::BadCursor(t.to_string());
                let (eid, shard) = t.rsplit_once('.').ok_or_else(bad)?;
                let shard: u16 = shard.parse().map_err(|_| bad())?;
                stream_id(eid).ok_or_else(bad)?;
                Some((eid.to_string(), shard))
            }
        };
        let mut p = redis::pipe();
        for s in 0..self.shards {
            let end = match &after {
                None => "+".to_string(),
                Some((eid, shard)) if s < *shard => eid.clone(),
                Some((eid, _)) => format!("({eid}"),
            };
            p.cmd("XREVRANGE")
                .arg(format!("{}dead:{}", prefix(s), channel.name()))
                .arg(end)
                .arg("-")
                .arg("COUNT")
                .arg(limit);
        }
        let mut all = Vec::new();
        for (s, v) in (0..self.shards).zip(self.query(&p).await?) {
            let rows: Vec<(String, Value)> = parse(v)?;
            for (eid, f) in rows {
                let f = pairs(f);
                let g = |k: &str| f.get(k).map(text).unwrap_or_default();
                let order = (stream_id(&eid).unwrap_or_default(), s);
                all.push((
                    order,
                    eid,
                    DeadLetter {
                        id: g("id"),
                        channel,
                        class: g("ec").parse().ok().and_then(ErrorClass::from_number),
                        code: g("code"),
                        message: g("msg"),
                        at: g("at").parse().unwrap_or(0),
                    },
                ));
            }
        }
        all.sort_by_key(|x| std::cmp::Reverse(x.0));
        all.truncate(limit);
        let next = (all.len() == limit)
            .then(|| all.last().map(|((_, s), eid, _)| format!("{eid}.{s}")))
            .flatten();
        Ok(DeadLetterPage {
            letters: all.into_iter().map(|(_, _, d)| d).collect(),
            next,
        })
    }

    async fn redrive_dead_letters(
        &self,
        channel: Channel,
        ids: &[String],
        now: Millis,
    ) -> Result<Redriven, StoreError> {
        const PAGE: usize = 500;
        let wanted: std::collections::HashSet<&str> = ids.iter().map(String::as_str).collect();
        // Given ids: only their shards are read. A page of dead letters is read, then what
        // of it is wanted is redriven in one call; the next page starts after it.
        let shards: Vec<u16> = if ids.is_empty() {
            (0..self.shards).collect()
        } else {
            let mut s: Vec<u16> = ids.iter().filter_map(|id| self.shard_for(id)).collect();
            s.sort_unstable();
            s.dedup();
            s
        };
        let mut out = Redriven::default();
        let mut woken = false;
        for s in shards {
            let key = format!("{}dead:{}", prefix(s), channel.name());
            let mut start = "-".to_string();
            loop {
                let mut p = redis::pipe();
                p.cmd("XRANGE")
                    .arg(&key)
                    .arg(&start)
                    .arg("+")
                    .arg("COUNT")
                    .arg(PAGE);
                let v = self.query(&p).await?.pop().unwrap_or(Value::Nil);
                let rows: Vec<(String, Value)> = parse(v)?;
                let Some((last, _)) = rows.last() else {
                    break;
                };
                start = format!("({last}");
                let full = rows.len() == PAGE;
                let mut args = self.common_args(now);
                args.push(arg(channel.name()));
                let before = args.len();
                for (eid, f) in rows {
                    let f = pairs(f);
                    let id = f.get("id").map(text).unwrap_or_default();
                    if wanted.is_empty() || wanted.contains(id.as_str()) {
                        args.push(arg(&eid));
                        args.push(arg(&id));
                    }
                }
                if args.len() > before {
                    let v = self
                        .run(vec![(&self.scripts.redrive, prefix(s).into_bytes(), args)])
                        .await?
                        .pop()
                        .unwrap_or(Value::Nil);
                    let (redriven, gone): (u64, u64) = parse(v)?;
                    out.redriven += redriven;
                    out.gone += gone;
                    woken |= redriven > 0;
                }
                if !full {
                    break;
                }
            }
        }
        if woken {
            self.signal.notify(channel);
        }
        Ok(out)
    }

    async fn queue_depth(&self) -> Result<QueueDepth, StoreError> {
        // Per shard, the `depth` function (unread plus pending per lane: acknowledged entries
        // stay until a stream's head is trimmed) and the delayed set's size.
        let mut calls = Vec::with_capacity(usize::from(self.shards));
        for s in 0..self.shards {
            let mut args = self.common_args(0);
            args.extend(Channel::ALL.iter().map(|c| arg(c.name())));
            calls.push((&self.scripts.depth, prefix(s).into_bytes(), args));
        }
        let per_shard = self.run(calls).await?;
        let mut p = redis::pipe();
        for s in 0..self.shards {
            p.cmd("ZCARD").arg(format!("{}delayed", prefix(s)));
        }
        let delayed = self.query(&p).await?;
        let mut d = QueueDepth::default();
        for v in per_shard {
            let counts: Vec<u64> = parse(v)?;
            let lanes = Channel::ALL.iter().flat_map(|c| {
                (1..=3).filter_map(move |n| Priority::from_number(n).map(|pr| (*c, pr)))
            });
            for (lane, n) in lanes.zip(counts) {
                *d.ready.entry(lane).or_default() += n;
            }
        }
        for v in delayed {
            d.delayed += parse::<u64>(v)?;
        }
        Ok(d)
    }

    async fn ping(&self) -> Result<(), StoreError> {
        let mut p = redis::pipe();
        p.cmd("PING");
        self.query(&p).await.map(|_| ())
    }

    async fn contacts(&self, keys: &[ContactKey]) -> Result<Vec<ContactState>, StoreError> {
        if keys.is_empty() {
            return Ok(Vec::new());
        }
        let mut p = redis::pipe();
        for k in keys {
            p.cmd("HMGET")
                .arg(contact_key("ct", k))
                .arg("d")
                .arg("o")
                .arg("li");
        }
        let mut out = Vec::with_capacity(keys.len());
        for v in self.query_w(&p, READ_AROUND_GATE).await? {
            let f: Vec<Option<String>> = parse(v)?;
            let get = |i: usize| f.get(i).cloned().flatten();
            out.push(ContactState {
                dead: get(0).is_some(),
                opted_out: get(1).is_some(),
                last_inbound: get(2).and_then(|s| s.parse().ok()).unwrap_or(0),
            });
        }
        Ok(out)
    }

    async fn update_contacts(
        &self,
        changes: Vec<(ContactKey, ContactChange)>,
    ) -> Result<(), StoreError> {
        if changes.is_empty() {
            return Ok(());
        }
        let now = crate::model::now_ms();
        let mut p = redis::pipe();
        let mut uses_script = false;
        for (k, c) in &changes {
            let key = contact_key("ct", k);
            match c {
                ContactChange::Dead => {
                    p.cmd("HSET").arg(&key).arg("d").arg(now).ignore();
                }
                ContactChange::Alive => {
                    p.cmd("HDEL").arg(&key).arg("d").ignore();
                }
                ContactChange::OptOut => {
                    p.cmd("HSET").arg(&key).arg("o").arg(now).ignore();
                }
                ContactChange::OptIn => {
                    p.cmd("HDEL").arg(&key).arg("o").ignore();
                }
                ContactChange::Inbound(at) => {
                    let mut inv = self.scripts.inbound.prepare_invoke();
                    inv.key(&key).arg(*at).arg(CONTACT_KEEP_MS);
                    p.invoke_script(&inv).ignore();
                    uses_script = true;
                    continue;
                }
            }
            p.cmd("PEXPIRE").arg(&key).arg(CONTACT_KEEP_MS).ignore();
        }
        if uses_script {
            // Cheap when loaded already; after a Redis restart it puts the script back.
            let mut load = redis::pipe();
            load.load_script(&self.scripts.inbound);
            self.query(&load).await?;
        }
        self.query(&p).await.map(|_| ())
    }

    async fn waiting(&self, limit: usize) -> Result<Vec<(Notification, usize)>, StoreError> {
        // Which ids: a look at the head of every lane and delayed set, one round trip.
        let mut p = redis::pipe();
        let mut keys = Vec::new();
        for s in 0..self.shards {
            for c in Channel::ALL {
                for pr in Priority::ALL {
                    p.cmd("XRANGE")
                        .arg(format!("{}ready:{}:{}", prefix(s), c.name(), pr.number()))
                        .arg("-")
                        .arg("+")
                        .arg("COUNT")
                        .arg(limit);
                    keys.push(s);
                }
            }
            p.cmd("ZRANGE")
                .arg(format!("{}delayed", prefix(s)))
                .arg(0)
                .arg(limit.saturating_sub(1));
            keys.push(s);
        }
        let mut ids: Vec<(u16, String)> = Vec::new();
        for (s, v) in keys.into_iter().zip(self.query(&p).await?) {
            if ids.len() >= limit {
                break;
            }
            match &v {
                Value::Array(items)
                    if items.first().is_some_and(|i| matches!(i, Value::Array(_))) =>
                {
                    let rows: Vec<(String, HashMap<String, String>)> = parse(v)?;
                    ids.extend(
                        rows.into_iter()
                            .filter_map(|(_, f)| f.get("id").cloned())
                            .map(|id| (s, id)),
                    );
                }
                _ => {
                    let members: Vec<String> = parse(v)?;
                    ids.extend(members.into_iter().map(|id| (s, id)));
                }
            }
        }
        ids.truncate(limit);
        if ids.is_empty() {
            return Ok(Vec::new());
        }
        let mut p = redis::pipe();
        for (s, id) in &ids {
            p.cmd("HMGET")
                .arg(format!("{}n:{id}", prefix(*s)))
                .arg("d")
                .arg("ri")
                .arg("cn")
                .arg("cmp")
                .arg("lb")
                .arg(&RECORD_PARTS[..])
                .arg("s");
        }
        type Row = (
            Option<Vec<u8>>,
            Option<String>,
            Option<String>,
            Option<String>,
            Option<Vec<u8>>,
            Option<Vec<u8>>,
            Option<Vec<u8>>,
            Option<Vec<u8>>,
            Option<String>,
        );
        // A lane's head may still hold entries already acknowledged (a stream is trimmed by
        // whole nodes), its pending entries are being sent, and a canceled notification stays
        // there until a worker meets it: only what is accepted, scheduled, queued or retrying
        // waits.
        let waits = |s: Option<&str>| {
            s.and_then(|s| s.parse::<u8>().ok())
                .is_some_and(|n| matches!(n, 1 | 2 | 3 | 5))
        };
        let replies = self.query(&p).await?;
        // Records not in keys of their own may be packed: one more round trip for those.
        let mut missing = Vec::new();
        let mut found = Vec::with_capacity(ids.len());
        for (v, (s, id)) in replies.into_iter().zip(&ids) {
            let row: Row = parse(v)?;
            if row.0.is_none() {
                missing.push((*s, id.as_str()));
            }
            found.push(row);
        }
        let mut packed = self.packed(&missing).await?.into_iter();
        let mut rows = Vec::with_capacity(ids.len());
        for ((blob, ri, cn, cmp, lb, d1, d2, d3, st), (s, id)) in found.into_iter().zip(&ids) {
            if let Some(blob) = blob {
                if !waits(st.as_deref()) {
                    continue;
                }
                let blob = join_parts(blob, [d1, d2, d3]);
                let cn = cn.unwrap_or_default();
                rows.push((*s, id, blob, ri, cn, cmp.unwrap_or_default(), lb));
            } else if let Some(rec) = packed.next().flatten() {
                let field = |k: &str| rec.get(k).map(text).unwrap_or_default();
                if !waits(Some(&field("s"))) {
                    continue;
                }
                let blob = rec.get("d").map(bytes).unwrap_or_default();
                let lb = rec.get("lb").map(bytes);
                rows.push((*s, id, blob, None, field("cn"), field("cmp"), lb));
            }
        }
        // The shared contents they name: one round trip per shard at most.
        let mut contents = HashMap::new();
        for shard in 0..self.shards {
            let hashes: Vec<String> = rows
                .iter()
                .filter(|r| r.0 == shard && !r.4.is_empty())
                .map(|r| r.4.clone())
                .collect();
            if !hashes.is_empty() {
                contents.extend(self.contents(shard, &hashes).await?);
            }
        }
        let mut out = Vec::with_capacity(rows.len());
        for (_, id, blob, ri, cn, cmp, lb) in rows {
            let lb = lb.unwrap_or_default();
            let n = restore(id, &blob, &cmp, &lb, &cn, &contents)?;
            out.push((n, ri.and_then(|r| r.parse().ok()).unwrap_or(0)));
        }
        Ok(out)
    }

    async fn heartbeat(
        &self,
        instance: &str,
        now: Millis,
        window: Millis,
    ) -> Result<u32, StoreError> {
        let mut p = redis::pipe();
        p.cmd("ZADD")
            .arg(INSTANCES_KEY)
            .arg(now)
            .arg(instance)
            .ignore();
        p.cmd("ZREMRANGEBYSCORE")
            .arg(INSTANCES_KEY)
            .arg("-inf")
            .arg(now - window)
            .ignore();
        p.cmd("ZCARD").arg(INSTANCES_KEY);
        let v = self.query(&p).await?.pop().unwrap_or(Value::Nil);
        Ok(parse::<u32>(v)?.max(1))
    }

    async fn budget_spent(&self, keys: &[String]) -> Result<Vec<i64>, StoreError> {
        if keys.is_empty() {
            return Ok(Vec::new());
        }
        let mut p = redis::pipe();
        for k in keys {
            p.cmd("GET").arg(format!("herald:budget:{{{k}}}"));
        }
        Ok(self
            .query_w(&p, READ_AROUND_GATE)
            .await?
            .iter()
            .map(|v| text(v).parse().unwrap_or(0))
            .collect())
    }

    async fn recent_sends(&self, keys: &[(String, Millis)]) -> Result<Vec<u64>, StoreError> {
        if keys.is_empty() {
            return Ok(Vec::new());
        }
        let mut p = redis::pipe();
        for (k, since) in keys {
            p.cmd("ZCOUNT")
                .arg(format!("herald:recent:{{{k}}}"))
                .arg(*since)
                .arg("+inf");
        }
        self.query_w(&p, READ_AROUND_GATE)
            .await?
            .into_iter()
            .map(parse)
            .collect()
    }

    async fn policy(&self) -> Result<Option<super::PolicyRecord>, StoreError> {
        let mut p = redis::pipe();
        p.cmd("HGETALL").arg(POLICY_CURRENT);
        let f = pairs(self.query(&p).await?.pop().unwrap_or(Value::Nil));
        let g = |k: &str| f.get(k).map(text).unwrap_or_default();
        let version: u64 = g("v").parse().unwrap_or(0);
        if version == 0 {
            return Ok(None);
        }
        Ok(Some(super::PolicyRecord {
            version,
            document: g("doc"),
            author: g("author"),
            applied_at: g("at").parse().unwrap_or(0),
            diff: g("diff"),
        }))
    }

    async fn policy_version(&self) -> Result<u64, StoreError> {
        let mut p = redis::pipe();
        p.cmd("HGET").arg(POLICY_CURRENT).arg("v");
        let v = self.query(&p).await?.pop().unwrap_or(Value::Nil);
        Ok(text(&v).parse().unwrap_or(0))
    }

    async fn apply_policy(
        &self,
        expected_version: Option<u64>,
        document: String,
        author: String,
        diff: String,
        now: Millis,
    ) -> Result<super::PolicyApplied, StoreError> {
        let args = vec![
            expected_version.map(arg).unwrap_or_default(),
            document.into_bytes(),
            author.into_bytes(),
            diff.into_bytes(),
            arg(now),
            arg(POLICY_HISTORY_KEY),
            arg(super::POLICY_HISTORY),
        ];
        let v = self
            .run(vec![(
                &self.scripts.apply_policy,
                POLICY_CURRENT.as_bytes().to_vec(),
                args,
            )])
            .await?
            .pop()
            .unwrap_or(Value::Nil);
        let (applied, version): (u8, u64) = parse(v)?;
        Ok(if applied == 1 {
            super::PolicyApplied::Applied { version }
        } else {
            super::PolicyApplied::Stale { current: version }
        })
    }

    async fn paused(&self) -> Result<BTreeMap<Channel, String>, StoreError> {
        let mut p = redis::pipe();
        p.cmd("HGETALL").arg(PAUSED_KEY);
        let f = pairs(self.query(&p).await?.pop().unwrap_or(Value::Nil));
        Ok(f.into_iter()
            .filter_map(|(k, v)| Channel::from_name(&k).map(|c| (c, text(&v))))
            .collect())
    }

    async fn set_paused(&self, channel: Channel, reason: Option<String>) -> Result<(), StoreError> {
        let mut p = redis::pipe();
        match reason {
            Some(r) => p.cmd("HSET").arg(PAUSED_KEY).arg(channel.name()).arg(r),
            None => p.cmd("HDEL").arg(PAUSED_KEY).arg(channel.name()),
        };
        self.query(&p).await.map(|_| ())
    }

    async fn policy_history(&self, limit: usize) -> Result<Vec<super::PolicyRecord>, StoreError> {
        let mut p = redis::pipe();
        p.cmd("LRANGE")
            .arg(POLICY_HISTORY_KEY)
            .arg(0)
            .arg(limit.saturating_sub(1));
        let rows: Vec<String> = parse(self.query(&p).await?.pop().unwrap_or(Value::Nil))?;
        rows.iter()
            .map(|r| {
                serde_json::from_str(r)
                    .map_err(|e| StoreError::Internal(format!("corrupt policy history: {e}")))
            })
            .collect()
    }

    async fn sent_before(
        &self,
        key: &ContactKey,
        watermark: Millis,
    ) -> Result<Vec<String>, StoreError> {
        let mut p = redis::pipe();
        p.cmd("ZRANGEBYSCORE")
            .arg(contact_key("wm", key))
            .arg("-inf")
            .arg(watermark);
        let v = self.query(&p).await?.pop().unwrap_or(Value::Nil);
        parse(v)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fields(kv: &[(&str, &str)]) -> HashMap<String, Value> {
        kv.iter()
            .map(|(k, v)| (k.to_string(), Value::BulkString(v.as_bytes().to_vec())))
            .collect()
    }

    #[test]
    fn receipt_entries_are_read_in_both_formats() {
        let packed = fields(&[
            ("id", "01ABC-0"),
            (
                "r",
                "7\u{1f}webhook\u{1f}1700\u{1f}pid-1\u{1f}\u{1f}\u{1f}2\u{1f}150\u{1f}EUR",
            ),
            ("cmp", "spring"),
            ("lb", ""),
        ]);
        let old = fields(&[
            ("id", "01ABC-0"),
            ("st", "7"),
            ("ch", "webhook"),
            ("at", "1700"),
            ("pid", "pid-1"),
            ("ec", ""),
            ("code", ""),
            ("att", "2"),
            ("cost", "150"),
            ("cur", "EUR"),
            ("cmp", "spring"),
            ("lb", ""),
        ]);
        let a = decode_receipt(packed, "c1".into()).expect("packed entry");
        let b = decode_receipt(old, "c1".into()).expect("old entry");
        for r in [&a, &b] {
            assert_eq!(r.notification_id, "01ABC-0");
            assert_eq!(r.campaign_id, "spring");
            assert_eq!(r.status, Status::Delivered);
            assert_eq!(r.channel, Some(Channel::Webhook));
            assert_eq!((r.at, r.attempt, r.cost_micros), (1700, 2, 150));
            assert_eq!(
                (r.provider_id.as_str(), r.currency.as_str()),
                ("pid-1", "EUR")
            );
            assert_eq!(r.error_class, None);
            assert_eq!(r.cursor, "c1");
        }
        // Too few parts, or no status: not a receipt.
        assert!(
            decode_receipt(fields(&[("id", "x"), ("r", "7\u{1f}webhook")]), "c".into()).is_none()
        );
        assert!(decode_receipt(fields(&[("id", "x")]), "c".into()).is_none());
    }

    #[tokio::test]
    async fn the_work_gate_holds_back_bulk_work_and_lets_the_high_lane_pass() {
        let gate = WorkGate::new(8);
        // Two turns of the biggest size (half the gate each) fill it.
        let a = gate.enter(100).await.expect("open");
        let b = gate.enter(4).await.expect("open");
        assert!(a.is_some() && b.is_some());
        let blocked = tokio::time::timeout(Duration::from_millis(50), gate.enter(1)).await;
        assert!(blocked.is_err(), "a full gate lets more work in");
        let high = tokio::time::timeout(
            Duration::from_millis(50),
            super::super::high_lane(gate.enter(1)),
        )
        .await
        .expect("the HIGH lane waited behind BULK work")
        .expect("open");
        assert!(high.is_none(), "the HIGH lane took room in the gate");
        drop(b);
        let c = tokio::time::timeout(Duration::from_millis(500), gate.enter(4))
            .await
            .expect("room freed by an answer is taken")
            .expect("open");
        assert!(c.is_some());
    }

    #[test]
    fn cursors_round_trip() {
        let pos = vec!["1-0".to_string(), "0-0".to_string()];
        let c = encode_cursor(&pos);
        assert_eq!(decode_cursor(&c, 2).expect("valid"), pos);
        assert!(decode_cursor(&c, 3).is_err());
        assert!(decode_cursor("garbage", 2).is_err());
    }

    #[test]
    fn entry_ids_sort_numerically() {
        assert!(entry_id("10-0") > entry_id("9-5"));
        assert!(entry_id("10-2") > entry_id("10-1"));
    }
}
