//! API keys: who is calling, for which tenant, allowed to do what.
//!
//! `auth.api_keys_file` names a TOML file of keys:
//!
//! ```toml
//! [[keys]]
//! name = "billing"                 # in logs and metrics; never the key itself
//! tenant = "acme"                  # idempotency keys and budgets are per tenant
//! sha256 = "9f86d0…"               # hex SHA-256 of the key (`herald key new` prints one)
//! scopes = ["send", "read"]        # send | read | admin
//! ```
//!
//! A caller presents its key as `authorization: Bearer <key>`. The file is read again when it
//! changes, so a key is added or revoked without a restart; a file that does not parse leaves
//! the keys in force as they were. Without the file every caller is tenant `default` with
//! every scope (development only, logged loudly at start).

use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use arc_swap::ArcSwap;
use serde::Deserialize;
use sha2::{Digest, Sha256};
use tokio_util::sync::CancellationToken;
use tonic::metadata::MetadataMap;
use tonic::{Request, Status};
use tracing::{error, info};

/// The tenant of every caller when no keys are configured.
pub const DEFAULT_TENANT: &str = "default";

/// What a key may do.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scope {
    /// `Send`, `SendBatch`, `SendStream`, `Cancel`.
    Send,
    /// `GetNotification`, `WatchReceipts`, `GetCampaign`.
    Read,
    /// Every `Admin` method.
    Admin,
}

impl Scope {
    fn bit(self) -> u8 {
        match self {
            Scope::Send => 1,
            Scope::Read => 2,
            Scope::Admin => 4,
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Scope::Send => "send",
            Scope::Read => "read",
            Scope::Admin => "admin",
        }
    }

    fn parse(s: &str) -> Option<Scope> {
        match s {
            "send" => Some(Scope::Send),
            "read" => Some(Scope::Read),
            "admin" => Some(Scope::Admin),
            _ => None,
        }
    }
}

/// The authenticated caller of one request (a request extension).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Caller {
    /// The key's name.
    pub name: String,
    pub tenant: String,
    scopes: u8,
}

impl Caller {
    pub fn new(name: &str, tenant: &str, scopes: &[Scope]) -> Self {
        Self {
            name: name.to_string(),
            tenant: tenant.to_string(),
            scopes: scopes.iter().fold(0, |m, s| m | s.bit()),
        }
    }

    /// Everyone, when no keys are configured.
    pub fn open() -> Self {
        Self::new(
            "anonymous",
            DEFAULT_TENANT,
            &[Scope::Send, Scope::Read, Scope::Admin],
        )
    }

    pub fn allows(&self, scope: Scope) -> bool {
        self.scopes & scope.bit() != 0
    }
}

/// The caller of `req` if it may use `scope`. The interceptor put it there; a request without
/// one is refused (fail closed).
pub fn authorize<T>(req: &Request<T>, scope: Scope) -> Result<Arc<Caller>, Status> {
    let caller = req
        .extensions()
        .get::<Arc<Caller>>()
        .cloned()
        .ok_or_else(|| Status::unauthenticated("no credentials were checked for this call"))?;
    if !caller.allows(scope) {
        metrics::counter!("herald_auth_denied_total", "reason" => "scope").increment(1);
        return Err(Status::permission_denied(format!(
            "API key {:?} lacks the {:?} scope this call needs",
            caller.name,
            scope.name()
        )));
    }
    Ok(caller)
}

/// A keys file that cannot be used, naming the key at fault.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeysError {
    pub key: String,
    pub message: String,
}

impl std::fmt::Display for KeysError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}: {}", self.key, self.message)
    }
}

impl std::error::Error for KeysError {}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct KeysDoc {
    #[serde(default)]
    keys: Vec<KeyDoc>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct KeyDoc {
    name: String,
    #[serde(default)]
    tenant: Option<String>,
    #[serde(default)]
    sha256: Option<String>,
    #[serde(default)]
    key: Option<String>,
    #[serde(default)]
    scopes: Option<Vec<String>>,
}

/// The keys in force: by the SHA-256 of the key, so a lookup never compares key bytes.
#[derive(Debug, Default)]
pub struct KeyRing {
    by_hash: HashMap<[u8; 32], Arc<Caller>>,
}

/// Shortest key accepted in clear (`key = …`): 128 bits of base64 or hex.
const MIN_KEY_LEN: usize = 22;

impl KeyRing {
    pub fn parse(text: &str) -> Result<KeyRing, KeysError> {
        let doc: KeysDoc = toml::from_str(text).map_err(|e| KeysError {
            key: e
                .span()
                .map(|s| format!("at byte {}", s.start))
                .unwrap_or_else(|| "document".into()),
            message: e.message().to_string(),
        })?;
        let mut by_hash = HashMap::new();
        let mut names = HashSet::new();
        for (i, k) in doc.keys.into_iter().enumerate() {
            let at = |field: &str| format!("keys[{i}].{field}");
            let err = |field: &str, message: String| KeysError {
                key: at(field),
                message,
            };
            if k.name.trim().is_empty() {
                return Err(err("name", "is required".into()));
            }
            if !names.insert(k.name.clone()) {
                return Err(err("name", format!("{:?} names two keys", k.name)));
            }
            let tenant = k.tenant.unwrap_or_else(|| DEFAULT_TENANT.to_string());
            if tenant.is_empty()
                || tenant.len() > 64
                || !tenant
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
            {
                return Err(err(
                    "tenant",
                    format!("{tenant:?} is not 1–64 of A–Z a–z 0–9 - _ ."),
                ));
            }
            let hash = match (k.sha256, k.key) {
                (Some(h), None) => parse_sha256(&h)
                    .ok_or_else(|| err("sha256", "is not 64 hex digits (a SHA-256)".to_string()))?,
                (None, Some(key)) => {
                    if key.len() < MIN_KEY_LEN {
                        return Err(err(
                            "key",
                            format!("is shorter than {MIN_KEY_LEN} characters"),
                        ));
                    }
                    key_hash(&key)
                }
                (Some(_), Some(_)) => {
                    return Err(err("sha256", "give sha256 or key, not both".into()))
                }
                (None, None) => return Err(err("sha256", "give sha256 (or key)".into())),
            };
            let scope_names = k
                .scopes
                .unwrap_or_else(|| vec!["send".to_string(), "read".to_string()]);
            if scope_names.is_empty() {
                return Err(err("scopes", "is empty: the key could do nothing".into()));
            }
            let mut scopes = Vec::new();
            for (j, s) in scope_names.iter().enumerate() {
                scopes.push(Scope::parse(s).ok_or_else(|| {
                    err(
                        &format!("scopes[{j}]"),
                        format!("unknown scope {s:?} (send, read, admin)"),
                    )
                })?);
            }
            let caller = Arc::new(Caller::new(&k.name, &tenant, &scopes));
            if by_hash.insert(hash, caller).is_some() {
                return Err(err("sha256", "the same key is given twice".into()));
            }
        }
        Ok(KeyRing { by_hash })
    }

    pub fn len(&self) -> usize {
        self.by_hash.len()
    }

    pub fn is_empty(&self) -> bool {
        self.by_hash.is_empty()
    }

    fn lookup(&self, key: &str) -> Option<Arc<Caller>> {
        self.by_hash.get(&key_hash(key)).cloned()
    }
}

/// The SHA-256 of a key, as keys files hold it.
pub fn key_hash(key: &str) -> [u8; 32] {
    Sha256::digest(key.as_bytes()).into()
}

fn parse_sha256(h: &str) -> Option<[u8; 32]> {
    let h = h.trim();
    if h.len() != 64 {
        return None;
    }
    let mut out = [0u8; 32];
    for (i, pair) in h.as_bytes().chunks(2).enumerate() {
        let s = std::str::from_utf8(pair).ok()?;
        out[i] = u8::from_str_radix(s, 16).ok()?;
    }
    Some(out)
}

/// Checks every gRPC call of `Dispatch` and `Admin` (health and reflection stay open).
#[derive(Clone)]
pub struct Auth {
    ring: Option<Arc<ArcSwap<KeyRing>>>,
    open: Arc<Caller>,
}

impl Auth {
    /// No keys: every caller is [`Caller::open`].
    pub fn disabled() -> Self {
        Self {
            ring: None,
            open: Arc::new(Caller::open()),
        }
    }

    pub fn with_keys(ring: KeyRing) -> Self {
        Self {
            ring: Some(Arc::new(ArcSwap::from_pointee(ring))),
            open: Arc::new(Caller::open()),
        }
    }

    /// Reads the keys file; an error names the file and the key at fault.
    pub fn load(path: &Path) -> anyhow::Result<Self> {
        Ok(Self::with_keys(read_ring(path)?))
    }

    pub fn enabled(&self) -> bool {
        self.ring.is_some()
    }

    /// Replaces the keys in force.
    pub fn replace(&self, ring: KeyRing) {
        if let Some(r) = &self.ring {
            r.store(Arc::new(ring));
        }
    }

    /// The caller that `metadata` authenticates.
    pub fn check(&self, metadata: &MetadataMap) -> Result<Arc<Caller>, Status> {
        let Some(ring) = &self.ring else {
            return Ok(self.open.clone());
        };
        let denied = |reason: &'static str, msg: &str| {
            metrics::counter!("herald_auth_denied_total", "reason" => reason).increment(1);
            Status::unauthenticated(msg)
        };
        let Some(value) = metadata.get("authorization") else {
            return Err(denied(
                "missing",
                "missing authorization metadata: send `authorization: Bearer <API key>`",
            ));
        };
        let key = value
            .to_str()
            .ok()
            .and_then(|v| {
                let (scheme, rest) = v.split_once(' ')?;
                scheme.eq_ignore_ascii_case("bearer").then(|| rest.trim())
            })
            .filter(|k| !k.is_empty())
            .ok_or_else(|| {
                denied(
                    "malformed",
                    "authorization metadata is not `Bearer <API key>`",
                )
            })?;
        ring.load()
            .lookup(key)
            .ok_or_else(|| denied("unknown", "unknown API key"))
    }

    /// Reads `path` again whenever its modification time or size changes (once it has stayed
    /// so for a moment: a file being written is not read half-way) and on SIGHUP, until `stop`.
    pub fn watch(
        &self,
        path: PathBuf,
        every: Duration,
        stop: CancellationToken,
    ) -> tokio::task::JoinHandle<()> {
        let this = self.clone();
        tokio::spawn(async move {
            let mut seen = file_stamp(&path);
            #[cfg(unix)]
            let mut hup =
                tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup()).ok();
            loop {
                #[cfg(unix)]
                let hup_fired = async {
                    match hup.as_mut() {
                        Some(h) => {
                            h.recv().await;
                        }
                        None => std::future::pending::<()>().await,
                    }
                };
                #[cfg(not(unix))]
                let hup_fired = std::future::pending::<()>();
                tokio::select! {
                    _ = stop.cancelled() => return,
                    _ = tokio::time::sleep(every) => {
                        let now = file_stamp(&path);
                        if now == seen {
                            continue;
                        }
                        tokio::time::sleep(crate::live::SETTLE).await;
                        if file_stamp(&path) != now {
                            continue;
                        }
                        seen = now;
                    }
                    _ = hup_fired => {
                        info!(path = %path.display(), "SIGHUP: re-reading the API keys file");
                        seen = file_stamp(&path);
                    }
                }
                this.reload(&path);
            }
        })
    }

    fn reload(&self, path: &Path) {
        match read_ring(path) {
            Ok(ring) => {
                info!(keys = ring.len(), file = %path.display(), "API keys reloaded");
                metrics::counter!("herald_auth_reloads_total", "result" => "ok").increment(1);
                self.replace(ring);
            }
            Err(e) => {
                error!(error = %e, "API keys file not reloaded; the keys in force stay");
                metrics::counter!("herald_auth_reloads_total", "result" => "error").increment(1);
            }
        }
    }
}

fn read_ring(path: &Path) -> anyhow::Result<KeyRing> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| anyhow::anyhow!("auth.api_keys_file {}: {e}", path.display()))?;
    KeyRing::parse(&text).map_err(|e| anyhow::anyhow!("auth.api_keys_file {}: {e}", path.display()))
}

fn file_stamp(path: &Path) -> Option<(SystemTime, u64)> {
    let m = std::fs::metadata(path).ok()?;
    Some((m.modified().ok()?, m.len()))
}

impl tonic::service::Interceptor for Auth {
    fn call(&mut self, mut req: Request<()>) -> Result<Request<()>, Status> {
        let caller = self.check(req.metadata())?;
        req.extensions_mut().insert(caller);
        Ok(req)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const KEY: &str = "hk_test_0123456789abcdefghij";

    fn md(v: &str) -> MetadataMap {
        let mut m = MetadataMap::new();
        m.insert("authorization", v.parse().expect("ascii"));
        m
    }

    fn ring(doc: &str) -> KeyRing {
        KeyRing::parse(doc).expect("valid keys file")
    }

    #[test]
    fn a_key_given_by_its_hash_authenticates_its_tenant_and_scopes() {
        let h = crate::model::hex(&key_hash(KEY));
        let auth = Auth::with_keys(ring(&format!(
            "[[keys]]\nname = \"billing\"\ntenant = \"acme\"\nsha256 = \"{h}\"\nscopes = [\"send\"]\n"
        )));
        let c = auth
            .check(&md(&format!("Bearer {KEY}")))
            .expect("known key");
        assert_eq!(c.name, "billing");
        assert_eq!(c.tenant, "acme");
        assert!(c.allows(Scope::Send));
        assert!(!c.allows(Scope::Read));
        assert!(!c.allows(Scope::Admin));
        // The scheme is case-insensitive, as HTTP's is.
        assert!(auth.check(&md(&format!("bearer {KEY}"))).is_ok());
    }

    #[test]
    fn missing_malformed_and_unknown_keys_are_unauthenticated() {
        let auth = Auth::with_keys(ring(&format!("[[keys]]\nname = \"a\"\nkey = \"{KEY}\"\n")));
        let none = auth.check(&MetadataMap::new()).expect_err("no key");
        assert_eq!(none.code(), tonic::Code::Unauthenticated);
        assert!(
            none.message().contains("authorization"),
            "{}",
            none.message()
        );
        for bad in [
            KEY,
            "Basic abc",
            "Bearer ",
            "Bearer hk_test_wrong_0123456789abcdef",
        ] {
            let e = auth.check(&md(bad)).expect_err(bad);
            assert_eq!(e.code(), tonic::Code::Unauthenticated, "{bad}");
        }
        // A key in clear defaults to tenant `default` and scopes send + read.
        let c = auth.check(&md(&format!("Bearer {KEY}"))).expect("known");
        assert_eq!(c.tenant, DEFAULT_TENANT);
        assert!(c.allows(Scope::Send) && c.allows(Scope::Read) && !c.allows(Scope::Admin));
    }

    #[test]
    fn without_keys_every_caller_is_the_default_tenant_with_every_scope() {
        let c = Auth::disabled().check(&MetadataMap::new()).expect("open");
        assert_eq!(c.tenant, DEFAULT_TENANT);
        assert!(c.allows(Scope::Send) && c.allows(Scope::Read) && c.allows(Scope::Admin));
    }

    #[test]
    fn replacing_the_ring_revokes_and_adds_keys() {
        let other = "hk_test_another_key_0123456789";
        let auth = Auth::with_keys(ring(&format!("[[keys]]\nname = \"a\"\nkey = \"{KEY}\"\n")));
        assert!(auth.check(&md(&format!("Bearer {KEY}"))).is_ok());
        auth.replace(ring(&format!(
            "[[keys]]\nname = \"b\"\nkey = \"{other}\"\n"
        )));
        assert!(auth.check(&md(&format!("Bearer {KEY}"))).is_err());
        assert_eq!(
            auth.check(&md(&format!("Bearer {other}")))
                .expect("new key")
                .name,
            "b"
        );
    }

    #[test]
    fn bad_keys_files_name_the_key_at_fault() {
        let h = crate::model::hex(&key_hash(KEY));
        let cases = [
            ("[[keys]]\nname = \"\"\nkey = \"{K}\"\n", "keys[0].name"),
            (
                "[[keys]]\nname = \"a\"\nkey = \"{K}\"\n[[keys]]\nname = \"a\"\nkey = \"{K}x\"\n",
                "keys[1].name",
            ),
            (
                "[[keys]]\nname = \"a\"\nsha256 = \"abc\"\n",
                "keys[0].sha256",
            ),
            ("[[keys]]\nname = \"a\"\nkey = \"short\"\n", "keys[0].key"),
            ("[[keys]]\nname = \"a\"\n", "keys[0].sha256"),
            (
                "[[keys]]\nname = \"a\"\nkey = \"{K}\"\nsha256 = \"{H}\"\n",
                "keys[0].sha256",
            ),
            (
                "[[keys]]\nname = \"a\"\nkey = \"{K}\"\ntenant = \"a b\"\n",
                "keys[0].tenant",
            ),
            (
                "[[keys]]\nname = \"a\"\nkey = \"{K}\"\nscopes = [\"send\", \"root\"]\n",
                "keys[0].scopes[1]",
            ),
            (
                "[[keys]]\nname = \"a\"\nkey = \"{K}\"\nscopes = []\n",
                "keys[0].scopes",
            ),
            (
                "[[keys]]\nname = \"a\"\nkey = \"{K}\"\n[[keys]]\nname = \"b\"\nsha256 = \"{H}\"\n",
                "keys[1].sha256",
            ),
        ];
        for (doc, key) in cases {
            let doc = doc.replace("{K}", KEY).replace("{H}", &h);
            let e = KeyRing::parse(&doc).expect_err(&doc);
            assert_eq!(e.key, key, "{doc}: {e}");
        }
        let e = KeyRing::parse("[[keys]]\nname = \"a\"\nkye = 1\n").expect_err("typo");
        assert!(e.message.contains("kye"), "{e}");
    }

    #[test]
    fn a_scope_the_caller_lacks_is_permission_denied() {
        let mut req = Request::new(());
        req.extensions_mut()
            .insert(Arc::new(Caller::new("ro", "acme", &[Scope::Read])));
        assert_eq!(authorize(&req, Scope::Read).expect("read").tenant, "acme");
        let e = authorize(&req, Scope::Admin).expect_err("no admin");
        assert_eq!(e.code(), tonic::Code::PermissionDenied);
        assert!(e.message().contains("admin"), "{}", e.message());
        // No caller at all (no interceptor ran): refused.
        let e = authorize(&Request::new(()), Scope::Read).expect_err("unchecked");
        assert_eq!(e.code(), tonic::Code::Unauthenticated);
    }
}
