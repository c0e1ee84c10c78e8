//! A camera's frame, whatever its layout, to the I420 the encoder takes: MJPEG through
//! zune-jpeg (decoded to YCbCr, never through RGB), packed and semi-planar YUV through the
//! `yuv` crate's SIMD kernels, with the real row stride. A frame that does not add up (short,
//! corrupt) is a [`BadFrame`]: the capture loop skips it, it never panics.

use yuv::{BufferStoreMut, YuvPackedImage, YuvPlanarImageMut, YuvRange, YuvStandardMatrix};
use zune_jpeg::zune_core::colorspace::ColorSpace;
use zune_jpeg::zune_core::options::DecoderOptions;

use super::camera_backend::{PixelFormat, RawFrame};
use crate::frame::I420Frame;

/// Why a frame cannot be used.
#[derive(Debug, thiserror::Error, PartialEq)]
pub enum BadFrame {
    #[error("{format:?} frame of {width}x{height} has {got} bytes, needs {need}")]
    Short { format: PixelFormat, width: u32, height: u32, got: usize, need: usize },
    #[error("corrupt JPEG: {0}")]
    Jpeg(String),
    #[error("{0}x{1} is not a picture size")]
    Size(u32, u32),
    #[error("{format:?} frame refused by the converter: {reason}")]
    Refused { format: PixelFormat, reason: String },
}

/// Bytes per pixel of the first plane's rows, and the planes' total height in rows of it.
fn layout(format: PixelFormat, height: usize) -> (usize, usize) {
    match format {
        PixelFormat::Yuyv => (2, height),
        PixelFormat::Nv12 => (1, height + height.div_ceil(2)),
        PixelFormat::Rgb24 => (3, height),
        PixelFormat::Gray => (1, height),
        PixelFormat::Mjpeg => (0, 0),
    }
}

/// The row stride of an uncompressed frame: the one the system gave, or the one its
/// buffer's length implies (drivers pad rows to their alignment), checked against the bytes
/// really there.
pub fn stride_of(raw: &RawFrame) -> Result<usize, BadFrame> {
    let (w, h) = (raw.width as usize, raw.height as usize);
    let (bpp, rows) = layout(raw.format, h);
    let min = w * bpp;
    let short =
        |need| BadFrame::Short { format: raw.format, width: raw.width, height: raw.height, got: raw.data.len(), need };
    let stride = match raw.stride {
        Some(s) => s,
        // A buffer of whole padded rows; anything else (or less) reads as unpadded.
        None if rows > 0 && raw.data.len().is_multiple_of(rows) && raw.data.len() / rows >= min => {
            raw.data.len() / rows
        }
        None => min,
    };
    if stride < min {
        return Err(short(min * rows));
    }
    // The last row needs only its pixels, not its padding.
    let need = stride * rows.saturating_sub(1) + min;
    if raw.data.len() < need {
        return Err(short(need));
    }
    Ok(stride)
}

/// Turns camera frames into I420. Holds nothing between frames but is the one place that
/// knows every layout.
pub fn to_i420(raw: &RawFrame) -> Result<I420Frame, BadFrame> {
    if raw.width < 2 || raw.height < 2 || raw.width > 8192 || raw.height > 8192 {
        return Err(BadFrame::Size(raw.width, raw.height));
    }
    match raw.format {
        PixelFormat::Mjpeg => mjpeg_to_i420(raw.data),
        PixelFormat::Yuyv => {
            let stride = stride_of(raw)?;
            let packed =
                YuvPackedImage { yuy: raw.data, yuy_stride: stride as u32, width: raw.width, height: raw.height };
            with_planes(raw, |planar| yuv::yuyv422_to_yuv420(planar, &packed))
        }
        PixelFormat::Nv12 => {
            let stride = stride_of(raw)?;
            Ok(nv12_to_i420(raw.data, stride, raw.width, raw.height))
        }
        PixelFormat::Rgb24 => {
            let stride = stride_of(raw)?;
            with_planes(raw, |planar| {
                let (range, matrix) = (YuvRange::Limited, YuvStandardMatrix::Bt601);
                yuv::rgb_to_yuv420(planar, raw.data, stride as u32, range, matrix, yuv::YuvConversionMode::Balanced)
            })
        }
        PixelFormat::Gray => {
            let stride = stride_of(raw)?;
            let mut out = I420Frame::new(raw.width, raw.height);
            let w = raw.width as usize;
            let (y, _, _) = out.planes_mut();
            for (row, dst) in y.chunks_exact_mut(w).enumerate() {
                dst.copy_from_slice(&raw.data[row * stride..row * stride + w]);
            }
            Ok(out)
        }
    }
}

/// Runs a `yuv` kernel into a new I420 frame of `raw`'s size. The kernel's own size check
/// cannot fail after `stride_of`'s; if it did, the frame is refused, never a panic.
fn with_planes(
    raw: &RawFrame,
    f: impl FnOnce(&mut YuvPlanarImageMut<u8>) -> Result<(), yuv::YuvError>,
) -> Result<I420Frame, BadFrame> {
    into_i420(raw.width, raw.height, f).map_err(|e| BadFrame::Refused { format: raw.format, reason: e.to_string() })
}

/// Runs a `yuv` kernel that writes planar 4:2:0 into a new I420 frame of `width` x `height`.
pub(crate) fn into_i420(
    width: u32,
    height: u32,
    f: impl FnOnce(&mut YuvPlanarImageMut<u8>) -> Result<(), yuv::YuvError>,
) -> Result<I420Frame, yuv::YuvError> {
    let mut out = I420Frame::new(width, height);
    let cw = out.chroma_width() as u32;
    let (y, u, v) = out.planes_mut();
    let mut planar = YuvPlanarImageMut {
        y_plane: BufferStoreMut::Borrowed(y),
        y_stride: width,
        u_plane: BufferStoreMut::Borrowed(u),
        u_stride: cw,
        v_plane: BufferStoreMut::Borrowed(v),
        v_stride: cw,
        width,
        height,
    };
    f(&mut planar)?;
    Ok(out)
}

/// NV12 (Y plane, then interleaved UV) to I420: rows are copied, the chroma split.
fn nv12_to_i420(data: &[u8], stride: usize, width: u32, height: u32) -> I420Frame {
    let mut out = I420Frame::new(width, height);
    let (w, h) = (width as usize, height as usize);
    let cw = out.chroma_width();
    let (y, u, v) = out.planes_mut();
    for (row, dst) in y.chunks_exact_mut(w).enumerate() {
        dst.copy_from_slice(&data[row * stride..row * stride + w]);
    }
    let uv = &data[stride * h..];
    for (row, (du, dv)) in u.chunks_exact_mut(cw).zip(v.chunks_exact_mut(cw)).enumerate() {
        let line = &uv[row * stride..];
        for (i, pair) in line.chunks_exact(2).take(cw).enumerate() {
            du[i] = pair[0];
            dv[i] = pair[1];
        }
    }
    out
}

/// Where a JPEG's end-of-image marker ends, if its marker structure holds together up to
/// there. zune-jpeg decodes a JPEG cut in half, or one with bytes overwritten, into a
/// picture with garbage in it (even in strict mode), so what libjpeg calls "premature end of
/// data" and "extraneous bytes before marker" is checked here: in entropy-coded data a 0xFF
/// is followed only by a stuffed 0x00, a restart marker, or the next marker segment.
pub fn jpeg_end(data: &[u8]) -> Result<usize, BadFrame> {
    let bad = |why: &str| Err(BadFrame::Jpeg(why.into()));
    if data.len() < 4 || data[0] != 0xFF || data[1] != 0xD8 {
        return bad("no start-of-image marker");
    }
    let mut pos = 2;
    loop {
        // A marker: 0xFF, fill bytes, its code.
        if data.get(pos) != Some(&0xFF) {
            return bad("bytes where a marker should be");
        }
        while data.get(pos) == Some(&0xFF) {
            pos += 1;
        }
        let Some(&code) = data.get(pos) else { return bad("truncated (no end-of-image marker)") };
        pos += 1;
        match code {
            0xD9 => return Ok(pos),
            0x01 | 0xD0..=0xD7 => continue,
            0xC0..=0xFE => {}
            _ => return bad("an invalid marker"),
        }
        let Some(len) = data.get(pos..pos + 2).map(|b| u16::from_be_bytes([b[0], b[1]]) as usize) else {
            return bad("truncated (in a marker segment)");
        };
        if len < 2 {
            return bad("a marker segment of impossible length");
        }
        pos += len;
        if code != 0xDA {
            continue;
        }
        // Entropy-coded data after the scan header, up to the next marker.
        loop {
            let Some(i) = data.get(pos..).and_then(|d| d.iter().position(|&b| b == 0xFF)) else {
                return bad("truncated (no end-of-image marker)");
            };
            pos += i;
            match data.get(pos + 1) {
                None => return bad("truncated (no end-of-image marker)"),
                Some(0x00 | 0xD0..=0xD7) => pos += 2,
                Some(0xC0..=0xFE) => break,
                Some(_) => return bad("corrupt entropy-coded data"),
            }
        }
    }
}

/// A JPEG to I420, decoded to YCbCr (no colour conversion either way) and the chroma of
/// each 2x2 block averaged. A truncated or damaged JPEG is an error, not a picture with
/// garbage in it. Bytes after the end-of-image marker (a driver's whole buffer) are ignored.
pub fn mjpeg_to_i420(data: &[u8]) -> Result<I420Frame, BadFrame> {
    let data = &data[..jpeg_end(data)?];
    let options = DecoderOptions::default()
        .jpeg_set_out_colorspace(ColorSpace::YCbCr)
        .set_strict_mode(true)
        .set_max_width(8192)
        .set_max_height(8192);
    let mut dec = zune_jpeg::JpegDecoder::new_with_options(data, options);
    let pixels = dec.decode().map_err(|e| BadFrame::Jpeg(e.to_string()))?;
    let info = dec.info().ok_or_else(|| BadFrame::Jpeg("no header".into()))?;
    let (w, h) = (info.width as usize, info.height as usize);
    if w < 2 || h < 2 {
        return Err(BadFrame::Size(w as u32, h as u32));
    }
    match dec.get_output_colorspace() {
        Some(ColorSpace::YCbCr) if pixels.len() >= w * h * 3 => Ok(ycbcr444_to_i420(&pixels, w, h)),
        Some(ColorSpace::Luma) if pixels.len() >= w * h => {
            let mut out = I420Frame::new(w as u32, h as u32);
            out.planes_mut().0.copy_from_slice(&pixels[..w * h]);
            Ok(out)
        }
        other => Err(BadFrame::Jpeg(format!("unexpected output {other:?} of {} bytes", pixels.len()))),
    }
}

/// Interleaved full-resolution Y Cb Cr to I420. Written as whole-row iterator chains, which
/// the compiler vectorises (no crate converts packed 4:4:4 to planar 4:2:0).
fn ycbcr444_to_i420(px: &[u8], w: usize, h: usize) -> I420Frame {
    let mut out = I420Frame::new(w as u32, h as u32);
    let cw = out.chroma_width();
    let (y, u, v) = out.planes_mut();
    for (dst, src) in y.iter_mut().zip(px.chunks_exact(3)) {
        *dst = src[0];
    }
    let row_bytes = w * 3;
    for (r, (urow, vrow)) in u.chunks_exact_mut(cw).zip(v.chunks_exact_mut(cw)).enumerate() {
        let top = &px[2 * r * row_bytes..][..row_bytes];
        let bottom = if 2 * r + 1 < h { &px[(2 * r + 1) * row_bytes..][..row_bytes] } else { top };
        let avg = |a: u8, b: u8, c: u8, d: u8| ((a as u16 + b as u16 + c as u16 + d as u16 + 2) >> 2) as u8;
        for (((t, b), du), dv) in
            top.chunks_exact(6).zip(bottom.chunks_exact(6)).zip(urow.iter_mut()).zip(vrow.iter_mut())
        {
            *du = avg(t[1], t[4], b[1], b[4]);
            *dv = avg(t[2], t[5], b[2], b[5]);
        }
        if w % 2 == 1 {
            // The last column of an odd width pairs with itself.
            let (t, b) = (&top[row_bytes - 3..], &bottom[row_bytes - 3..]);
            urow[cw - 1] = avg(t[1], t[1], b[1], b[1]);
            vrow[cw - 1] = avg(t[2], t[2], b[2], b[2]);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn raw(format: PixelFormat, width: u32, height: u32, stride: Option<usize>, data: &[u8]) -> RawFrame<'_> {
        RawFrame { format, width, height, stride, data }
    }

    #[test]
    fn yuyv_with_padded_rows_converts_and_a_short_one_is_refused() {
        // 4x2 YUYV, rows padded from 8 to 12 bytes (the padding is garbage), as a driver
        // hands out whole padded rows.
        let row0 = [10u8, 100, 20, 200, 30, 110, 40, 210, 9, 9, 9, 9];
        let row1 = [50u8, 120, 60, 220, 70, 130, 80, 230, 9, 9, 9, 9];
        let data: Vec<u8> = row0.iter().chain(row1.iter()).copied().collect();
        let f = to_i420(&raw(PixelFormat::Yuyv, 4, 2, None, &data)).unwrap();
        assert_eq!(f.y(), &[10, 20, 30, 40, 50, 60, 70, 80]);
        let f2 = to_i420(&raw(PixelFormat::Yuyv, 4, 2, Some(12), &data)).unwrap();
        assert_eq!(f, f2);
        let e = to_i420(&raw(PixelFormat::Yuyv, 4, 2, Some(12), &data[..15])).unwrap_err();
        assert!(matches!(e, BadFrame::Short { got: 15, need: 20, .. }), "{e}");
        assert!(to_i420(&raw(PixelFormat::Yuyv, 640, 480, None, &data)).is_err());
    }

    #[test]
    fn nv12_with_stride_splits_its_chroma() {
        // 2x2 NV12, stride 4: Y rows then one UV row.
        let data = [1u8, 2, 0, 0, 3, 4, 0, 0, 100, 200, 0, 0];
        let f = to_i420(&raw(PixelFormat::Nv12, 2, 2, Some(4), &data)).unwrap();
        assert_eq!(f.y(), &[1, 2, 3, 4]);
        let (_, u, v) = f.planes();
        assert_eq!((u, v), (&[100u8][..], &[200u8][..]));
    }

    #[test]
    fn packed_ycbcr_averages_each_2x2_block_of_chroma() {
        // 3x2: one full block and an odd last column.
        let px = [
            10, 100, 200, 20, 110, 210, 30, 120, 220, //
            40, 102, 202, 50, 112, 212, 60, 124, 224,
        ];
        let f = ycbcr444_to_i420(&px, 3, 2);
        assert_eq!(f.y(), &[10, 20, 30, 40, 50, 60]);
        let (_, u, v) = f.planes();
        assert_eq!((u, v), (&[106u8, 122][..], &[206u8, 222][..]));
    }

    #[test]
    fn garbage_is_not_a_jpeg() {
        assert!(matches!(mjpeg_to_i420(&[0xff, 0xd8, 0xff, 0xe0, 1, 2, 3]), Err(BadFrame::Jpeg(_))));
        assert!(matches!(mjpeg_to_i420(&[]), Err(BadFrame::Jpeg(_))));
    }

    #[test]
    fn a_jpeg_ends_at_its_end_marker_and_a_broken_structure_is_refused() {
        // SOI, an APP0 of length 4, SOS with a 4-byte header, entropy data with a stuffed
        // 0xFF and a restart marker, EOI, then stale bytes of a driver's buffer.
        let good =
            [0xFF, 0xD8, 0xFF, 0xE0, 0, 4, 1, 2, 0xFF, 0xDA, 0, 4, 9, 9, 5, 0xFF, 0, 6, 0xFF, 0xD3, 7, 0xFF, 0xD9];
        let mut buf = good.to_vec();
        buf.extend_from_slice(&[0xFF, 0x12, 0xFF, 0xD9, 3]);
        assert_eq!(jpeg_end(&buf), Ok(good.len()));
        let cut = jpeg_end(&good[..17]).unwrap_err();
        assert!(cut.to_string().contains("truncated"), "{cut}");
        let mut damaged = good.to_vec();
        damaged[16] = 0x12; // 0xFF 0x12 inside the scan
        assert!(jpeg_end(&damaged).unwrap_err().to_string().contains("corrupt"));
    }
}
