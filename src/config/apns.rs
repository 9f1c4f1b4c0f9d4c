//! `[channels.apns]`: the APNs HTTP/2 provider API with token (ES256 JWT) auth.

use std::path::PathBuf;

use serde::Deserialize;

use super::secrets::{check_url, yes};
use super::ConfigError;

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ApnsConfig {
    #[serde(default = "yes")]
    pub enabled: bool,
    /// `https://api.push.apple.com` (or `https://api.sandbox.push.apple.com`); an `http://`
    /// URL speaks HTTP/2 without TLS (prior knowledge), for a local mock.
    #[serde(default = "apns_url")]
    pub base_url: String,
    pub team_id: String,
    pub key_id: String,
    /// The `.p8` signing key (PKCS#8 PEM, P-256).
    pub private_key_file: PathBuf,
    /// `apns-topic`: the app's bundle id.
    pub topic: String,
    /// `apns-push-type` for notifications with a title or body.
    #[serde(default = "alert")]
    pub push_type: String,
}

fn apns_url() -> String {
    "https://api.push.apple.com".into()
}

fn alert() -> String {
    "alert".into()
}

impl ApnsConfig {
    pub fn validate(&self) -> Result<(), ConfigError> {
        check_url(&self.base_url, "channels.apns.base_url")?;
        for (k, v) in [
            ("channels.apns.team_id", &self.team_id),
            ("channels.apns.key_id", &self.key_id),
            ("channels.apns.topic", &self.topic),
        ] {
            if v.is_empty() {
                return Err(ConfigError::Invalid {
                    key: k.into(),
                    message: "is required".into(),
                });
            }
        }
        if !self.private_key_file.exists() {
            return Err(ConfigError::Invalid {
                key: "channels.apns.private_key_file".into(),
                message: format!("{} does not exist", self.private_key_file.display()),
            });
        }
        self.signing_key()?;
        if !PUSH_TYPES.contains(&self.push_type.as_str()) {
            return Err(ConfigError::Invalid {
                key: "channels.apns.push_type".into(),
                message: format!(
                    "{:?} is not one of {}",
                    self.push_type,
                    PUSH_TYPES.join(", ")
                ),
            });
        }
        Ok(())
    }

    /// Reads the `.p8` key: a PKCS#8 PEM P-256 private key, as Apple issues it.
    pub fn signing_key(&self) -> Result<jsonwebtoken::EncodingKey, ConfigError> {
        let key = "channels.apns.private_key_file";
        let pem = std::fs::read(&self.private_key_file).map_err(|e| ConfigError::Invalid {
            key: key.into(),
            message: format!("cannot read {}: {e}", self.private_key_file.display()),
        })?;
        jsonwebtoken::EncodingKey::from_ec_pem(&pem).map_err(|e| ConfigError::Invalid {
            key: key.into(),
            message: format!(
                "{} is not a PKCS#8 PEM P-256 key: {e}",
                self.private_key_file.display()
            ),
        })
    }
}

/// The `apns-push-type` values Apple documents.
pub const PUSH_TYPES: &[&str] = &[
    "alert",
    "background",
    "location",
    "voip",
    "complication",
    "fileprovider",
    "mdm",
    "liveactivity",
    "pushtotalk",
];

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg(key: PathBuf) -> ApnsConfig {
        ApnsConfig {
            enabled: true,
            base_url: apns_url(),
            team_id: "TEAMHERALD".into(),
            key_id: "KEYHERALD1".into(),
            private_key_file: key,
            topic: "com.example.herald".into(),
            push_type: alert(),
        }
    }

    #[test]
    fn the_fixture_key_validates() {
        let key =
            std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/apns-key.p8");
        cfg(key).validate().expect("fixture config is valid");
    }

    #[test]
    fn bad_keys_and_push_types_name_the_key() {
        let dir = tempfile::tempdir().expect("tempdir");
        let p = dir.path().join("key.p8");
        std::fs::write(&p, "not a key").expect("write");
        let e = cfg(p).validate().expect_err("garbage key is refused");
        assert!(e.to_string().contains("channels.apns.private_key_file"));
        let key =
            std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/apns-key.p8");
        let mut c = cfg(key);
        c.push_type = "shout".into();
        let e = c.validate().expect_err("unknown push type");
        assert!(e.to_string().contains("channels.apns.push_type"));
    }
}
