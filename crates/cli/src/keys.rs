//! `sluice keys ...`: API keys of a tenant, through the admin API. `hash` works offline and
//! prints the digest to put in the config file.

use anyhow::Result;
use clap::Subcommand;
use reqwest::Method;
use serde_json::json;

use crate::admin::AdminClient;

#[derive(Debug, Subcommand)]
pub enum KeysCmd {
    /// Create a key for a tenant; the key is printed once.
    Create { tenant: String },
    /// List a tenant's keys (ids and dates, never the keys).
    List { tenant: String },
    /// Revoke a key; every replica refuses it within the key cache TTL.
    Revoke { tenant: String, key_id: String },
    /// Create a replacement key; the old one keeps working for `--overlap-s`.
    Rotate {
        tenant: String,
        key_id: String,
        #[arg(long, default_value_t = 3600)]
        overlap_s: u64,
    },
    /// Print the SHA-256 of a key (for `[[tenants.keys]] sha256` in the config file).
    Hash { key: String },
}

impl KeysCmd {
    pub fn needs_server(&self) -> bool {
        !matches!(self, KeysCmd::Hash { .. })
    }

    pub async fn run(self, admin: Option<&AdminClient>) -> Result<()> {
        let out = match (self, admin) {
            (KeysCmd::Hash { key }, _) => {
                println!("{}", sluice_config::hash_api_key(&key));
                return Ok(());
            }
            (_, None) => anyhow::bail!("this command needs --url and --admin-key"),
            (KeysCmd::Create { tenant }, Some(a)) => {
                a.call(Method::POST, &format!("/tenants/{tenant}/keys"), None)
                    .await?
            }
            (KeysCmd::List { tenant }, Some(a)) => {
                a.call(Method::GET, &format!("/tenants/{tenant}/keys"), None)
                    .await?
            }
            (KeysCmd::Revoke { tenant, key_id }, Some(a)) => {
                a.call(
                    Method::DELETE,
                    &format!("/tenants/{tenant}/keys/{key_id}"),
                    None,
                )
                .await?
            }
            (
                KeysCmd::Rotate {
                    tenant,
                    key_id,
                    overlap_s,
                },
                Some(a),
            ) => {
                let body = json!({ "overlap_s": overlap_s });
                a.call(
                    Method::POST,
                    &format!("/tenants/{tenant}/keys/{key_id}/rotate"),
                    Some(body),
                )
                .await?
            }
        };
        println!("{}", serde_json::to_string_pretty(&out)?);
        Ok(())
    }
}
