//! Budget periods: a UTC day or month, named for keys (`d20261122`, `m202611`), and the
//! time left until the next one starts (the `Retry-After` of an exhausted budget).

use sluice_config::BudgetPeriod;

const DAY_MS: u64 = 86_400_000;

/// The period containing `now_ms`: its name and the milliseconds until it ends.
pub fn current(period: BudgetPeriod, now_ms: u64) -> (String, u64) {
    let days = now_ms / DAY_MS;
    let (y, m, d) = civil_from_days(days as i64);
    match period {
        BudgetPeriod::Day => (format!("d{y:04}{m:02}{d:02}"), (days + 1) * DAY_MS - now_ms),
        BudgetPeriod::Month => {
            let (ny, nm) = if m == 12 { (y + 1, 1) } else { (y, m + 1) };
            let next = days_from_civil(ny, nm, 1) as u64 * DAY_MS;
            (format!("m{y:04}{m:02}"), next.saturating_sub(now_ms))
        }
    }
}

// Howard Hinnant's algorithms (days since 1970-01-01 <-> proleptic Gregorian date).
fn civil_from_days(z: i64) -> (i64, u32, u32) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    let y = yoe + era * 400 + i64::from(m <= 2);
    (y, m, d)
}

fn days_from_civil(y: i64, m: u32, d: u32) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y.rem_euclid(400);
    let m = i64::from(m);
    let doy = (153 * (if m > 2 { m - 3 } else { m + 9 }) + 2) / 5 + i64::from(d) - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_and_resets() {
        // 2026-11-22T01:00:00Z
        let t = 1_795_309_200_000;
        let (name, left) = current(BudgetPeriod::Day, t);
        assert_eq!(name, "d20261122");
        assert_eq!(left, 23 * 3_600_000);
        let (name, left) = current(BudgetPeriod::Month, t);
        assert_eq!(name, "m202611");
        assert_eq!(left, (8 * 24 + 23) * 3_600_000);
        // December rolls into January.
        let (name, _) = current(
            BudgetPeriod::Month,
            days_from_civil(2026, 12, 31) as u64 * DAY_MS,
        );
        assert_eq!(name, "m202612");
        assert_eq!(civil_from_days(days_from_civil(2024, 2, 29)), (2024, 2, 29));
    }
}
