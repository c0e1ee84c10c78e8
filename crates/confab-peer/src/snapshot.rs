//! `--snapshot DIR`: the last picture decoded from each peer, written as a PNG when the call
//! ends, named after the peer (`NAME-camera.png`), for looking at a call afterwards and for
//! tests that compare pictures.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use confab_engine::frame::I420Frame;

/// A peer's display name as a file name: letters, digits, `-` and `_` kept, the rest `_`.
pub fn file_name(name: &str, track: &str) -> String {
    let safe: String =
        name.chars().map(|c| if c.is_alphanumeric() || c == '-' || c == '_' { c } else { '_' }).collect();
    format!("{}-{track}.png", if safe.is_empty() { "peer".into() } else { safe })
}

/// Writes `frame` as an RGB PNG at `dir/file`.
pub fn write(dir: &Path, file: &str, frame: &I420Frame) -> Result<PathBuf> {
    std::fs::create_dir_all(dir).with_context(|| format!("cannot create the snapshot folder {}", dir.display()))?;
    let path = dir.join(file);
    let mut rgba = Vec::new();
    frame.append_rgba(&mut rgba);
    let out = std::fs::File::create(&path).with_context(|| format!("cannot write {}", path.display()))?;
    let mut enc = png::Encoder::new(std::io::BufWriter::new(out), frame.width, frame.height);
    enc.set_color(png::ColorType::Rgba);
    enc.set_depth(png::BitDepth::Eight);
    let mut w = enc.write_header().with_context(|| format!("cannot write {}", path.display()))?;
    w.write_image_data(&rgba).with_context(|| format!("cannot write {}", path.display()))?;
    w.finish().with_context(|| format!("cannot write {}", path.display()))?;
    Ok(path)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_safe_file_names() {
        assert_eq!(file_name("Ada", "camera"), "Ada-camera.png");
        assert_eq!(file_name("../Bob Smith", "screen"), "___Bob_Smith-screen.png");
        assert_eq!(file_name("", "camera"), "peer-camera.png");
    }

    #[test]
    fn a_snapshot_reads_back_as_the_picture() {
        let dir = std::env::temp_dir().join(format!("confab-snap-{}", std::process::id()));
        let mut f = I420Frame::new(4, 2);
        f.planes_mut().0.fill(235);
        let path = write(&dir, "x-camera.png", &f).unwrap();
        let dec = png::Decoder::new(std::io::BufReader::new(std::fs::File::open(&path).unwrap()));
        let mut r = dec.read_info().unwrap();
        let mut buf = vec![0; r.output_buffer_size().unwrap()];
        let info = r.next_frame(&mut buf).unwrap();
        assert_eq!((info.width, info.height), (4, 2));
        assert!(buf[..info.buffer_size()].chunks(4).all(|p| p[0] > 250 && p[3] == 255));
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
