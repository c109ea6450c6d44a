//! A sleep with the kernel timer's precision inside the async runtime.
//!
//! tokio's timer wheel has millisecond ticks, so a task sleeping until a request is due
//! would release it up to a millisecond late, which at these latencies would be most of the
//! figure. A `timerfd` registered with the runtime's reactor wakes the task within tens of
//! microseconds instead, without a second thread and the cross-thread wake-up per request
//! that a dedicated ticker thread costs.

use std::io;
use std::os::fd::{AsFd, AsRawFd, RawFd};
use std::time::Instant;

use nix::sys::time::TimeSpec;
use nix::sys::timerfd::{ClockId, Expiration, TimerFd, TimerFlags, TimerSetTimeFlags};
use tokio::io::unix::AsyncFd;

struct Fd(TimerFd);

impl AsRawFd for Fd {
    fn as_raw_fd(&self) -> RawFd {
        self.0.as_fd().as_raw_fd()
    }
}

/// One-shot precise sleeps, one at a time.
pub struct PreciseTimer {
    fd: AsyncFd<Fd>,
}

impl PreciseTimer {
    /// Must be called inside a tokio runtime with I/O enabled.
    pub fn new() -> io::Result<Self> {
        let fd = TimerFd::new(
            ClockId::CLOCK_MONOTONIC,
            TimerFlags::TFD_NONBLOCK | TimerFlags::TFD_CLOEXEC,
        )
        .map_err(io::Error::from)?;
        // `AsyncFd::new` is deprecated because a caller could close a registered descriptor
        // it does not own; here the `AsyncFd` owns the `TimerFd`, which closes it on drop,
        // after the deregistration. The alternative, `register`, is `unsafe`.
        #[allow(deprecated)]
        let fd = AsyncFd::new(Fd(fd))?;
        Ok(Self { fd })
    }

    /// Returns at `deadline` or just after it.
    pub async fn sleep_until(&mut self, deadline: Instant) -> io::Result<()> {
        let wait = deadline.saturating_duration_since(Instant::now());
        // A zero expiry would disarm the timer instead of firing it.
        if wait.is_zero() {
            return Ok(());
        }
        self.fd
            .get_ref()
            .0
            .set(
                Expiration::OneShot(TimeSpec::from_duration(wait)),
                TimerSetTimeFlags::empty(),
            )
            .map_err(io::Error::from)?;
        loop {
            let mut ready = self.fd.readable().await?;
            // Reading the expiry count re-arms readiness; EAGAIN means a stale wake-up.
            match ready.try_io(|fd| fd.get_ref().0.wait().map_err(io::Error::from)) {
                Ok(result) => return result,
                Err(_would_block) => continue,
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    #[tokio::test(flavor = "current_thread")]
    async fn sleeps_until_the_deadline_and_not_before() -> anyhow::Result<()> {
        let mut timer = PreciseTimer::new()?;
        for micros in [300u64, 1_500, 4_000] {
            let deadline = Instant::now() + Duration::from_micros(micros);
            timer.sleep_until(deadline).await?;
            assert!(Instant::now() >= deadline, "woke before {micros} µs");
        }
        // A deadline in the past returns at once.
        timer.sleep_until(Instant::now()).await?;
        Ok(())
    }
}
