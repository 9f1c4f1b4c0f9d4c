//! `email`: one message per notification to `recipient.email`, through an SMTP relay (lettre,
//! pooled connections, rustls) or the SendGrid v3 Mail Send API; every SMTP reply and every
//! SendGrid status classified per platforms.md §7. Marketing mail carries RFC 8058 one-click
//! unsubscribe headers when `unsubscribe_url` is configured.

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use lettre::message::header::{ContentType, HeaderName, HeaderValue};
use lettre::message::{Mailbox, MultiPart, SinglePart};
use lettre::transport::smtp::authentication::Credentials;
use lettre::transport::smtp::client::{Tls, TlsParameters};
use lettre::transport::smtp::PoolConfig;
use lettre::{Address, AsyncSmtpTransport, AsyncTransport, Message, Tokio1Executor};
use reqwest::header::HeaderMap;
use serde_json::{json, Value};

use super::{http_client, retry_after, transport_error, Channel, Delivery, Deps, SendContext};
use crate::config::email::{EmailConfig, SmtpTls};
use crate::model::{self, Category, Detail, Notification, Outcome};

/// `List-Unsubscribe-Post` value that asks for RFC 8058 one-click unsubscribe.
pub const ONE_CLICK: &str = "List-Unsubscribe=One-Click";

/// The longest subject made up from a body when the notification has no title.
const SUBJECT_FROM_BODY_CHARS: usize = 78;

pub fn build(cfg: &EmailConfig, deps: &Deps) -> Result<Arc<dyn Channel>, String> {
    let from: Mailbox = cfg
        .from
        .parse()
        .map_err(|e| format!("from {:?} is not an email address: {e}", cfg.from))?;
    let provider = match cfg.provider.as_str() {
        "smtp" => Provider::Smtp(smtp_transport(cfg, deps.request_timeout)?),
        "sendgrid" => Provider::SendGrid {
            client: http_client(deps.request_timeout)?,
            url: format!(
                "{}/v3/mail/send",
                cfg.sendgrid_base_url.trim_end_matches('/')
            ),
            api_key: cfg.api_key().map_err(|e| e.to_string())?,
        },
        other => return Err(format!("unknown provider {other:?}")),
    };
    Ok(Arc::new(Email {
        from,
        unsubscribe_url: cfg.unsubscribe_url.clone(),
        provider,
    }))
}

fn smtp_transport(
    cfg: &EmailConfig,
    timeout: Duration,
) -> Result<AsyncSmtpTransport<Tokio1Executor>, String> {
    let target = cfg.smtp_target().map_err(|e| e.to_string())?;
    let tls = match target.tls {
        SmtpTls::None => Tls::None,
        SmtpTls::StartTls | SmtpTls::Tls => {
            let params = TlsParameters::new(target.host.clone())
                .map_err(|e| format!("TLS for {}: {e}", target.host))?;
            if target.tls == SmtpTls::Tls {
                Tls::Wrapper(params)
            } else {
                Tls::Required(params)
            }
        }
    };
    let mut b = AsyncSmtpTransport::<Tokio1Executor>::builder_dangerous(target.host)
        .port(target.port)
        .tls(tls)
        .timeout(Some(timeout))
        .pool_config(PoolConfig::new().max_size(cfg.smtp_pool_size));
    if let Some((user, password)) = cfg.smtp_credentials().map_err(|e| e.to_string())? {
        b = b.credentials(Credentials::new(user, password));
    }
    Ok(b.build())
}

enum Provider {
    Smtp(AsyncSmtpTransport<Tokio1Executor>),
    SendGrid {
        client: reqwest::Client,
        url: String,
        api_key: String,
    },
}

pub struct Email {
    from: Mailbox,
    unsubscribe_url: Option<String>,
    provider: Provider,
}

// ------------------------------------------------------------------ building the message

/// `Subject:`: the title, or the start of the body's first line when there is none (SendGrid
/// refuses mail without a subject).
pub fn subject(n: &Notification) -> String {
    let title = n.content.title.trim();
    if !title.is_empty() {
        return title.to_string();
    }
    let first = n.content.body.lines().next().unwrap_or("").trim();
    first.chars().take(SUBJECT_FROM_BODY_CHARS).collect()
}

/// The text/plain body: the body, then one `label: url` line per action.
pub fn text_body(n: &Notification) -> String {
    let mut text = n.content.body.clone();
    if !n.content.actions.is_empty() {
        if !text.is_empty() {
            text.push_str("\n\n");
        }
        for a in &n.content.actions {
            text.push_str(&format!("{}: {}\n", a.label, a.url));
        }
    }
    if text.trim().is_empty() {
        // Neither SMTP nor SendGrid wants an empty body; the subject says it all.
        return subject(n);
    }
    text
}

/// An HTML alternative, when the sender gave one in `content.data["html"]`.
pub fn html_body(n: &Notification) -> Option<&str> {
    n.content
        .data
        .get("html")
        .map(String::as_str)
        .filter(|h| !h.trim().is_empty())
}

/// `<notification id@sender's domain>`: stable across retries, so a receiver that got the
/// message twice sees one message.
pub fn message_id(n: &Notification, from: &Mailbox) -> String {
    format!("<{}@{}>", n.id, from.email.domain())
}

/// `List-Unsubscribe` for marketing mail: `<unsubscribe_url?token=<notification id>>`. The
/// token names the notification, so the unsubscribe endpoint finds the recipient through
/// `GetNotification` and the address never appears in a URL.
pub fn list_unsubscribe(n: &Notification, unsubscribe_url: Option<&str>) -> Option<String> {
    if n.category != Category::Marketing {
        return None;
    }
    let mut url = url::Url::parse(unsubscribe_url?).ok()?;
    url.query_pairs_mut().append_pair("token", &n.id);
    Some(format!("<{url}>"))
}

/// The recipient as an address; a malformed one is dead for this channel (no platform call).
fn recipient(to: &str) -> Result<Address, Outcome> {
    to.trim()
        .parse::<Address>()
        .map_err(|e| Outcome::DeadAddress {
            detail: Detail::new("invalid_address", format!("not an email address: {e}")),
        })
}

/// The SMTP message: From, To, Subject, Message-ID, Date, text/plain (and text/html when
/// given), and the one-click unsubscribe headers for marketing.
pub fn message(
    n: &Notification,
    to: &str,
    from: &Mailbox,
    unsubscribe_url: Option<&str>,
) -> Result<Message, Outcome> {
    let to = recipient(to)?;
    let mut b = Message::builder()
        .from(from.clone())
        .to(Mailbox::new(None, to))
        .subject(subject(n))
        .message_id(Some(message_id(n, from)))
        .date_now();
    if let Some(v) = list_unsubscribe(n, unsubscribe_url) {
        b = b
            .raw_header(HeaderValue::new(
                HeaderName::new_from_ascii_str("List-Unsubscribe"),
                v,
            ))
            .raw_header(HeaderValue::new(
                HeaderName::new_from_ascii_str("List-Unsubscribe-Post"),
                ONE_CLICK.to_string(),
            ));
    }
    let text = text_body(n);
    let built = match html_body(n) {
        Some(html) => b.multipart(MultiPart::alternative_plain_html(text, html.to_string())),
        None => b.singlepart(
            SinglePart::builder()
                .header(ContentType::TEXT_PLAIN)
                .body(text),
        ),
    };
    built.map_err(|e| Outcome::BadPayload {
        detail: Detail::new("message", format!("cannot build the message: {e}")),
    })
}

/// The SendGrid v3 Mail Send body.
pub fn sendgrid_body(
    n: &Notification,
    to: &str,
    from: &Mailbox,
    unsubscribe_url: Option<&str>,
) -> Result<Value, Outcome> {
    let to = recipient(to)?;
    let mut from_json = json!({ "email": from.email.to_string() });
    if let Some(name) = &from.name {
        from_json["name"] = json!(name);
    }
    let mut content = vec![json!({ "type": "text/plain", "value": text_body(n) })];
    if let Some(html) = html_body(n) {
        // SendGrid wants text/plain first, then text/html.
        content.push(json!({ "type": "text/html", "value": html }));
    }
    let mut body = json!({
        "personalizations": [{ "to": [{ "email": to.to_string() }] }],
        "from": from_json,
        "subject": subject(n),
        "content": content,
        // Comes back on every event of this message, so the event webhook finds the
        // notification even without the X-Message-Id.
        "custom_args": { "notification_id": n.id },
    });
    if let Some(v) = list_unsubscribe(n, unsubscribe_url) {
        body["headers"] = json!({
            "List-Unsubscribe": v,
            "List-Unsubscribe-Post": ONE_CLICK,
        });
    }
    Ok(body)
}

// ------------------------------------------------------------------ classifying answers

/// The RFC 3463 enhanced status code a reply text starts with (`5.1.1`), if any.
pub fn enhanced_code(text: &str) -> Option<&str> {
    let word = text.split_whitespace().next()?;
    let mut parts = word.split('.');
    let class = parts.next()?;
    let subject = parts.next()?;
    let detail = parts.next()?;
    let ok = parts.next().is_none()
        && matches!(class, "2" | "4" | "5")
        && [subject, detail]
            .iter()
            .all(|p| (1..=3).contains(&p.len()) && p.bytes().all(|b| b.is_ascii_digit()));
    ok.then_some(word)
}

/// Classifies a negative SMTP reply (`code`, and the text after it) per platforms.md §7.
pub fn classify_smtp(code: u16, text: &str) -> Outcome {
    let text = text.trim();
    let enhanced = enhanced_code(text);
    let detail = Detail::new(
        match enhanced {
            Some(e) => format!("{code} {e}"),
            None => code.to_string(),
        },
        format!("{code} {text}").trim_end().to_string(),
    );
    let has = |prefix: &str| enhanced.is_some_and(|e| e.starts_with(prefix));
    match code {
        // The server is busy or limits us and closes the connection: slow down.
        421 => Outcome::Throttled {
            after: None,
            detail,
        },
        // 450 mailbox busy, 451 local error, 452 insufficient storage / too many recipients,
        // and any other temporary failure.
        400..=499 => Outcome::Retry {
            after: None,
            detail,
        },
        // Authentication required / failed / mechanism too weak.
        530 | 534 | 535 | 538 => Outcome::Misconfigured { detail },
        // Message too big for the system: no retry makes it smaller.
        _ if has("5.3.4") => Outcome::BadPayload { detail },
        // 552 5.2.2 mailbox full (and a bare 552, "storage allocation exceeded"): soft.
        552 => Outcome::Retry {
            after: None,
            detail,
        },
        // Refused for policy or as spam: not on this channel.
        550 | 554 if has("5.7.") => Outcome::PolicyRejected { detail },
        // No such mailbox (5.1.1), not local (551), mailbox name not allowed (553); a bare
        // 550 is "mailbox unavailable". 556: the domain takes no mail (RFC 7504).
        550 | 551 | 553 | 556 => Outcome::DeadAddress { detail },
        // Transaction failed: the content was refused.
        554 => Outcome::PolicyRejected { detail },
        // Syntax errors: the request is ours to fix.
        500..=504 | 555 => Outcome::BadPayload { detail },
        // Another permanent refusal: do not retry, do not mark the address; try elsewhere.
        500..=599 => Outcome::PolicyRejected { detail },
        _ => Outcome::Retry {
            after: None,
            detail: Detail::new(code.to_string(), format!("unexpected SMTP reply {code}")),
        },
    }
}

/// Classifies a lettre error: an SMTP reply by its code, anything else by what failed.
fn smtp_error(e: &lettre::transport::smtp::Error) -> Outcome {
    if let Some(code) = e.status() {
        let text = std::error::Error::source(e)
            .map(|s| s.to_string())
            .unwrap_or_default();
        return classify_smtp(u16::from(code), &text);
    }
    let message = e.to_string();
    let retry = |code: &str| Outcome::Retry {
        after: None,
        detail: Detail::new(code, message.clone()),
    };
    if e.is_timeout() {
        retry("timeout")
    } else if e.is_tls() {
        retry("tls")
    } else if e.is_client() {
        // lettre refused before sending. Non-ASCII the relay cannot carry (no SMTPUTF8 /
        // 8BITMIME) is the message's problem; everything else (no common AUTH mechanism, an
        // AUTH exchange gone wrong, no STARTTLS) is a relay we are configured wrongly for.
        if message.to_ascii_lowercase().contains("non-ascii") {
            Outcome::BadPayload {
                detail: Detail::new("smtp_client", message),
            }
        } else {
            Outcome::Misconfigured {
                detail: Detail::new("smtp_client", message),
            }
        }
    } else if e.is_response() {
        retry("smtp_protocol")
    } else {
        // Network, connection, transport shut down.
        retry("connect")
    }
}

/// How long SendGrid asks us to wait: `Retry-After`, else `X-RateLimit-Reset` (a Unix time).
pub fn sendgrid_retry_after(headers: &HeaderMap, now_secs: i64) -> Option<Duration> {
    retry_after(headers).or_else(|| {
        let reset: i64 = headers
            .get("x-ratelimit-reset")?
            .to_str()
            .ok()?
            .trim()
            .parse()
            .ok()?;
        Some(Duration::from_secs(
            reset.saturating_sub(now_secs).max(0) as u64
        ))
    })
}

/// The messages of SendGrid's `{"errors":[{"message","field","help"}]}` body.
fn sendgrid_errors(body: &[u8]) -> String {
    let v: Value = serde_json::from_slice(body).unwrap_or(Value::Null);
    let msgs: Vec<String> = v["errors"]
        .as_array()
        .map(|a| {
            a.iter()
                .filter_map(|e| {
                    let m = e["message"].as_str()?;
                    Some(match e["field"].as_str() {
                        Some(f) => format!("{f}: {m}"),
                        None => m.to_string(),
                    })
                })
                .collect()
        })
        .unwrap_or_default();
    if msgs.is_empty() {
        String::from_utf8_lossy(&body[..body.len().min(200)]).into_owned()
    } else {
        msgs.join("; ")
    }
}

/// Classifies a SendGrid Mail Send answer per platforms.md §7.
pub fn classify_sendgrid(
    status: u16,
    body: &[u8],
    x_message_id: Option<&str>,
    after: Option<Duration>,
) -> Outcome {
    let detail = || Detail::new(status.to_string(), sendgrid_errors(body));
    match status {
        200..=299 => Outcome::Sent {
            provider_id: x_message_id.unwrap_or_default().to_string(),
        },
        429 => Outcome::Throttled {
            after,
            detail: detail(),
        },
        // 401 bad key, 403 key without mail.send or an unverified sender; 404: a wrong base
        // URL. All ours to fix.
        401 | 403 | 404 => Outcome::Misconfigured { detail: detail() },
        // 400 a request bug, 413 too large.
        400..=499 => Outcome::BadPayload { detail: detail() },
        _ => Outcome::Retry {
            after,
            detail: detail(),
        },
    }
}

// ------------------------------------------------------------------ sending

#[async_trait]
impl Channel for Email {
    fn kind(&self) -> model::Channel {
        model::Channel::Email
    }

    async fn send(&self, n: &Notification, ctx: &SendContext<'_>) -> Delivery {
        let Some(to) = ctx.addresses.first() else {
            return Delivery::of(Outcome::DeadAddress {
                detail: Detail::new("no_address", "recipient has no email"),
            });
        };
        let unsub = self.unsubscribe_url.as_deref();
        match &self.provider {
            Provider::Smtp(transport) => {
                let d = match message(n, to, &self.from, unsub) {
                    Ok(m) => match transport.send(m).await {
                        // lettre returns Ok only for a positive reply after DATA.
                        Ok(reply) => Delivery::of(Outcome::Sent {
                            provider_id: message_id(n, &self.from),
                        })
                        .meta(
                            "smtp_reply",
                            format!(
                                "{} {}",
                                u16::from(reply.code()),
                                reply.first_line().unwrap_or("")
                            )
                            .trim_end(),
                        ),
                        Err(e) => Delivery::of(smtp_error(&e)),
                    },
                    Err(o) => Delivery::of(o),
                };
                d.meta("provider", "smtp")
            }
            Provider::SendGrid {
                client,
                url,
                api_key,
            } => {
                let outcome = match sendgrid_body(n, to, &self.from, unsub) {
                    Ok(body) => Self::post(client, url, api_key, &body).await,
                    Err(o) => o,
                };
                Delivery::of(outcome).meta("provider", "sendgrid")
            }
        }
    }
}

impl Email {
    async fn post(client: &reqwest::Client, url: &str, api_key: &str, body: &Value) -> Outcome {
        let res = client
            .post(url)
            .bearer_auth(api_key)
            .json(body)
            .send()
            .await;
        let r = match res {
            Ok(r) => r,
            Err(e) => return transport_error(&e),
        };
        let status = r.status().as_u16();
        let headers = r.headers().clone();
        let x_message_id = headers
            .get("x-message-id")
            .and_then(|v| v.to_str().ok())
            .map(str::to_string);
        let body = match r.bytes().await {
            Ok(b) => b,
            // The answer's status is known; only an accepted send needs nothing more.
            Err(e) if !(200..300).contains(&status) => return transport_error(&e),
            Err(_) => Default::default(),
        };
        let after = sendgrid_retry_after(&headers, model::now_ms() / 1000);
        classify_sendgrid(status, &body, x_message_id.as_deref(), after)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{Action, Content, Recipient};

    fn note(category: Category) -> Notification {
        Notification {
            id: "01J9Z8Q4W6X3V5T7R9P1M3K5H7-3".into(),
            recipient: Recipient {
                email: "ann@example.org".into(),
                ..Default::default()
            },
            route: vec![model::Channel::Email],
            content: Content {
                title: "Your order shipped".into(),
                body: "It arrives Tuesday.".into(),
                actions: vec![Action {
                    label: "Track".into(),
                    url: "https://shop.example/t/1".into(),
                }],
                ..Default::default()
            },
            category,
            ..Default::default()
        }
    }

    fn from() -> Mailbox {
        "Shop <shop@mail.example.com>".parse().expect("mailbox")
    }

    const UNSUB: Option<&str> = Some("https://example.com/unsub?list=news");

    fn smtp_text(m: &Message) -> String {
        String::from_utf8(m.formatted()).expect("ascii message")
    }

    #[test]
    fn subject_and_body() {
        let n = note(Category::Transactional);
        assert_eq!(subject(&n), "Your order shipped");
        assert_eq!(
            text_body(&n),
            "It arrives Tuesday.\n\nTrack: https://shop.example/t/1\n"
        );
        let mut n = note(Category::Transactional);
        n.content.title.clear();
        n.content.body = format!("{}\nsecond line", "x".repeat(100));
        assert_eq!(subject(&n), "x".repeat(78));
        n.content.body.clear();
        n.content.actions.clear();
        n.content.title = "Only a title".into();
        assert_eq!(text_body(&n), "Only a title");
    }

    #[test]
    fn smtp_message_headers() {
        let n = note(Category::Marketing);
        let m = message(&n, "ann@example.org", &from(), UNSUB).expect("builds");
        let text = smtp_text(&m);
        assert!(
            text.contains("From: Shop <shop@mail.example.com>\r\n"),
            "{text}"
        );
        assert!(text.contains("To: ann@example.org\r\n"), "{text}");
        assert!(text.contains("Subject: Your order shipped\r\n"), "{text}");
        assert!(
            text.contains("Message-ID: <01J9Z8Q4W6X3V5T7R9P1M3K5H7-3@mail.example.com>\r\n"),
            "{text}"
        );
        assert!(
            text.contains(
                "List-Unsubscribe: <https://example.com/unsub?list=news&token=01J9Z8Q4W6X3V5T7R9P1M3K5H7-3>\r\n"
            ),
            "{text}"
        );
        assert!(
            text.contains("List-Unsubscribe-Post: List-Unsubscribe=One-Click\r\n"),
            "{text}"
        );
        assert!(text.contains("Content-Type: text/plain"), "{text}");
        assert!(text.contains("It arrives Tuesday."), "{text}");
        let env = m.envelope();
        assert_eq!(
            env.to().iter().map(|a| a.to_string()).collect::<Vec<_>>(),
            vec!["ann@example.org".to_string()]
        );
        assert_eq!(
            env.from().map(|a| a.to_string()),
            Some("shop@mail.example.com".to_string())
        );
    }

    #[test]
    fn unsubscribe_headers_only_for_marketing_with_a_url() {
        for c in [
            Category::Transactional,
            Category::Utility,
            Category::Authentication,
        ] {
            let text = smtp_text(&message(&note(c), "ann@example.org", &from(), UNSUB).expect("m"));
            assert!(!text.contains("List-Unsubscribe"), "{c}: {text}");
        }
        let text = smtp_text(
            &message(&note(Category::Marketing), "ann@example.org", &from(), None).expect("m"),
        );
        assert!(!text.contains("List-Unsubscribe"), "{text}");
    }

    #[test]
    fn html_alternative_only_when_given() {
        let mut n = note(Category::Transactional);
        n.content
            .data
            .insert("html".into(), "<p>It arrives <b>Tuesday</b>.</p>".into());
        let text = smtp_text(&message(&n, "ann@example.org", &from(), None).expect("m"));
        assert!(text.contains("multipart/alternative"), "{text}");
        assert!(text.contains("text/html"), "{text}");
        let b = sendgrid_body(&n, "ann@example.org", &from(), None).expect("body");
        assert_eq!(b["content"][0]["type"], "text/plain");
        assert_eq!(b["content"][1]["type"], "text/html");
    }

    #[test]
    fn a_malformed_address_is_dead_without_a_call() {
        let n = note(Category::Transactional);
        assert!(matches!(
            message(&n, "not an address", &from(), None),
            Err(Outcome::DeadAddress { .. })
        ));
        assert!(matches!(
            sendgrid_body(&n, "@nope", &from(), None),
            Err(Outcome::DeadAddress { .. })
        ));
    }

    #[test]
    fn sendgrid_body_fields() {
        let n = note(Category::Marketing);
        let b = sendgrid_body(&n, "ann@example.org", &from(), UNSUB).expect("body");
        assert_eq!(
            b["personalizations"],
            json!([{ "to": [{ "email": "ann@example.org" }] }])
        );
        assert_eq!(
            b["from"],
            json!({ "email": "shop@mail.example.com", "name": "Shop" })
        );
        assert_eq!(b["subject"], "Your order shipped");
        assert_eq!(
            b["content"],
            json!([{ "type": "text/plain", "value": "It arrives Tuesday.\n\nTrack: https://shop.example/t/1\n" }])
        );
        assert_eq!(b["custom_args"], json!({ "notification_id": n.id }));
        assert_eq!(
            b["headers"],
            json!({
                "List-Unsubscribe": "<https://example.com/unsub?list=news&token=01J9Z8Q4W6X3V5T7R9P1M3K5H7-3>",
                "List-Unsubscribe-Post": "List-Unsubscribe=One-Click"
            })
        );
        let b = sendgrid_body(&note(Category::Utility), "ann@example.org", &from(), UNSUB)
            .expect("body");
        assert!(b.get("headers").is_none());
    }

    fn class(o: &Outcome) -> (&'static str, String) {
        (
            o.label(),
            o.detail().map(|d| d.code.clone()).unwrap_or_default(),
        )
    }

    #[test]
    fn smtp_replies_are_classified() {
        let cases: &[(u16, &str, &str, &str)] = &[
            (421, "4.7.0 Try again later", "throttled", "421 4.7.0"),
            (421, "Service not available", "throttled", "421"),
            (450, "4.2.1 Mailbox busy", "retry", "450 4.2.1"),
            (451, "4.3.0 Local error", "retry", "451 4.3.0"),
            (452, "4.5.3 Too many recipients", "retry", "452 4.5.3"),
            (550, "5.1.1 No such user", "dead_address", "550 5.1.1"),
            (550, "Mailbox unavailable", "dead_address", "550"),
            (551, "5.1.6 User not local", "dead_address", "551 5.1.6"),
            (553, "5.1.3 Bad address syntax", "dead_address", "553 5.1.3"),
            (
                550,
                "5.7.1 Rejected by policy",
                "policy_rejected",
                "550 5.7.1",
            ),
            (
                550,
                "5.7.26 Unauthenticated",
                "policy_rejected",
                "550 5.7.26",
            ),
            (554, "5.7.1 Spam", "policy_rejected", "554 5.7.1"),
            (554, "Transaction failed", "policy_rejected", "554"),
            (552, "5.3.4 Message too big", "payload", "552 5.3.4"),
            (554, "5.3.4 Message too big", "payload", "554 5.3.4"),
            (552, "5.2.2 Mailbox full", "retry", "552 5.2.2"),
            (
                530,
                "5.7.0 Authentication required",
                "misconfigured",
                "530 5.7.0",
            ),
            (535, "5.7.8 Bad credentials", "misconfigured", "535 5.7.8"),
            (500, "5.5.2 Syntax error", "payload", "500 5.5.2"),
            (
                556,
                "5.1.10 Domain takes no mail",
                "dead_address",
                "556 5.1.10",
            ),
            (541, "Recipient rejected", "policy_rejected", "541"),
        ];
        for (code, text, label, detail) in cases {
            let o = classify_smtp(*code, text);
            assert_eq!(class(&o), (*label, detail.to_string()), "{code} {text}");
        }
        let o = classify_smtp(550, "5.1.1 No such user");
        assert_eq!(
            o.detail().map(|d| d.message.as_str()),
            Some("550 5.1.1 No such user")
        );
    }

    #[test]
    fn enhanced_codes() {
        assert_eq!(enhanced_code("5.1.1 no"), Some("5.1.1"));
        assert_eq!(enhanced_code("4.7.28 slow"), Some("4.7.28"));
        assert_eq!(enhanced_code("OK"), None);
        assert_eq!(enhanced_code("5.1 no"), None);
        assert_eq!(enhanced_code("3.1.1 no"), None);
        assert_eq!(enhanced_code("5.1111.1 no"), None);
        assert_eq!(enhanced_code(""), None);
    }

    #[test]
    fn sendgrid_statuses_are_classified() {
        let err = br#"{"errors":[{"message":"The provided authorization grant is invalid, expired, or revoked","field":null,"help":null}]}"#;
        let two = Some(Duration::from_secs(2));
        assert_eq!(
            classify_sendgrid(202, b"", Some("W2rQ2d3jSTeQYHU3pSkxlg"), None),
            Outcome::Sent {
                provider_id: "W2rQ2d3jSTeQYHU3pSkxlg".into()
            }
        );
        let o = classify_sendgrid(401, err, None, None);
        assert_eq!(class(&o), ("misconfigured", "401".into()));
        assert_eq!(
            o.detail().map(|d| d.message.as_str()),
            Some("The provided authorization grant is invalid, expired, or revoked")
        );
        assert_eq!(
            class(&classify_sendgrid(403, err, None, None)),
            ("misconfigured", "403".into())
        );
        let bad =
            br#"{"errors":[{"message":"The subject is required.","field":"subject","help":null}]}"#;
        let o = classify_sendgrid(400, bad, None, None);
        assert_eq!(class(&o), ("payload", "400".into()));
        assert_eq!(
            o.detail().map(|d| d.message.as_str()),
            Some("subject: The subject is required.")
        );
        assert_eq!(
            class(&classify_sendgrid(413, b"", None, None)),
            ("payload", "413".into())
        );
        assert_eq!(
            classify_sendgrid(429, err, None, two),
            Outcome::Throttled {
                after: two,
                detail: Detail::new(
                    "429",
                    "The provided authorization grant is invalid, expired, or revoked"
                )
            }
        );
        for s in [500, 502, 503, 504] {
            assert_eq!(class(&classify_sendgrid(s, b"", None, None)).0, "retry");
        }
    }

    #[test]
    fn sendgrid_rate_limit_reset() {
        let mut h = HeaderMap::new();
        h.insert("x-ratelimit-reset", "1000005".parse().expect("header"));
        assert_eq!(
            sendgrid_retry_after(&h, 1_000_000),
            Some(Duration::from_secs(5))
        );
        assert_eq!(sendgrid_retry_after(&h, 2_000_000), Some(Duration::ZERO));
        h.insert("retry-after", "7".parse().expect("header"));
        assert_eq!(
            sendgrid_retry_after(&h, 1_000_000),
            Some(Duration::from_secs(7))
        );
        assert_eq!(sendgrid_retry_after(&HeaderMap::new(), 0), None);
    }
}
