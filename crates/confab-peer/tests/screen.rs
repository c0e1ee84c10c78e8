//! Sharing an X11 screen (issue 14, first part): a real Xvfb, a known picture drawn on it by
//! an X client (this test, through x11rb), `confab-peer --video screen` sending it through a
//! real call, and the other peer's `--snapshot` compared with the picture. The screen goes as
//! the peer's one video track for now; the second track is still to come.

mod support;

use std::io::BufReader;
use std::process::Command;
use std::time::{Duration, Instant};

use serde_json::Value;
use support::xvfb::Xvfb;
use support::*;
use x11rb::connection::Connection;
use x11rb::protocol::xproto::{ChangeGCAux, ConnectionExt as _, CreateGCAux, Rectangle};
use x11rb::wrapper::ConnectionExt as _;

const W: u16 = 1280;
const H: u16 = 720;

/// Draws on the root window: four quadrants (`top_left`, green, blue, white) and, in the
/// white one, black bars 4 px wide every 8 px: edges that only stay sharp if the picture does.
/// The connection it returns must stay open: an X server resets (the picture too) when its
/// last client leaves.
fn draw(display: &str, top_left: u32) -> impl Connection {
    let (conn, n) = x11rb::connect(Some(display)).unwrap();
    let root = conn.setup().roots[n].root;
    let gc = conn.generate_id().unwrap();
    conn.create_gc(gc, root, &CreateGCAux::new()).unwrap();
    let (w, h) = ((W / 2) as i16, (H / 2) as i16);
    let quads = [(top_left, 0, 0), (0x00ff00, w, 0), (0x0000ff, 0, h), (0xffffff, w, h)];
    for (colour, x, y) in quads {
        conn.change_gc(gc, &ChangeGCAux::new().foreground(colour)).unwrap();
        conn.poly_fill_rectangle(root, gc, &[Rectangle { x, y, width: W / 2, height: H / 2 }]).unwrap();
    }
    conn.change_gc(gc, &ChangeGCAux::new().foreground(0)).unwrap();
    let bars: Vec<Rectangle> =
        (0..40).map(|i| Rectangle { x: w + 160 + i * 8, y: h + 160, width: 4, height: 40 }).collect();
    conn.poly_fill_rectangle(root, gc, &bars).unwrap();
    conn.sync().unwrap();
    conn
}

/// Mean RGB of a rectangle of an RGBA picture.
fn mean(px: &[u8], width: usize, (x0, y0, x1, y1): (usize, usize, usize, usize)) -> [f64; 3] {
    let mut sum = [0f64; 3];
    for y in y0..y1 {
        for x in x0..x1 {
            let p = &px[(y * width + x) * 4..];
            for c in 0..3 {
                sum[c] += p[c] as f64;
            }
        }
    }
    let n = ((x1 - x0) * (y1 - y0)) as f64;
    sum.map(|s| s / n)
}

fn read_png(path: &str) -> (usize, usize, Vec<u8>) {
    let dec = png::Decoder::new(BufReader::new(std::fs::File::open(path).unwrap()));
    let mut r = dec.read_info().unwrap();
    let mut buf = vec![0; r.output_buffer_size().unwrap()];
    let info = r.next_frame(&mut buf).unwrap();
    buf.truncate(info.buffer_size());
    (info.width as usize, info.height as usize, buf)
}

fn near(got: [f64; 3], want: [f64; 3], what: &str) {
    let off = got.iter().zip(want).map(|(g, w)| (g - w).abs()).fold(0f64, f64::max);
    assert!(off < 40.0, "{what}: mean colour {got:?}, drawn {want:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_shared_screen_arrives_as_drawn_and_follows_changes() {
    let _turn = ONE_CALL_AT_A_TIME.lock().await;
    let x = Xvfb::start(W, H);
    let _painter = draw(&x.display, 0xff0000);
    let cfg = confab_signal::Config { listen: "127.0.0.1:0".parse().unwrap(), ..Default::default() };
    let srv = confab_signal::Server::bind(cfg).await.unwrap().spawn();
    let url = srv.ws_url();
    let snaps = std::env::temp_dir().join(format!("confab-screen-{}", std::process::id()));
    let snap_dir = snaps.to_str().unwrap().to_string();

    let mut share = Command::new(PEER);
    share.env("DISPLAY", &x.display).args([
        "--server",
        &url,
        "--room",
        "screen",
        "--name",
        "Ada",
        "--bind",
        "127.0.0.1",
        "--quiet-stats",
        "--video",
        "screen",
        "--size",
        "1280x720",
        "--audio",
        "none",
        "--duration",
        "16",
    ]);
    let ada = Peer::spawn_command(share);
    let bob = Peer::spawn(&[
        "--server",
        &url,
        "--room",
        "screen",
        "--name",
        "Bob",
        "--bind",
        "127.0.0.1",
        "--video",
        "none",
        "--audio",
        "synthetic",
        "--snapshot",
        &snap_dir,
        "--duration",
        "16",
    ]);
    let y_of = |v: &Value| v["stats"]["picture"]["y"].as_f64();
    bob.wait_for("Ada's screen", Duration::from_secs(20), |v| y_of(v).is_some());
    std::thread::sleep(Duration::from_secs(3));

    // The top left goes from red to black: the picture's mean luma drops by about 16.
    let before = bob.wait_for("a stats line", Duration::from_secs(5), |v| y_of(v).is_some());
    let y_before = y_of(&before).unwrap();
    let changed_at = Instant::now();
    let _painter = draw(&x.display, 0x000000);
    bob.wait_for("the change", Duration::from_secs(5), |v| y_of(v).is_some_and(|y| y < y_before - 10.0));
    // Stats come once a second: the change itself arrived up to a second before its line.
    let seen = changed_at.elapsed();
    assert!(seen < Duration::from_secs(3), "the change took {seen:?} to show");
    // Then the screen stays still: about one frame a second goes out, not 15.
    std::thread::sleep(Duration::from_secs(4));
    let still = bob.wait_for("a stats line", Duration::from_secs(2), |v| {
        v["at_ms"].as_u64().is_some_and(|t| t > confab_proto::wall_ms() - 1500) && y_of(v).is_some()
    });
    let fps = still["stats"]["fps_received"].as_f64().unwrap();
    assert!((0.5..=2.5).contains(&fps), "a still screen came at {fps} fps: {still}");

    let (ada_ok, _) = tokio::task::spawn_blocking(|| ada.finish()).await.unwrap();
    let (bob_ok, lines) = tokio::task::spawn_blocking(|| bob.finish()).await.unwrap();
    assert!(ada_ok && bob_ok, "{:?}", summary(&lines));
    let snap = events(&lines, "snapshot");
    assert_eq!(snap.len(), 1, "{snap:?}");
    let path = snap[0]["path"].as_str().unwrap();
    assert!(path.ends_with("Ada-camera.png"), "{path}");
    let (w, h, px) = read_png(path);
    assert_eq!((w, h), (W as usize, H as usize), "the screen is sent at its own size");
    let (qw, qh) = (w / 2, h / 2);
    // Away from the edges (VP8's blocks blur a few pixels there).
    let inner = |qx: usize, qy: usize| (qx * qw + 40, qy * qh + 40, qx * qw + qw - 40, qy * qh + 120);
    near(mean(&px, w, inner(0, 0)), [0.0, 0.0, 0.0], "top left (black)");
    near(mean(&px, w, inner(1, 0)), [0.0, 255.0, 0.0], "top right (green)");
    near(mean(&px, w, inner(0, 1)), [0.0, 0.0, 255.0], "bottom left (blue)");
    near(mean(&px, w, inner(1, 1)), [255.0, 255.0, 255.0], "bottom right (white)");
    // The bars: along a row through them, dark and light alternate every 4 pixels.
    let row = qh + 180;
    let luma: Vec<f64> = (qw + 160..qw + 160 + 320).map(|x| px[(row * w + x) * 4 + 1] as f64).collect();
    let sharp = luma.windows(3).filter(|p| (p[0] - p[2]).abs() > 120.0).count();
    assert!(sharp >= 60, "the bars' edges are blurred: {sharp} sharp steps in {luma:?}");
    let _ = std::fs::remove_dir_all(&snaps);
}
