//! Screen share benchmark: a 1080p Xvfb, one `confab-peer --video screen` sharing it with
//! another through an in-process `confab-signal`, at 5 and 15 fps, with the screen still
//! (a picture drawn once) and moving (a block sweeping across and bars scrolling, redrawn 30
//! times a second by an X client here). Prints the sharer's CPU (capture, conversion,
//! encoding: it receives only a tone), and the bitrate and frame rate the other peer got.
//!
//! `cargo bench -p confab-peer --bench screen -- [--secs 15] [--fps 5,15]`
//!
//! Figures, not assertions. Target (issue 14): under half a core (30 CPU-s per minute) for
//! 1080p at 15 fps.

mod support;
#[path = "../tests/support/xvfb.rs"]
mod xvfb;

use std::process::Command;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use serde_json::Value;
use support::{arg, run_to_end, PEER};
use x11rb::connection::Connection;
use x11rb::protocol::xproto::{ChangeGCAux, ConnectionExt as _, CreateGCAux, Rectangle};
use x11rb::wrapper::ConnectionExt as _;
use xvfb::Xvfb;

const W: u16 = 1920;
const H: u16 = 1080;

/// Paints until `stop`: a desktop-like picture, and if `moving`, a block sweeping across and
/// bars scrolling, 30 times a second.
fn paint(display: String, moving: bool, stop: Arc<AtomicBool>) -> std::thread::JoinHandle<()> {
    std::thread::spawn(move || {
        let (conn, n) = x11rb::connect(Some(&display)).unwrap();
        let root = conn.setup().roots[n].root;
        let gc = conn.generate_id().unwrap();
        conn.create_gc(gc, root, &CreateGCAux::new()).unwrap();
        let fill = |colour: u32, r: &[Rectangle]| {
            conn.change_gc(gc, &ChangeGCAux::new().foreground(colour)).unwrap();
            conn.poly_fill_rectangle(root, gc, r).unwrap();
        };
        fill(0xf0f0f0, &[Rectangle { x: 0, y: 0, width: W, height: H }]);
        // "Text": rows of short dark bars, like lines of a document.
        let text: Vec<Rectangle> = (0..60)
            .flat_map(|row| {
                (0..40).map(move |col| Rectangle { x: 100 + col * 42, y: 60 + row * 16, width: 30, height: 8 })
            })
            .collect();
        fill(0x202020, &text);
        conn.sync().unwrap();
        let mut t: i16 = 0;
        while !stop.load(Ordering::Relaxed) {
            if moving {
                t = t.wrapping_add(1);
                let x = (t as i32 * 12 % (W as i32 - 300)) as i16;
                fill(0xf0f0f0, &[Rectangle { x: 0, y: 900, width: W, height: 160 }]);
                fill(0x3050c0, &[Rectangle { x, y: 900, width: 300, height: 160 }]);
                let shift = t % 16;
                fill(0xf0f0f0, &[Rectangle { x: 100, y: 60, width: 1700, height: 800 }]);
                let text: Vec<Rectangle> = (0..50)
                    .flat_map(|row| {
                        (0..40).map(move |col| Rectangle {
                            x: 100 + col * 42,
                            y: 60 + row * 16 - shift,
                            width: 30,
                            height: 8,
                        })
                    })
                    .filter(|r| r.y >= 60)
                    .collect();
                fill(0x202020, &text);
                conn.sync().unwrap();
            }
            std::thread::sleep(Duration::from_millis(33));
        }
    })
}

fn run_peer(display: &str, args: &[&str]) -> std::thread::JoinHandle<(Vec<Value>, f64)> {
    let mut cmd = Command::new(PEER);
    cmd.env("DISPLAY", display).args(args);
    run_to_end(cmd)
}

fn main() {
    let secs: f64 = arg("--secs", "15").parse().expect("--secs");
    let rates = arg("--fps", "5,15");
    let xvfb = Xvfb::start(W, H);
    let display = xvfb.display.clone();
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(1).enable_all().build().unwrap();
    let srv = rt.block_on(async {
        let cfg = confab_signal::Config { listen: "127.0.0.1:0".parse().unwrap(), ..Default::default() };
        confab_signal::Server::bind(cfg).await.unwrap().spawn()
    });
    let url = srv.ws_url();
    println!("confab screen share benchmark: {W}x{H} Xvfb, {secs} s per run, VP8 (screen content)");
    let mut json = Vec::new();
    for fps in rates.split(',') {
        for moving in [false, true] {
            let stop = Arc::new(AtomicBool::new(false));
            let painter = paint(display.clone(), moving, stop.clone());
            std::thread::sleep(Duration::from_millis(300));
            let room = format!("screen-{fps}-{moving}");
            let d = secs.to_string();
            let base = ["--server", &url, "--room", &room, "--bind", "127.0.0.1", "--quiet-stats", "--duration", &d];
            let size = format!("{W}x{H}");
            let mut sharer = base.to_vec();
            sharer.extend(["--name", "Ada", "--video", "screen", "--size", &size, "--fps", fps, "--audio", "none"]);
            let a = run_peer(&display, &sharer);
            let mut viewer = base.to_vec();
            viewer.extend(["--name", "Bob", "--video", "none", "--audio", "synthetic"]);
            let b = run_peer(&display, &viewer);
            let ((_, a_cpu), (b_lines, _)) = (a.join().unwrap(), b.join().unwrap());
            stop.store(true, Ordering::Relaxed);
            painter.join().unwrap();
            let summary = b_lines.iter().find(|l| l["type"] == "summary").cloned().unwrap_or(Value::Null);
            let p = &summary["peers"][0];
            let frames = p["frames_decoded"].as_u64().unwrap_or(0);
            let kbps = p["bitrate_in_kbps"].as_f64().unwrap_or(0.0);
            let cpu = a_cpu / (secs / 60.0);
            let what = if moving { "moving" } else { "still" };
            println!(
                "  {fps} fps, {what}: sharer {cpu:.1} CPU-s per minute; the viewer got {:.1} fps at {kbps:.0} kbit/s",
                frames as f64 / secs
            );
            json.push(serde_json::json!({"fps": fps, "screen": what, "sharer_cpu_s_per_min": cpu,
                "frames_per_s": frames as f64 / secs, "kbps": kbps}));
        }
    }
    println!("{}", serde_json::json!({"type": "screen_bench", "runs": json}));
    rt.block_on(srv.shutdown());
}
