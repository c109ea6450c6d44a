//! A NATS server of a test's own, so the test can stop, pause and restart it without
//! touching the shared one.

use std::{path::PathBuf, time::Duration};

use anyhow::{Context, Result};

use crate::{unique, wait_until};

pub struct OwnNats {
    bin: String,
    pub port: u16,
    dir: PathBuf,
    child: Option<tokio::process::Child>,
}

impl OwnNats {
    /// A server on a free port with its own data folder (`SLUICE_TEST_NATS_BIN`), not yet
    /// started.
    pub fn new() -> Result<OwnNats> {
        let bin = std::env::var("SLUICE_TEST_NATS_BIN")
            .context("SLUICE_TEST_NATS_BIN is not set; run the suite with scripts/test.sh")?;
        let port = std::net::TcpListener::bind("127.0.0.1:0")?
            .local_addr()?
            .port();
        Ok(OwnNats {
            bin,
            port,
            dir: std::env::temp_dir().join(unique("sluice-nats-")),
            child: None,
        })
    }

    pub fn url(&self) -> String {
        format!("nats://127.0.0.1:{}", self.port)
    }

    pub async fn start(&mut self) -> Result<()> {
        let child = tokio::process::Command::new(&self.bin)
            .args([
                "-a",
                "127.0.0.1",
                "-p",
                &self.port.to_string(),
                "-js",
                "-sd",
            ])
            .arg(&self.dir)
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .kill_on_drop(true)
            .spawn()?;
        self.child = Some(child);
        let addr = format!("127.0.0.1:{}", self.port);
        wait_until(Duration::from_secs(40), || async {
            Ok(tokio::net::TcpStream::connect(&addr).await.is_ok())
        })
        .await
    }

    /// Freezes (`SIGSTOP`) or thaws (`SIGCONT`) the server: connections stay open and
    /// nothing is answered, like a broker that hangs.
    pub fn pause(&self, paused: bool) -> Result<()> {
        let pid = self
            .child
            .as_ref()
            .and_then(|c| c.id())
            .context("the server is not running")?;
        let signal = if paused { "-STOP" } else { "-CONT" };
        let status = std::process::Command::new("kill")
            .args([signal, &pid.to_string()])
            .status()?;
        anyhow::ensure!(status.success(), "kill {signal} {pid} failed");
        Ok(())
    }

    pub async fn stop(&mut self) -> Result<()> {
        if let Some(mut c) = self.child.take() {
            c.start_kill()?;
            c.wait().await?;
        }
        Ok(())
    }
}

impl Drop for OwnNats {
    fn drop(&mut self) {
        if let Some(c) = self.child.as_mut() {
            let _ = c.start_kill();
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}
