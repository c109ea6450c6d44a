//! JSON parsing that refuses duplicate member names.
//!
//! `serde_json` keeps the last of two members with the same name; a gateway that validates and
//! meters a request must not accept an ambiguous one (one reader could see the first value,
//! another the last). [`from_slice`] builds the same [`Value`] `serde_json` would, through a
//! visitor that inserts each member with one map `entry` lookup — the lookup an insert makes
//! anyway — so the check costs nothing on a valid body. Duplicates are refused at every depth
//! (inside messages, tool schemas, metadata). The path to the duplicate is only assembled on
//! the way out of a refused body.

use std::cell::RefCell;

use serde::de::{self, DeserializeSeed, Deserializer, MapAccess, SeqAccess, Visitor};
use serde_json::{Map, Number, Value, map::Entry};

/// Why a body was refused.
#[derive(Debug)]
pub enum StrictError {
    /// Not JSON; `serde_json`'s message names the line and column, never the input.
    Syntax(serde_json::Error),
    /// A member name appears twice in one object: the path to it, e.g. `messages[0].role`.
    Duplicate(String),
}

/// Parses one JSON value, refusing duplicate member names and trailing characters.
pub fn from_slice(body: &[u8]) -> Result<Value, StrictError> {
    let dup = RefCell::new(None);
    let mut de = serde_json::Deserializer::from_slice(body);
    let parsed = Strict { dup: &dup }
        .deserialize(&mut de)
        .and_then(|v| de.end().map(|()| v));
    match (parsed, dup.into_inner()) {
        (Ok(v), _) => Ok(v),
        (Err(_), Some(segs)) => Err(StrictError::Duplicate(render(segs))),
        (Err(e), None) => Err(StrictError::Syntax(e)),
    }
}

enum Seg {
    Key(String),
    Index(usize),
}

/// `segs` innermost first, as they were noted on the way out.
fn render(segs: Vec<Seg>) -> String {
    let mut out = String::new();
    for seg in segs.into_iter().rev() {
        match seg {
            Seg::Key(k) if out.is_empty() => out.push_str(&k),
            Seg::Key(k) => {
                out.push('.');
                out.push_str(&k);
            }
            Seg::Index(i) => out.push_str(&format!("[{i}]")),
        }
    }
    out
}

#[derive(Clone, Copy)]
struct Strict<'a> {
    /// Set when a duplicate is found; each enclosing level adds its segment as the error
    /// passes through it.
    dup: &'a RefCell<Option<Vec<Seg>>>,
}

impl Strict<'_> {
    fn note(self, seg: Seg) {
        if let Some(path) = self.dup.borrow_mut().as_mut() {
            path.push(seg);
        }
    }
}

impl<'de> DeserializeSeed<'de> for Strict<'_> {
    type Value = Value;

    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<Value, D::Error> {
        d.deserialize_any(self)
    }
}

impl<'de> Visitor<'de> for Strict<'_> {
    type Value = Value;

    fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
        f.write_str("a JSON value")
    }

    fn visit_bool<E>(self, v: bool) -> Result<Value, E> {
        Ok(Value::Bool(v))
    }

    fn visit_i64<E>(self, v: i64) -> Result<Value, E> {
        Ok(Value::Number(v.into()))
    }

    fn visit_u64<E>(self, v: u64) -> Result<Value, E> {
        Ok(Value::Number(v.into()))
    }

    fn visit_f64<E>(self, v: f64) -> Result<Value, E> {
        Ok(Number::from_f64(v).map_or(Value::Null, Value::Number))
    }

    fn visit_str<E>(self, v: &str) -> Result<Value, E> {
        Ok(Value::String(v.to_owned()))
    }

    fn visit_string<E>(self, v: String) -> Result<Value, E> {
        Ok(Value::String(v))
    }

    fn visit_unit<E>(self) -> Result<Value, E> {
        Ok(Value::Null)
    }

    fn visit_none<E>(self) -> Result<Value, E> {
        Ok(Value::Null)
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Value, A::Error> {
        let mut out = Vec::with_capacity(seq.size_hint().unwrap_or(0));
        loop {
            match seq.next_element_seed(self) {
                Ok(Some(v)) => out.push(v),
                Ok(None) => return Ok(Value::Array(out)),
                Err(e) => {
                    self.note(Seg::Index(out.len()));
                    return Err(e);
                }
            }
        }
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Value, A::Error> {
        let mut out = Map::new();
        while let Some(key) = map.next_key::<String>()? {
            match out.entry(key) {
                Entry::Occupied(o) => {
                    *self.dup.borrow_mut() = Some(vec![Seg::Key(o.key().clone())]);
                    return Err(de::Error::custom("duplicate member name"));
                }
                Entry::Vacant(slot) => match map.next_value_seed(self) {
                    Ok(v) => {
                        slot.insert(v);
                    }
                    Err(e) => {
                        self.note(Seg::Key(slot.key().clone()));
                        return Err(e);
                    }
                },
            }
        }
        Ok(Value::Object(out))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn dup(body: &str) -> Option<String> {
        match from_slice(body.as_bytes()) {
            Err(StrictError::Duplicate(p)) => Some(p),
            _ => None,
        }
    }

    #[test]
    fn builds_what_serde_json_builds() {
        for body in [
            r#"{"model":"m","messages":[{"role":"user","content":"hi"}],"n":1,"t":0.5,"x":null,"b":true,"neg":-3,"big":18446744073709551615}"#,
            "[]",
            "\"s\"",
            "  {\"a\": [1, [2, {\"b\": {}}]]}  ",
        ] {
            let want: Value = serde_json::from_str(body).unwrap();
            assert_eq!(from_slice(body.as_bytes()).unwrap(), want, "{body}");
        }
    }

    #[test]
    fn names_the_duplicate_with_its_path() {
        assert_eq!(
            dup(r#"{"model":"a","model":"b"}"#).as_deref(),
            Some("model")
        );
        assert_eq!(
            dup(r#"{"messages":[{"role":"user","content":"x"},{"role":"user","role":"system"}]}"#)
                .as_deref(),
            Some("messages[1].role")
        );
        assert_eq!(
            dup(r#"{"tools":[{"function":{"parameters":{"properties":{"a":{},"a":{}}}}}]}"#)
                .as_deref(),
            Some("tools[0].function.parameters.properties.a")
        );
        // The same name in different objects is fine.
        assert!(from_slice(br#"{"a":{"x":1},"b":{"x":1}}"#).is_ok());
    }

    #[test]
    fn syntax_errors_stay_syntax_errors() {
        for body in ["{", "{\"a\":1} x", "", "{\"a\":1e400}", "[1,]"] {
            assert!(
                matches!(from_slice(body.as_bytes()), Err(StrictError::Syntax(_))),
                "{body}"
            );
        }
    }
}
