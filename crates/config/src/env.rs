//! `SLUICE_<SECTION>__<KEY>=value` overrides: `__` separates levels, names are lower-cased,
//! and the value is read as a TOML literal when it is one (numbers, booleans, arrays),
//! otherwise as a string.

use crate::ConfigError;

const PREFIX: &str = "SLUICE_";

pub(crate) fn overlay(
    table: &mut toml::Table,
    vars: &[(String, String)],
) -> Result<(), ConfigError> {
    for (name, raw) in vars {
        // Only SLUICE_<SECTION>__<KEY>: other SLUICE_ variables (SLUICE_CONFIG,
        // SLUICE_LOG_FORMAT, …) are not configuration values.
        let Some(path) = name.strip_prefix(PREFIX).filter(|p| p.contains("__")) else {
            continue;
        };
        let keys: Vec<String> = path.split("__").map(str::to_ascii_lowercase).collect();
        if keys.iter().any(String::is_empty) {
            return Err(ConfigError::Invalid(format!(
                "malformed override variable {name}"
            )));
        }
        set(table, &keys, literal(raw), name)?;
    }
    Ok(())
}

fn literal(raw: &str) -> toml::Value {
    let doc = format!("v = {raw}");
    match doc.parse::<toml::Table>() {
        Ok(mut t) => t
            .remove("v")
            .unwrap_or_else(|| toml::Value::String(raw.to_string())),
        Err(_) => toml::Value::String(raw.to_string()),
    }
}

fn set(
    table: &mut toml::Table,
    keys: &[String],
    value: toml::Value,
    name: &str,
) -> Result<(), ConfigError> {
    match keys {
        [] => Ok(()),
        [last] => {
            table.insert(last.clone(), value);
            Ok(())
        }
        [first, rest @ ..] => {
            let entry = table
                .entry(first.clone())
                .or_insert_with(|| toml::Value::Table(toml::Table::new()));
            match entry {
                toml::Value::Table(inner) => set(inner, rest, value, name),
                _ => Err(ConfigError::Invalid(format!(
                    "{name} overrides a value that is not a section"
                ))),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn literals_and_strings() {
        assert_eq!(literal("42"), toml::Value::Integer(42));
        assert_eq!(literal("true"), toml::Value::Boolean(true));
        assert_eq!(
            literal("nats://x:1"),
            toml::Value::String("nats://x:1".into())
        );
        assert_eq!(literal("[1, 2]").as_array().map(Vec::len), Some(2));
    }
}
