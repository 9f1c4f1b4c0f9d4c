//! `[channels.whatsapp]`: the WhatsApp Cloud API (Graph API).

use std::path::PathBuf;

use serde::Deserialize;

use super::messenger::{graph_url, graph_version};
use super::secrets::{check_url, required, yes};
use super::ConfigError;

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WhatsappConfig {
    #[serde(default = "yes")]
    pub enabled: bool,
    #[serde(default = "graph_url")]
    pub base_url: String,
    #[serde(default = "graph_version")]
    pub api_version: String,
    pub phone_number_id: String,
    pub access_token: Option<String>,
    pub access_token_file: Option<PathBuf>,
    /// Signs the webhooks WhatsApp sends (`X-Hub-Signature-256`).
    pub app_secret: Option<String>,
    pub app_secret_file: Option<PathBuf>,
    pub verify_token: Option<String>,
    pub verify_token_file: Option<PathBuf>,
    /// Hours since the contact's last message during which free text may be sent.
    #[serde(default = "window_hours")]
    pub window_hours: u32,
}

fn window_hours() -> u32 {
    24
}

impl WhatsappConfig {
    pub fn validate(&self) -> Result<(), ConfigError> {
        check_url(&self.base_url, "channels.whatsapp.base_url")?;
        if self.phone_number_id.is_empty() {
            return Err(ConfigError::Invalid {
                key: "channels.whatsapp.phone_number_id".into(),
                message: "is required".into(),
            });
        }
        self.access_token()?;
        self.app_secret()?;
        Ok(())
    }

    pub fn access_token(&self) -> Result<String, ConfigError> {
        required(
            &self.access_token,
            &self.access_token_file,
            "channels.whatsapp.access_token",
        )
    }

    pub fn app_secret(&self) -> Result<String, ConfigError> {
        required(
            &self.app_secret,
            &self.app_secret_file,
            "channels.whatsapp.app_secret",
        )
    }

    pub fn verify_token(&self) -> Result<Option<String>, ConfigError> {
        super::secrets::resolve(
            &self.verify_token,
            &self.verify_token_file,
            "channels.whatsapp.verify_token",
        )
    }
}
