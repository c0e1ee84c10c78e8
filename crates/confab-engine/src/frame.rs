//! Raw video frames as they move between capture, codec and display: planar I420 (Y, then
//! U and V at half resolution), planes packed without padding.

/// One I420 picture. `data` holds the Y plane (`width * height`), then U and V
/// (`chroma_width * chroma_height` each).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct I420Frame {
    pub width: u32,
    pub height: u32,
    pub data: Vec<u8>,
}

impl I420Frame {
    /// A mid-grey frame.
    pub fn new(width: u32, height: u32) -> Self {
        let (w, h) = (width as usize, height as usize);
        let (cw, ch) = (w.div_ceil(2), h.div_ceil(2));
        let mut data = vec![128u8; w * h + 2 * cw * ch];
        data[..w * h].fill(16);
        I420Frame { width, height, data }
    }

    /// Size in bytes of an I420 frame of this size.
    pub fn byte_len(width: u32, height: u32) -> usize {
        let (w, h) = (width as usize, height as usize);
        w * h + 2 * w.div_ceil(2) * h.div_ceil(2)
    }

    pub fn chroma_width(&self) -> usize {
        (self.width as usize).div_ceil(2)
    }

    pub fn chroma_height(&self) -> usize {
        (self.height as usize).div_ceil(2)
    }

    pub fn y(&self) -> &[u8] {
        &self.data[..self.width as usize * self.height as usize]
    }

    /// Y, U and V planes, mutable.
    pub fn planes_mut(&mut self) -> (&mut [u8], &mut [u8], &mut [u8]) {
        let ys = self.width as usize * self.height as usize;
        let cs = self.chroma_width() * self.chroma_height();
        let (y, rest) = self.data.split_at_mut(ys);
        let (u, v) = rest.split_at_mut(cs);
        (y, u, &mut v[..cs])
    }

    /// Y, U and V planes.
    pub fn planes(&self) -> (&[u8], &[u8], &[u8]) {
        let ys = self.width as usize * self.height as usize;
        let cs = self.chroma_width() * self.chroma_height();
        (&self.data[..ys], &self.data[ys..ys + cs], &self.data[ys + cs..ys + 2 * cs])
    }

    /// Appends this picture as RGBA (BT.601, limited range, SIMD) to `out`: what a page that
    /// draws with a 2D canvas takes as it is.
    pub fn append_rgba(&self, out: &mut Vec<u8>) {
        let start = out.len();
        out.resize(start + self.width as usize * self.height as usize * 4, 255);
        let (y, u, v) = self.planes();
        let planar = yuv::YuvPlanarImage {
            y_plane: y,
            y_stride: self.width,
            u_plane: u,
            u_stride: self.chroma_width() as u32,
            v_plane: v,
            v_stride: self.chroma_width() as u32,
            width: self.width,
            height: self.height,
        };
        // Only fails on planes that do not match the size, which this type rules out.
        let _ = yuv::yuv420_to_rgba(
            &planar,
            &mut out[start..],
            self.width * 4,
            yuv::YuvRange::Limited,
            yuv::YuvStandardMatrix::Bt601,
        );
    }

    /// A copy scaled to `width` x `height` (bilinear, SIMD), stretching if the aspect
    /// differs. Used to send the UI only the pixels a tile shows.
    pub fn scaled(&self, width: u32, height: u32) -> I420Frame {
        if width == self.width && height == self.height {
            return self.clone();
        }
        self.resized((0, 0, self.width, self.height), width.max(2) & !1, height.max(2) & !1)
    }

    /// This picture at exactly `width` x `height` without distorting it: the largest centred
    /// part with the target's aspect ratio, scaled. A 4:3 camera in a 16:9 call loses a strip
    /// at the top and bottom, as in browsers, rather than making round faces oval.
    pub fn fitted(self, width: u32, height: u32) -> I420Frame {
        if (width, height) == (self.width, self.height) {
            return self;
        }
        let (sw, sh) = (self.width as u64, self.height as u64);
        let (tw, th) = (width.max(2) as u64, height.max(2) as u64);
        // Even offsets and sizes keep the chroma planes aligned with the luma.
        let (cw, ch) = if sw * th > sh * tw { ((sh * tw / th) & !1, sh) } else { (sw, (sw * th / tw) & !1) };
        let (cw, ch) = (cw.clamp(2, sw) as u32, ch.clamp(2, sh) as u32);
        let x = ((self.width - cw) / 2) & !1;
        let y = ((self.height - ch) / 2) & !1;
        self.resized((x, y, cw, ch), width.max(2) & !1, height.max(2) & !1)
    }

    /// The region `(x, y, w, h)` (even `x` and `y`) scaled to `width` x `height`.
    fn resized(&self, (x, y, w, h): (u32, u32, u32, u32), width: u32, height: u32) -> I420Frame {
        let mut out = I420Frame::new(width, height);
        let (ow, oh) = (out.width, out.height);
        let (ocw, och) = (out.chroma_width() as u32, out.chroma_height() as u32);
        let (scw, sch) = (self.chroma_width() as u32, self.chroma_height() as u32);
        let (sy, su, sv) = self.planes();
        let (dy, du, dv) = out.planes_mut();
        RESIZER.with_borrow_mut(|r| {
            let luma = (x as f64, y as f64, w as f64, h as f64);
            let chroma = (x as f64 / 2.0, y as f64 / 2.0, w as f64 / 2.0, h as f64 / 2.0);
            resize_plane(r, sy, (self.width, self.height), luma, dy, (ow, oh));
            resize_plane(r, su, (scw, sch), chroma, du, (ocw, och));
            resize_plane(r, sv, (scw, sch), chroma, dv, (ocw, och));
        });
        out
    }
}

thread_local! {
    /// Scratch buffers of the scaler, kept per thread (capture, decode and UI threads scale).
    static RESIZER: std::cell::RefCell<fast_image_resize::Resizer> =
        std::cell::RefCell::new(fast_image_resize::Resizer::new());
}

/// Scales the `crop` region of one 8-bit plane into `dst`. Sizes are consistent by
/// construction, so the library's errors (buffer sizes) cannot happen; one would leave the
/// plane as it was, never panic on a frame.
fn resize_plane(
    r: &mut fast_image_resize::Resizer,
    src: &[u8],
    (sw, sh): (u32, u32),
    (cx, cy, cw, ch): (f64, f64, f64, f64),
    dst: &mut [u8],
    (dw, dh): (u32, u32),
) {
    use fast_image_resize::{images::Image, images::ImageRef, FilterType, PixelType, ResizeAlg, ResizeOptions};
    let (Ok(src), Ok(mut dst)) =
        (ImageRef::new(sw, sh, src, PixelType::U8), Image::from_slice_u8(dw, dh, dst, PixelType::U8))
    else {
        return;
    };
    let options = ResizeOptions::new().resize_alg(ResizeAlg::Convolution(FilterType::Bilinear)).crop(cx, cy, cw, ch);
    if let Err(e) = r.resize(&src, &mut dst, &options) {
        tracing::debug!(error = %e, "cannot scale a plane");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_and_planes() {
        let f = I420Frame::new(5, 3);
        assert_eq!(f.data.len(), 15 + 2 * 3 * 2);
        assert_eq!(I420Frame::byte_len(5, 3), f.data.len());
        let (y, u, v) = f.planes();
        assert_eq!((y.len(), u.len(), v.len()), (15, 6, 6));
    }

    #[test]
    fn scaling_averages_and_keeps_flat_areas() {
        let mut f = I420Frame::new(8, 8);
        {
            let (y, _, _) = f.planes_mut();
            for (i, p) in y.iter_mut().enumerate() {
                *p = if (i % 8) < 4 { 0 } else { 200 };
            }
        }
        // Bilinear: the edge blends, the flat areas keep their values.
        let s = f.scaled(4, 4);
        let row = &s.y()[4..8];
        assert_eq!((row[0], row[3]), (0, 200), "{row:?}");
        assert!(row[1] < 100 && row[2] > 100, "{row:?}");
        let up = s.scaled(8, 8);
        assert_eq!((up.y()[8], up.y()[15]), (0, 200));
    }

    /// A 4:3 picture whose left and right halves differ, with bands at the top and bottom
    /// that a 16:9 crop must cut: fitting keeps the middle, unstretched.
    #[test]
    fn fitting_a_4_3_picture_into_16_9_crops_the_top_and_bottom() {
        let mut f = I420Frame::new(64, 48);
        {
            let (y, _, _) = f.planes_mut();
            for (i, p) in y.iter_mut().enumerate() {
                let (row, col) = (i / 64, i % 64);
                *p = if !(6..42).contains(&row) {
                    255
                } else if col < 32 {
                    50
                } else {
                    150
                };
            }
        }
        let fit = f.fitted(64, 36);
        assert_eq!((fit.width, fit.height), (64, 36));
        assert!(fit.y().iter().all(|&p| p == 50 || p == 150), "the bands are cut, nothing else");
        assert_eq!(fit.y()[..64].iter().filter(|&&p| p == 50).count(), 32, "the halves keep their widths");
    }
}
