//! The CPU reference rasteriser: triangle setup, a depth pass keeping the smallest
//! (depth, triangle id) key per pixel, then a resolve pass computing barycentrics, depth and
//! derivatives, in plain Rust over horizontal bands of the image on `std::thread`s.
//!
//! The result does not depend on the order triangles are visited in (the key minimum is
//! order-free), so any band split gives the same image, and so does the CUDA path.

use super::setup::{self, Camera, TriangleSetup, EMPTY_KEY};

/// The raw per-pixel output of a rasterisation, row-major `height × width`.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct RasterBuffers {
    /// Triangle id, −1 where empty.
    pub triangle_id: Vec<i32>,
    /// Weights of vertices 1 and 2, two per pixel.
    pub barycentrics: Vec<f32>,
    /// Camera-space depth, 0 where empty.
    pub depth: Vec<f32>,
    /// `[du/dx, du/dy, dv/dx, dv/dy]` per pixel.
    pub derivatives: Vec<f32>,
}

/// Rasterises the triangles `indices` (flat triplets into `positions`, flat xyz) for `cam`.
pub(crate) fn rasterize(cam: &Camera, positions: &[f32], indices: &[u32]) -> RasterBuffers {
    let setups = setup_all(cam, positions, indices);
    let (width, height) = (cam.width as usize, cam.height as usize);
    let pixels = width * height;
    let mut out = RasterBuffers {
        triangle_id: vec![-1; pixels],
        barycentrics: vec![0.0; 2 * pixels],
        depth: vec![0.0; pixels],
        derivatives: vec![0.0; 4 * pixels],
    };
    let band_rows = height.div_ceil(worker_threads(height));
    let band = band_rows * width;
    std::thread::scope(|scope| {
        let bands = out
            .triangle_id
            .chunks_mut(band)
            .zip(out.barycentrics.chunks_mut(2 * band))
            .zip(out.depth.chunks_mut(band))
            .zip(out.derivatives.chunks_mut(4 * band));
        for (k, (((ids, bary), depth), deriv)) in bands.enumerate() {
            let setups = &setups;
            let y0 = (k * band_rows) as i32;
            scope.spawn(move || {
                let mut keys = vec![EMPTY_KEY; ids.len()];
                depth_pass(cam, setups, &mut keys, y0);
                let band = BandOut {
                    ids,
                    bary,
                    depth,
                    deriv,
                };
                resolve_band(cam, setups, &keys, y0, band);
            });
        }
    });
    out
}

/// One band's slices of the outputs.
struct BandOut<'a> {
    ids: &'a mut [i32],
    bary: &'a mut [f32],
    depth: &'a mut [f32],
    deriv: &'a mut [f32],
}

/// Setups of every triangle (index = triangle id; `None` when it covers nothing).
fn setup_all(cam: &Camera, positions: &[f32], indices: &[u32]) -> Vec<Option<TriangleSetup>> {
    let vertex = |i: u32| {
        let i = i as usize * 3;
        [positions[i], positions[i + 1], positions[i + 2]]
    };
    indices
        .chunks_exact(3)
        .map(|t| setup::setup_triangle(cam, [vertex(t[0]), vertex(t[1]), vertex(t[2])]))
        .collect()
}

/// The depth pass over one band of rows starting at `y0` (`rows` holds whole rows).
fn depth_pass(cam: &Camera, setups: &[Option<TriangleSetup>], rows: &mut [u64], y0: i32) {
    let width = cam.width as usize;
    let y_end = y0 + (rows.len() / width) as i32;
    for (id, s) in setups.iter().enumerate() {
        let Some(s) = s else { continue };
        let [x0, ty0, x1, ty1] = s.bbox;
        for y in ty0.max(y0)..=ty1.min(y_end - 1) {
            let row = &mut rows[(y - y0) as usize * width..][..width];
            for x in x0..=x1 {
                if let Some((_, z)) = setup::cover(cam, s, x, y) {
                    let key = setup::depth_key(z, id as u32);
                    let slot = &mut row[x as usize];
                    *slot = (*slot).min(key);
                }
            }
        }
    }
}

/// Barycentrics, depth and derivatives of every pixel of a band from its winning key.
fn resolve_band(
    cam: &Camera,
    setups: &[Option<TriangleSetup>],
    keys: &[u64],
    y0: i32,
    out: BandOut<'_>,
) {
    let width = cam.width as usize;
    for (p, &key) in keys.iter().enumerate() {
        if key == EMPTY_KEY {
            continue;
        }
        let id = (key & 0xffff_ffff) as usize;
        let Some(Some(s)) = setups.get(id) else {
            continue;
        };
        let (x, y) = ((p % width) as i32, y0 + (p / width) as i32);
        let (bary, deriv) = setup::resolve(s, x, y);
        out.ids[p] = id as i32;
        out.depth[p] = f32::from_bits((key >> 32) as u32);
        out.bary[2 * p..2 * p + 2].copy_from_slice(&bary);
        out.deriv[4 * p..4 * p + 4].copy_from_slice(&deriv);
    }
}

/// Threads (bands of rows): the machine's parallelism, at most one per 16 rows.
fn worker_threads(height: usize) -> usize {
    let available = std::thread::available_parallelism().map_or(1, |n| n.get());
    available.min(height.div_ceil(16)).max(1)
}
