//! `whatsapp`: the WhatsApp Cloud API (Graph API). One request per number to
//! `{base}/{version}/{phone_number_id}/messages` with a Bearer token: free text inside the
//! customer service window, a template outside it when the content names one; every error
//! code of platforms.md §2 classified into an `Outcome`. Statuses (sent, delivered, read,
//! failed) come later by webhook (`webhooks::whatsapp`), keyed by the `wamid`.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use serde_json::{json, Value};
use tracing::warn;

use super::messenger::{by_http_status, compose_text, graph_version, parse_graph_error};
use super::{http_client, retry_after, transport_error, Channel, Delivery, Deps, SendContext};
use crate::config::whatsapp::WhatsappConfig;
use crate::model::{self, Detail, ErrorClass, Millis, Notification, Outcome};

/// Longest text body, in characters.
pub const MAX_TEXT: usize = 4096;
/// How long to wait after 131057 (business account in maintenance).
pub const MAINTENANCE_WAIT: Duration = Duration::from_secs(60);

pub fn build(cfg: &WhatsappConfig, deps: &Deps) -> Result<Arc<dyn Channel>, String> {
    let token = cfg.access_token().map_err(|e| e.to_string())?;
    let client = http_client(deps.request_timeout)?;
    Ok(Arc::new(Whatsapp {
        client,
        url: send_url(&cfg.base_url, &cfg.api_version, &cfg.phone_number_id),
        token,
        window_ms: Millis::from(cfg.window_hours) * 3600 * 1000,
    }))
}

/// `{base}/{version}/{phone_number_id}/messages`.
pub fn send_url(base: &str, version: &str, phone_number_id: &str) -> String {
    format!(
        "{}/{}/{}/messages",
        base.trim_end_matches('/'),
        graph_version(version),
        phone_number_id.trim()
    )
}

pub struct Whatsapp {
    client: reqwest::Client,
    url: String,
    token: String,
    window_ms: Millis,
}

/// What Herald sends to one number.
#[derive(Debug, Clone, PartialEq)]
pub struct Request {
    pub body: Value,
    /// `text` or `template`.
    pub kind: &'static str,
}

/// Whether the customer service window is open: the person wrote within `window_ms`.
pub fn window_open(last_inbound: Millis, now: Millis, window_ms: Millis) -> bool {
    last_inbound > 0 && now - last_inbound < window_ms
}

/// The text of a free-form message: title, body, and the actions as links (WhatsApp text
/// has no buttons; its link previews make them tappable).
fn text_of(n: &Notification) -> String {
    let mut text = compose_text(&n.content);
    for a in n
        .content
        .actions
        .iter()
        .filter(|a| !a.url.trim().is_empty())
    {
        if !text.is_empty() {
            text.push('\n');
        }
        if a.label.trim().is_empty() {
            text.push_str(a.url.trim());
        } else {
            text.push_str(&format!("{}: {}", a.label.trim(), a.url.trim()));
        }
    }
    text
}

/// Builds the request for number `to`: free text while the window is open; outside it a
/// template if the content names one, else text all the same, which the platform answers
/// with 131047 (then the next channel takes it).
pub fn request(n: &Notification, to: &str, window_open: bool) -> Result<Request, Outcome> {
    let text = text_of(n);
    let template = n.content.template.as_ref().filter(|t| !t.name.is_empty());
    let base = json!({
        "messaging_product": "whatsapp",
        "recipient_type": "individual",
        "to": to,
    });
    let use_template = match template {
        Some(_) => !window_open || text.is_empty(),
        None => false,
    };
    if let (true, Some(t)) = (use_template, template) {
        let language = if !t.language.trim().is_empty() {
            t.language.trim().replace('-', "_")
        } else if !n.recipient.locale.trim().is_empty() {
            n.recipient.locale.trim().replace('-', "_")
        } else {
            "en_US".to_string()
        };
        let mut template = json!({
            "name": t.name,
            "language": { "code": language },
        });
        if !t.params.is_empty() {
            let parameters: Vec<Value> = t
                .params
                .iter()
                .map(|p| json!({ "type": "text", "text": p }))
                .collect();
            template["components"] = json!([{ "type": "body", "parameters": parameters }]);
        }
        let mut body = base;
        body["type"] = json!("template");
        body["template"] = template;
        return Ok(Request {
            body,
            kind: "template",
        });
    }
    if text.is_empty() {
        return Err(Outcome::BadPayload {
            detail: Detail::new("empty_text", "the message has no text and no template"),
        });
    }
    let len = text.chars().count();
    if len > MAX_TEXT {
        return Err(Outcome::BadPayload {
            detail: Detail::new(
                "text_too_long",
                format!("text is {len} characters; WhatsApp takes at most {MAX_TEXT}"),
            ),
        });
    }
    let mut body = base;
    body["type"] = json!("text");
    body["text"] = json!({
        "preview_url": n.content.actions.iter().any(|a| !a.url.trim().is_empty()),
        "body": text,
    });
    Ok(Request { body, kind: "text" })
}

/// The class of a WhatsApp error code (platforms.md §2), for answers and failed statuses.
pub fn class_of(code: i64) -> Option<ErrorClass> {
    Some(match code {
        1 | 2 | 131000 | 131016 | 131057 => ErrorClass::Transient,
        4 | 80007 | 130429 | 131056 | 131048 => ErrorClass::Throttled,
        131026 => ErrorClass::DeadAddress,
        // 131050 (stopped marketing messages) is "P for marketing" only: the number still
        // takes other categories, so it must not be marked dead for the whole channel.
        131047 | 131049 | 131050 => ErrorClass::Policy,
        132000..=132016 => ErrorClass::Auth,
        131051..=131053 | 131008 | 131009 | 100 => ErrorClass::Payload,
        0 | 3 | 10 | 190 | 200..=299 | 131005 | 131030 | 131031 | 131042 | 131045 | 368 => {
            ErrorClass::Auth
        }
        _ => return None,
    })
}

/// Classifies a Cloud API answer on the error `code` (platforms.md §2).
pub fn classify(status: u16, body: &[u8], retry_after: Option<Duration>) -> Outcome {
    if (200..300).contains(&status) {
        let provider_id = serde_json::from_slice::<Value>(body)
            .ok()
            .and_then(|v| {
                v.pointer("/messages/0/id")
                    .and_then(Value::as_str)
                    .map(String::from)
            })
            .unwrap_or_default();
        return Outcome::Sent { provider_id };
    }
    let Some(e) = parse_graph_error(body) else {
        return by_http_status(status, retry_after);
    };
    // Error subcodes are deprecated for the Cloud API (not sent since v16.0): the code
    // alone names the error.
    let detail = Detail::new(e.code.to_string(), e.detail().message);
    match class_of(e.code) {
        Some(ErrorClass::Transient) => Outcome::Retry {
            after: if e.code == 131057 {
                Some(
                    retry_after
                        .unwrap_or(MAINTENANCE_WAIT)
                        .max(MAINTENANCE_WAIT),
                )
            } else {
                retry_after
            },
            detail,
        },
        Some(ErrorClass::Throttled) => Outcome::Throttled {
            after: retry_after,
            detail,
        },
        Some(ErrorClass::DeadAddress) => Outcome::DeadAddress { detail },
        Some(ErrorClass::Policy) => Outcome::PolicyRejected { detail },
        Some(ErrorClass::Auth) => Outcome::Misconfigured { detail },
        Some(ErrorClass::Payload) => Outcome::BadPayload { detail },
        None => match by_http_status(status, retry_after) {
            Outcome::Retry { after, .. } => Outcome::Retry { after, detail },
            Outcome::Throttled { after, .. } => Outcome::Throttled { after, detail },
            Outcome::Misconfigured { .. } => Outcome::Misconfigured { detail },
            _ => Outcome::BadPayload { detail },
        },
    }
}

#[async_trait]
impl Channel for Whatsapp {
    fn kind(&self) -> model::Channel {
        model::Channel::Whatsapp
    }

    async fn send(&self, n: &Notification, ctx: &SendContext<'_>) -> Delivery {
        let Some(to) = ctx.addresses.first() else {
            return Delivery::of(Outcome::DeadAddress {
                detail: Detail::new("no_address", "recipient has no whatsapp_number"),
            });
        };
        let open = window_open(ctx.last_inbound, ctx.now, self.window_ms);
        let req = match request(n, to, open) {
            Ok(r) => r,
            Err(o) => return Delivery::of(o),
        };
        let mut meta = BTreeMap::new();
        meta.insert("type".to_string(), req.kind.to_string());
        meta.insert(
            "window".to_string(),
            if open { "open" } else { "closed" }.to_string(),
        );
        if req.kind == "template" {
            if let Some(t) = &n.content.template {
                meta.insert("template".to_string(), t.name.clone());
            }
        }
        let res = self
            .client
            .post(&self.url)
            .bearer_auth(&self.token)
            .json(&req.body)
            .send()
            .await;
        let outcome = match res {
            Err(e) => transport_error(&e),
            Ok(r) => {
                let status = r.status().as_u16();
                let after = retry_after(r.headers());
                match r.bytes().await {
                    Ok(body) => classify(status, &body, after),
                    Err(e) => transport_error(&e),
                }
            }
        };
        if let Some(d) = outcome.detail().filter(|d| d.code == "131048") {
            // Spam rate limit: the number's quality is suffering; someone should look.
            warn!(channel = "whatsapp", code = %d.code, "whatsapp spam rate limit hit");
        }
        Delivery {
            outcome,
            dead: Vec::new(),
            opted_out: Vec::new(),
            meta,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{Action, Category, Channel as Ch, Content, Recipient, Template};

    const NOW: Millis = 1_700_000_000_000;
    const DAY: Millis = 24 * 3600 * 1000;

    fn notification(content: Content) -> Notification {
        Notification {
            id: model::make_id(0),
            recipient: Recipient {
                whatsapp_number: "+16505551234".into(),
                ..Default::default()
            },
            route: vec![Ch::Whatsapp],
            content,
            category: Category::Utility,
            ..Default::default()
        }
    }

    fn with_template(body: &str) -> Content {
        Content {
            body: body.into(),
            template: Some(Template {
                name: "order_update".into(),
                language: "en_US".into(),
                params: vec!["Ada".into(), "#42".into()],
            }),
            ..Default::default()
        }
    }

    #[test]
    fn url_and_window() {
        assert_eq!(
            send_url("https://graph.facebook.com", "v21.0", "1055"),
            "https://graph.facebook.com/v21.0/1055/messages"
        );
        assert!(window_open(NOW - DAY + 1, NOW, DAY));
        assert!(!window_open(NOW - DAY, NOW, DAY));
        assert!(!window_open(0, NOW, DAY));
    }

    #[test]
    fn free_text_inside_the_window() {
        let n = notification(with_template("Your order shipped"));
        let r = request(&n, "+16505551234", true).expect("valid");
        assert_eq!(r.kind, "text");
        assert_eq!(
            r.body,
            json!({
                "messaging_product": "whatsapp",
                "recipient_type": "individual",
                "to": "+16505551234",
                "type": "text",
                "text": {"preview_url": false, "body": "Your order shipped"},
            })
        );
    }

    #[test]
    fn template_outside_the_window() {
        let n = notification(with_template("Your order shipped"));
        let r = request(&n, "+16505551234", false).expect("valid");
        assert_eq!(r.kind, "template");
        assert_eq!(r.body["type"], "template");
        assert_eq!(r.body["to"], "+16505551234");
        assert_eq!(r.body["messaging_product"], "whatsapp");
        assert_eq!(r.body["template"]["name"], "order_update");
        assert_eq!(r.body["template"]["language"]["code"], "en_US");
        assert_eq!(
            r.body["template"]["components"],
            json!([{"type": "body", "parameters": [
                {"type": "text", "text": "Ada"},
                {"type": "text", "text": "#42"}
            ]}])
        );
        assert!(r.body.get("text").is_none());
        // No parameters: no components; the locale stands in for a missing language.
        let mut c = with_template("x");
        if let Some(t) = c.template.as_mut() {
            t.params.clear();
            t.language.clear();
        }
        let mut n = notification(c);
        n.recipient.locale = "pt-BR".into();
        let r = request(&n, "+1", false).expect("valid");
        assert!(r.body["template"].get("components").is_none());
        assert_eq!(r.body["template"]["language"]["code"], "pt_BR");
    }

    #[test]
    fn text_outside_the_window_without_a_template() {
        let n = notification(Content {
            body: "hello".into(),
            ..Default::default()
        });
        let r = request(&n, "+1", false).expect("valid");
        assert_eq!(r.kind, "text");
    }

    #[test]
    fn actions_become_links_and_limits_hold() {
        let n = notification(Content {
            title: "Shipped".into(),
            body: "Track it".into(),
            actions: vec![Action {
                label: "Track".into(),
                url: "https://example.com/t".into(),
            }],
            ..Default::default()
        });
        let r = request(&n, "+1", true).expect("valid");
        assert_eq!(
            r.body["text"]["body"],
            "Shipped\n\nTrack it\nTrack: https://example.com/t"
        );
        assert_eq!(r.body["text"]["preview_url"], true);
        let n = notification(Content {
            body: "x".repeat(MAX_TEXT + 1),
            ..Default::default()
        });
        assert!(matches!(
            request(&n, "+1", true),
            Err(Outcome::BadPayload { detail }) if detail.code == "text_too_long"
        ));
        let n = notification(Content::default());
        assert!(matches!(
            request(&n, "+1", true),
            Err(Outcome::BadPayload { .. })
        ));
    }

    fn err(code: i64) -> Vec<u8> {
        json!({"error": {
            "message": format!("(#{code}) something"),
            "type": "OAuthException",
            "code": code,
            "error_data": {"messaging_product": "whatsapp", "details": "why it failed"},
            "fbtrace_id": "Az8or2yhqkZfEZ"
        }})
        .to_string()
        .into_bytes()
    }

    #[test]
    fn every_documented_code_is_classified() {
        use ErrorClass::*;
        let mut table: Vec<(i64, ErrorClass)> = vec![
            (1, Transient),
            (2, Transient),
            (131000, Transient),
            (131016, Transient),
            (131057, Transient),
            (4, Throttled),
            (80007, Throttled),
            (130429, Throttled),
            (131056, Throttled),
            (131048, Throttled),
            (131026, DeadAddress),
            (131047, Policy),
            (131049, Policy),
            (131050, Policy),
            (131051, Payload),
            (131052, Payload),
            (131053, Payload),
            (131008, Payload),
            (131009, Payload),
            (100, Payload),
        ];
        table.extend((132000..=132016).map(|c| (c, Auth)));
        table.extend((200..=299).map(|c| (c, Auth)));
        table.extend(
            [0, 3, 10, 190, 131005, 131030, 131031, 131042, 131045, 368].map(|c| (c, Auth)),
        );
        for (code, class) in table {
            let o = classify(400, &err(code), None);
            assert_eq!(o.class(), Some(class), "code {code}");
            assert_eq!(o.detail().map(|d| d.code.clone()), Some(code.to_string()));
        }
    }

    #[test]
    fn maintenance_waits_a_minute_and_success_gives_the_wamid() {
        assert!(matches!(
            classify(503, &err(131057), None),
            Outcome::Retry { after: Some(d), .. } if d == MAINTENANCE_WAIT
        ));
        let ok = br#"{"messaging_product":"whatsapp","contacts":[{"input":"+16505551234","wa_id":"16505551234"}],"messages":[{"id":"wamid.HBgLMTY1MDU1NTEyMzQVAgARGBI5QTNDQTVCM0Q0Q0Q2RTY3RTcA"}]}"#;
        assert_eq!(
            classify(200, ok, None),
            Outcome::Sent {
                provider_id: "wamid.HBgLMTY1MDU1NTEyMzQVAgARGBI5QTNDQTVCM0Q0Q0Q2RTY3RTcA".into()
            }
        );
        let o = classify(400, &err(131026), None);
        assert_eq!(
            o.detail().map(|d| d.message.as_str()),
            Some("(#131026) something: why it failed")
        );
        assert!(matches!(
            classify(502, b"bad gateway", None),
            Outcome::Retry { .. }
        ));
    }
}
