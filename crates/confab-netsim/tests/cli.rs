//! The binary's stdin/stdout protocol, as a test harness drives it.

use std::io::{BufRead, BufReader, Write};
use std::net::UdpSocket;
use std::process::{Child, ChildStdout, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

fn spawn(upstream: &str) -> (Child, BufReader<ChildStdout>) {
    let mut child = Command::new(env!("CARGO_BIN_EXE_confab-netsim"))
        .args([
            "--listen",
            "127.0.0.1:0",
            "--upstream",
            upstream,
            "--loss",
            "0",
            "--delay-ms",
            "5",
            "--rate-kbps",
            "10000",
        ])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let out = BufReader::new(child.stdout.take().unwrap());
    (child, out)
}

fn line(out: &mut BufReader<ChildStdout>) -> Value {
    let mut s = String::new();
    out.read_line(&mut s).unwrap();
    serde_json::from_str(&s).unwrap_or_else(|e| panic!("{s:?}: {e}"))
}

fn exits(child: &mut Child) -> bool {
    let deadline = Instant::now() + Duration::from_secs(5);
    while Instant::now() < deadline {
        if let Some(status) = child.try_wait().unwrap() {
            return status.success();
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    let _ = child.kill();
    false
}

#[test]
fn commands_answer_one_line_each() {
    let echo = UdpSocket::bind("127.0.0.1:0").unwrap();
    let upstream = echo.local_addr().unwrap().to_string();
    std::thread::spawn(move || {
        let mut buf = [0u8; 2048];
        while let Ok((n, src)) = echo.recv_from(&mut buf) {
            let _ = echo.send_to(&buf[..n], src);
        }
    });
    let (mut child, mut out) = spawn(&upstream);
    let hello = line(&mut out);
    assert_eq!(hello["event"], "listening");
    let client = UdpSocket::bind("127.0.0.1:0").unwrap();
    client.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    client.send_to(b"hi", hello["addr"].as_str().unwrap()).unwrap();
    assert_eq!(client.recv(&mut [0u8; 16]).unwrap(), 2);

    let mut stdin = child.stdin.take().unwrap();
    let mut ask = |cmd: &str| {
        writeln!(stdin, "{cmd}").unwrap();
        line(&mut out)
    };
    assert_eq!(ask("loss 0.25"), serde_json::json!({"event": "ok", "cmd": "loss"}));
    assert_eq!(ask("jitter 3")["event"], "ok");
    assert_eq!(ask("rate 400"), serde_json::json!({"event": "ok", "cmd": "rate"}));
    assert_eq!(ask("queue 50")["cmd"], "queue");
    assert_eq!(ask("rate -1")["event"], "error");
    assert_eq!(ask("rate")["event"], "error");
    assert_eq!(ask("loss 2")["event"], "error");
    assert_eq!(ask("bogus")["event"], "error");
    assert_eq!(ask("cut")["cmd"], "cut");
    let stats = ask("stats");
    assert_eq!((stats["to_upstream"]["forwarded"].as_u64(), stats["cut_flows"].as_u64()), (Some(1), Some(1)));
    assert_eq!(ask("quit")["cmd"], "quit");
    assert!(exits(&mut child), "quit did not exit cleanly");

    // Closing stdin (the harness dying) also ends the relay.
    let (mut child, mut out) = spawn(&upstream);
    assert_eq!(line(&mut out)["event"], "listening");
    drop(child.stdin.take());
    assert!(exits(&mut child), "EOF did not exit cleanly");
}
