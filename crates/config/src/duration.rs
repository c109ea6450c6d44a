//! Durations written in the file as integers whose name says the unit (`timeout_s = 30`,
//! `after_ms = 200`), held as [`Duration`]s from the moment the file is read: a field declared
//! `#[serde(rename = "timeout_s", with = "crate::duration::secs")] timeout: Duration` is
//! written and read in seconds and used as a `Duration`, so no code converts a unit by hand.
//! A value longer than ten years is refused while reading (`now + it` must not overflow).

use std::time::Duration;

use serde::{Deserialize, Deserializer, Serializer};

/// The longest duration a setting may hold.
pub const MAX: Duration = Duration::from_secs(10 * 365 * 24 * 3600);

fn bounded<E: serde::de::Error>(d: Duration, unit: &str) -> Result<Duration, E> {
    if d > MAX {
        return Err(E::custom(format!(
            "is longer than ten years; this duration is written in {unit}"
        )));
    }
    Ok(d)
}

/// Whole seconds.
pub mod secs {
    use super::*;

    pub fn serialize<S: Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_u64(d.as_secs())
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
        let v = u64::deserialize(d)?;
        bounded(Duration::from_secs(v), "seconds")
    }
}

/// Whole milliseconds.
pub mod millis {
    use super::*;

    pub fn serialize<S: Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_u64(u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
        let v = u64::deserialize(d)?;
        bounded(Duration::from_millis(v), "milliseconds")
    }
}
