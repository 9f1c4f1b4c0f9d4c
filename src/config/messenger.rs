//! `[channels.messenger]`: the Messenger Send API (Graph API).

use std::path::PathBuf;

use serde::Deserialize;

use super::secrets::{check_url, required, yes};
use super::ConfigError;

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MessengerConfig {
    #[serde(default = "yes")]
    pub enabled: bool,
    #[serde(default = "graph_url")]
    pub base_url: String,
    #[serde(default = "graph_version")]
    pub api_version: String,
    pub page_id: String,
    pub page_access_token: Option<String>,
    pub page_access_token_file: Option<PathBuf>,
    /// Signs the webhooks Messenger sends (`X-Hub-Signature-256`).
    pub app_secret: Option<String>,
    pub app_secret_file: Option<PathBuf>,
    /// Answers Messenger's GET verification handshake.
    pub verify_token: Option<String>,
    pub verify_token_file: Option<PathBuf>,
}

pub(crate) fn graph_url() -> String {
    "https://graph.facebook.com".into()
}

pub(crate) fn graph_version() -> String {
    "v21.0".into()
}

impl MessengerConfig {
    pub fn validate(&self) -> Result<(), ConfigError> {
        check_url(&self.base_url, "channels.messenger.base_url")?;
        if self.page_id.is_empty() {
            return Err(ConfigError::Invalid {
                key: "channels.messenger.page_id".into(),
                message: "is required".into(),
            });
        }
        self.page_access_token()?;
        self.app_secret()?;
        Ok(())
    }

    pub fn page_access_token(&self) -> Result<String, ConfigError> {
        required(
            &self.page_access_token,
            &self.page_access_token_file,
            "channels.messenger.page_access_token",
        )
    }

    pub fn app_secret(&self) -> Result<String, ConfigError> {
        required(
            &self.app_secret,
            &self.app_secret_file,
            "channels.messenger.app_secret",
        )
    }

    pub fn verify_token(&self) -> Result<Option<String>, ConfigError> {
        super::secrets::resolve(
            &self.verify_token,
            &self.verify_token_file,
            "channels.messenger.verify_token",
        )
    }
}
