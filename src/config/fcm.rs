//! `[channels.fcm]`: FCM HTTP v1 with OAuth2 from a service account.

use std::path::{Path, PathBuf};

use serde::Deserialize;

use super::secrets::{check_url, yes};
use super::ConfigError;

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FcmConfig {
    #[serde(default = "yes")]
    pub enabled: bool,
    #[serde(default = "fcm_url")]
    pub base_url: String,
    /// The service account JSON (its `token_uri` is where access tokens are minted).
    pub service_account_file: PathBuf,
    /// Overrides the service account's `project_id`.
    pub project_id: Option<String>,
}

fn fcm_url() -> String {
    "https://fcm.googleapis.com".into()
}

/// The fields of a Google service-account key file that minting an access token needs. The
/// file has more (`private_key_id`, `client_id`, …); they are ignored.
#[derive(Clone, Deserialize)]
pub struct ServiceAccount {
    pub client_email: String,
    /// RSA private key, PEM (PKCS#8 as Google issues it, or PKCS#1).
    pub private_key: String,
    pub token_uri: String,
    #[serde(default)]
    pub project_id: String,
}

// Hand-written so the private key never reaches a log line through `{:?}`.
impl std::fmt::Debug for ServiceAccount {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ServiceAccount")
            .field("client_email", &self.client_email)
            .field("private_key", &"<redacted>")
            .field("token_uri", &self.token_uri)
            .field("project_id", &self.project_id)
            .finish()
    }
}

impl ServiceAccount {
    /// Reads and checks a service-account file; errors name the config key.
    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        let key = "channels.fcm.service_account_file";
        let invalid = |message: String| ConfigError::Invalid {
            key: key.into(),
            message,
        };
        let text = std::fs::read_to_string(path)
            .map_err(|e| invalid(format!("cannot read {}: {e}", path.display())))?;
        let sa: ServiceAccount = serde_json::from_str(&text).map_err(|e| {
            invalid(format!(
                "{} is not a service account key file: {e}",
                path.display()
            ))
        })?;
        if sa.client_email.is_empty() {
            return Err(invalid("client_email is empty".into()));
        }
        if !sa.private_key.contains("PRIVATE KEY") {
            return Err(invalid("private_key is not a PEM private key".into()));
        }
        check_url(&sa.token_uri, &format!("{key} (token_uri)"))?;
        Ok(sa)
    }
}

impl FcmConfig {
    pub fn validate(&self) -> Result<(), ConfigError> {
        check_url(&self.base_url, "channels.fcm.base_url")?;
        if !self.service_account_file.exists() {
            return Err(ConfigError::Invalid {
                key: "channels.fcm.service_account_file".into(),
                message: format!("{} does not exist", self.service_account_file.display()),
            });
        }
        let sa = ServiceAccount::load(&self.service_account_file)?;
        if self.project().is_none() && sa.project_id.is_empty() {
            return Err(ConfigError::Invalid {
                key: "channels.fcm.project_id".into(),
                message: "is required when the service account has no project_id".into(),
            });
        }
        Ok(())
    }

    /// The configured project override, if any (an empty string counts as none).
    pub fn project(&self) -> Option<&str> {
        self.project_id.as_deref().filter(|p| !p.is_empty())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fixture() -> PathBuf {
        Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/fcm-service-account.json")
    }

    #[test]
    fn service_account_loads_and_hides_its_key() {
        let sa = ServiceAccount::load(&fixture()).expect("fixture loads");
        assert_eq!(
            sa.client_email,
            "herald-push@herald-test.iam.gserviceaccount.com"
        );
        assert_eq!(sa.project_id, "herald-test");
        assert!(!format!("{sa:?}").contains("BEGIN"));
    }

    #[test]
    fn bad_files_name_the_key() {
        let dir = tempfile::tempdir().expect("tempdir");
        let p = dir.path().join("sa.json");
        std::fs::write(&p, "{}").expect("write");
        let e = ServiceAccount::load(&p).expect_err("empty object is refused");
        assert!(e.to_string().contains("channels.fcm.service_account_file"));
        std::fs::write(
            &p,
            r#"{"client_email":"a@b","private_key":"-----BEGIN PRIVATE KEY-----","token_uri":"nope"}"#,
        )
        .expect("write");
        assert!(ServiceAccount::load(&p).is_err());
        let cfg = FcmConfig {
            enabled: true,
            base_url: fcm_url(),
            service_account_file: p.clone(),
            project_id: None,
        };
        std::fs::write(
            &p,
            r#"{"client_email":"a@b","private_key":"-----BEGIN PRIVATE KEY-----","token_uri":"https://x/token"}"#,
        )
        .expect("write");
        let e = cfg.validate().expect_err("no project anywhere");
        assert!(e.to_string().contains("channels.fcm.project_id"));
    }
}
