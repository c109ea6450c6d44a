//! Service configuration: defaults, a TOML file, then SLUICE_ environment overrides
