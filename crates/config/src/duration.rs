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

/// `d` in whole milliseconds, as Redis and Lua take them (saturating; a setting's duration
/// is at most [`MAX`], far below `u64::MAX` milliseconds).
pub fn millis_u64(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
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
        s.serialize_u64(millis_u64(*d))
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
        let v = u64::deserialize(d)?;
        bounded(Duration::from_millis(v), "milliseconds")
    }
}

/// An optional duration in whole seconds (absent: `None`).
pub mod secs_opt {
    use super::*;

    pub fn serialize<S: Serializer>(d: &Option<Duration>, s: S) -> Result<S::Ok, S::Error> {
        match d {
            Some(d) => s.serialize_some(&d.as_secs()),
            None => s.serialize_none(),
        }
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Duration>, D::Error> {
        Option::<u64>::deserialize(d)?
            .map(|v| bounded(Duration::from_secs(v), "seconds"))
            .transpose()
    }
}

/// A list of durations in whole milliseconds.
pub mod millis_vec {
    use super::*;

    pub fn serialize<S: Serializer>(d: &[Duration], s: S) -> Result<S::Ok, S::Error> {
        s.collect_seq(d.iter().copied().map(millis_u64))
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<Duration>, D::Error> {
        Vec::<u64>::deserialize(d)?
            .into_iter()
            .map(|v| bounded(Duration::from_millis(v), "milliseconds"))
            .collect()
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use serde::{Deserialize, Serialize};

    #[derive(Debug, PartialEq, Serialize, Deserialize)]
    struct T {
        #[serde(rename = "a_s", with = "secs")]
        a: Duration,
        #[serde(rename = "b_ms", with = "millis")]
        b: Duration,
        #[serde(rename = "c_s", with = "secs_opt", default)]
        c: Option<Duration>,
        #[serde(rename = "d_ms", with = "millis_vec", default)]
        d: Vec<Duration>,
    }

    fn read(text: &str) -> Result<T, String> {
        toml::from_str(text).map_err(|e| e.to_string())
    }

    #[test]
    fn each_unit_is_read_and_written_as_its_name_says() {
        let t = read("a_s = 3\nb_ms = 250\nc_s = 7\nd_ms = [5, 1000]\n").unwrap();
        assert_eq!(
            t,
            T {
                a: Duration::from_secs(3),
                b: Duration::from_millis(250),
                c: Some(Duration::from_secs(7)),
                d: vec![Duration::from_millis(5), Duration::from_secs(1)],
            }
        );
        let back = toml::Value::try_from(&t).unwrap();
        assert_eq!(back.try_into::<T>().unwrap(), t);
        let t = read("a_s = 0\nb_ms = 0\n").unwrap();
        assert_eq!((t.c, t.d.len()), (None, 0));
    }

    #[test]
    fn longer_than_ten_years_is_refused_naming_the_field() {
        let ten_years = MAX.as_secs();
        assert!(read(&format!("a_s = {ten_years}\nb_ms = 0\n")).is_ok());
        let e = read(&format!("a_s = {}\nb_ms = 0\n", ten_years + 1)).unwrap_err();
        assert!(e.contains("a_s") && e.contains("ten years"), "{e}");
        let e = read("a_s = 1\nb_ms = 1\nc_s = 400000000\n").unwrap_err();
        assert!(e.contains("c_s") && e.contains("seconds"), "{e}");
        let e = read("a_s = 1\nb_ms = 1\nd_ms = [1, 400000000000000]\n").unwrap_err();
        assert!(e.contains("d_ms") && e.contains("milliseconds"), "{e}");
        assert!(read("a_s = -1\nb_ms = 0\n").is_err());
    }
}
