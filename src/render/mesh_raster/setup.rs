//! The per-triangle and per-pixel arithmetic both rasteriser paths share, written once here
//! and mirrored operation by operation in `kernels/mesh_raster.cu`.
//!
//! Every product and sum is evaluated in the order written, in f32, without fused
//! multiply-adds (Rust never contracts; the kernel uses `__fmul_rn` / `__fadd_rn`), so the
//! CPU and CUDA paths compute bit-identical edge functions, barycentrics and depths: they
//! cover the same pixels and pick the same triangle everywhere.
//!
//! # The method
//!
//! Each vertex goes to camera space (OpenCV: x right, y down, z forward) and then to 2D
//! homogeneous pixel coordinates `h = (fx·x + cx·z, fy·y + cy·z, z)`. For the 3×3 matrix of
//! the three `h` as columns, the rows of its adjugate `r_i = h_j × h_k` give three functions
//! `e_i(px, py) = r_i · (px, py, 1)`, linear in the pixel position, that are zero on the edge
//! opposite vertex `i` and whose normalised values `e_i / Σe` are the *perspective-correct*
//! barycentrics (Olano & Greer's homogeneous rasterisation). The sign of the determinant
//! `det = h_0 · r_0` orients them so that a pixel is covered when all three are ≥ 0 and their
//! sum is > 0; a point of the triangle's plane behind the camera has a negative sum and is
//! rejected, so triangles crossing the camera plane need no special case. Depth is the
//! camera-space z interpolated with those barycentrics (exact for a planar triangle).

/// The camera of one rasterisation, in pixels (the kernel reads the same `repr(C)` layout).
#[repr(C)]
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) struct Camera {
    /// World→camera rotation, row-major.
    pub rotation: [f32; 9],
    pub translation: [f32; 3],
    /// Pixel intrinsics for this image size.
    pub fx: f32,
    pub fy: f32,
    pub cx: f32,
    pub cy: f32,
    /// Visible camera-space depth range.
    pub near: f32,
    pub far: f32,
    pub width: i32,
    pub height: i32,
}

/// What rasterising one triangle needs, computed once per triangle and view.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) struct TriangleSetup {
    /// Edge functions `(a, b, c)` per vertex: `e_i = (a·px + b·py) + c`, oriented so that the
    /// inside is positive.
    pub edges: [[f32; 3]; 3],
    /// Camera-space depth of each vertex.
    pub z: [f32; 3],
    /// Inclusive pixel bounds `[x0, y0, x1, y1]`, conservative; empty (`x0 > x1`) when the
    /// triangle cannot cover any pixel.
    pub bbox: [i32; 4],
}

/// Values per triangle in the kernels' setup buffer: `[a0 b0 c0 a1 b1 c1 a2 b2 c2 z0 z1 z2]`.
pub(crate) const SETUP_FLOATS: usize = 12;

/// The depth-buffer value of an empty pixel (every real key is smaller).
pub(crate) const EMPTY_KEY: u64 = u64::MAX;

/// World point → camera space, `((r0·x + r1·y) + r2·z) + t` per row.
pub(crate) fn to_camera(cam: &Camera, p: [f32; 3]) -> [f32; 3] {
    let r = &cam.rotation;
    [0, 1, 2]
        .map(|i| r[3 * i] * p[0] + r[3 * i + 1] * p[1] + r[3 * i + 2] * p[2] + cam.translation[i])
}

/// The setup of the triangle with world-space corners `p`, or `None` when it covers nothing:
/// degenerate in projection (zero determinant, including triangles seen edge-on and ones
/// whose plane contains the camera centre), non-finite, or entirely outside the depth range
/// or the image.
pub(crate) fn setup_triangle(cam: &Camera, p: [[f32; 3]; 3]) -> Option<TriangleSetup> {
    let c = p.map(|v| to_camera(cam, v));
    let h = c.map(|v| {
        [
            cam.fx * v[0] + cam.cx * v[2],
            cam.fy * v[1] + cam.cy * v[2],
            v[2],
        ]
    });
    let mut edges = [[0.0f32; 3]; 3];
    for (i, edge) in edges.iter_mut().enumerate() {
        let (j, k) = ((i + 1) % 3, (i + 2) % 3);
        let (hj, hk) = (h[j], h[k]);
        *edge = [
            hj[1] * hk[2] - hj[2] * hk[1],
            hj[2] * hk[0] - hj[0] * hk[2],
            hj[0] * hk[1] - hj[1] * hk[0],
        ];
    }
    let det = h[0][0] * edges[0][0] + h[0][1] * edges[0][1] + h[0][2] * edges[0][2];
    if !det.is_finite() || det == 0.0 {
        return None;
    }
    if det < 0.0 {
        // Negation is exact, so two triangles sharing an edge get exactly opposite functions
        // on it and the fill rule gives each pixel on the edge to exactly one of them.
        for edge in &mut edges {
            *edge = edge.map(|v| -v);
        }
    }
    let bbox = pixel_bounds(cam, c)?;
    Some(TriangleSetup {
        edges,
        z: [c[0][2], c[1][2], c[2][2]],
        bbox,
    })
}

/// Conservative inclusive pixel bounds of the part of a camera-space triangle in front of
/// the near plane: the triangle is clipped against `z = near` (at most one extra corner),
/// the corners projected, and the box grown by a pixel so that rounding in the clipping
/// cannot lose a pixel (coverage itself is decided per pixel, exactly).
fn pixel_bounds(cam: &Camera, c: [[f32; 3]; 3]) -> Option<[i32; 4]> {
    let (near, far) = (cam.near, cam.far);
    if c.iter().all(|v| v[2] < near) || c.iter().all(|v| v[2] > far) {
        return None;
    }
    let mut corners = [[0.0f32; 3]; 4];
    let mut count = 0;
    for i in 0..3 {
        let (p, q) = (c[i], c[(i + 1) % 3]);
        if p[2] >= near {
            corners[count] = p;
            count += 1;
        }
        if (p[2] >= near) != (q[2] >= near) {
            let t = (near - p[2]) / (q[2] - p[2]);
            corners[count] = [p[0] + t * (q[0] - p[0]), p[1] + t * (q[1] - p[1]), near];
            count += 1;
        }
    }
    let (mut lo, mut hi) = ([f32::INFINITY; 2], [f32::NEG_INFINITY; 2]);
    for v in &corners[..count] {
        let s = [cam.fx * v[0] / v[2] + cam.cx, cam.fy * v[1] / v[2] + cam.cy];
        for a in 0..2 {
            lo[a] = lo[a].min(s[a]);
            hi[a] = hi[a].max(s[a]);
        }
    }
    let size = [cam.width, cam.height];
    let mut bbox = [0i32; 4];
    for a in 0..2 {
        let limit = size[a] as f32;
        // Pixel i is sampled at i + 0.5. Clamping in float first keeps huge or non-finite
        // projections (corners right at the near plane) from overflowing the conversion.
        let first = clamp_nan_low((lo[a] - 0.5).floor() - 1.0, 0.0, limit);
        let last = clamp_nan_high((hi[a] - 0.5).ceil() + 1.0, -1.0, limit - 1.0);
        bbox[a] = first as i32;
        bbox[a + 2] = last as i32;
    }
    (bbox[0] <= bbox[2] && bbox[1] <= bbox[3]).then_some(bbox)
}

/// `v` clamped to `[lo, hi]`, NaN → `lo` (an unknown lower bound covers everything).
fn clamp_nan_low(v: f32, lo: f32, hi: f32) -> f32 {
    if v.is_nan() {
        lo
    } else {
        v.clamp(lo, hi)
    }
}

/// `v` clamped to `[lo, hi]`, NaN → `hi`.
fn clamp_nan_high(v: f32, lo: f32, hi: f32) -> f32 {
    if v.is_nan() {
        hi
    } else {
        v.clamp(lo, hi)
    }
}

/// The three edge functions at the centre of pixel `(x, y)`.
pub(crate) fn edge_values(s: &TriangleSetup, x: i32, y: i32) -> [f32; 3] {
    let (px, py) = (x as f32 + 0.5, y as f32 + 0.5);
    s.edges.map(|[a, b, c]| a * px + b * py + c)
}

/// The top-left fill rule (pixel centres exactly on an edge belong to the triangle on the
/// edge's left or top side, image y pointing down): an edge owns its points when its inward
/// normal `(a, b)` points right, or straight down.
fn owns_edge(a: f32, b: f32) -> bool {
    a > 0.0 || (a == 0.0 && b > 0.0)
}

/// Perspective-correct barycentrics and camera-space depth when the pixel centre `(x, y)` is
/// covered and within the depth range.
pub(crate) fn cover(cam: &Camera, s: &TriangleSetup, x: i32, y: i32) -> Option<([f32; 3], f32)> {
    let e = edge_values(s, x, y);
    let inside = |(v, [a, b, _]): (&f32, &[f32; 3])| *v > 0.0 || (*v == 0.0 && owns_edge(*a, *b));
    if !e.iter().zip(&s.edges).all(inside) {
        return None;
    }
    let sum = e[0] + e[1] + e[2];
    if !(sum > 0.0 && sum.is_finite()) {
        return None;
    }
    let w = e.map(|v| v / sum);
    let z = w[0] * s.z[0] + w[1] * s.z[1] + w[2] * s.z[2];
    (z >= cam.near && z <= cam.far).then_some((w, z))
}

/// The depth-test key of a covered pixel: nearer wins, then the lower triangle id. A positive
/// f32's bits order like its value, so one integer minimum does both.
pub(crate) fn depth_key(z: f32, triangle: u32) -> u64 {
    (u64::from(z.to_bits()) << 32) | u64::from(triangle)
}

/// The resolved values of one covered pixel: barycentrics of vertices 1 and 2 and their
/// pixel derivatives `[du/dx, du/dy, dv/dx, dv/dy]`.
///
/// With `w_i = e_i / S` and `S = Σe`: `dw_i/dx = (a_i − w_i·Σa) / S` (and likewise in y with
/// `b`): the exact derivatives of the perspective-correct barycentrics at the pixel centre.
pub(crate) fn resolve(s: &TriangleSetup, x: i32, y: i32) -> ([f32; 2], [f32; 4]) {
    let e = edge_values(s, x, y);
    let sum = e[0] + e[1] + e[2];
    let w = e.map(|v| v / sum);
    let da = s.edges[0][0] + s.edges[1][0] + s.edges[2][0];
    let db = s.edges[0][1] + s.edges[1][1] + s.edges[2][1];
    let dx = |i: usize| (s.edges[i][0] - w[i] * da) / sum;
    let dy = |i: usize| (s.edges[i][1] - w[i] * db) / sum;
    ([w[1], w[2]], [dx(1), dy(1), dx(2), dy(2)])
}
