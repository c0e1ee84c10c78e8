//! A private X display: Xvfb on a display number it picks itself, gone when dropped. Used by
//! the screen test and the screen benchmark (benches/screen.rs includes this file).

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};

pub struct Xvfb {
    child: Child,
    pub display: String,
}

impl Xvfb {
    /// A `width` x `height` 24-bit screen.
    pub fn start(width: u16, height: u16) -> Xvfb {
        // -displayfd: Xvfb picks a free display and says which once it is ready.
        let mut child = Command::new("Xvfb")
            .args(["-displayfd", "1", "-screen", "0", &format!("{width}x{height}x24"), "-nolisten", "tcp"])
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("Xvfb (scripts/bootstrap installs xvfb)");
        let mut line = String::new();
        BufReader::new(child.stdout.take().unwrap()).read_line(&mut line).unwrap();
        Xvfb { child, display: format!(":{}", line.trim()) }
    }
}

impl Drop for Xvfb {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
