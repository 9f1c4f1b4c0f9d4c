//! API keys (`auth.api_keys_file`): authentication, scopes, tenants and live reload, against
//! a real Redis.

use std::path::Path;
use std::time::Duration;

use herald::config::HumanDuration;
use herald::proto;
use herald::proto::admin_client::AdminClient;
use herald::proto::dispatch_client::DispatchClient;
use tonic::service::interceptor::InterceptedService;
use tonic::transport::Channel as GrpcChannel;
use tonic::{Code, Request, Status};

use crate::harness::{eventually, RedisServer, Sink};
use crate::support::*;

const SENDER: &str = "hk_acme_sender_0123456789abcdef";
const READER: &str = "hk_acme_reader_0123456789abcdef";
const GLOBEX: &str = "hk_globex_both_0123456789abcdef";
const OPS: &str = "hk_ops_admin_0123456789abcdefgh";

/// Puts the key into every call's metadata.
type Hook = Box<dyn FnMut(Request<()>) -> Result<Request<()>, Status> + Send + Sync>;
type Intercepted = InterceptedService<GrpcChannel, Hook>;

fn bearer(key: &str) -> Hook {
    let value: tonic::metadata::AsciiMetadataValue =
        format!("Bearer {key}").parse().expect("ascii key");
    Box::new(move |mut req: Request<()>| {
        req.metadata_mut().insert("authorization", value.clone());
        Ok(req)
    })
}

fn channel(h: &Herald) -> GrpcChannel {
    GrpcChannel::from_shared(h.grpc_url.clone())
        .expect("url")
        .connect_lazy()
}

fn dispatch(h: &Herald, key: &str) -> DispatchClient<Intercepted> {
    DispatchClient::with_interceptor(channel(h), bearer(key))
}

fn admin(h: &Herald, key: &str) -> AdminClient<Intercepted> {
    AdminClient::with_interceptor(channel(h), bearer(key))
}

fn keys_file(dir: &Path, body: &str) -> std::path::PathBuf {
    let p = dir.join("keys.toml");
    std::fs::write(&p, body).expect("write keys file");
    p
}

fn entry(name: &str, tenant: &str, key: &str, scopes: &str) -> String {
    let hash = herald::model::hex(&herald::api::auth::key_hash(key));
    format!("[[keys]]\nname = \"{name}\"\ntenant = \"{tenant}\"\nsha256 = \"{hash}\"\nscopes = {scopes}\n")
}

fn get(id: &str) -> proto::GetNotificationRequest {
    proto::GetNotificationRequest {
        notification_id: id.to_string(),
    }
}

#[tokio::test]
async fn api_keys_authenticate_callers_check_scopes_and_keep_tenants_apart() {
    let redis = RedisServer::start();
    let sink = Sink::start().await;
    let dir = tempfile::tempdir().expect("tempdir");
    let doc = [
        entry("acme-sender", "acme", SENDER, "[\"send\"]"),
        entry("acme-reader", "acme", READER, "[\"read\", \"send\"]"),
        entry("globex", "globex", GLOBEX, "[\"send\", \"read\"]"),
        entry("ops", "default", OPS, "[\"admin\"]"),
    ]
    .concat();
    let mut cfg = test_config(Some(redis.url()));
    cfg.auth.api_keys_file = Some(keys_file(dir.path(), &doc));
    let h = Herald::start(cfg).await;
    let req = || {
        let mut r = webhook_request(&sink.url("/hook"), "Your parcel is on its way");
        r.idempotency_key = "order-1".into();
        r
    };

    // No key, an empty one, an unknown one: nothing is stored.
    let e = h.client().send(req()).await.expect_err("no key");
    assert_eq!(e.code(), Code::Unauthenticated, "{e:?}");
    let e = dispatch(&h, "hk_not_a_key_0123456789abcdef")
        .send(req())
        .await
        .expect_err("unknown key");
    assert_eq!(e.code(), Code::Unauthenticated, "{e:?}");
    let e = dispatch(&h, "").send(req()).await.expect_err("empty key");
    assert_eq!(e.code(), Code::Unauthenticated, "{e:?}");
    let e = h
        .client()
        .get_notification(get("01J00000000000000000000000-0"))
        .await
        .expect_err("no key");
    assert_eq!(e.code(), Code::Unauthenticated, "{e:?}");
    for pattern in ["herald:*:n:*", "herald:*:idem:*"] {
        assert_eq!(
            redis.cmd(&["KEYS", pattern]),
            "",
            "nothing stored ({pattern})"
        );
    }

    // A send-only key sends, and may neither read nor administer.
    let a = dispatch(&h, SENDER)
        .send(req())
        .await
        .expect("acme sends")
        .into_inner();
    assert!(!a.duplicate);
    assert!(
        redis
            .cmd(&["KEYS", "herald:*:idem:*"])
            .contains(":idem:acme:order-1"),
        "the idempotency key is the tenant's"
    );
    let e = dispatch(&h, SENDER)
        .get_notification(get(&a.notification_id))
        .await
        .expect_err("send-only key reads");
    assert_eq!(e.code(), Code::PermissionDenied, "{e:?}");
    assert!(e.message().contains("read"), "{}", e.message());
    let e = admin(&h, SENDER)
        .get_policy(proto::GetPolicyRequest {})
        .await
        .expect_err("send-only key administers");
    assert_eq!(e.code(), Code::PermissionDenied, "{e:?}");

    // Another key of the same tenant reads it, and its idempotency key is the tenant's.
    let n = dispatch(&h, READER)
        .get_notification(get(&a.notification_id))
        .await
        .expect("acme reads its own")
        .into_inner();
    assert_eq!(n.notification_id, a.notification_id);
    let again = dispatch(&h, READER)
        .send(req())
        .await
        .expect("acme repeats")
        .into_inner();
    assert!(again.duplicate);
    assert_eq!(again.notification_id, a.notification_id);

    // Another tenant: the same idempotency key is a new notification, and acme's is as
    // unknown to it as an id that does not exist, for reading and for cancelling.
    let b = dispatch(&h, GLOBEX)
        .send(req())
        .await
        .expect("globex sends")
        .into_inner();
    assert!(!b.duplicate);
    assert_ne!(b.notification_id, a.notification_id);
    let e = dispatch(&h, GLOBEX)
        .get_notification(get(&a.notification_id))
        .await
        .expect_err("globex reads acme's");
    assert_eq!(e.code(), Code::NotFound, "{e:?}");
    let e = dispatch(&h, GLOBEX)
        .cancel(proto::CancelRequest {
            target: Some(proto::cancel_request::Target::NotificationId(
                a.notification_id.clone(),
            )),
        })
        .await
        .expect_err("globex cancels acme's");
    assert_eq!(e.code(), Code::NotFound, "{e:?}");
    assert!(sink.wait_for_count(2, Duration::from_secs(10)).await);
    let n = dispatch(&h, READER)
        .get_notification(get(&a.notification_id))
        .await
        .expect("acme reads")
        .into_inner();
    assert_ne!(n.status, proto::Status::Canceled as i32, "{n:?}");

    // The admin key administers (and only that).
    admin(&h, OPS)
        .get_policy(proto::GetPolicyRequest {})
        .await
        .expect("admin reads the policy");
    let e = dispatch(&h, OPS)
        .send(req())
        .await
        .expect_err("admin sends");
    assert_eq!(e.code(), Code::PermissionDenied, "{e:?}");
}

#[tokio::test]
async fn a_changed_keys_file_applies_live_and_a_broken_one_leaves_the_keys_in_force() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = keys_file(dir.path(), &entry("one", "acme", SENDER, "[\"send\"]"));
    let mut cfg = test_config(None);
    cfg.auth.api_keys_file = Some(path.clone());
    // The keys file is looked at as often as the policy file.
    cfg.policy.file_check_interval = HumanDuration(Duration::from_millis(200));
    let h = Herald::start(cfg).await;
    let sink = Sink::start().await;
    let req = || webhook_request(&sink.url("/hook"), "hello");
    dispatch(&h, SENDER).send(req()).await.expect("key one");

    // Revoke one, add two (a longer file: its size changes even within one mtime tick).
    std::fs::write(
        &path,
        entry("two-longer-name", "acme", GLOBEX, "[\"send\"]"),
    )
    .expect("rewrite");
    let switched = eventually(Duration::from_secs(15), || async {
        let old = dispatch(&h, SENDER).send(req()).await;
        let new = dispatch(&h, GLOBEX).send(req()).await;
        match (old, new) {
            (Err(e), Ok(_)) if e.code() == Code::Unauthenticated => Some(()),
            _ => None,
        }
    })
    .await;
    assert!(switched.is_some(), "the rewritten keys file did not apply");

    // A broken file is refused (counted in the metrics) and key two keeps working.
    std::fs::write(&path, "[[keys]]\nname = \"three\"\nsha256 = \"not hex\"\n").expect("break");
    let metrics = format!("{}/metrics", h.http_url);
    let refused = eventually(Duration::from_secs(15), || async {
        let text = reqwest::get(&metrics).await.ok()?.text().await.ok()?;
        text.lines()
            .any(|l| l.starts_with("herald_auth_reloads_total{result=\"error\"}"))
            .then_some(())
    })
    .await;
    assert!(refused.is_some(), "the broken keys file was not noticed");
    dispatch(&h, GLOBEX)
        .send(req())
        .await
        .expect("key two still in force");
}

#[tokio::test]
async fn a_bad_keys_file_stops_the_start_naming_the_key() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut cfg = test_config(None);
    cfg.auth.api_keys_file = Some(keys_file(
        dir.path(),
        "[[keys]]\nname = \"a\"\nkey = \"hk_0123456789abcdefghijkl\"\nscopes = [\"sned\"]\n",
    ));
    let err = match herald::app::start(cfg).await {
        Ok(_) => panic!("started with a bad keys file"),
        Err(e) => format!("{e:#}"),
    };
    assert!(err.contains("keys[0].scopes[0]"), "{err}");
    assert!(err.contains("sned"), "{err}");
    let mut cfg = test_config(None);
    cfg.auth.api_keys_file = Some(dir.path().join("missing.toml"));
    let err = match herald::app::start(cfg).await {
        Ok(_) => panic!("started without its keys file"),
        Err(e) => format!("{e:#}"),
    };
    assert!(err.contains("auth.api_keys_file"), "{err}");
}
