//! Per-request directives embedded in the last user message, so one simulator can serve tests
//! with different needs at the same time.
//!
//! - `[[sim:sleep=MS]]` replaces the sampled latency with `MS` milliseconds.
//! - `[[sim:status=CODE]]` answers with that status (400..=599) in OpenAI's error shape.
//! - `[[sim:fail_first=N:KEY]]` makes the first `N` requests carrying `KEY` fail with `500`.
//! - `[[sim:stream_error_after=N]]` ends a stream after `N` chunks with an error event
//!   (`data: {"error": {…}}`, no `[DONE]`), as OpenAI reports a failure mid-stream.
//!
//! Directives stay in the text the output is derived from: the same prompt gives the same
//! answer whether or not it carries directives' side effects.

/// Longest accepted `sleep`, so a typo cannot park a request for hours.
pub const MAX_SLEEP_MS: u64 = 600_000;
/// Longest accepted `fail_first` key, in bytes.
pub const MAX_KEY_LEN: usize = 256;

const OPEN: &str = "[[sim:";
const CLOSE: &str = "]]";

/// The directives found in one message.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Directives {
    pub sleep_ms: Option<u64>,
    pub status: Option<u16>,
    pub fail_first: Option<FailFirst>,
    pub stream_error_after: Option<u32>,
}

/// `[[sim:fail_first=N:KEY]]`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FailFirst {
    pub n: u32,
    pub key: String,
}

/// A directive that could not be understood; answered `400` rather than ignored.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("invalid sim directive `{0}`")]
pub struct DirectiveError(pub String);

impl Directives {
    /// Extracts every `[[sim:…]]` directive from `text`; a later directive of the same kind wins.
    pub fn parse(text: &str) -> Result<Self, DirectiveError> {
        let mut out = Self::default();
        let mut rest = text;
        while let Some(start) = rest.find(OPEN) {
            let after = &rest[start + OPEN.len()..];
            let Some(end) = after.find(CLOSE) else {
                break;
            };
            let body = &after[..end];
            out.apply(body)
                .map_err(|()| DirectiveError(body.chars().take(80).collect()))?;
            rest = &after[end + CLOSE.len()..];
        }
        Ok(out)
    }

    fn apply(&mut self, body: &str) -> Result<(), ()> {
        let (name, value) = body.split_once('=').ok_or(())?;
        match name.trim() {
            "sleep" => {
                let ms: u64 = value.trim().parse().map_err(|_| ())?;
                if ms > MAX_SLEEP_MS {
                    return Err(());
                }
                self.sleep_ms = Some(ms);
            }
            "status" => {
                let code: u16 = value.trim().parse().map_err(|_| ())?;
                if !(400..=599).contains(&code) {
                    return Err(());
                }
                self.status = Some(code);
            }
            "stream_error_after" => {
                self.stream_error_after = Some(value.trim().parse().map_err(|_| ())?);
            }
            "fail_first" => {
                let (n, key) = value.split_once(':').ok_or(())?;
                let n: u32 = n.trim().parse().map_err(|_| ())?;
                if key.is_empty() || key.len() > MAX_KEY_LEN {
                    return Err(());
                }
                self.fail_first = Some(FailFirst {
                    n,
                    key: key.to_owned(),
                });
            }
            _ => return Err(()),
        }
        Ok(())
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn plain_text_has_no_directives() {
        assert_eq!(
            Directives::parse("hello [[world]] sim:sleep=3").unwrap(),
            Directives::default()
        );
    }

    #[test]
    fn every_kind_is_parsed() {
        let d = Directives::parse(
            "hi [[sim:sleep=250]] and [[sim:status=503]][[sim:fail_first=2:job-42]] bye [[sim:stream_error_after=3]]",
        )
        .unwrap();
        assert_eq!(d.stream_error_after, Some(3));
        assert_eq!(d.sleep_ms, Some(250));
        assert_eq!(d.status, Some(503));
        assert_eq!(
            d.fail_first,
            Some(FailFirst {
                n: 2,
                key: "job-42".into()
            })
        );
    }

    #[test]
    fn keys_may_contain_colons() {
        let d = Directives::parse("[[sim:fail_first=1:a:b]]").unwrap();
        assert_eq!(
            d.fail_first,
            Some(FailFirst {
                n: 1,
                key: "a:b".into()
            })
        );
    }

    #[test]
    fn malformed_directives_are_refused() {
        for text in [
            "[[sim:sleep=abc]]",
            "[[sim:sleep=99999999]]",
            "[[sim:status=200]]",
            "[[sim:status=700]]",
            "[[sim:fail_first=2]]",
            "[[sim:fail_first=2:]]",
            "[[sim:explode=1]]",
            "[[sim:sleep]]",
            "[[sim:stream_error_after=-1]]",
        ] {
            assert!(Directives::parse(text).is_err(), "{text}");
        }
    }

    #[test]
    fn an_unclosed_directive_is_plain_text() {
        assert_eq!(
            Directives::parse("[[sim:sleep=5").unwrap(),
            Directives::default()
        );
    }
}
