//! `[channels.webpush]`: Web Push (RFC 8030) with RFC 8291 encryption and RFC 8292 VAPID.

use std::path::PathBuf;

use serde::Deserialize;

use super::secrets::yes;
use super::ConfigError;

/// The longest `TTL` Herald asks for: push services keep a message at most about four weeks
/// (FCM 28 days, Mozilla 30), and some refuse longer values instead of capping them.
pub const MAX_TTL_SECS: u32 = 28 * 86_400;

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WebpushConfig {
    #[serde(default = "yes")]
    pub enabled: bool,
    /// The VAPID key pair's private key (PEM, P-256: SEC1 `EC PRIVATE KEY` or PKCS#8).
    pub vapid_private_key_file: PathBuf,
    /// `mailto:` or `https:` contact for push services.
    pub subject: String,
    /// `TTL` header when the notification has no `expire_at` (seconds).
    #[serde(default = "ttl")]
    pub default_ttl_secs: u32,
    /// Send to `http://` subscription endpoints. RFC 8030 requires push services to use TLS,
    /// so a plain-HTTP endpoint is either a test double or a forged subscription; off by
    /// default.
    #[serde(default)]
    pub allow_http: bool,
}

fn ttl() -> u32 {
    86_400
}

impl WebpushConfig {
    pub fn validate(&self) -> Result<(), ConfigError> {
        let invalid = |key: &str, message: String| ConfigError::Invalid {
            key: format!("channels.webpush.{key}"),
            message,
        };
        let subject_ok = match self.subject.split_once(':') {
            Some(("mailto", rest)) => rest.contains('@'),
            Some(("https", _)) => url::Url::parse(&self.subject).is_ok(),
            _ => false,
        };
        if !subject_ok {
            return Err(invalid(
                "subject",
                "must be a mailto: or https: URI (e.g. mailto:ops@example.com)".into(),
            ));
        }
        if !self.vapid_private_key_file.exists() {
            return Err(invalid(
                "vapid_private_key_file",
                format!("{} does not exist", self.vapid_private_key_file.display()),
            ));
        }
        if self.default_ttl_secs > MAX_TTL_SECS {
            return Err(invalid(
                "default_ttl_secs",
                format!("must be at most {MAX_TTL_SECS} (28 days)"),
            ));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg(subject: &str) -> WebpushConfig {
        WebpushConfig {
            enabled: true,
            vapid_private_key_file: PathBuf::from(concat!(
                env!("CARGO_MANIFEST_DIR"),
                "/tests/fixtures/webpush/vapid_test_key.pem"
            )),
            subject: subject.into(),
            default_ttl_secs: 60,
            allow_http: false,
        }
    }

    #[test]
    fn validation_names_the_key() {
        assert!(cfg("mailto:ops@example.com").validate().is_ok());
        assert!(cfg("https://example.com/contact").validate().is_ok());
        for bad in ["ops@example.com", "mailto:", "http://example.com", ""] {
            let e = cfg(bad).validate().expect_err(bad).to_string();
            assert!(e.contains("channels.webpush.subject"), "{e}");
        }
        let mut c = cfg("mailto:ops@example.com");
        c.default_ttl_secs = MAX_TTL_SECS + 1;
        let e = c.validate().expect_err("ttl").to_string();
        assert!(e.contains("channels.webpush.default_ttl_secs"), "{e}");
        c.default_ttl_secs = 60;
        c.vapid_private_key_file = PathBuf::from("/nonexistent/vapid.pem");
        let e = c.validate().expect_err("file").to_string();
        assert!(e.contains("channels.webpush.vapid_private_key_file"), "{e}");
    }

    #[test]
    fn defaults() {
        let c: WebpushConfig =
            toml::from_str("vapid_private_key_file = \"v.pem\"\nsubject = \"mailto:a@b.c\"")
                .expect("parses");
        assert!(c.enabled);
        assert_eq!(c.default_ttl_secs, 86_400);
        assert!(!c.allow_http);
        assert!(toml::from_str::<WebpushConfig>("nope = 1").is_err());
    }
}
