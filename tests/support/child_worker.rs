//! A worker as a real child process: the test binary runs itself in a child mode (its `main`
//! reads the mode from its first argument), configured by the environment given here, and
//! the parent reads the child's log lines from its stderr.
#![allow(dead_code)]

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;

/// A running child worker and the log lines read from it so far.
pub(crate) struct Running {
    child: Child,
    lines: mpsc::Receiver<String>,
    /// Every log line read so far.
    pub(crate) log: Vec<String>,
}

impl Running {
    /// The test binary as `child`, with only `env` (and `RUST_LOG=info`) in its environment.
    pub(crate) fn start(env: &[(&str, String)]) -> Running {
        Self::start_as("child", env)
    }

    /// The test binary in child mode `mode`.
    pub(crate) fn start_as(mode: &str, env: &[(&str, String)]) -> Running {
        let mut command = Command::new(std::env::current_exe().unwrap());
        command.arg(mode).env_clear().env("RUST_LOG", "info").stderr(Stdio::piped()).stdout(Stdio::null());
        for (k, v) in env {
            command.env(k, v);
        }
        let mut child = command.spawn().expect("spawn child worker");
        let stderr = child.stderr.take().unwrap();
        let (tx, lines) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        Running { child, lines, log: Vec::new() }
    }

    /// Waits until a log line contains `text`.
    pub(crate) fn wait_for(&mut self, text: &str, limit: Duration) -> Result<(), String> {
        let deadline = Instant::now() + limit;
        while let Some(left) = deadline.checked_duration_since(Instant::now()) {
            match self.lines.recv_timeout(left) {
                Ok(line) => {
                    let found = line.contains(text);
                    self.log.push(line);
                    if found {
                        return Ok(());
                    }
                }
                Err(_) => break,
            }
        }
        Err(format!("no log line with {text:?} within {limit:?}; log:\n{}", self.log.join("\n")))
    }

    pub(crate) fn signal(&self, signal: Signal) {
        kill(Pid::from_raw(self.child.id() as i32), signal).expect("kill");
    }

    pub(crate) fn is_running(&mut self) -> bool {
        self.child.try_wait().unwrap().is_none()
    }

    /// Waits for the exit; returns its code (`None`: killed by a signal) and how long it
    /// took. Past `limit` the child is killed and the error carries the log's tail.
    pub(crate) fn wait_exit(&mut self, limit: Duration) -> Result<(Option<i32>, Duration), String> {
        let start = Instant::now();
        while start.elapsed() < limit {
            if let Some(status) = self.child.try_wait().unwrap() {
                let took = start.elapsed();
                self.log.extend(self.lines.try_iter());
                return Ok((status.code(), took));
            }
            std::thread::sleep(Duration::from_millis(5));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
        Err(format!("the worker did not exit within {limit:?}; log tail:\n{}", tail(&self.log)))
    }

    /// `wait_exit` with a signal's death read as code -1.
    pub(crate) fn wait_exit_code(&mut self, limit: Duration) -> Result<(i32, Duration), String> {
        let (code, took) = self.wait_exit(limit)?;
        Ok((code.unwrap_or(-1), took))
    }

    /// Takes in the log lines that arrived since the last read.
    pub(crate) fn drain_log(&mut self) {
        self.log.extend(self.lines.try_iter());
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        if self.is_running() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// The last 30 lines of `log`.
pub(crate) fn tail(log: &[String]) -> String {
    log[log.len().saturating_sub(30)..].join("\n")
}
