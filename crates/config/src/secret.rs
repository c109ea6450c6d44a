//! Secrets by reference: the file says `env::NAME`, the value comes from the environment.

use secrecy::SecretString;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::ConfigError;

/// A reference to a secret, written `env::NAME` in the config file.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct SecretRef {
    var: String,
}

impl TryFrom<String> for SecretRef {
    type Error = String;
    fn try_from(s: String) -> Result<Self, Self::Error> {
        match s.strip_prefix("env::") {
            Some(var) if !var.is_empty() => Ok(SecretRef {
                var: var.to_string(),
            }),
            _ => Err("a secret must be written as env::VARIABLE_NAME, never inline".to_string()),
        }
    }
}

impl From<SecretRef> for String {
    fn from(r: SecretRef) -> String {
        format!("env::{}", r.var)
    }
}

impl SecretRef {
    pub fn variable(&self) -> &str {
        &self.var
    }

    pub fn resolve(&self) -> Result<SecretString, ConfigError> {
        std::env::var(&self.var)
            .map(SecretString::from)
            .map_err(|_| ConfigError::MissingSecret {
                name: self.var.clone(),
            })
    }
}

/// How API keys are stored: the hex SHA-256 of the key. Keys are long random strings, so a
/// fast hash is enough (no password stretching needed) and lookup stays O(1).
pub fn hash_api_key(key: &str) -> String {
    hex::encode(Sha256::digest(key.as_bytes()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn inline_secrets_are_refused() {
        assert!(SecretRef::try_from("sk-live-123".to_string()).is_err());
        assert!(SecretRef::try_from("env::".to_string()).is_err());
        let r = SecretRef::try_from("env::OPENAI_API_KEY".to_string()).unwrap();
        assert_eq!(r.variable(), "OPENAI_API_KEY");
    }

    #[test]
    fn key_hash_is_stable() {
        assert_eq!(
            hash_api_key("abc"),
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
    }
}
