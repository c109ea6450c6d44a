//! Redaction of personal data and secrets in text that is about to be logged.
//!
//! Prompts and completions are never logged by default. When an operator opts in to content
//! logs (`SLUICE_LOG_CONTENT=redacted`, see [`content_logging`]), text passes through
//! [`redact`] first, which replaces, in this order:
//!
//! - bearer tokens (`Bearer …`) and API keys (`sk-…`, `whsec_…`, AWS `AKIA…`, GitHub
//!   `ghp_…`, Slack `xox…-`), as `[REDACTED:secret]`;
//! - e-mail addresses, as `[REDACTED:email]`;
//! - IBANs whose ISO 7064 mod-97 check holds, as `[REDACTED:iban]`;
//! - card numbers (13–19 digits, spaces or dashes allowed) whose Luhn check holds, as
//!   `[REDACTED:card]`;
//! - phone numbers (an international `+` prefix, or 9–15 digits in separated groups), as
//!   `[REDACTED:phone]`.
//!
//! The checksums keep order numbers, dates, versions, UUIDs and addresses readable: only
//! what would validate as the thing is removed.

use std::{borrow::Cow, sync::LazyLock};

use regex::{Captures, Regex};

/// Whether content logs are on (`SLUICE_LOG_CONTENT=redacted`); read once.
pub fn content_logging() -> bool {
    static ON: LazyLock<bool> =
        LazyLock::new(|| std::env::var("SLUICE_LOG_CONTENT").is_ok_and(|v| v == "redacted"));
    *ON
}

struct Rules {
    secret: Regex,
    email: Regex,
    iban: Regex,
    card: Regex,
    phone: Regex,
}

#[allow(clippy::expect_used)] // constant patterns, covered by the tests below
static RULES: LazyLock<Rules> = LazyLock::new(|| Rules {
    secret: Regex::new(concat!(
        r"(?i:\bbearer\s+[A-Za-z0-9._~+/=-]{8,})",
        r"|\b(?:sk|pk|rk)-[A-Za-z0-9_-]{16,}",
        r"|\bwhsec_[A-Za-z0-9+/=]{16,}",
        r"|\bAKIA[0-9A-Z]{16}\b",
        r"|\bgh[pousr]_[A-Za-z0-9]{30,}",
        r"|\bxox[abprs]-[A-Za-z0-9-]{10,}",
    ))
    .expect("secret pattern"),
    email: Regex::new(r"[A-Za-z0-9._%+-]+@[A-Za-z0-9-]+(?:\.[A-Za-z0-9-]+)*\.[A-Za-z]{2,}")
        .expect("email pattern"),
    iban: Regex::new(r"\b[A-Z]{2}\d{2}(?: ?[A-Z0-9]{4}){2,7}(?: ?[A-Z0-9]{1,3})?\b")
        .expect("iban pattern"),
    card: Regex::new(r"\b\d(?:[ -]?\d){12,18}\b").expect("card pattern"),
    phone: Regex::new(concat!(
        r"(?:\+\d{1,3}[ .-]?)?\(\d{1,4}\)[ .-]?\d{2,4}(?:[ .-]\d{2,4}){1,3}\b",
        r"|(?:\+\d{1,3}[ .-]?)?\b\d{2,4}(?:[ .-]\d{2,4}){2,4}\b",
        r"|\+\d{9,15}\b",
    ))
    .expect("phone pattern"),
});

/// `text` with personal data and secrets replaced (borrowed when nothing matched).
pub fn redact(text: &str) -> Cow<'_, str> {
    let r = &*RULES;
    let mut out = Cow::Borrowed(text);
    let mut apply = |re: &Regex, f: &dyn Fn(&str) -> Option<&'static str>| {
        if re.is_match(&out) {
            let replaced = re
                .replace_all(&out, |c: &Captures| {
                    let m = &c[0];
                    f(m).map_or_else(|| m.to_string(), str::to_string)
                })
                .into_owned();
            out = Cow::Owned(replaced);
        }
    };
    apply(&r.secret, &|_| Some("[REDACTED:secret]"));
    apply(&r.email, &|_| Some("[REDACTED:email]"));
    apply(&r.iban, &|m| iban_valid(m).then_some("[REDACTED:iban]"));
    apply(&r.card, &|m| {
        (card_grouping(m) && luhn_valid(m)).then_some("[REDACTED:card]")
    });
    apply(&r.phone, &|m| phone_like(m).then_some("[REDACTED:phone]"));
    out
}

fn digits(s: &str) -> Vec<u32> {
    s.chars().filter_map(|c| c.to_digit(10)).collect()
}

/// The Luhn check of a 13–19 digit number.
pub fn luhn_valid(s: &str) -> bool {
    let d = digits(s);
    if !(13..=19).contains(&d.len()) || d.iter().all(|&x| x == d[0]) {
        return false;
    }
    let sum: u32 = d
        .iter()
        .rev()
        .enumerate()
        .map(|(i, &x)| {
            if i % 2 == 1 {
                let y = x * 2;
                if y > 9 { y - 9 } else { y }
            } else {
                x
            }
        })
        .sum();
    sum.is_multiple_of(10)
}

/// Written as cards are: one run of digits, or groups of 4-4-4-4(-3), 4-6-5 or 4-6-4.
fn card_grouping(s: &str) -> bool {
    let groups: Vec<usize> = s.split([' ', '-']).map(str::len).collect();
    matches!(
        groups.as_slice(),
        [_] | [4, 4, 4, 4] | [4, 4, 4, 4, 3] | [4, 6, 5] | [4, 6, 4]
    )
}

/// The ISO 13616 check of an IBAN (country, check digits, 11–30 alphanumerics).
pub fn iban_valid(s: &str) -> bool {
    let compact: String = s.chars().filter(|c| !c.is_whitespace()).collect();
    if !(15..=34).contains(&compact.len()) {
        return false;
    }
    let (head, tail) = compact.split_at(4);
    let mut rem: u32 = 0;
    for c in tail.chars().chain(head.chars()) {
        let v = match c.to_digit(36) {
            Some(v) => v,
            None => return false,
        };
        for digit in if v >= 10 {
            vec![v / 10, v % 10]
        } else {
            vec![v]
        } {
            rem = (rem * 10 + digit) % 97;
        }
    }
    rem == 1
}

/// 9–15 digits, and not something that reads as a date or a version.
fn phone_like(m: &str) -> bool {
    let n = digits(m).len();
    if !(9..=15).contains(&n) {
        return false;
    }
    // ISO dates and times (2024-01-15 10 30) and dotted versions are not phones.
    let dotted = m.matches('.').count();
    (dotted < 2 || m.starts_with('+')) && !is_date_like(m)
}

fn is_date_like(m: &str) -> bool {
    let groups: Vec<&str> = m.split(['-', ' ', '.', '/']).collect();
    groups
        .first()
        .is_some_and(|g| g.len() == 4 && (g.starts_with("19") || g.starts_with("20")))
        && groups.get(1).is_some_and(|g| g.len() == 2)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Text that holds the thing, and what it must become.
    const REDACTED: &[(&str, &str)] = &[
        (
            "mail me at jane.doe+x@example.co.uk today",
            "mail me at [REDACTED:email] today",
        ),
        ("JOHN@EXAMPLE.COM", "[REDACTED:email]"),
        (
            "card 4111 1111 1111 1111 exp 12/29",
            "card [REDACTED:card] exp 12/29",
        ),
        ("card 4111-1111-1111-1111", "card [REDACTED:card]"),
        ("amex 378282246310005.", "amex [REDACTED:card]."),
        (
            "pay to DE89 3704 0044 0532 0130 00 please",
            "pay to [REDACTED:iban] please",
        ),
        ("GB82WEST12345698765432", "[REDACTED:iban]"),
        ("call +44 20 7946 0958 now", "call [REDACTED:phone] now"),
        ("call (555) 123-4567", "call [REDACTED:phone]"),
        ("call 555-123-4567", "call [REDACTED:phone]"),
        ("+14155552671", "[REDACTED:phone]"),
        (
            "Authorization: Bearer eyJhbGciOiJIUzI1NiJ9.abc.def",
            "Authorization: [REDACTED:secret]",
        ),
        ("key sk-proj-abcdefghijklmnop1234", "key [REDACTED:secret]"),
        (
            "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw",
            "[REDACTED:secret]",
        ),
        ("aws AKIAIOSFODNN7EXAMPLE id", "aws [REDACTED:secret] id"),
        (
            "ghp_abcdefghijklmnopqrstuvwxyz0123456789",
            "[REDACTED:secret]",
        ),
    ];

    /// Text that looks close but is not the thing: left alone.
    const KEPT: &[&str] = &[
        "order 4111 1111 1111 1112 shipped",       // fails Luhn
        "1234567890123",                           // fails Luhn
        "0000 0000 0000 0000",                     // all one digit
        "DE89 3704 0044 0532 0130 01",             // fails mod 97
        "on 2024-01-15 at 10:30",                  // a date
        "version 1.2.3 and 10.20.30",              // versions
        "id 550e8400-e29b-41d4-a716-446655440000", // a UUID
        "host 192.168.1.1 port 8080",              // an address
        "at 1700000000 seconds",                   // a timestamp
        "user@localhost",                          // no domain
        "the bearer of bad news",                  // the word, no token
        "sk-short",                                // too short to be a key
        "room 101, floor 3",
        "ratio 3-4-5",
    ];

    #[test]
    fn every_pattern_of_the_corpus_is_redacted() {
        for (input, want) in REDACTED {
            assert_eq!(redact(input), *want, "input: {input}");
        }
    }

    #[test]
    fn look_alikes_are_left_alone() {
        for input in KEPT {
            assert_eq!(redact(input), *input, "input: {input}");
            assert!(matches!(redact(input), Cow::Borrowed(_)) || redact(input) == *input);
        }
    }

    #[test]
    fn the_checksums_hold_for_known_numbers() {
        assert!(luhn_valid("4242424242424242"));
        assert!(luhn_valid("5555 5555 5555 4444"));
        assert!(!luhn_valid("4242424242424241"));
        assert!(iban_valid("FR14 2004 1010 0505 0001 3M02 606"));
        assert!(iban_valid("NL91ABNA0417164300"));
        assert!(!iban_valid("NL91ABNA0417164301"));
    }

    #[test]
    fn content_logging_is_off_by_default() {
        assert!(!content_logging());
    }
}
