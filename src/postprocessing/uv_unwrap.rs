//! UV unwrapping, the reference's `parametrize_mesh` (research/trellis.md §4.4): xatlas with
//! its default options cuts the mesh into charts, flattens each and packs them into one atlas;
//! vertices on chart seams are duplicated, so the output has its own vertex list, each output
//! vertex naming the input vertex it came from (`xref`, the reference's `vmapping`).
//!
//! # Which xatlas
//!
//! The C++ is the xatlas that the `xatlas-rs` crate (0.1.3) vendors and compiles with `cc`.
//! That crate's Rust bindings cannot be used as they are: they were generated on Windows, so
//! every function is declared with its MSVC-mangled name and fails to link with GCC or Clang
//! (Itanium mangling), and they hide the atlas size (needed to normalise the UVs) and the
//! result of `AddMesh`. So this file declares the five xatlas functions itself, with the
//! platform's mangled names, over `#[repr(C)]` copies of the structs in the vendored
//! `xatlas.h`, and links the library `xatlas-rs` builds. Everything xatlas-specific stays in
//! the private [`xatlas`] module behind [`unwrap`], so another unwrapper (a newer xatlas, a
//! Rust one) can replace it without touching the callers.
//!
//! # Output convention
//!
//! UVs are normalised by the atlas size, as the Python binding does, so they lie in [0, 1].
//! They are used as glTF texture coordinates (u right, v *down* the image, texel row =
//! `v · height`) everywhere in recon: the baker writes the texture image with that layout
//! and the writers store the UVs unchanged in GLB (OBJ's `vt` flips v, see `export`). The
//! reference reads xatlas's v as pointing up and flips the image instead; the two layouts are
//! mirror images of each other in texture space and give the same textured surface.
//!
//! # Differences from the reference
//!
//! The Python binding the reference uses wraps a recent xatlas; xatlas-rs vendors one from
//! 2019, whose chart growing and parameterisation are superlinear in the chart size and, at
//! default options, 5–12× slower than the recent one (measured on 5k–51k-face surfaces). So
//! charts are capped at about 512 faces' worth of area on meshes above 1024 faces (see
//! `max_chart_area`): more, smaller charts than the reference gets (more seams), in a
//! fraction of the time. Everything else is xatlas's defaults, as the reference.
//!
//! xatlas computes and flattens the charts of separate meshes on its worker threads (one job
//! per connected group of faces; a single connected surface is one job). So a mesh above
//! [`PIECE_FACES`] faces is first cut into up to [`MAX_PIECES`] compact pieces (recursive
//! median splits of the face centroids, [`partition`]), each handed to xatlas as a mesh of
//! its own, and xatlas packs all their charts into one atlas. A piece's border is a seam, so
//! there are a few more charts than one mesh would get; the pieces depend only on the
//! geometry, never on the machine's core count, so the result is the same everywhere.
//!
//! Faces xatlas leaves out of every chart (it does so for faces it cannot parameterise, e.g.
//! zero-area ones) get UV (0, 0) at all corners: [`UvLayout::unmapped_faces`] counts them.

use crate::error::{Error, Result};

/// A mesh cut along seams, with per-vertex UVs.
#[derive(Debug, Clone, PartialEq)]
pub struct UvLayout {
    /// For each output vertex, the input vertex it copies.
    pub vertex_map: Vec<u32>,
    /// `[F, 3]` triangles over the output vertices, in the input's triangle order.
    pub indices: Vec<u32>,
    /// `[V_out, 2]` UVs in [0, 1], glTF convention (v down the image).
    pub uvs: Vec<f32>,
    /// The atlas size xatlas chose, in its texels (the UVs are divided by it).
    pub atlas_width: u32,
    pub atlas_height: u32,
    /// Charts in the atlas.
    pub charts: usize,
    /// Triangles xatlas put in no chart (their UVs are all zero).
    pub unmapped_faces: usize,
}

/// Unwraps a triangle mesh (positions `[V, 3]`, indices `[F, 3]`) into one UV atlas with
/// xatlas's default options. Fails on inconsistent arrays or non-finite positions, and when the
/// mesh has no triangles.
pub fn unwrap(positions: &[f32], indices: &[u32]) -> Result<UvLayout> {
    if !positions.len().is_multiple_of(3) || !indices.len().is_multiple_of(3) {
        return Err(Error::invalid_argument(format!(
            "uv unwrap: {} position values and {} indices, expected multiples of 3",
            positions.len(),
            indices.len()
        )));
    }
    let vertices = positions.len() / 3;
    if indices.is_empty() {
        return Err(Error::invalid_argument(
            "uv unwrap: the mesh has no triangles",
        ));
    }
    if let Some(i) = positions.iter().position(|v| !v.is_finite()) {
        return Err(Error::invalid_argument(format!(
            "uv unwrap: position value {i} is {}, expected finite",
            positions[i]
        )));
    }
    if let Some(&bad) = indices.iter().find(|&&i| i as usize >= vertices) {
        return Err(Error::invalid_argument(format!(
            "uv unwrap: index {bad} out of range for {vertices} vertices"
        )));
    }
    if u32::try_from(positions.len()).is_err() || u32::try_from(indices.len()).is_err() {
        return Err(Error::unsupported(
            "uv unwrap: the mesh is too large for xatlas's 32-bit counts",
        ));
    }
    let layout = xatlas::parametrize(positions, indices)?;
    check_layout(&layout, vertices, indices.len())?;
    Ok(layout)
}

/// Meshes up to this many faces go to xatlas whole; larger ones in pieces of about this size.
const PIECE_FACES: usize = 1024;
/// At most this many pieces (xatlas runs one job per piece on its worker threads).
const MAX_PIECES: usize = 16;

/// A part of the input mesh, re-indexed: `faces` and `vertices` name the input's faces and
/// vertices, `positions`/`indices` are the piece as a mesh of its own.
struct Piece {
    faces: Vec<u32>,
    vertices: Vec<u32>,
    positions: Vec<f32>,
    indices: Vec<u32>,
}

/// Cuts the mesh into compact pieces of about [`PIECE_FACES`] faces (at most [`MAX_PIECES`]):
/// the face set is split at the median of its centroids along the longest side of their
/// bounding box, recursively. Deterministic (ties keep the input order). One piece for small
/// meshes.
fn partition(positions: &[f32], indices: &[u32]) -> Vec<Piece> {
    let faces = indices.len() / 3;
    let mut count = 1;
    while count < MAX_PIECES && faces > count * PIECE_FACES {
        count *= 2;
    }
    let centroid = |f: u32| -> [f32; 3] {
        let corner =
            |k: usize, axis: usize| positions[3 * indices[3 * f as usize + k] as usize + axis];
        [0, 1, 2].map(|axis| (corner(0, axis) + corner(1, axis) + corner(2, axis)) / 3.0)
    };
    let centroids: Vec<[f32; 3]> = (0..faces as u32).map(centroid).collect();
    let mut groups = vec![(0..faces as u32).collect::<Vec<u32>>()];
    while groups.len() < count {
        groups = groups
            .into_iter()
            .flat_map(|group| split_at_median(group, &centroids))
            .collect();
    }
    groups
        .into_iter()
        .map(|mut faces| {
            faces.sort_unstable();
            piece(positions, indices, faces)
        })
        .collect()
}

/// The two halves of `group` at the median centroid along its bounding box's longest side.
fn split_at_median(mut group: Vec<u32>, centroids: &[[f32; 3]]) -> [Vec<u32>; 2] {
    let mut lo = [f32::INFINITY; 3];
    let mut hi = [f32::NEG_INFINITY; 3];
    for &f in &group {
        for axis in 0..3 {
            lo[axis] = lo[axis].min(centroids[f as usize][axis]);
            hi[axis] = hi[axis].max(centroids[f as usize][axis]);
        }
    }
    let axis = (0..3)
        .max_by(|&a, &b| (hi[a] - lo[a]).total_cmp(&(hi[b] - lo[b])))
        .unwrap_or(0);
    let half = group.len() / 2;
    if half > 0 {
        group.select_nth_unstable_by(half, |&a, &b| {
            centroids[a as usize][axis]
                .total_cmp(&centroids[b as usize][axis])
                .then(a.cmp(&b))
        });
    }
    let upper = group.split_off(half);
    [group, upper]
}

/// The faces `faces` of the mesh as a mesh of their own.
fn piece(positions: &[f32], indices: &[u32], faces: Vec<u32>) -> Piece {
    let mut local = std::collections::HashMap::new();
    let mut vertices = Vec::new();
    let mut piece_indices = Vec::with_capacity(3 * faces.len());
    for &f in &faces {
        for k in 0..3 {
            let v = indices[3 * f as usize + k];
            let next = vertices.len() as u32;
            let id = *local.entry(v).or_insert_with(|| {
                vertices.push(v);
                next
            });
            piece_indices.push(id);
        }
    }
    let piece_positions = vertices
        .iter()
        .flat_map(|&v| {
            positions[3 * v as usize..3 * v as usize + 3]
                .iter()
                .copied()
        })
        .collect();
    Piece {
        faces,
        vertices,
        positions: piece_positions,
        indices: piece_indices,
    }
}

/// Defends against a misbehaving unwrapper: every output index and `xref` in range, the
/// triangle count unchanged, UVs finite in [0, 1].
fn check_layout(layout: &UvLayout, vertices: usize, index_count: usize) -> Result<()> {
    let out_vertices = layout.vertex_map.len();
    let bad = |what: String| {
        Err(Error::internal(format!(
            "uv unwrap: xatlas returned {what}"
        )))
    };
    if layout.indices.len() != index_count {
        return bad(format!(
            "{} indices for {index_count} input indices",
            layout.indices.len()
        ));
    }
    if layout.uvs.len() != 2 * out_vertices {
        return bad(format!(
            "{} UV values for {out_vertices} vertices",
            layout.uvs.len()
        ));
    }
    if layout.indices.iter().any(|&i| i as usize >= out_vertices) {
        return bad("an index out of range".into());
    }
    if layout.vertex_map.iter().any(|&i| i as usize >= vertices) {
        return bad("a vertex mapping out of range".into());
    }
    if layout
        .uvs
        .iter()
        .any(|v| !(v.is_finite() && (0.0..=1.0).contains(v)))
    {
        return bad("a UV outside [0, 1]".into());
    }
    Ok(())
}

/// The xatlas backend: declarations matching the vendored `xatlas.h` of xatlas-rs 0.1.3.
mod xatlas {
    use std::collections::HashSet;
    use std::ffi::{c_int, c_void};
    use std::hash::{BuildHasherDefault, Hasher};
    use std::sync::Mutex;

    use super::{partition, Piece, UvLayout};
    use crate::error::{Error, Result};

    // Link the static library xatlas-rs compiles (its Rust items are not used, see above).
    use xatlas_rs as _;

    #[repr(C)]
    struct Chart {
        atlas_index: u32,
        index_array: *mut u32,
        index_count: u32,
    }

    #[repr(C)]
    struct Vertex {
        /// −1 when the vertex is in no chart.
        atlas_index: i32,
        uv: [f32; 2],
        xref: u32,
    }

    #[repr(C)]
    struct Mesh {
        chart_array: *mut Chart,
        chart_count: u32,
        index_array: *mut u32,
        index_count: u32,
        vertex_array: *mut Vertex,
        vertex_count: u32,
    }

    #[repr(C)]
    struct Atlas {
        width: u32,
        height: u32,
        atlas_count: u32,
        chart_count: u32,
        mesh_count: u32,
        meshes: *mut Mesh,
        utilization: *mut f32,
        texels_per_unit: f32,
    }

    /// `IndexFormat::UInt32`.
    const INDEX_FORMAT_UINT32: c_int = 1;
    /// `AddMeshError::Success`.
    const ADD_MESH_SUCCESS: c_int = 0;

    #[repr(C)]
    struct MeshDecl {
        vertex_count: u32,
        vertex_position_data: *const c_void,
        vertex_position_stride: u32,
        vertex_normal_data: *const c_void,
        vertex_normal_stride: u32,
        vertex_uv_data: *const c_void,
        vertex_uv_stride: u32,
        index_count: u32,
        index_data: *const c_void,
        index_offset: i32,
        index_format: c_int,
        face_ignore_data: *const bool,
    }

    /// `xatlas::ChartOptions` with the header's defaults (what the Python binding passes).
    #[repr(C)]
    struct ChartOptions {
        max_chart_area: f32,
        max_boundary_length: f32,
        proxy_fit_metric_weight: f32,
        roundness_metric_weight: f32,
        straightness_metric_weight: f32,
        normal_seam_metric_weight: f32,
        texture_seam_metric_weight: f32,
        max_threshold: f32,
        grow_face_count: u32,
        max_iterations: u32,
    }

    impl Default for ChartOptions {
        fn default() -> Self {
            Self {
                max_chart_area: 0.0,
                max_boundary_length: 0.0,
                proxy_fit_metric_weight: 2.0,
                roundness_metric_weight: 0.01,
                straightness_metric_weight: 6.0,
                normal_seam_metric_weight: 4.0,
                texture_seam_metric_weight: 0.5,
                max_threshold: 2.0,
                grow_face_count: 32,
                max_iterations: 1,
            }
        }
    }

    /// `xatlas::PackOptions` with the header's defaults: one atlas, about 1024² texels.
    #[repr(C)]
    struct PackOptions {
        attempts: c_int,
        texels_per_unit: f32,
        resolution: u32,
        max_chart_size: u32,
        block_align: bool,
        conservative: bool,
        padding: u32,
    }

    impl Default for PackOptions {
        fn default() -> Self {
            Self {
                attempts: 4096,
                texels_per_unit: 0.0,
                resolution: 0,
                max_chart_size: 1024,
                block_align: false,
                conservative: false,
                padding: 0,
            }
        }
    }

    type ParameterizeFunc = Option<unsafe extern "C" fn()>;
    type ProgressFunc = Option<unsafe extern "C" fn()>;
    type PrintFunc = Option<unsafe extern "C" fn()>;

    unsafe extern "C" {
        #[cfg_attr(not(target_env = "msvc"), link_name = "_ZN6xatlas6CreateEv")]
        #[cfg_attr(target_env = "msvc", link_name = "?Create@xatlas@@YAPEAUAtlas@1@XZ")]
        fn xatlas_create() -> *mut Atlas;

        #[cfg_attr(not(target_env = "msvc"), link_name = "_ZN6xatlas7DestroyEPNS_5AtlasE")]
        #[cfg_attr(target_env = "msvc", link_name = "?Destroy@xatlas@@YAXPEAUAtlas@1@@Z")]
        fn xatlas_destroy(atlas: *mut Atlas);

        #[cfg_attr(
            not(target_env = "msvc"),
            link_name = "_ZN6xatlas7AddMeshEPNS_5AtlasERKNS_8MeshDeclE"
        )]
        #[cfg_attr(
            target_env = "msvc",
            link_name = "?AddMesh@xatlas@@YA?AW4Enum@AddMeshError@1@PEAUAtlas@1@AEBUMeshDecl@1@@Z"
        )]
        fn xatlas_add_mesh(atlas: *mut Atlas, decl: *const MeshDecl) -> c_int;

        #[cfg_attr(
            not(target_env = "msvc"),
            link_name = "_ZN6xatlas8GenerateEPNS_5AtlasENS_12ChartOptionsEPFvPKfPfjPKjjbENS_11PackOptionsEPFvNS_16ProgressCategory4EnumEiPvESD_"
        )]
        #[cfg_attr(
            target_env = "msvc",
            link_name = "?Generate@xatlas@@YAXPEAUAtlas@1@UChartOptions@1@P6AXPEBMPEAMIPEBII_N@ZUPackOptions@1@P6AXW4Enum@ProgressCategory@1@HPEAX@Z9@Z"
        )]
        fn xatlas_generate(
            atlas: *mut Atlas,
            chart_options: ChartOptions,
            parameterize: ParameterizeFunc,
            pack_options: PackOptions,
            progress: ProgressFunc,
            user_data: *mut c_void,
        );

        #[cfg_attr(not(target_env = "msvc"), link_name = "_ZN6xatlas8SetPrintEPFiPKczEb")]
        #[cfg_attr(target_env = "msvc", link_name = "?SetPrint@xatlas@@YAXP6AHPEBDZZ_N@Z")]
        fn xatlas_set_print(print: PrintFunc, verbose: bool);

        #[cfg_attr(
            not(target_env = "msvc"),
            link_name = "_ZN6xatlas10SetReallocEPFPvS0_mE"
        )]
        #[cfg_attr(
            target_env = "msvc",
            link_name = "?SetRealloc@xatlas@@YAXP6APEAXPEAX_K@Z@Z"
        )]
        fn xatlas_set_realloc(realloc: ReallocFunc);
    }

    type ReallocFunc = Option<unsafe extern "C" fn(*mut c_void, usize) -> *mut c_void>;

    /// The xatlas this crate vendors (2019) leaks a few kilobytes per atlas (arrays its
    /// `Mesh` and `BitImage` destructors do not free; LeakSanitizer in the C ABI tests). Its
    /// allocations therefore go through [`tracked_realloc`], which records every live block,
    /// and whatever is still live after `Destroy` is freed then. The hook is process-wide, so
    /// [`SESSION`] serialises atlases: one unwrap at a time per process (each takes seconds
    /// of CPU; concurrent exports wait for each other here).
    static SESSION: Mutex<()> = Mutex::new(());

    /// The live blocks, in shards by address: xatlas allocates from its worker threads, and
    /// one lock for every allocation made the threads wait on each other (4× slower chart
    /// parameterisation on 16 cores).
    static LIVE: [Mutex<Option<Blocks>>; SHARDS] = [const { Mutex::new(None) }; SHARDS];
    const SHARDS: usize = 64;
    type Blocks = HashSet<usize, BuildHasherDefault<AddressHasher>>;

    /// Addresses hash to themselves, mixed (SipHash would cost more than the allocation).
    #[derive(Default)]
    struct AddressHasher(u64);

    impl Hasher for AddressHasher {
        fn finish(&self) -> u64 {
            self.0
        }
        fn write(&mut self, bytes: &[u8]) {
            for &b in bytes {
                self.0 = (self.0 ^ u64::from(b)).wrapping_mul(0x0100_0000_01B3);
            }
        }
        fn write_usize(&mut self, address: usize) {
            self.0 = (address as u64 >> 4).wrapping_mul(0x9E37_79B9_7F4A_7C15);
        }
    }

    /// The shard that records `address`, locked.
    fn shard(address: usize) -> std::sync::MutexGuard<'static, Option<Blocks>> {
        let index = ((address as u64 >> 4).wrapping_mul(0x9E37_79B9_7F4A_7C15) >> 58) as usize;
        LIVE[index % SHARDS]
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// xatlas's realloc (`realloc(p, 0)` frees), recording the blocks it hands out. The old
    /// block's shard stays locked until its address is forgotten, so a thread that is handed
    /// the same address meanwhile cannot record it first; the new block is recorded after
    /// that lock is released (two locks are never held at once).
    unsafe extern "C" fn tracked_realloc(ptr: *mut c_void, size: usize) -> *mut c_void {
        let block = if ptr.is_null() {
            if size == 0 {
                return std::ptr::null_mut();
            }
            // SAFETY: a fresh allocation.
            unsafe { libc::malloc(size) }
        } else {
            let mut old = shard(ptr as usize);
            let set = old.get_or_insert_with(Blocks::default);
            if size == 0 {
                set.remove(&(ptr as usize));
                // SAFETY: `ptr` came from this function and is freed once.
                unsafe { libc::free(ptr) };
                return std::ptr::null_mut();
            }
            // SAFETY: `ptr` is a live block from this function.
            let block = unsafe { libc::realloc(ptr, size) };
            if block.is_null() || block == ptr {
                // Failed (the old block stays valid) or grown in place: nothing changes.
                return block;
            }
            set.remove(&(ptr as usize));
            block
        };
        if !block.is_null() {
            shard(block as usize)
                .get_or_insert_with(Blocks::default)
                .insert(block as usize);
        }
        block
    }

    /// Frees the blocks xatlas left allocated after its atlas was destroyed.
    fn free_leftovers() {
        for shard in &LIVE {
            let mut guard = shard
                .lock()
                .unwrap_or_else(|poisoned| poisoned.into_inner());
            if let Some(set) = guard.as_mut() {
                for block in set.drain() {
                    // SAFETY: every recorded block is live and owned by no one after `Destroy`.
                    unsafe { libc::free(block as *mut c_void) };
                }
            }
        }
    }

    /// Charts grow to at most about [`FACES_PER_CHART`] faces' worth of area (the mesh's
    /// area × FACES_PER_CHART / faces); smaller meshes are unlimited, as xatlas's default.
    /// This xatlas's chart growing and its LSCM solve are superlinear in the chart size: on a
    /// 51k-face surface the default (unlimited, 21 charts) took 68 s, this cap (276 charts)
    /// 8 s, on a loaded 2-core machine.
    fn max_chart_area(positions: &[f32], indices: &[u32]) -> f32 {
        let faces = indices.len() / 3;
        if faces <= 2 * FACES_PER_CHART {
            return 0.0;
        }
        let p = |i: u32| -> [f64; 3] {
            let i = 3 * i as usize;
            [positions[i], positions[i + 1], positions[i + 2]].map(f64::from)
        };
        let area: f64 = indices
            .chunks_exact(3)
            .map(|t| {
                let (a, b, c) = (p(t[0]), p(t[1]), p(t[2]));
                let (u, v) = (
                    [b[0] - a[0], b[1] - a[1], b[2] - a[2]],
                    [c[0] - a[0], c[1] - a[1], c[2] - a[2]],
                );
                let n = [
                    u[1] * v[2] - u[2] * v[1],
                    u[2] * v[0] - u[0] * v[2],
                    u[0] * v[1] - u[1] * v[0],
                ];
                0.5 * (n[0] * n[0] + n[1] * n[1] + n[2] * n[2]).sqrt()
            })
            .sum();
        (area * FACES_PER_CHART as f64 / faces as f64) as f32
    }

    /// See [`max_chart_area`].
    const FACES_PER_CHART: usize = 512;

    /// An atlas that is destroyed when dropped.
    struct Handle(*mut Atlas);

    impl Drop for Handle {
        fn drop(&mut self) {
            if !self.0.is_null() {
                // SAFETY: the pointer came from `xatlas_create` and is destroyed once.
                unsafe { xatlas_destroy(self.0) }
            }
            free_leftovers();
        }
    }

    /// Runs xatlas on a checked mesh (indices in range, counts within u32).
    pub(super) fn parametrize(positions: &[f32], indices: &[u32]) -> Result<UvLayout> {
        let _session = SESSION
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        // SAFETY: the hook is set before xatlas allocates anything for this atlas, and only
        // while `SESSION` is held.
        unsafe { xatlas_set_realloc(Some(tracked_realloc)) };
        // SAFETY: a null print function silences xatlas's warnings, which it otherwise
        // printf's to the host program's stdout; xatlas checks it before every print.
        unsafe { xatlas_set_print(None, false) };
        // SAFETY: no arguments; a null result is checked.
        let atlas = Handle(unsafe { xatlas_create() });
        if atlas.0.is_null() {
            return Err(Error::internal("uv unwrap: xatlas::Create failed"));
        }
        let pieces = partition(positions, indices);
        for piece in &pieces {
            add_mesh(&atlas, piece)?;
        }
        let chart_options = ChartOptions {
            max_chart_area: max_chart_area(positions, indices),
            ..ChartOptions::default()
        };
        // SAFETY: a valid atlas holding one mesh; no callbacks.
        unsafe {
            xatlas_generate(
                atlas.0,
                chart_options,
                None,
                PackOptions::default(),
                None,
                std::ptr::null_mut(),
            )
        };
        // SAFETY: after Generate the atlas owns `mesh_count` output meshes, each with
        // `vertex_count` vertices, `index_count` indices and `chart_count` charts, valid until
        // the atlas is destroyed (at the end of this function, after copying them out).
        unsafe { read_output(&*atlas.0, &pieces, indices.len() / 3) }
    }

    /// Hands one piece to xatlas.
    fn add_mesh(atlas: &Handle, piece: &Piece) -> Result<()> {
        let decl = MeshDecl {
            vertex_count: (piece.positions.len() / 3) as u32,
            vertex_position_data: piece.positions.as_ptr().cast(),
            vertex_position_stride: 12,
            vertex_normal_data: std::ptr::null(),
            vertex_normal_stride: 0,
            vertex_uv_data: std::ptr::null(),
            vertex_uv_stride: 0,
            index_count: piece.indices.len() as u32,
            index_data: piece.indices.as_ptr().cast(),
            index_offset: 0,
            index_format: INDEX_FORMAT_UINT32,
            face_ignore_data: std::ptr::null(),
        };
        // SAFETY: `decl` points into vectors that outlive the call; xatlas copies the data.
        let status = unsafe { xatlas_add_mesh(atlas.0, &decl) };
        if status != ADD_MESH_SUCCESS {
            return Err(Error::invalid_argument(format!(
                "uv unwrap: xatlas refused the mesh (AddMesh error {status})"
            )));
        }
        Ok(())
    }

    /// Gathers xatlas's output meshes (one per piece) back into one layout over the input's
    /// vertices and faces (face `f` of the input is face `f` of the output).
    ///
    /// # Safety
    /// `atlas` must be a generated atlas whose output meshes are valid (see `parametrize`).
    unsafe fn read_output(atlas: &Atlas, pieces: &[Piece], faces: usize) -> Result<UvLayout> {
        if atlas.mesh_count as usize != pieces.len() || atlas.meshes.is_null() {
            return Err(Error::internal(format!(
                "uv unwrap: xatlas produced {} meshes for {} inputs",
                atlas.mesh_count,
                pieces.len()
            )));
        }
        // SAFETY: `meshes` holds `mesh_count` meshes (checked above) while the atlas lives.
        let meshes = unsafe { std::slice::from_raw_parts(atlas.meshes, pieces.len()) };
        let (width, height) = (atlas.width.max(1), atlas.height.max(1));
        let mut layout = UvLayout {
            vertex_map: Vec::new(),
            indices: vec![0; 3 * faces],
            uvs: Vec::new(),
            atlas_width: width,
            atlas_height: height,
            charts: 0,
            unmapped_faces: 0,
        };
        for (mesh, piece) in meshes.iter().zip(pieces) {
            // SAFETY: as for `meshes`.
            let part = unsafe { read_mesh(mesh, width, height) }?;
            if part.indices.len() != piece.indices.len()
                || part
                    .vertex_map
                    .iter()
                    .any(|&v| v as usize >= piece.vertices.len())
            {
                return Err(Error::internal(
                    "uv unwrap: xatlas's output does not match its input mesh",
                ));
            }
            let base = layout.vertex_map.len() as u32;
            layout
                .vertex_map
                .extend(part.vertex_map.iter().map(|&v| piece.vertices[v as usize]));
            layout.uvs.extend_from_slice(&part.uvs);
            for (k, &face) in piece.faces.iter().enumerate() {
                let (from, to) = (3 * k, 3 * face as usize);
                for corner in 0..3 {
                    layout.indices[to + corner] = base + part.indices[from + corner];
                }
            }
            layout.charts += part.charts;
            layout.unmapped_faces += part.unmapped_faces;
        }
        Ok(layout)
    }

    /// One output mesh of the atlas, over its own input mesh's vertices.
    ///
    /// # Safety
    /// `mesh` must be an output mesh of a generated atlas that is still alive.
    unsafe fn read_mesh(mesh: &Mesh, width: u32, height: u32) -> Result<UvLayout> {
        let slice = |ptr: *const u8, len: u32| ptr.is_null() && len > 0;
        if slice(mesh.vertex_array.cast(), mesh.vertex_count)
            || slice(mesh.index_array.cast(), mesh.index_count)
        {
            return Err(Error::internal("uv unwrap: xatlas returned null arrays"));
        }
        let vertices: &[Vertex] = if mesh.vertex_count == 0 {
            &[]
        } else {
            unsafe { std::slice::from_raw_parts(mesh.vertex_array, mesh.vertex_count as usize) }
        };
        let indices: &[u32] = if mesh.index_count == 0 {
            &[]
        } else {
            unsafe { std::slice::from_raw_parts(mesh.index_array, mesh.index_count as usize) }
        };
        let mut uvs = Vec::with_capacity(2 * vertices.len());
        for v in vertices {
            let (u, w) = if v.atlas_index < 0 {
                (0.0, 0.0)
            } else {
                (v.uv[0] / width as f32, v.uv[1] / height as f32)
            };
            uvs.push(u.clamp(0.0, 1.0));
            uvs.push(w.clamp(0.0, 1.0));
        }
        let unmapped_faces = indices
            .chunks_exact(3)
            .filter(|t| {
                t.iter().any(|&i| {
                    vertices
                        .get(i as usize)
                        .is_none_or(|vertex| vertex.atlas_index < 0)
                })
            })
            .count();
        Ok(UvLayout {
            vertex_map: vertices.iter().map(|v| v.xref).collect(),
            indices: indices.to_vec(),
            uvs,
            atlas_width: width,
            atlas_height: height,
            charts: mesh.chart_count as usize,
            unmapped_faces,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A unit cube as 8 shared corners and 12 triangles.
    fn cube() -> (Vec<f32>, Vec<u32>) {
        let mut positions = Vec::new();
        for c in 0..8u32 {
            positions.extend([c & 1, (c >> 1) & 1, (c >> 2) & 1].map(|b| b as f32));
        }
        let quads: [[u32; 4]; 6] = [
            [0, 2, 3, 1],
            [4, 5, 7, 6],
            [0, 1, 5, 4],
            [2, 6, 7, 3],
            [0, 4, 6, 2],
            [1, 3, 7, 5],
        ];
        let indices = quads
            .iter()
            .flat_map(|q| [q[0], q[1], q[2], q[0], q[2], q[3]])
            .collect();
        (positions, indices)
    }

    #[test]
    fn cube_unwraps_into_the_unit_square() {
        let (positions, indices) = cube();
        let layout = unwrap(&positions, &indices).unwrap();
        assert_eq!(layout.indices.len(), indices.len());
        assert!(layout.vertex_map.len() >= 8);
        assert!(layout.charts >= 1);
        assert_eq!(layout.unmapped_faces, 0);
        // Every output triangle copies its input triangle's corners.
        for (t_out, t_in) in layout.indices.chunks(3).zip(indices.chunks(3)) {
            for k in 0..3 {
                assert_eq!(layout.vertex_map[t_out[k] as usize], t_in[k]);
            }
        }
    }

    /// A latitude/longitude sphere: `rings × segments` quads as triangles (poles included as
    /// degenerate-free fans), shared vertices.
    fn sphere(rings: u32, segments: u32) -> (Vec<f32>, Vec<u32>) {
        let mut positions = vec![0.0, 0.0, 1.0];
        for r in 1..rings {
            let theta = std::f32::consts::PI * r as f32 / rings as f32;
            for s in 0..segments {
                let phi = std::f32::consts::TAU * s as f32 / segments as f32;
                positions.extend([
                    theta.sin() * phi.cos(),
                    theta.sin() * phi.sin(),
                    theta.cos(),
                ]);
            }
        }
        positions.extend([0.0, 0.0, -1.0]);
        let ring = |r: u32, s: u32| 1 + (r - 1) * segments + s % segments;
        let south = 1 + (rings - 1) * segments;
        let mut indices = Vec::new();
        for s in 0..segments {
            indices.extend([0, ring(1, s), ring(1, s + 1)]);
            indices.extend([south, ring(rings - 1, s + 1), ring(rings - 1, s)]);
            for r in 1..rings - 1 {
                let (a, b, c, d) = (
                    ring(r, s),
                    ring(r, s + 1),
                    ring(r + 1, s),
                    ring(r + 1, s + 1),
                );
                indices.extend([a, c, d, a, d, b]);
            }
        }
        (positions, indices)
    }

    #[test]
    fn large_meshes_are_cut_into_balanced_pieces_covering_every_face_once() {
        let (positions, indices) = sphere(48, 96);
        let faces = indices.len() / 3;
        let pieces = partition(&positions, &indices);
        // 9024 faces: more than 8 × 1024, so the most pieces.
        assert_eq!(pieces.len(), MAX_PIECES, "{faces} faces");
        let mut seen = vec![0u32; faces];
        for piece in &pieces {
            let size = piece.faces.len();
            assert!(
                size.abs_diff(faces / pieces.len()) <= 1,
                "piece of {size} faces"
            );
            for (k, &f) in piece.faces.iter().enumerate() {
                seen[f as usize] += 1;
                for corner in 0..3 {
                    let local = piece.indices[3 * k + corner] as usize;
                    let original = piece.vertices[local];
                    assert_eq!(original, indices[3 * f as usize + corner]);
                    assert_eq!(
                        &piece.positions[3 * local..3 * local + 3],
                        &positions[3 * original as usize..3 * original as usize + 3]
                    );
                }
            }
        }
        assert!(seen.iter().all(|&n| n == 1));
        // Small meshes stay whole.
        let (positions, indices) = cube();
        assert_eq!(partition(&positions, &indices).len(), 1);
    }

    #[test]
    fn a_mesh_unwrapped_in_pieces_keeps_its_faces_in_order() {
        let (positions, indices) = sphere(32, 64);
        let layout = unwrap(&positions, &indices).unwrap();
        assert_eq!(layout.indices.len(), indices.len());
        assert_eq!(layout.unmapped_faces, 0);
        assert!(layout.charts >= 4, "{} charts", layout.charts);
        for (t_out, t_in) in layout.indices.chunks(3).zip(indices.chunks(3)) {
            for k in 0..3 {
                assert_eq!(layout.vertex_map[t_out[k] as usize], t_in[k]);
            }
        }
        assert!(layout.uvs.iter().all(|v| (0.0..=1.0).contains(v)));
    }

    #[test]
    fn bad_inputs_are_errors() {
        let (positions, indices) = cube();
        assert!(unwrap(&positions, &[]).is_err());
        assert!(unwrap(&positions, &[0, 1, 99]).is_err());
        assert!(unwrap(&positions[..5], &indices).is_err());
        let mut nan = positions.clone();
        nan[4] = f32::NAN;
        assert!(unwrap(&nan, &indices).is_err());
    }
}
