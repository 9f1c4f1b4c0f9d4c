//! The accept path without the store: what `Dispatch.Send` and `Dispatch.SendBatch` do to a
//! request before the one round trip to Redis. `draft_from_proto` (proto → domain, unknown
//! enums refused) then `Ingest::prepare` (validation, route, idempotency fingerprint, id,
//! encoding and its size check).

use std::hint::black_box;
use std::sync::Arc;

use criterion::{criterion_group, criterion_main, BatchSize, Criterion, Throughput};
use herald::api::convert::draft_from_proto;
use herald::config::IngestConfig;
use herald::ingest::{Ingest, IngestError};
use herald::model::{now_ms, Channel, Millis};
use herald::proto;
use herald::store::{MemoryStore, NewNotification};

const TENANT: &str = "default";

fn ingest() -> Ingest {
    Ingest::new(
        Arc::new(MemoryStore::default()),
        IngestConfig::default(),
        vec![
            Channel::Sandbox,
            Channel::Webhook,
            Channel::Sms,
            Channel::Email,
        ],
        vec![Channel::Webhook],
    )
    .https_webhooks_only(true)
}

/// A typical transactional send: three channels, an idempotency key, labels, an action.
fn valid(i: usize) -> proto::SendRequest {
    proto::SendRequest {
        idempotency_key: format!("order-{i}-shipped"),
        campaign_id: "orders".into(),
        labels: [
            ("team".to_string(), "logistics".to_string()),
            ("order".to_string(), i.to_string()),
        ]
        .into_iter()
        .collect(),
        recipient: Some(proto::Recipient {
            contact_id: format!("c-{i}"),
            phone: "+14155550123".into(),
            email: "ann@example.org".into(),
            webhook_url: "https://example.com/hooks/herald".into(),
            timezone: "Europe/Paris".into(),
            ..Default::default()
        }),
        channels: vec![
            proto::Channel::Webhook as i32,
            proto::Channel::Sms as i32,
            proto::Channel::Email as i32,
        ],
        content: Some(proto::Content {
            title: "Your parcel is on its way".into(),
            body: "Order 42 left our warehouse this morning and arrives on Tuesday.".into(),
            actions: vec![proto::Action {
                label: "Track".into(),
                url: "https://shop.example/track/42".into(),
            }],
            data: [("order".to_string(), "42".to_string())]
                .into_iter()
                .collect(),
            ..Default::default()
        }),
        category: proto::Category::Transactional as i32,
        priority: proto::Priority::High as i32,
        ..Default::default()
    }
}

/// Converts (known enums) but fails validation on four fields: a phone that is not E.164, an
/// email without a domain, an http webhook on an https-only deployment, a channel not enabled.
fn invalid() -> proto::SendRequest {
    let mut r = valid(0);
    if let Some(rec) = r.recipient.as_mut() {
        rec.phone = "555-1234".into();
        rec.email = "ann@localhost".into();
        rec.webhook_url = "http://example.com/hooks/herald".into();
    }
    r.channels.push(proto::Channel::Apns as i32);
    r
}

/// What `Dispatch.Send` does before the store.
fn send(
    ingest: &Ingest,
    r: proto::SendRequest,
    now: Millis,
) -> Result<NewNotification, IngestError> {
    let draft = draft_from_proto(r, "")?;
    ingest.prepare(TENANT, draft, now)
}

fn bench(c: &mut Criterion) {
    let ingest = ingest();
    let now = now_ms();
    assert!(
        send(&ingest, valid(0), now).is_ok(),
        "the valid fixture passes"
    );
    assert!(
        matches!(send(&ingest, invalid(), now), Err(IngestError::Invalid(v)) if v.len() == 4),
        "the invalid fixture fails on four fields"
    );

    let mut g = c.benchmark_group("ingest");
    g.throughput(Throughput::Elements(1));
    let request = valid(0);
    g.bench_function("send_valid", |b| {
        b.iter_batched(
            || request.clone(),
            |r| black_box(send(&ingest, black_box(r), now)),
            BatchSize::SmallInput,
        )
    });
    let request = invalid();
    g.bench_function("send_invalid", |b| {
        b.iter_batched(
            || request.clone(),
            |r| black_box(send(&ingest, black_box(r), now)),
            BatchSize::SmallInput,
        )
    });

    // `Dispatch.SendBatch` of 1,000 items: each converted with its `items[i].` prefix, then
    // prepared (the per-item results the store call is built from).
    const BATCH: usize = 1_000;
    let batch = proto::SendBatchRequest {
        items: (0..BATCH).map(valid).collect(),
    };
    g.throughput(Throughput::Elements(BATCH as u64));
    g.bench_function("send_batch_1000", |b| {
        b.iter_batched(
            || batch.clone(),
            |batch| {
                let prepared: Vec<Result<NewNotification, IngestError>> = black_box(batch)
                    .items
                    .into_iter()
                    .enumerate()
                    .map(|(i, r)| {
                        draft_from_proto(r, &format!("items[{i}]."))
                            .and_then(|d| ingest.prepare(TENANT, d, now))
                    })
                    .collect();
                black_box(prepared)
            },
            BatchSize::LargeInput,
        )
    });
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
