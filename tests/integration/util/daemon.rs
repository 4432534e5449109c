//! The `edgefuse` binary: one command builder for every way the tests run it, and the daemon
//! as a child process.

use std::path::Path;
use std::process::{Child, Command, ExitStatus, Output, Stdio};
use std::time::Duration;

use super::{models_dir, repo, wait_for};

/// `edgefuse` as a user runs it from the repository root, on the fetched models, with no
/// config named by the environment.
pub fn edgefuse_cmd() -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_edgefuse"));
    c.current_dir(repo())
        .env("EDGEFUSE_MODELS", models_dir())
        .env_remove("EDGEFUSE_CONFIG");
    c
}

/// [`edgefuse_cmd`] `args`, run to the end.
pub fn run_edgefuse(args: &[&str]) -> Output {
    edgefuse_cmd().args(args).output().expect("edgefuse runs")
}

pub fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

/// The daemon as a child process, killed on drop.
pub struct Daemon {
    pub child: Child,
}

impl Daemon {
    /// `edgefuse --config <config> run`, logging to the test's stderr.
    pub fn start(config: &Path) -> Daemon {
        Daemon::start_with(config, |_| {})
    }

    /// The same, after `adjust` set more on the command (environment, where stderr goes).
    pub fn start_with(config: &Path, adjust: impl FnOnce(&mut Command)) -> Daemon {
        let mut cmd = Daemon::command(config);
        cmd.stdout(Stdio::null()).stderr(Stdio::inherit());
        adjust(&mut cmd);
        Daemon {
            child: cmd.spawn().expect("edgefuse starts"),
        }
    }

    /// The daemon's command line, not started.
    pub fn command(config: &Path) -> Command {
        let mut cmd = edgefuse_cmd();
        cmd.args(["--log", "edgefuse=info", "--config"])
            .arg(config)
            .arg("run");
        cmd
    }

    pub fn pid(&self) -> String {
        self.child.id().to_string()
    }

    /// Send `signal` (`TERM`, `HUP`, ...).
    pub fn signal(&self, signal: &str) {
        let ok = Command::new("kill")
            .args([&format!("-{signal}"), &self.pid()])
            .status()
            .expect("kill runs");
        assert!(ok.success(), "kill -{signal}");
    }

    /// SIGTERM, then wait for a clean exit.
    pub fn terminate(mut self) -> ExitStatus {
        self.signal("TERM");
        wait_for(
            "the daemon exiting after SIGTERM",
            Duration::from_secs(30),
            Duration::from_millis(50),
            || self.child.try_wait().ok().flatten(),
        )
    }

    pub fn kill(mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
