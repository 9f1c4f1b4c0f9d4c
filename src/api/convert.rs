//! proto ↔ domain conversion. Unknown enum numbers become field violations.

use std::collections::BTreeMap;

use prost_types::Timestamp;

use crate::ingest::{Draft, FieldViolation, IngestError};
use crate::model::{
    self, Action, Category, Channel, Content, ErrorClass, Millis, Priority, Recipient, Status,
    Template, WebPushSubscription,
};
use crate::proto;
use crate::store::{CampaignStats, NotificationView};

pub fn ts_to_ms(t: &Timestamp) -> Millis {
    t.seconds
        .saturating_mul(1000)
        .saturating_add(i64::from(t.nanos) / 1_000_000)
}

pub fn ms_to_ts(ms: Millis) -> Option<Timestamp> {
    (ms > 0).then(|| Timestamp {
        seconds: ms.div_euclid(1000),
        nanos: (ms.rem_euclid(1000) * 1_000_000) as i32,
    })
}

pub fn channel_to_proto(c: Channel) -> i32 {
    i32::from(c.number())
}

pub fn channel_from_proto(n: i32, field: &str) -> Result<Channel, FieldViolation> {
    channel_of(n).ok_or_else(|| FieldViolation::new(field, format!("unknown channel {n}")))
}

fn channel_of(n: i32) -> Option<Channel> {
    u8::try_from(n).ok().and_then(Channel::from_number)
}

pub fn status_to_proto(s: Status) -> i32 {
    i32::from(s.number())
}

pub fn status_from_proto(n: i32, field: &str) -> Result<Status, FieldViolation> {
    u8::try_from(n)
        .ok()
        .and_then(Status::from_number)
        .ok_or_else(|| FieldViolation::new(field, format!("unknown status {n}")))
}

fn class_to_proto(c: Option<ErrorClass>) -> i32 {
    c.map(|c| i32::from(c.number())).unwrap_or(0)
}

/// A proto `SendRequest` as a draft; `prefix` names fields inside a batch (`items[3].`).
pub fn draft_from_proto(r: proto::SendRequest, prefix: &str) -> Result<Draft, IngestError> {
    let mut v = Vec::new();
    let f = |name: &str| format!("{prefix}{name}");
    let mut channels = Vec::with_capacity(r.channels.len());
    for (i, c) in r.channels.iter().enumerate() {
        // The field's name is made only for an error.
        let field = || f(&format!("channels[{i}]"));
        if *c == 0 {
            v.push(FieldViolation::new(
                field(),
                "CHANNEL_UNSPECIFIED is not a channel",
            ));
            continue;
        }
        match channel_of(*c) {
            Some(ch) => channels.push(ch),
            None => v.push(FieldViolation::new(field(), format!("unknown channel {c}"))),
        }
    }
    let category = match r.category {
        0 => None,
        n => match u8::try_from(n).ok().and_then(Category::from_number) {
            Some(c) => Some(c),
            None => {
                v.push(FieldViolation::new(
                    f("category"),
                    format!("unknown category {n}"),
                ));
                None
            }
        },
    };
    let priority = match r.priority {
        0 => None,
        n => match u8::try_from(n).ok().and_then(Priority::from_number) {
            Some(p) => Some(p),
            None => {
                v.push(FieldViolation::new(
                    f("priority"),
                    format!("unknown priority {n}"),
                ));
                None
            }
        },
    };
    let rec = r.recipient.unwrap_or_default();
    let recipient = Recipient {
        contact_id: rec.contact_id,
        messenger_psid: rec.messenger_psid,
        whatsapp_number: rec.whatsapp_number,
        phone: rec.phone,
        email: rec.email,
        apns_tokens: rec.apns_tokens,
        fcm_tokens: rec.fcm_tokens,
        webpush_subscriptions: rec
            .webpush_subscriptions
            .into_iter()
            .map(|s| WebPushSubscription {
                endpoint: s.endpoint,
                p256dh: s.p256dh,
                auth: s.auth,
            })
            .collect(),
        webhook_url: rec.webhook_url,
        timezone: rec.timezone,
        locale: rec.locale,
    };
    let c = r.content.unwrap_or_default();
    let content = Content {
        title: c.title,
        body: c.body,
        image_url: c.image_url,
        actions: c
            .actions
            .into_iter()
            .map(|a| Action {
                label: a.label,
                url: a.url,
            })
            .collect(),
        template: c.template.map(|t| Template {
            name: t.name,
            language: t.language,
            params: t.params,
        }),
        data: c.data.into_iter().collect(),
        messenger_tag: c.messenger_tag,
        collapse_id: c.collapse_id,
    };
    if !v.is_empty() {
        return Err(IngestError::Invalid(v));
    }
    Ok(Draft {
        idempotency_key: r.idempotency_key,
        campaign_id: r.campaign_id,
        labels: r.labels.into_iter().collect(),
        recipient,
        channels,
        content,
        category,
        priority,
        send_at: r.send_at.as_ref().map(ts_to_ms).unwrap_or(0),
        expire_at: r.expire_at.as_ref().map(ts_to_ms).unwrap_or(0),
    })
}

/// Adds `prefix` to every field an error names (batch items).
pub fn prefix_fields(e: IngestError, prefix: &str) -> IngestError {
    match e {
        IngestError::Invalid(v) => IngestError::Invalid(
            v.into_iter()
                .map(|f| FieldViolation::new(format!("{prefix}{}", f.field), f.description))
                .collect(),
        ),
        other => other,
    }
}

pub fn receipt_to_proto(r: &model::Receipt) -> proto::Receipt {
    proto::Receipt {
        notification_id: r.notification_id.clone(),
        campaign_id: r.campaign_id.clone(),
        channel: r.channel.map(channel_to_proto).unwrap_or(0),
        status: status_to_proto(r.status),
        provider_message_id: r.provider_id.clone(),
        error_class: class_to_proto(r.error_class),
        error_code: r.error_code.clone(),
        attempt: r.attempt,
        cost: cost(r.cost_micros, &r.currency),
        time: ms_to_ts(r.at),
        cursor: r.cursor.clone(),
        labels: r.labels.clone().into_iter().collect(),
    }
}

fn cost(micros: i64, currency: &str) -> Option<proto::Cost> {
    (micros != 0 || !currency.is_empty()).then(|| proto::Cost {
        micros,
        currency: currency.to_string(),
    })
}

pub fn notification_to_proto(v: NotificationView) -> proto::Notification {
    let n = v.notification;
    proto::Notification {
        notification_id: n.id,
        status: status_to_proto(v.status),
        channel: v.channel.map(channel_to_proto).unwrap_or(0),
        attempts: v
            .attempts
            .iter()
            .map(|a| proto::Attempt {
                number: a.number,
                channel: channel_to_proto(a.channel),
                started_at: ms_to_ts(a.started_at),
                finished_at: ms_to_ts(a.finished_at),
                outcome: a.outcome.clone(),
                error_class: class_to_proto(a.error_class),
                error_code: a.error_code.clone(),
                error_message: a.error_message.clone(),
                provider_message_id: a.provider_id.clone(),
                meta: a.meta.clone().into_iter().collect(),
            })
            .collect(),
        receipts: v.receipts.iter().map(receipt_to_proto).collect(),
        cost: cost(v.cost_micros, &v.currency),
        campaign_id: n.campaign_id,
        labels: n.labels.into_iter().collect(),
        created_at: ms_to_ts(n.created_at),
        send_at: ms_to_ts(n.send_at),
        expire_at: ms_to_ts(n.expire_at),
        route: n.route.into_iter().map(channel_to_proto).collect(),
    }
}

pub fn campaign_to_proto(id: &str, s: CampaignStats) -> proto::Campaign {
    let by_status: BTreeMap<String, u64> = s
        .by_status
        .iter()
        .map(|(k, v)| (k.proto_name(), *v))
        .collect();
    let done: u64 = s
        .by_status
        .iter()
        .filter(|(k, _)| k.is_final() || k.is_handed_over())
        .map(|(_, v)| *v)
        .sum();
    proto::Campaign {
        campaign_id: id.to_string(),
        total: s.total,
        by_status: by_status.into_iter().collect(),
        by_channel: s
            .by_channel
            .iter()
            .map(|(c, m)| proto::ChannelCounts {
                channel: channel_to_proto(*c),
                by_status: m.iter().map(|(k, v)| (k.proto_name(), *v)).collect(),
            })
            .collect(),
        cost: cost(s.cost_micros, ""),
        progress: if s.total == 0 {
            0.0
        } else {
            done as f64 / s.total as f64
        },
        canceled: s.canceled,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn timestamps_round_trip() {
        let ts = ms_to_ts(1_700_000_000_123).expect("positive");
        assert_eq!(ts_to_ms(&ts), 1_700_000_000_123);
        assert!(ms_to_ts(0).is_none());
    }

    #[test]
    fn unknown_enums_name_their_field() {
        let r = proto::SendRequest {
            channels: vec![2, 99, 0],
            category: 42,
            ..Default::default()
        };
        match draft_from_proto(r, "items[1].") {
            Err(IngestError::Invalid(v)) => {
                let f: Vec<_> = v.iter().map(|x| x.field.as_str()).collect();
                assert_eq!(
                    f,
                    [
                        "items[1].channels[1]",
                        "items[1].channels[2]",
                        "items[1].category"
                    ]
                );
            }
            other => panic!("expected invalid, got {other:?}"),
        }
    }
}
