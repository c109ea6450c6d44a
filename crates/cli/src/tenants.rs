//! `sluice tenants ...`: list tenants and flip a tenant's kill switch.

use anyhow::Result;
use clap::Subcommand;
use reqwest::Method;
use serde_json::json;

use crate::admin::AdminClient;

#[derive(Debug, Subcommand)]
pub enum TenantsCmd {
    List,
    /// Kill switch: refuse every request of the tenant.
    Disable {
        tenant: String,
    },
    Enable {
        tenant: String,
    },
}

impl TenantsCmd {
    pub async fn run(self, admin: &AdminClient) -> Result<()> {
        let out = match self {
            TenantsCmd::List => admin.call(Method::GET, "/tenants", None).await?,
            TenantsCmd::Disable { tenant } => {
                admin
                    .call(
                        Method::PUT,
                        &format!("/tenants/{tenant}"),
                        Some(json!({ "disabled": true })),
                    )
                    .await?
            }
            TenantsCmd::Enable { tenant } => {
                admin
                    .call(
                        Method::PUT,
                        &format!("/tenants/{tenant}"),
                        Some(json!({ "disabled": false })),
                    )
                    .await?
            }
        };
        println!("{}", serde_json::to_string_pretty(&out)?);
        Ok(())
    }
}
