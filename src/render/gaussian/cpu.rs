//! The CPU reference rasteriser: the same tile-based algorithm as the CUDA kernels, in plain
//! Rust on `std::thread`s, so that both paths agree to float rounding.
//!
//! 1. Preprocess every Gaussian ([`projection::preprocess`]) in parallel chunks.
//! 2. Bin: each visible splat is listed in every 16×16 tile its rectangle touches, in Gaussian
//!    order (a counting pass, a prefix sum, a filling pass: the layout of the CUDA path's
//!    sorted key list).
//! 3. Per tile, a stable sort by view depth (the f32 bits, as the CUDA path's radix key), so
//!    equal depths keep Gaussian order exactly as the reference's stable radix sort does.
//! 4. Blend front to back per pixel: `α = min(0.99, o·exp(power))`, skipped below 1/255,
//!    stopping before the transmittance would fall below 1e-4; colour over the background.
//!
//! Steps 3 and 4 run one tile row per work item, each writing its own band of the image.

use super::projection::{self, Splat, SplatCamera, PACKED, TILE};

/// The transmittance below which a pixel stops accumulating (reference: `test_T < 0.0001f`).
const MIN_TRANSMITTANCE: f32 = 1e-4;

/// Gaussians per preprocessing work item.
const PREPROCESS_CHUNK: usize = 8192;

/// A rendered image in flat row-major buffers: colour `[H, W, 3]`, depth and alpha `[H, W]`.
pub(crate) struct Planes {
    pub color: Vec<f32>,
    pub depth: Vec<f32>,
    pub alpha: Vec<f32>,
}

/// Renders the packed scene `gaussians` (`PACKED` floats each) for `cam`.
pub(crate) fn render(gaussians: &[f32], cam: &SplatCamera) -> Planes {
    let splats = preprocess_all(gaussians, cam);
    let colors: Vec<[f32; 3]> = gaussians
        .chunks_exact(PACKED)
        .map(|g| [g[12], g[13], g[14]])
        .collect();
    let (offsets, mut entries) = bin(&splats, cam);
    blend_all(&splats, &colors, &offsets, &mut entries, cam)
}

fn preprocess_all(gaussians: &[f32], cam: &SplatCamera) -> Vec<Option<Splat>> {
    let mut splats = vec![None; gaussians.len() / PACKED];
    let items: Vec<(usize, &mut [Option<Splat>])> = splats
        .chunks_mut(PREPROCESS_CHUNK)
        .enumerate()
        .map(|(i, chunk)| (i * PREPROCESS_CHUNK, chunk))
        .collect();
    crate::parallel::for_each(items, |(start, chunk)| {
        for (k, out) in chunk.iter_mut().enumerate() {
            let g = &gaussians[(start + k) * PACKED..(start + k + 1) * PACKED];
            *out = projection::preprocess(cam, g);
        }
    });
    splats
}

/// Per-tile lists of splat indices in Gaussian order: `offsets[t]..offsets[t + 1]` of the
/// returned entries belong to tile `t` (row-major tiles).
fn bin(splats: &[Option<Splat>], cam: &SplatCamera) -> (Vec<usize>, Vec<u32>) {
    let tiles_x = cam.tiles_x as usize;
    let mut offsets = vec![0usize; cam.tile_count() + 1];
    let visible = || {
        splats
            .iter()
            .enumerate()
            .filter_map(|(i, s)| s.as_ref().map(|s| (i, s)))
    };
    for (_, s) in visible() {
        for ty in s.rect[1]..s.rect[3] {
            for tx in s.rect[0]..s.rect[2] {
                offsets[ty as usize * tiles_x + tx as usize + 1] += 1;
            }
        }
    }
    for t in 1..offsets.len() {
        offsets[t] += offsets[t - 1];
    }
    let mut cursor = offsets.clone();
    let mut entries = vec![0u32; offsets[offsets.len() - 1]];
    for (i, s) in visible() {
        for ty in s.rect[1]..s.rect[3] {
            for tx in s.rect[0]..s.rect[2] {
                let slot = &mut cursor[ty as usize * tiles_x + tx as usize];
                entries[*slot] = i as u32;
                *slot += 1;
            }
        }
    }
    (offsets, entries)
}

/// One tile row's work: its entries and its band of each output plane.
struct Band<'a> {
    tile_row: usize,
    entries: &'a mut [u32],
    color: &'a mut [f32],
    depth: &'a mut [f32],
    alpha: &'a mut [f32],
}

fn blend_all(
    splats: &[Option<Splat>],
    colors: &[[f32; 3]],
    offsets: &[usize],
    entries: &mut [u32],
    cam: &SplatCamera,
) -> Planes {
    let (width, height) = (cam.width as usize, cam.height as usize);
    let tiles_x = cam.tiles_x as usize;
    let band_rows = TILE as usize;
    let mut planes = Planes {
        color: vec![0.0; width * height * 3],
        depth: vec![0.0; width * height],
        alpha: vec![0.0; width * height],
    };
    let mut bands = Vec::with_capacity(cam.tiles_y as usize);
    let mut rest = entries;
    let color_bands = planes.color.chunks_mut(band_rows * width * 3);
    let depth_bands = planes.depth.chunks_mut(band_rows * width);
    let alpha_bands = planes.alpha.chunks_mut(band_rows * width);
    for (tile_row, ((color, depth), alpha)) in
        color_bands.zip(depth_bands).zip(alpha_bands).enumerate()
    {
        let len = offsets[(tile_row + 1) * tiles_x] - offsets[tile_row * tiles_x];
        let (mine, tail) = std::mem::take(&mut rest).split_at_mut(len);
        rest = tail;
        bands.push(Band {
            tile_row,
            entries: mine,
            color,
            depth,
            alpha,
        });
    }
    crate::parallel::for_each(bands, |band| blend_band(band, splats, colors, offsets, cam));
    planes
}

fn blend_band(
    band: Band<'_>,
    splats: &[Option<Splat>],
    colors: &[[f32; 3]],
    offsets: &[usize],
    cam: &SplatCamera,
) {
    let (width, height) = (cam.width as usize, cam.height as usize);
    let tiles_x = cam.tiles_x as usize;
    let tile = TILE as usize;
    let first = band.tile_row * tiles_x;
    let base = offsets[first];
    let y0 = band.tile_row * tile;
    let rows = tile.min(height - y0);
    for tx in 0..tiles_x {
        let list = &mut band.entries[offsets[first + tx] - base..offsets[first + tx + 1] - base];
        // Stable: equal depths keep Gaussian order. Binned splats are always Some.
        list.sort_by_key(|&i| splats[i as usize].map_or(u32::MAX, |s| s.depth.to_bits()));
        // The tile's splats with their colours, contiguous for the per-pixel loops.
        let list: Vec<(Splat, [f32; 3])> = list
            .iter()
            .filter_map(|&i| splats[i as usize].map(|s| (s, colors[i as usize])))
            .collect();
        let x0 = tx * tile;
        for dy in 0..rows {
            for x in x0..(x0 + tile).min(width) {
                let pixel = blend_pixel(&list, x as f32, (y0 + dy) as f32, cam.background);
                let at = dy * width + x;
                band.color[3 * at..3 * at + 3].copy_from_slice(&pixel.0);
                band.depth[at] = pixel.1;
                band.alpha[at] = pixel.2;
            }
        }
    }
}

/// Front-to-back compositing of one pixel: (colour over the background, depth, alpha).
fn blend_pixel(list: &[(Splat, [f32; 3])], px: f32, py: f32, bg: [f32; 3]) -> ([f32; 3], f32, f32) {
    let mut transmittance = 1.0f32;
    let mut color = [0.0f32; 3];
    let (mut depth_sum, mut weight_sum) = (0.0f32, 0.0f32);
    for (s, c) in list {
        let Some(alpha) = projection::splat_alpha(s, px, py) else {
            continue;
        };
        let next = transmittance * (1.0 - alpha);
        if next < MIN_TRANSMITTANCE {
            break;
        }
        let weight = alpha * transmittance;
        for k in 0..3 {
            color[k] += c[k] * weight;
        }
        depth_sum += s.depth * weight;
        weight_sum += weight;
        transmittance = next;
    }
    let out = [0, 1, 2].map(|k| color[k] + transmittance * bg[k]);
    let depth = if weight_sum > 0.0 {
        depth_sum / weight_sum
    } else {
        0.0
    };
    (out, depth, 1.0 - transmittance)
}
