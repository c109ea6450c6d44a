//! The configured models, and the check that every section naming a model names one of them.
//!
//! A model name appears in several sections: `delivery.models` (the models `[upstream]`
//! serves without a pool), `[[models.pools]]` aliases, the routing alias and its tiers, pool
//! fallbacks, per-model limits, prices and cache policies. Nothing but this check ties them
//! together, so a typo would silently route to nothing, limit, price or cache nothing; it is
//! a start-up error naming the offending entry instead.

use crate::{Config, ConfigError};

impl Config {
    /// Every model a client may name, in the order `GET /v1/models` lists them: the models
    /// `[upstream]` serves (`delivery.models`), every pool alias, then the routing alias.
    pub fn model_ids(&self) -> Vec<&str> {
        let mut ids: Vec<&str> = Vec::new();
        let routing = Some(self.models.routing.alias.as_str()).filter(|a| !a.is_empty());
        let names = self.delivery.models.iter().map(String::as_str);
        let pools = self.models.pools.iter().map(|p| p.alias.as_str());
        for id in names.chain(pools).chain(routing) {
            if !ids.contains(&id) {
                ids.push(id);
            }
        }
        ids
    }

    /// Every reference to a model names a configured one.
    pub(crate) fn check_model_references(&self) -> Result<(), ConfigError> {
        let all = self.model_ids();
        let routing = self.models.routing.alias.as_str();
        // A routing tier or a fallback must be served by something other than the router.
        let served: Vec<&str> = all.iter().copied().filter(|m| *m != routing).collect();
        let unknown = |entry: &str, model: &str, among: &[&str], hint: &str| {
            Err(ConfigError::Invalid(format!(
                "{entry}: {model:?} is not a configured model; configured: {} \
                 (delivery.models lists the models [upstream] serves, [[models.pools]] the \
                 pooled ones){hint}",
                among.join(", ")
            )))
        };
        if !routing.is_empty() {
            let r = &self.models.routing;
            let tiers = [
                ("cheap_model", &r.cheap_model),
                ("strong_model", &r.strong_model),
            ];
            for (entry, model) in tiers {
                if !served.contains(&model.as_str()) {
                    let hint = "; routing is on (models.routing.alias = \"\" turns it off)";
                    return unknown(&format!("models.routing.{entry}"), model, &served, hint);
                }
            }
        }
        for p in &self.models.pools {
            if let Some(f) = &p.fallback_model
                && !served.contains(&f.as_str())
            {
                let entry = format!("models.pools[{:?}].fallback_model", p.alias);
                return unknown(&entry, f, &served, "");
            }
        }
        let limits = self
            .governance
            .models
            .keys()
            .map(|m| ("governance.models", m));
        let prices = self
            .governance
            .prices
            .keys()
            .map(|m| ("governance.prices", m));
        let cached = self.cache.models.keys().map(|m| ("cache.models", m));
        let embedder = Some(&self.cache.semantic.embedding_model)
            .filter(|m| !m.is_empty())
            .map(|m| ("cache.semantic.embedding_model", m));
        for (entry, m) in limits.chain(prices).chain(cached).chain(embedder) {
            if !all.contains(&m.as_str()) {
                return unknown(entry, m, &all, "");
            }
        }
        Ok(())
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use crate::Config;

    fn err(toml: &str) -> String {
        Config::from_toml_with_env(toml, &[])
            .unwrap_err()
            .to_string()
    }

    #[test]
    fn the_model_list_is_derived_from_upstream_models_pools_and_routing() {
        let cfg = Config::from_toml_with_env(
            "[[models.pools]]\nalias = \"big\"\n[[models.pools.deployments]]\nname = \"a\"\nbase_url = \"http://x\"\n\
             [[models.pools]]\nalias = \"sim-small\"\n[[models.pools.deployments]]\nname = \"b\"\nbase_url = \"http://y\"\n",
            &[],
        )
        .unwrap();
        assert_eq!(
            cfg.model_ids(),
            ["sim-small", "sim-large", "sim-embed", "big", "auto"]
        );
        let no_routing =
            Config::from_toml_with_env("[models.routing]\nalias = \"\"\n", &[]).unwrap();
        assert_eq!(
            no_routing.model_ids(),
            ["sim-small", "sim-large", "sim-embed"]
        );
    }

    #[test]
    fn every_reference_to_a_model_names_a_configured_one() {
        let e = err("[models.routing]\ncheap_model = \"sim-smal\"\n");
        assert!(
            e.contains("models.routing.cheap_model: \"sim-smal\""),
            "{e}"
        );
        assert!(
            e.contains("configured: sim-small, sim-large, sim-embed"),
            "{e}"
        );
        let e = err("[models.routing]\nstrong_model = \"auto\"\n");
        assert!(
            e.contains("models.routing.strong_model"),
            "the router cannot route to itself: {e}"
        );
        let e = err(
            "[[models.pools]]\nalias = \"big\"\nfallback_model = \"small\"\n\
             [[models.pools.deployments]]\nname = \"a\"\nbase_url = \"http://x\"\n",
        );
        assert!(
            e.contains("models.pools[\"big\"].fallback_model: \"small\""),
            "{e}"
        );
        let e = err("[governance.models.gpt-4o]\nrequests = 5\n");
        assert!(e.contains("governance.models: \"gpt-4o\""), "{e}");
        let e =
            err("[governance.prices.gpt-4o]\nprompt_per_mtok = 1.0\ncompletion_per_mtok = 2.0\n");
        assert!(e.contains("governance.prices: \"gpt-4o\""), "{e}");
        let e = err("[cache.models.sim-smol]\nmode = \"always\"\n");
        assert!(e.contains("cache.models: \"sim-smol\""), "{e}");
        // Named correctly, each is fine; the routing alias may have limits and prices.
        let ok = "[delivery]\nmodels = [\"gpt-4o\", \"small\"]\n\
                  [models.routing]\ncheap_model = \"small\"\nstrong_model = \"gpt-4o\"\n\
                  [governance.models.auto]\nrequests = 5\n\
                  [governance.prices.gpt-4o]\nprompt_per_mtok = 1.0\ncompletion_per_mtok = 2.0\n\
                  [cache.models.small]\nmode = \"off\"\n";
        Config::from_toml_with_env(ok, &[]).unwrap();
    }
}
