//! Secrets given inline or as `<key>_file` paths; never logged.

use std::path::PathBuf;

use super::ConfigError;

/// The secret from `value`, or read from `file` (trimmed); `key` names it in errors.
pub fn resolve(
    value: &Option<String>,
    file: &Option<PathBuf>,
    key: &str,
) -> Result<Option<String>, ConfigError> {
    match (value, file) {
        (Some(_), Some(_)) => Err(ConfigError::Invalid {
            key: key.to_string(),
            message: format!("give {key} or {key}_file, not both"),
        }),
        (Some(v), None) => Ok(Some(v.clone())),
        (None, Some(p)) => std::fs::read_to_string(p)
            .map(|s| Some(s.trim().to_string()))
            .map_err(|e| ConfigError::Invalid {
                key: format!("{key}_file"),
                message: format!("cannot read {}: {e}", p.display()),
            }),
        (None, None) => Ok(None),
    }
}

/// Like `resolve`, but the secret must be there.
pub fn required(
    value: &Option<String>,
    file: &Option<PathBuf>,
    key: &str,
) -> Result<String, ConfigError> {
    resolve(value, file, key)?.ok_or_else(|| ConfigError::Invalid {
        key: key.to_string(),
        message: format!("is required (or {key}_file)"),
    })
}

/// `base_url` must be an absolute http(s) URL.
pub fn check_url(url: &str, key: &str) -> Result<(), ConfigError> {
    match url::Url::parse(url) {
        Ok(u) if u.scheme() == "http" || u.scheme() == "https" => Ok(()),
        _ => Err(ConfigError::Invalid {
            key: key.to_string(),
            message: format!("{url:?} is not an absolute http(s) URL"),
        }),
    }
}

pub(crate) fn yes() -> bool {
    true
}
