//! Whether a request reads the cache, writes it, or neither: a pure decision from the
//! model's configured mode, the request and its `Cache-Control`.
//!
//! | mode (per model) | used for |
//! |---|---|
//! | `off` | nothing is cached unless a request opts in (`X-Sluice-Cache: on`) |
//! | `deterministic` (chat default) | requests with `temperature: 0` or a `seed` |
//! | `always` (embeddings default) | every request |
//!
//! `X-Sluice-Cache: off` opts a request out whatever the mode. `Cache-Control: no-store`
//! neither reads nor writes; `no-cache` skips the lookup and refreshes the entry;
//! `max-age=N` accepts only an entry at most N seconds old.

use serde::Deserialize;
use serde_json::Value;

use crate::key::Call;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Mode {
    Off,
    #[default]
    Deterministic,
    Always,
}

/// The parts of `Cache-Control` a request may send. Unknown directives are ignored, as
/// HTTP caches do.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Control {
    pub no_cache: bool,
    pub no_store: bool,
    pub max_age_s: Option<u64>,
}

impl Control {
    pub fn parse(header: Option<&str>) -> Control {
        let mut c = Control::default();
        for directive in header.unwrap_or("").split(',') {
            let d = directive.trim();
            let (name, value) = match d.split_once('=') {
                Some((n, v)) => (n.trim(), Some(v.trim().trim_matches('"'))),
                None => (d, None),
            };
            if name.eq_ignore_ascii_case("no-cache") {
                c.no_cache = true;
            } else if name.eq_ignore_ascii_case("no-store") {
                c.no_store = true;
            } else if name.eq_ignore_ascii_case("max-age") {
                // An unparsable max-age is treated like RFC 9111 says for a stale
                // response: as 0, "do not use a stored answer".
                c.max_age_s = Some(value.and_then(|v| v.parse().ok()).unwrap_or(0));
            }
        }
        c
    }
}

/// What the request does with the cache.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Decision {
    /// Neither read nor write (`x-sluice-cache: bypass`).
    Bypass,
    Use {
        /// Look for an entry first.
        read: bool,
        /// Store the answer when the job completes.
        write: bool,
        /// The oldest entry the request accepts.
        max_age_s: Option<u64>,
    },
}

pub struct Inputs<'a> {
    pub call: Call,
    pub mode: Mode,
    /// `X-Sluice-Cache: on|off`, when sent.
    pub opt: Option<bool>,
    pub control: Control,
    pub request: &'a Value,
}

/// A chat request whose answer does not depend on sampling luck.
pub fn deterministic(request: &Value) -> bool {
    let zero_temperature = request
        .get("temperature")
        .and_then(Value::as_f64)
        .is_some_and(|t| t == 0.0);
    zero_temperature || request.get("seed").is_some_and(|s| !s.is_null())
}

pub fn decide(i: &Inputs<'_>) -> Decision {
    let eligible = match i.opt {
        Some(false) => false,
        Some(true) => true,
        None => match (i.mode, i.call) {
            (Mode::Off, _) => false,
            (Mode::Always, _) | (Mode::Deterministic, Call::Embedding) => true,
            (Mode::Deterministic, Call::Chat) => deterministic(i.request),
        },
    };
    if !eligible || i.control.no_store {
        return Decision::Bypass;
    }
    Decision::Use {
        read: !i.control.no_cache,
        write: true,
        max_age_s: i.control.max_age_s,
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn cache_control_parses_what_requests_send() {
        assert_eq!(Control::parse(None), Control::default());
        let c = Control::parse(Some("No-Cache, max-age=30"));
        assert!(c.no_cache && !c.no_store);
        assert_eq!(c.max_age_s, Some(30));
        assert!(Control::parse(Some("no-store")).no_store);
        assert_eq!(Control::parse(Some("max-age=\"7\"")).max_age_s, Some(7));
        assert_eq!(Control::parse(Some("max-age=soon")).max_age_s, Some(0));
        assert_eq!(
            Control::parse(Some("private, must-revalidate")),
            Control::default()
        );
    }

    #[test]
    fn decisions_as_a_table() {
        let det = json!({"temperature": 0});
        let seeded = json!({"temperature": 1, "seed": 3});
        let random = json!({"temperature": 0.7});
        let none = Control::default();
        let no_cache = Control::parse(Some("no-cache"));
        let no_store = Control::parse(Some("no-store"));
        let aged = Control::parse(Some("max-age=5"));
        let use_ = |read, max_age_s| Decision::Use {
            read,
            write: true,
            max_age_s,
        };
        use Call::*;
        use Mode::*;
        type Row<'a> = (Call, Mode, Option<bool>, Control, &'a Value, Decision);
        let rows: &[Row<'_>] = &[
            (Chat, Deterministic, None, none, &det, use_(true, None)),
            (Chat, Deterministic, None, none, &seeded, use_(true, None)),
            (Chat, Deterministic, None, none, &random, Decision::Bypass),
            (
                Chat,
                Deterministic,
                Some(true),
                none,
                &random,
                use_(true, None),
            ),
            (
                Chat,
                Deterministic,
                Some(false),
                none,
                &det,
                Decision::Bypass,
            ),
            (Chat, Always, None, none, &random, use_(true, None)),
            (Chat, Off, None, none, &det, Decision::Bypass),
            (Chat, Off, Some(true), none, &det, use_(true, None)),
            (
                Embedding,
                Deterministic,
                None,
                none,
                &random,
                use_(true, None),
            ),
            (Embedding, Off, None, none, &det, Decision::Bypass),
            (Chat, Deterministic, None, no_cache, &det, use_(false, None)),
            (Chat, Deterministic, None, no_store, &det, Decision::Bypass),
            (Chat, Always, Some(true), no_store, &det, Decision::Bypass),
            (Chat, Deterministic, None, aged, &det, use_(true, Some(5))),
        ];
        for (n, (call, mode, opt, control, request, want)) in rows.iter().enumerate() {
            let got = decide(&Inputs {
                call: *call,
                mode: *mode,
                opt: *opt,
                control: *control,
                request,
            });
            assert_eq!(got, *want, "row {n}");
        }
    }
}
