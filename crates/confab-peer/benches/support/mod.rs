//! What the benchmarks share: their command-line options and running a `confab-peer` to
//! the end with the CPU it used.

#![allow(dead_code)]

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};

use serde_json::Value;

pub const PEER: &str = env!("CARGO_BIN_EXE_confab-peer");

/// The value after `name` on the command line, or `default`.
pub fn arg(name: &str, default: &str) -> String {
    let argv: Vec<String> = std::env::args().collect();
    argv.iter().position(|a| a == name).and_then(|i| argv.get(i + 1).cloned()).unwrap_or_else(|| default.into())
}

/// Starts `cmd` (a confab-peer with its arguments) and, on a thread, waits for it to end:
/// its JSON lines and its CPU seconds (user + system, from wait4's rusage).
// The child is reaped by libc::wait4 (for its rusage), which clippy cannot see.
#[allow(clippy::zombie_processes)]
pub fn run_to_end(mut cmd: Command) -> std::thread::JoinHandle<(Vec<Value>, f64)> {
    let mut child = cmd.stdout(Stdio::piped()).stderr(Stdio::null()).spawn().expect("start confab-peer");
    let out = child.stdout.take().unwrap();
    std::thread::spawn(move || {
        let lines: Vec<Value> =
            BufReader::new(out).lines().map_while(Result::ok).filter_map(|l| serde_json::from_str(&l).ok()).collect();
        let mut status = 0;
        // SAFETY: plain wait4 on our own child; rusage is written by the kernel.
        let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
        unsafe { libc::wait4(child.id() as i32, &mut status, 0, &mut usage) };
        let tv = |t: libc::timeval| t.tv_sec as f64 + t.tv_usec as f64 / 1e6;
        (lines, tv(usage.ru_utime) + tv(usage.ru_stime))
    })
}
