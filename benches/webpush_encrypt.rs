//! RFC 8291 `aes128gcm` encryption of one Web Push message for one subscription: a fresh
//! ephemeral P-256 key and ECDH, HKDF with the subscription's auth secret, AES-128-GCM.
//! This is per subscription, per send: the costliest pure step of the webpush channel.

use std::hint::black_box;

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use herald::channels::webpush::{self, OVERHEAD_BYTES};
use herald::model::WebPushSubscription;
use p256::elliptic_curve::sec1::ToEncodedPoint;

/// The user agent of RFC 8291 §5 (its private key and auth secret), so the fixture is the
/// specification's own.
const UA_PRIVATE: &str = "q1dXpw3UpT5VOmu_cf_v6ih07Aems3njxI-JWgLcM94";
const UA_AUTH: &str = "BTBZMqHH6r4Tts7J_aSIgg";

fn subscription() -> WebPushSubscription {
    let key = URL_SAFE_NO_PAD
        .decode(UA_PRIVATE)
        .expect("the RFC's key is base64url");
    let ua = p256::SecretKey::from_slice(&key).expect("the RFC's key is a P-256 key");
    WebPushSubscription {
        endpoint: "https://push.example.net/push/JzLQ3raZJfFBR0aqvOMsLrt54w4rJUsV".into(),
        p256dh: URL_SAFE_NO_PAD.encode(ua.public_key().to_encoded_point(false).as_bytes()),
        auth: UA_AUTH.into(),
    }
}

fn bench(c: &mut Criterion) {
    let sub = subscription();
    // 1 KB of JSON-like plaintext.
    let plaintext: Vec<u8> = br#"{"notification_id":"01JPBX3K9W5T7R2M4N6P8Q0S1V-3","title":"Your parcel is on its way","body":""#
        .iter()
        .copied()
        .chain(std::iter::repeat_n(b'x', 1024))
        .take(1024)
        .collect();
    assert_eq!(plaintext.len(), 1024);
    let body = webpush::encrypt(&plaintext, &sub).expect("the subscription's keys are valid");
    assert_eq!(body.len(), plaintext.len() + OVERHEAD_BYTES);

    let mut g = c.benchmark_group("webpush_encrypt");
    g.throughput(Throughput::Bytes(plaintext.len() as u64));
    g.bench_function("aes128gcm_1k", |b| {
        b.iter(|| webpush::encrypt(black_box(&plaintext), black_box(&sub)))
    });
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
