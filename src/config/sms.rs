//! `[channels.sms]`: the Twilio Messages API.

use std::path::PathBuf;

use serde::Deserialize;

use super::secrets::{check_url, required, yes};
use super::ConfigError;

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SmsConfig {
    #[serde(default = "yes")]
    pub enabled: bool,
    #[serde(default = "twilio_url")]
    pub base_url: String,
    pub account_sid: String,
    /// Basic auth password, and the key of `X-Twilio-Signature` on callbacks.
    pub auth_token: Option<String>,
    pub auth_token_file: Option<PathBuf>,
    /// Sender number (E.164); or give `messaging_service_sid`.
    pub from: Option<String>,
    pub messaging_service_sid: Option<String>,
}

fn twilio_url() -> String {
    "https://api.twilio.com".into()
}

impl SmsConfig {
    pub fn validate(&self) -> Result<(), ConfigError> {
        check_url(&self.base_url, "channels.sms.base_url")?;
        if self.account_sid.is_empty() {
            return Err(ConfigError::Invalid {
                key: "channels.sms.account_sid".into(),
                message: "is required".into(),
            });
        }
        if self.from.is_none() && self.messaging_service_sid.is_none() {
            return Err(ConfigError::Invalid {
                key: "channels.sms.from".into(),
                message: "give from or messaging_service_sid".into(),
            });
        }
        // From may be an E.164 number, a short code or an alphanumeric sender id: only
        // emptiness is certainly wrong.
        if self.from.as_ref().is_some_and(|f| f.trim().is_empty()) {
            return Err(ConfigError::Invalid {
                key: "channels.sms.from".into(),
                message: "is empty".into(),
            });
        }
        if let Some(mss) = &self.messaging_service_sid {
            if !mss.starts_with("MG") {
                return Err(ConfigError::Invalid {
                    key: "channels.sms.messaging_service_sid".into(),
                    message: "a Messaging Service SID starts with MG".into(),
                });
            }
        }
        self.auth_token()?;
        Ok(())
    }

    pub fn auth_token(&self) -> Result<String, ConfigError> {
        required(
            &self.auth_token,
            &self.auth_token_file,
            "channels.sms.auth_token",
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(extra: &str) -> SmsConfig {
        toml::from_str(&format!(
            "account_sid = \"AC1\"\nauth_token = \"t\"\n{extra}"
        ))
        .expect("parses")
    }

    #[test]
    fn sender_is_required_and_checked() {
        assert!(parse("from = \"+15005550006\"").validate().is_ok());
        assert!(parse("messaging_service_sid = \"MG0123\"")
            .validate()
            .is_ok());
        let e = parse("").validate().expect_err("no sender");
        assert!(e.to_string().contains("channels.sms.from"), "{e}");
        let e = parse("from = \" \"").validate().expect_err("empty from");
        assert!(e.to_string().contains("channels.sms.from"), "{e}");
        let e = parse("messaging_service_sid = \"XX1\"")
            .validate()
            .expect_err("bad service sid");
        assert!(e.to_string().contains("messaging_service_sid"), "{e}");
        let mut c = parse("from = \"+15005550006\"");
        c.auth_token = None;
        let e = c.validate().expect_err("no token");
        assert!(e.to_string().contains("channels.sms.auth_token"), "{e}");
        assert_eq!(c.base_url, "https://api.twilio.com");
    }
}
