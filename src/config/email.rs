//! `[channels.email]`: SMTP (lettre) or the SendGrid v3 API.

use std::path::PathBuf;

use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine;
use p256::pkcs8::DecodePublicKey;
use serde::Deserialize;

use super::secrets::{check_url, required, resolve, yes};
use super::ConfigError;

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EmailConfig {
    #[serde(default = "yes")]
    pub enabled: bool,
    /// `smtp` or `sendgrid`.
    pub provider: String,
    /// `smtp://host:port` (plain, or STARTTLS when `smtp_tls = "starttls"`) or
    /// `smtps://host:port` (TLS from the first byte, whatever `smtp_tls` says).
    pub smtp_url: Option<String>,
    /// `none`, `starttls` or `tls`.
    #[serde(default = "starttls")]
    pub smtp_tls: String,
    pub smtp_username: Option<String>,
    pub smtp_password: Option<String>,
    pub smtp_password_file: Option<PathBuf>,
    /// Most SMTP connections kept open to the relay (one message at a time on each).
    #[serde(default = "pool_size")]
    pub smtp_pool_size: u32,
    #[serde(default = "sendgrid_url")]
    pub sendgrid_base_url: String,
    pub api_key: Option<String>,
    pub api_key_file: Option<PathBuf>,
    /// The SendGrid event webhook's verification key (base64 DER, P-256).
    pub sendgrid_webhook_public_key: Option<String>,
    /// `From:` address (`ops@example.com` or `Example <ops@example.com>`).
    pub from: String,
    /// One-click unsubscribe target for marketing mail (`List-Unsubscribe`); Herald appends
    /// `token=<notification id>`.
    pub unsubscribe_url: Option<String>,
}

fn starttls() -> String {
    "starttls".into()
}

fn sendgrid_url() -> String {
    "https://api.sendgrid.com".into()
}

fn pool_size() -> u32 {
    10
}

/// How the SMTP connection is protected.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SmtpTls {
    None,
    StartTls,
    /// Implicit TLS (`smtps`, port 465).
    Tls,
}

/// Where and how to reach the SMTP relay, from `smtp_url` and `smtp_tls`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SmtpTarget {
    pub host: String,
    pub port: u16,
    pub tls: SmtpTls,
}

impl EmailConfig {
    pub fn validate(&self) -> Result<(), ConfigError> {
        let bad = |k: &str, m: &str| ConfigError::Invalid {
            key: format!("channels.email.{k}"),
            message: m.to_string(),
        };
        if !self.from.contains('@') {
            return Err(bad("from", "must be an email address"));
        }
        if let Some(u) = &self.unsubscribe_url {
            check_url(u, "channels.email.unsubscribe_url")?;
        }
        if self.sendgrid_webhook_public_key.is_some() {
            self.webhook_key()?;
        }
        match self.provider.as_str() {
            "smtp" => {
                self.smtp_target()?;
                if self.smtp_pool_size == 0 {
                    return Err(bad("smtp_pool_size", "must be > 0"));
                }
                self.smtp_credentials()?;
            }
            "sendgrid" => {
                check_url(&self.sendgrid_base_url, "channels.email.sendgrid_base_url")?;
                self.api_key()?;
            }
            _ => return Err(bad("provider", "must be smtp or sendgrid")),
        }
        Ok(())
    }

    /// Host, port and TLS mode of the relay.
    pub fn smtp_target(&self) -> Result<SmtpTarget, ConfigError> {
        let bad = |k: &str, m: String| ConfigError::Invalid {
            key: format!("channels.email.{k}"),
            message: m,
        };
        let Some(raw) = &self.smtp_url else {
            return Err(bad(
                "smtp_url",
                "is required with provider = \"smtp\"".into(),
            ));
        };
        let url = url::Url::parse(raw)
            .map_err(|e| bad("smtp_url", format!("{raw:?} is not a URL: {e}")))?;
        let mode = match self.smtp_tls.as_str() {
            "none" => SmtpTls::None,
            "starttls" => SmtpTls::StartTls,
            "tls" => SmtpTls::Tls,
            _ => return Err(bad("smtp_tls", "must be none, starttls or tls".into())),
        };
        let tls = match url.scheme() {
            "smtp" => mode,
            "smtps" if mode == SmtpTls::None => {
                return Err(bad(
                    "smtp_tls",
                    "smtps:// means TLS; use smtp:// for a plain connection".into(),
                ))
            }
            "smtps" => SmtpTls::Tls,
            s => {
                return Err(bad(
                    "smtp_url",
                    format!("scheme {s:?} is not smtp or smtps"),
                ))
            }
        };
        let host = url
            .host_str()
            .filter(|h| !h.is_empty())
            .ok_or_else(|| bad("smtp_url", format!("{raw:?} has no host")))?;
        // An IPv6 literal comes back bracketed; the socket layer wants it bare.
        let host = host
            .trim_start_matches('[')
            .trim_end_matches(']')
            .to_string();
        let port = url.port().unwrap_or(match tls {
            SmtpTls::None => 25,
            SmtpTls::StartTls => 587,
            SmtpTls::Tls => 465,
        });
        Ok(SmtpTarget { host, port, tls })
    }

    /// `(username, password)` when the relay wants AUTH.
    pub fn smtp_credentials(&self) -> Result<Option<(String, String)>, ConfigError> {
        let password = resolve(
            &self.smtp_password,
            &self.smtp_password_file,
            "channels.email.smtp_password",
        )?;
        match (&self.smtp_username, password) {
            (Some(u), Some(p)) => Ok(Some((u.clone(), p))),
            (None, None) => Ok(None),
            (Some(_), None) => Err(ConfigError::Invalid {
                key: "channels.email.smtp_password".into(),
                message: "is required with smtp_username (or smtp_password_file)".into(),
            }),
            (None, Some(_)) => Err(ConfigError::Invalid {
                key: "channels.email.smtp_username".into(),
                message: "is required with smtp_password".into(),
            }),
        }
    }

    /// The SendGrid API key (inline or from `api_key_file`).
    pub fn api_key(&self) -> Result<String, ConfigError> {
        required(&self.api_key, &self.api_key_file, "channels.email.api_key")
    }

    /// The event webhook's verification key, if configured.
    pub fn webhook_key(&self) -> Result<Option<p256::ecdsa::VerifyingKey>, ConfigError> {
        let Some(b64) = &self.sendgrid_webhook_public_key else {
            return Ok(None);
        };
        let bad = |m: String| ConfigError::Invalid {
            key: "channels.email.sendgrid_webhook_public_key".into(),
            message: m,
        };
        let der = B64
            .decode(b64.trim())
            .map_err(|e| bad(format!("is not base64: {e}")))?;
        p256::ecdsa::VerifyingKey::from_public_key_der(&der)
            .map(Some)
            .map_err(|e| bad(format!("is not a P-256 public key (DER SPKI): {e}")))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg(toml_text: &str) -> EmailConfig {
        toml::from_str(toml_text).expect("parses")
    }

    #[test]
    fn smtp_targets() {
        let c = cfg(r#"provider = "smtp"
               smtp_url = "smtp://127.0.0.1:2525"
               smtp_tls = "none"
               from = "ops@example.com""#);
        c.validate().expect("valid");
        assert_eq!(
            c.smtp_target().expect("target"),
            SmtpTarget {
                host: "127.0.0.1".into(),
                port: 2525,
                tls: SmtpTls::None
            }
        );
        let c = cfg(r#"provider = "smtp"
               smtp_url = "smtps://mail.example.com"
               from = "ops@example.com""#);
        let t = c.smtp_target().expect("target");
        assert_eq!((t.port, t.tls), (465, SmtpTls::Tls));
        let c = cfg(r#"provider = "smtp"
               smtp_url = "smtp://mail.example.com"
               from = "ops@example.com""#);
        let t = c.smtp_target().expect("target");
        assert_eq!((t.port, t.tls), (587, SmtpTls::StartTls));
    }

    #[test]
    fn bad_settings_name_their_key() {
        let key_of = |t: &str| match cfg(t).validate() {
            Err(ConfigError::Invalid { key, .. }) => key,
            other => panic!("expected an invalid key, got {other:?}"),
        };
        assert_eq!(
            key_of(
                r#"provider = "smtp"
                from = "ops@example.com""#
            ),
            "channels.email.smtp_url"
        );
        assert_eq!(
            key_of(
                r#"provider = "smtp"
                smtp_url = "http://x"
                from = "ops@example.com""#
            ),
            "channels.email.smtp_url"
        );
        assert_eq!(
            key_of(
                r#"provider = "smtp"
                smtp_url = "smtp://x"
                smtp_tls = "maybe"
                from = "ops@example.com""#
            ),
            "channels.email.smtp_tls"
        );
        assert_eq!(
            key_of(
                r#"provider = "smtp"
                smtp_url = "smtp://x"
                smtp_username = "u"
                from = "ops@example.com""#
            ),
            "channels.email.smtp_password"
        );
        assert_eq!(
            key_of(
                r#"provider = "sendgrid"
                from = "ops@example.com""#
            ),
            "channels.email.api_key"
        );
        assert_eq!(
            key_of(
                r#"provider = "sendgrid"
                api_key = "k"
                sendgrid_webhook_public_key = "bm9wZQ=="
                from = "ops@example.com""#
            ),
            "channels.email.sendgrid_webhook_public_key"
        );
        assert_eq!(
            key_of(
                r#"provider = "pigeon"
                from = "ops@example.com""#
            ),
            "channels.email.provider"
        );
    }

    #[test]
    fn webhook_key_parses() {
        use p256::pkcs8::EncodePublicKey;
        let sk = p256::ecdsa::SigningKey::from_slice(&[7u8; 32]).expect("scalar");
        let der = sk
            .verifying_key()
            .to_public_key_der()
            .expect("der")
            .into_vec();
        let c = EmailConfig {
            sendgrid_webhook_public_key: Some(B64.encode(der)),
            ..cfg(r#"provider = "sendgrid"
                api_key = "k"
                from = "ops@example.com""#)
        };
        c.validate().expect("valid");
        assert_eq!(c.webhook_key().expect("key"), Some(*sk.verifying_key()));
    }
}
