//! Synthetic devices for machines without hardware: a moving test picture stamped with its
//! frame number and capture time, a sine tone, and a null speaker. Each is paced in real time
//! by its own clock, as the hardware would be.

use std::time::{Duration, Instant};

use super::{AudioSink, AudioSource, CapturedFrame, DeviceError, VideoSource};
use crate::codec::opus::{FRAME_SAMPLES, SAMPLE_RATE};
use crate::frame::I420Frame;
use crate::stamp::FrameStamp;

/// Draws the moving picture (no pacing, no stamp): diagonal colour bands drifting right and a
/// white square bouncing around, so motion and colour both exercise the codec.
pub struct SyntheticPicture {
    width: u32,
    height: u32,
    t: u32,
}

impl SyntheticPicture {
    pub fn new(width: u32, height: u32) -> Self {
        SyntheticPicture { width, height, t: 0 }
    }

    pub fn next_frame(&mut self) -> I420Frame {
        let (w, h) = (self.width as usize, self.height as usize);
        let t = self.t as usize;
        self.t = self.t.wrapping_add(1);
        let mut f = I420Frame::new(self.width, self.height);
        let (cw, ch) = (f.chroma_width(), f.chroma_height());
        let (y, u, v) = f.planes_mut();
        for row in 0..h {
            let line = &mut y[row * w..(row + 1) * w];
            for (col, p) in line.iter_mut().enumerate() {
                *p = 60 + (((col + row / 2 + t * 4) / 8) % 32) as u8 * 3;
            }
        }
        for row in 0..ch {
            for col in 0..cw {
                let band = ((col * 2 + t * 2) / (cw.max(8) / 4).max(1)) % 4;
                // Muted colours: a test picture, not a rave.
                let (cu, cv) = [(118, 150), (150, 122), (104, 112), (136, 104)][band];
                u[row * cw + col] = cu;
                v[row * cw + col] = cv;
            }
        }
        // The bouncing square: a sixth of the height, moving 1% of the width per frame.
        let side = (h / 6).max(4);
        let span_x = w.saturating_sub(side).max(1);
        let span_y = h.saturating_sub(side).max(1);
        let step = (w / 100).max(1);
        let bounce = |pos: usize, span: usize| {
            let p = pos % (2 * span);
            if p < span {
                p
            } else {
                2 * span - p
            }
        };
        let (x0, y0) = (bounce(t * step, span_x), bounce(t * step / 2 + span_y / 2, span_y));
        for row in y0..(y0 + side).min(h) {
            y[row * w + x0..row * w + (x0 + side).min(w)].fill(235);
        }
        f
    }
}

/// The second synthetic camera's picture: 640x480 (4:3), a bright circle gliding across a
/// blue background. Its colour tells it from the first one; its circle shows whether a
/// crop kept the aspect (a stretched circle is an oval).
pub struct CirclePicture {
    t: u32,
}

impl CirclePicture {
    pub const WIDTH: u32 = 640;
    pub const HEIGHT: u32 = 480;
    /// The circle's radius in pixels.
    pub const RADIUS: usize = 100;

    pub fn next_frame(&mut self) -> I420Frame {
        let (w, h) = (Self::WIDTH as usize, Self::HEIGHT as usize);
        let t = self.t as usize;
        self.t = self.t.wrapping_add(1);
        let mut f = I420Frame::new(Self::WIDTH, Self::HEIGHT);
        let cw = f.chroma_width();
        let (y, u, v) = f.planes_mut();
        y.fill(70);
        u.fill(170);
        v.fill(105);
        // Back and forth over the middle third, two pixels a frame.
        let span = w / 3;
        let p = (t * 2) % (2 * span);
        let cx = (w / 3 + if p < span { p } else { 2 * span - p }) as i64;
        let cy = (h / 2) as i64;
        let r = Self::RADIUS as i64;
        for row in (cy - r).max(0)..(cy + r).min(h as i64) {
            let half = (((r * r - (row - cy) * (row - cy)) as f64).sqrt()) as i64;
            let (x0, x1) = ((cx - half).max(0) as usize, ((cx + half) as usize).min(w));
            y[row as usize * w + x0..row as usize * w + x1].fill(230);
            if row % 2 == 0 {
                let crow = row as usize / 2;
                u[crow * cw + x0 / 2..crow * cw + x1 / 2].fill(128);
                v[crow * cw + x0 / 2..crow * cw + x1 / 2].fill(128);
            }
        }
        f
    }
}

enum Scene {
    Bands(SyntheticPicture),
    Circle(CirclePicture),
}

/// A paced synthetic camera.
pub struct SyntheticVideo {
    scene: Scene,
    period: Duration,
    start: Option<Instant>,
    n: u32,
}

impl SyntheticVideo {
    /// The moving test picture at `width`x`height`.
    pub fn new(width: u32, height: u32, fps: u32) -> Self {
        Self::with(Scene::Bands(SyntheticPicture::new(width, height)), fps)
    }

    /// The 640x480 circle picture ([`CirclePicture`]).
    pub fn four_by_three(fps: u32) -> Self {
        Self::with(Scene::Circle(CirclePicture { t: 0 }), fps)
    }

    fn with(scene: Scene, fps: u32) -> Self {
        SyntheticVideo { scene, period: Duration::from_secs(1) / fps.max(1), start: None, n: 0 }
    }
}

impl VideoSource for SyntheticVideo {
    fn name(&self) -> String {
        match self.scene {
            Scene::Bands(_) => "Synthetic camera".into(),
            Scene::Circle(_) => "Synthetic camera 4:3".into(),
        }
    }

    fn next_frame(&mut self) -> Result<Option<CapturedFrame>, DeviceError> {
        let start = *self.start.get_or_insert_with(Instant::now);
        let due = start + self.period * self.n;
        let now = Instant::now();
        if due > now {
            std::thread::sleep(due - now);
        }
        let frame = match &mut self.scene {
            Scene::Bands(p) => p.next_frame(),
            Scene::Circle(p) => p.next_frame(),
        };
        let capture_ms = confab_proto::wall_ms();
        let stamp = Some(FrameStamp { frame_no: self.n, capture_ms });
        self.n += 1;
        Ok(Some(CapturedFrame { frame, capture_ms, stamp }))
    }
}

/// A continuous sine tone, 20 ms at a time, with no pacing.
pub struct ToneGenerator {
    hz: f64,
    phase: f64,
}

impl ToneGenerator {
    pub fn new(hz: f64) -> Self {
        ToneGenerator { hz, phase: 0.0 }
    }

    pub fn next_frame(&mut self) -> [i16; FRAME_SAMPLES] {
        let step = 2.0 * std::f64::consts::PI * self.hz / SAMPLE_RATE as f64;
        let mut out = [0i16; FRAME_SAMPLES];
        for s in out.iter_mut() {
            *s = (self.phase.sin() * 6000.0) as i16;
            self.phase = (self.phase + step) % (2.0 * std::f64::consts::PI);
        }
        out
    }
}

/// A paced synthetic microphone playing a tone.
pub struct SyntheticAudio {
    tone: ToneGenerator,
    start: Option<Instant>,
    n: u32,
}

impl SyntheticAudio {
    pub fn new(hz: f64) -> Self {
        SyntheticAudio { tone: ToneGenerator::new(hz), start: None, n: 0 }
    }
}

impl AudioSource for SyntheticAudio {
    fn name(&self) -> String {
        format!("Synthetic tone {} Hz", self.tone.hz)
    }

    fn next_frame(&mut self) -> Result<Option<[i16; FRAME_SAMPLES]>, DeviceError> {
        let start = *self.start.get_or_insert_with(Instant::now);
        let due = start + Duration::from_millis(20) * self.n;
        let now = Instant::now();
        if due > now {
            std::thread::sleep(due - now);
        }
        self.n += 1;
        Ok(Some(self.tone.next_frame()))
    }
}

/// A speaker that discards sound at real-time pace (ALSA's null device is not paced).
pub struct NullSink {
    start: Option<Instant>,
    n: u32,
}

impl NullSink {
    pub fn new() -> Self {
        NullSink { start: None, n: 0 }
    }
}

impl Default for NullSink {
    fn default() -> Self {
        Self::new()
    }
}

impl AudioSink for NullSink {
    fn name(&self) -> String {
        "Null speaker".into()
    }

    fn play(&mut self, _pcm: &[i16; FRAME_SAMPLES]) -> Result<(), DeviceError> {
        let start = *self.start.get_or_insert_with(Instant::now);
        let due = start + Duration::from_millis(20) * self.n;
        let now = Instant::now();
        if due > now {
            std::thread::sleep(due - now);
        } else if now - due > Duration::from_millis(200) {
            // Fell far behind (a stall): restart the clock rather than rush to catch up.
            self.start = Some(now);
            self.n = 0;
        }
        self.n += 1;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn video_is_paced_stamped_and_moving() {
        let mut v = SyntheticVideo::new(320, 180, 50);
        let t = Instant::now();
        let frames: Vec<_> = (0..6).map(|_| v.next_frame().unwrap().unwrap()).collect();
        // Six frames at 50 fps span five periods: 100 ms, never less.
        assert!(t.elapsed() >= Duration::from_millis(100), "{:?}", t.elapsed());
        for (i, f) in frames.iter().enumerate() {
            let s = f.stamp.unwrap();
            assert_eq!(s.frame_no, i as u32);
            assert_eq!(s.capture_ms, f.capture_ms);
        }
        assert_ne!(frames[0].frame.y()[180 * 100..], frames[5].frame.y()[180 * 100..], "the picture moves");
    }

    #[test]
    fn tone_is_the_frequency_asked_for() {
        let mut g = ToneGenerator::new(523.25);
        let pcm: Vec<i16> = (0..70).flat_map(|_| g.next_frame()).collect();
        let f = crate::tone::dominant_frequency(&pcm, SAMPLE_RATE).unwrap();
        assert!((f - 523.25).abs() < 0.5, "{f}");
    }
}
