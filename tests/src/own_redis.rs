//! A Redis server of a test's own, so the test can pause it without disturbing the others.

use anyhow::Result;

/// A `redis-server` (`SLUICE_TEST_REDIS_BIN`, else on `PATH`) on a free port, without
/// persistence; stopped on drop.
pub struct OwnRedis {
    child: std::process::Child,
    pub port: u16,
}

impl OwnRedis {
    pub fn start() -> Result<OwnRedis> {
        let bin = std::env::var("SLUICE_TEST_REDIS_BIN").unwrap_or_else(|_| "redis-server".into());
        let port = std::net::TcpListener::bind("127.0.0.1:0")?
            .local_addr()?
            .port();
        let child = std::process::Command::new(bin)
            .args(["--port", &port.to_string(), "--bind", "127.0.0.1"])
            .args(["--save", "", "--appendonly", "no"])
            .stdout(std::process::Stdio::null())
            .spawn()?;
        Ok(OwnRedis { child, port })
    }

    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    /// Sends `sig` (`-STOP` freezes it: connections stay open and nothing is answered,
    /// like a Redis that hangs; `-CONT` thaws it).
    pub fn signal(&self, sig: &str) -> Result<()> {
        let ok = std::process::Command::new("kill")
            .args([sig, &self.child.id().to_string()])
            .status()?
            .success();
        anyhow::ensure!(ok, "kill {sig} failed");
        Ok(())
    }
}

impl Drop for OwnRedis {
    fn drop(&mut self) {
        let _ = self.signal("-CONT");
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
