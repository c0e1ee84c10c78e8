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

    /// A copy scaled to `width` x `height` (box-filtered when shrinking, nearest when
    /// growing). Used to send the UI only the pixels a tile shows.
    pub fn scaled(&self, width: u32, height: u32) -> I420Frame {
        if width == self.width && height == self.height {
            return self.clone();
        }
        let mut out = I420Frame::new(width.max(2), height.max(2));
        let (sy, su, sv) = self.planes();
        let (ow, oh) = (out.width as usize, out.height as usize);
        let (ocw, och) = (out.chroma_width(), out.chroma_height());
        let (dy, du, dv) = out.planes_mut();
        scale_plane(sy, self.width as usize, self.height as usize, dy, ow, oh);
        scale_plane(su, self.chroma_width(), self.chroma_height(), du, ocw, och);
        scale_plane(sv, self.chroma_width(), self.chroma_height(), dv, ocw, och);
        out
    }
}

/// Area-average scaling of one plane; each output pixel averages the source pixels it
/// covers (at least one).
fn scale_plane(src: &[u8], sw: usize, sh: usize, dst: &mut [u8], dw: usize, dh: usize) {
    for oy in 0..dh {
        let y0 = oy * sh / dh;
        let y1 = ((oy + 1) * sh / dh).max(y0 + 1).min(sh);
        for ox in 0..dw {
            let x0 = ox * sw / dw;
            let x1 = ((ox + 1) * sw / dw).max(x0 + 1).min(sw);
            let mut sum = 0u32;
            for y in y0..y1 {
                let row = &src[y * sw..];
                for &p in &row[x0..x1] {
                    sum += p as u32;
                }
            }
            let n = ((y1 - y0) * (x1 - x0)) as u32;
            dst[oy * dw + ox] = ((sum + n / 2) / n) as u8;
        }
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
        let s = f.scaled(2, 2);
        assert_eq!(s.y(), &[0, 200, 0, 200]);
        let up = s.scaled(4, 4);
        assert_eq!(&up.y()[..4], &[0, 0, 200, 200]);
    }
}
