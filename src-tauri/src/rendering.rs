//! How the page draws, decided once at startup: with a GPU, WebKit's accelerated compositing
//! and WebGL tiles fed I420 (the shader converts); without one (software GL, llvmpipe, as
//! under Xvfb or in a VM) both would run on the CPU at several times the cost, so WebKit
//! paints without compositing and the tiles are 2D canvases fed RGBA converted in Rust.
//! The page cannot tell for itself: WebKit reports every WebGL renderer as "Apple GPU".
//!
//! Measured here without a GPU (tests/e2e/bench_call_cpu.py, 720p call, self view and one
//! tile): WebGL 59.9 CPU-s/min against 2D 51.2, llvmpipe threads 10 of the difference.

use std::path::Path;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Renderer {
    Webgl,
    Canvas2d,
}

impl Renderer {
    pub fn as_str(self) -> &'static str {
        match self {
            Renderer::Webgl => "webgl",
            Renderer::Canvas2d => "2d",
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Rendering {
    pub renderer: Renderer,
    /// WebKit's accelerated compositing (off: WEBKIT_DISABLE_COMPOSITING_MODE=1).
    pub compositing: bool,
}

/// What the environment says: a GPU render node, and the overrides.
#[derive(Default)]
pub struct Facts<'a> {
    pub render_node: bool,
    /// LIBGL_ALWAYS_SOFTWARE=1: Mesa told to ignore the GPU.
    pub software_gl: bool,
    /// CONFAB_RENDERER: webgl or 2d.
    pub renderer: Option<&'a str>,
    /// CONFAB_WEBKIT_COMPOSITING: 1 or 0.
    pub compositing: Option<&'a str>,
    /// WEBKIT_DISABLE_COMPOSITING_MODE, set by the user: WebKit obeys it whatever we say.
    pub webkit_disable: Option<&'a str>,
}

pub fn decide(f: &Facts) -> Rendering {
    let gpu = f.render_node && !f.software_gl;
    let compositing = match (f.webkit_disable, f.compositing) {
        (Some(v), _) => v == "0",
        (None, Some(v)) => v == "1",
        (None, None) => gpu,
    };
    let renderer = match f.renderer {
        Some("webgl") => Renderer::Webgl,
        Some("2d") => Renderer::Canvas2d,
        _ if gpu => Renderer::Webgl,
        _ => Renderer::Canvas2d,
    };
    Rendering { renderer, compositing }
}

/// Decides from this machine and environment, and tells WebKit. Call it before any thread
/// starts (it sets an environment variable).
pub fn apply() -> Rendering {
    let var = |k: &str| std::env::var(k).ok();
    let (renderer, compositing, webkit_disable) =
        (var("CONFAB_RENDERER"), var("CONFAB_WEBKIT_COMPOSITING"), var("WEBKIT_DISABLE_COMPOSITING_MODE"));
    let facts = Facts {
        render_node: has_render_node(Path::new("/dev/dri")),
        software_gl: var("LIBGL_ALWAYS_SOFTWARE").is_some_and(|v| v == "1" || v == "true"),
        renderer: renderer.as_deref(),
        compositing: compositing.as_deref(),
        webkit_disable: webkit_disable.as_deref(),
    };
    let r = decide(&facts);
    if !r.compositing && webkit_disable.is_none() {
        std::env::set_var("WEBKIT_DISABLE_COMPOSITING_MODE", "1");
    }
    r
}

/// A DRM render node we may open: where Mesa finds a GPU (llvmpipe is what is left without).
fn has_render_node(dri: &Path) -> bool {
    let Ok(entries) = std::fs::read_dir(dri) else { return false };
    entries.flatten().any(|e| {
        e.file_name().to_string_lossy().starts_with("renderD")
            && std::fs::OpenOptions::new().read(true).write(true).open(e.path()).is_ok()
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_gpu_gets_webgl_and_compositing_and_software_gets_neither() {
        let gpu = decide(&Facts { render_node: true, ..Default::default() });
        assert_eq!(gpu, Rendering { renderer: Renderer::Webgl, compositing: true });
        let none = decide(&Facts::default());
        assert_eq!(none, Rendering { renderer: Renderer::Canvas2d, compositing: false });
        let forced_soft = decide(&Facts { render_node: true, software_gl: true, ..Default::default() });
        assert_eq!(forced_soft, none);
    }

    #[test]
    fn overrides_win() {
        let f = Facts { renderer: Some("webgl"), compositing: Some("1"), ..Default::default() };
        assert_eq!(decide(&f), Rendering { renderer: Renderer::Webgl, compositing: true });
        let f = Facts { render_node: true, renderer: Some("2d"), compositing: Some("0"), ..Default::default() };
        assert_eq!(decide(&f), Rendering { renderer: Renderer::Canvas2d, compositing: false });
        // WebKit reads its own variable whatever we decide.
        let f = Facts { render_node: true, webkit_disable: Some("1"), compositing: Some("1"), ..Default::default() };
        assert!(!decide(&f).compositing);
    }

    #[test]
    fn render_nodes_are_found() {
        let dir = std::env::temp_dir().join(format!("confab-dri-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        assert!(!has_render_node(&dir));
        std::fs::write(dir.join("card0"), b"").unwrap();
        assert!(!has_render_node(&dir), "a display-only card is not a GPU we can render with");
        std::fs::write(dir.join("renderD128"), b"").unwrap();
        assert!(has_render_node(&dir));
        std::fs::remove_dir_all(&dir).unwrap();
        assert!(!has_render_node(&dir));
    }
}
