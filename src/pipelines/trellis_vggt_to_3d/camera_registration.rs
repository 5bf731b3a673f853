//! Puts VGGT's cameras into the generated asset's frame.
//!
//! VGGT's camera head returns one camera per input view in *its* world frame: the first view's
//! camera, with VGGT's normalised (non-metric) scale. Callers want the cameras in the frame of
//! the generated asset instead, so that the asset rendered from camera k lines up with view k.
//! ReconViaGen's `app_fine.py` gets there with renders of the coarse Gaussians, MASt3R matches,
//! PnP and Open3D RANSAC + ICP (research/reconviagen.md §2.2). recon has neither a Gaussian
//! renderer nor MASt3R, so it registers geometry directly:
//!
//! 1. [`observed_points`]: VGGT's point head gives a point map per view in VGGT's frame. The
//!    reference's mask (alpha > 0.8, confidence above its median and above 1e-5, radius below
//!    the 98th percentile) keeps the object's visible surface; a strided subsample and a
//!    statistical outlier filter (30 neighbours, 3σ, as the reference) clean it.
//! 2. [`register`]: the similarity `x_asset = s·R·x_vggt + t` that lays those points onto the
//!    asset's surface points (Gaussian centres or mesh vertices). The views see only part of the
//!    surface, so the fit is one-sided (observed → asset) and trimmed; the initial rotation is
//!    unknown, so a global search over a few hundred rotations precedes ICP with scale.
//! 3. [`camera_in_frame`]: moves each camera with that similarity.
//!
//! # Conventions
//!
//! * [`Similarity`] maps VGGT's frame to the asset's: `x_asset = scale · rotation · x_vggt +
//!   translation`, `rotation` row-major and proper (det +1).
//! * A [`Camera`]'s `extrinsic` is the 3×4 row-major `[R | t]` that maps world points to camera
//!   points (camera-from-world), OpenCV axes: x right, y down, z forward (into the scene);
//!   `intrinsic` is the 3×3 pinhole matrix in pixels of a `width × height` image.
//! * After [`camera_in_frame`], "world" is the asset's native frame: the frame of the pipeline
//!   result's Gaussian positions and mesh vertex arrays (TRELLIS's object frame, z up, object in
//!   `[-0.5, 0.5]³`), before any export-time axis change (the GLB writer's z-up → y-up). Camera
//!   coordinates are scaled by `s`, so depths are in asset units and the projection is unchanged.
//!
//! Everything runs in libtorch on the points' device (CUDA when they are there), in float32
//! for point work and float64 on the host for the 3×3 solves. No global RNG is touched:
//! subsets are strided and the rotation candidates are a fixed spiral, so a run is
//! deterministic.

use std::f64::consts::PI;

use tch::{Device, Kind, Tensor};

use crate::error::{Error, Result};
use crate::pipeline::Camera;

/// The reference's alpha cut for object pixels (`alphas > 0.8`).
const ALPHA_THRESHOLD: f64 = 0.8;
/// The reference keeps confidences above the median of all views' confidences.
const CONF_PERCENTILE: f64 = 50.0;
/// ... and above this floor (VGGT's "no geometry" value).
const CONF_FLOOR: f64 = 1e-5;
/// The reference drops points farther from the masked centroid than this radius percentile.
const RADIUS_PERCENTILE: f64 = 98.0;
/// Statistical outlier removal as the reference's Open3D call: neighbours and σ ratio.
const OUTLIER_NEIGHBOURS: i64 = 30;
const OUTLIER_STD_RATIO: f64 = 3.0;
/// The normalisation radius ignores the farthest 5% of points, so outliers barely move it.
const RADIUS_KEEP: f64 = 0.95;
/// Distance blocks are at most this many elements (32 MiB of float32), whatever the sizes:
/// the pipeline runs the registration beside the mesh decoder, whose extraction is the decode
/// stage's memory peak, and the outlier filter beside the sparse-structure sampling. With
/// 128 MiB blocks the peak of a TRELLIS-VGGT run grew by 0.7 GiB; the 4× more launches of
/// smaller blocks are host work that the GPU's other work hides.
const DISTANCE_BLOCK: i64 = 1 << 23;
/// ICP stops early once no parameter moves by more than this (in the normalised clouds' units,
/// where both have unit radius).
const CONVERGED: f64 = 1e-5;
/// Neighbours for the asset's PCA normals (point-to-plane stages).
const NORMAL_NEIGHBOURS: i64 = 10;
/// Largest rotation (radians) and relative scale change of one point-to-plane step.
const MAX_STEP_ANGLE: f64 = 0.2;
const MAX_STEP_SCALE: f64 = 0.2;
/// Fewer points than this cannot fix a similarity robustly.
const MIN_POINTS: i64 = 4;

/// `x ↦ scale · rotation · x + translation`, the map from VGGT's frame to the asset's.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Similarity {
    pub scale: f64,
    /// Row-major proper rotation.
    pub rotation: [[f64; 3]; 3],
    pub translation: [f64; 3],
}

impl Default for Similarity {
    fn default() -> Self {
        Self::identity()
    }
}

impl Similarity {
    pub fn identity() -> Self {
        Self {
            scale: 1.0,
            rotation: [[1.0, 0.0, 0.0], [0.0, 1.0, 0.0], [0.0, 0.0, 1.0]],
            translation: [0.0; 3],
        }
    }

    pub fn apply(&self, p: [f64; 3]) -> [f64; 3] {
        let r = mat_vec(&self.rotation, p);
        [0, 1, 2].map(|i| self.scale * r[i] + self.translation[i])
    }

    /// The map back: `x = (1/s)·Rᵀ·(y − t)`. `scale` must be non-zero.
    pub fn inverse(&self) -> Self {
        let rotation = transpose(&self.rotation);
        let scale = 1.0 / self.scale;
        let back = mat_vec(&rotation, self.translation);
        Self {
            scale,
            rotation,
            translation: back.map(|v| -scale * v),
        }
    }

    /// `self ∘ inner`: first `inner`, then `self`.
    pub fn compose(&self, inner: &Similarity) -> Self {
        let moved = mat_vec(&self.rotation, inner.translation);
        Self {
            scale: self.scale * inner.scale,
            rotation: mat_mul(&self.rotation, &inner.rotation),
            translation: [0, 1, 2].map(|i| self.scale * moved[i] + self.translation[i]),
        }
    }
}

/// One ICP stage: how many points of each cloud it uses (strided subsets) and how many
/// correspondence / Umeyama rounds it runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct IcpStage {
    pub observed: usize,
    pub asset: usize,
    pub iterations: usize,
}

/// Knobs of [`register`]. With the defaults a registration costs about a second of one CPU
/// core whatever the clouds' sizes (every stage works on strided subsets; ~0.6 s of it is the
/// global search), and a few milliseconds on a GPU.
#[derive(Debug, Clone, PartialEq)]
pub struct RegistrationOptions {
    /// Rotations tried by the global search (a super-Fibonacci spiral on the unit
    /// quaternions, plus the identity). 384 leave no rotation more than ~20° from a candidate,
    /// inside ICP's basin.
    pub rotation_candidates: usize,
    /// Every candidate gets this much point-to-point ICP on small subsets before being scored.
    pub coarse: IcpStage,
    /// The best `keep` candidates (by trimmed one-sided Chamfer) go on to `refine`, which runs
    /// point-to-plane ICP (normals from the asset's nearest neighbours).
    pub keep: usize,
    pub refine: IcpStage,
    /// The single best refined candidate gets this final point-to-plane ICP on the largest
    /// subsets. Stages stop early once a round changes nothing.
    pub polish: IcpStage,
    /// Fraction of observed points (the closest ones) that correspondences and scores use; the
    /// rest are treated as outliers (mask bleed, background, VGGT noise).
    pub trim_fraction: f64,
    /// The scale may move at most this factor either way from the ratio of the two clouds'
    /// radii; it keeps a bad candidate from collapsing onto a small patch of the surface.
    pub max_scale_ratio: f64,
    /// An observed point is an inlier when it lands this close to an asset point, in asset
    /// units. 0.02 is the reference's fitness threshold for TRELLIS's unit box.
    pub inlier_distance: f64,
}

impl Default for RegistrationOptions {
    fn default() -> Self {
        Self {
            rotation_candidates: 384,
            coarse: IcpStage {
                observed: 128,
                asset: 1024,
                iterations: 3,
            },
            keep: 8,
            refine: IcpStage {
                observed: 256,
                asset: 2048,
                iterations: 10,
            },
            polish: IcpStage {
                observed: 1024,
                asset: 8192,
                iterations: 20,
            },
            trim_fraction: 0.9,
            max_scale_ratio: 4.0,
            inlier_distance: 0.02,
        }
    }
}

/// What [`register`] found, and how well it fits.
#[derive(Debug, Clone, PartialEq)]
pub struct Registration {
    /// `x_asset = s·R·x_vggt + t`.
    pub similarity: Similarity,
    /// Fraction of the (polish-stage) observed points within `inlier_distance` of the asset.
    pub inlier_fraction: f64,
    /// RMS observed → asset nearest-neighbour distance over the trimmed (closest
    /// `trim_fraction`) points, in asset units.
    pub rms: f64,
}

/// The observed surface in VGGT's frame: the points of `world_points` ([N, H, W, 3]) that the
/// reference would keep, at most `max_points` of them, as a [K, 3] float32 CPU tensor.
///
/// The reference's mask is `alpha > 0.8 ∧ conf > median(all conf) ∧ conf > 1e-5` (the median as
/// `np.percentile`, linear interpolation), then points farther from the masked centroid than the
/// 98th-percentile radius are dropped. Non-finite points are dropped too. The reference then
/// draws 50k points at random; recon takes an evenly strided subset (deterministic, spread over
/// all views) and removes statistical outliers like Open3D's `remove_statistical_outlier(30, 3)`:
/// a point goes when its mean distance to its 30 nearest neighbours exceeds the cloud's mean of
/// that by 3 standard deviations. That filter costs O(K²) distances (blocked), so a `max_points`
/// of ~20k is a sensible CPU budget.
pub fn observed_points(
    world_points: &Tensor,
    conf: &Tensor,
    alpha: &Tensor,
    max_points: usize,
) -> Result<Tensor> {
    let size = world_points.size();
    if size.len() != 4 || size[3] != 3 {
        return Err(Error::invalid_argument(format!(
            "observed_points: world_points must be [N, H, W, 3], got {size:?}"
        )));
    }
    let maps = &size[..3];
    for (name, t) in [("conf", conf), ("alpha", alpha)] {
        if t.size() != maps {
            return Err(Error::invalid_argument(format!(
                "observed_points: {name} must be {maps:?} like world_points' [N, H, W], got {:?}",
                t.size()
            )));
        }
    }
    if maps.contains(&0) {
        return Err(Error::invalid_argument(
            "observed_points: the point maps are empty",
        ));
    }
    if max_points == 0 {
        return Err(Error::invalid_argument(
            "observed_points: max_points must be at least 1",
        ));
    }
    let device = world_points.device();
    // float32 like the reference's tensors. Its comparisons with Python / NumPy scalars happen
    // in float32 (an alpha of exactly 0.8f32 does not pass `> 0.8`), whereas libtorch's C++
    // scalar overloads compare in double, so every threshold is rounded to float32 first.
    let points = world_points.f_to_kind(Kind::Float)?.f_reshape([-1, 3])?;
    let conf = conf
        .f_to_device(device)?
        .f_to_kind(Kind::Float)?
        .f_reshape([-1])?;
    let alpha = alpha
        .f_to_device(device)?
        .f_to_kind(Kind::Float)?
        .f_reshape([-1])?;

    let threshold = percentile(&conf.f_to_kind(Kind::Double)?, CONF_PERCENTILE)?;
    let mask = alpha
        .f_gt(as_f32(ALPHA_THRESHOLD))?
        .f_logical_and(&conf.f_gt(as_f32(threshold))?)?
        .f_logical_and(&conf.f_gt(as_f32(CONF_FLOOR))?)?
        .f_logical_and(&points.f_isfinite()?.f_all_dim(1, false)?)?;
    let kept = points.f_index_select(0, &mask.f_nonzero()?.f_squeeze_dim(1)?)?;
    if kept.size()[0] == 0 {
        return Err(Error::invalid_argument(
            "observed_points: no pixel passes the mask (alpha > 0.8, confidence above its median)",
        ));
    }

    let centre = kept.f_mean_dim(0, true, None)?;
    let radius = kept.f_sub(&centre)?.f_norm_scalaropt_dim(2.0, 1, false)?;
    let limit = percentile(&radius.f_to_kind(Kind::Double)?, RADIUS_PERCENTILE)?;
    let inside = radius.f_le(as_f32(limit))?;
    let kept = kept.f_index_select(0, &inside.f_nonzero()?.f_squeeze_dim(1)?)?;

    let kept = strided(&kept, max_points)?;
    let kept = remove_statistical_outliers(&kept, OUTLIER_NEIGHBOURS, OUTLIER_STD_RATIO)?;
    Ok(kept.f_to_device(Device::Cpu)?)
}

/// The similarity laying `observed` ([K, 3], VGGT frame, part of the surface) onto `asset`
/// ([M, 3], surface points of the generated object): `x_asset = s·R·x_observed + t`.
///
/// Both clouds are centred on their centroids and scaled to unit RMS radius (the farthest 5%
/// ignored), which fixes an initial scale and translation. A global search then runs a few
/// rounds of trimmed ICP with scale from every candidate rotation on small subsets, keeps the
/// best `keep` by trimmed one-sided Chamfer distance (measured in the observed cloud's units,
/// so a candidate cannot win by shrinking), refines them on larger subsets and polishes the
/// best. Each ICP round matches every observed point to its nearest asset point and drops the
/// farthest `1 − trim_fraction` of the matches; the global search then solves Umeyama's closed
/// form (point-to-point, robust far from the answer), the refinement a damped Gauss-Newton
/// point-to-plane step with scale (fast, precise convergence: sliding along the surface is
/// free).
///
/// Runs on `observed`'s device (`asset` is moved there). Non-finite rows are ignored. Errors
/// with `InvalidArgument` on malformed shapes, too few points, or clouds that are a point or a
/// line.
pub fn register(
    observed: &Tensor,
    asset: &Tensor,
    options: &RegistrationOptions,
) -> Result<Registration> {
    validate_options(options)?;
    let device = observed.device();
    let observed = finite_cloud(observed, "observed", device)?;
    let asset = finite_cloud(asset, "asset", device)?;
    let (observed_centre, observed_radius) = centre_and_radius(&observed, "observed")?;
    let (asset_centre, asset_radius) = centre_and_radius(&asset, "asset")?;
    let observed_n = observed
        .f_sub(&to_device_tensor(&observed_centre, device)?)?
        .f_div_scalar(observed_radius)?;
    let asset_n = asset
        .f_sub(&to_device_tensor(&asset_centre, device)?)?
        .f_div_scalar(asset_radius)?;

    let bounds = (1.0 / options.max_scale_ratio, options.max_scale_ratio);
    let icp = Icp {
        trim: options.trim_fraction,
        bounds,
    };

    // Global search: every candidate rotation, a few point-to-point rounds each on small
    // subsets; then point-to-plane refinement of the best few, and of the best one.
    let candidates: Vec<Similarity> = rotation_candidates(options.rotation_candidates)
        .into_iter()
        .map(|rotation| Similarity {
            rotation,
            ..Similarity::identity()
        })
        .collect();
    let candidates = Batch::from_similarities(&candidates, device)?;
    let coarse = icp.run(
        &observed_n,
        &asset_n,
        candidates,
        &options.coarse,
        Metric::Point,
    )?;
    let order = ascending(&host_f64(&coarse.scores)?);
    let kept: Vec<i64> = order.iter().take(options.keep).map(|&i| i as i64).collect();
    let found = coarse.batch.select(&kept)?;

    let refined = icp.run(&observed_n, &asset_n, found, &options.refine, Metric::Plane)?;
    let best = ascending(&host_f64(&refined.scores)?)[0] as i64;
    let best = refined.batch.select(&[best])?;
    let polished = icp.run(&observed_n, &asset_n, best, &options.polish, Metric::Plane)?;

    // Fit quality on the polish subsets, in asset units.
    let distance = polished.sq.f_sqrt()?.f_mul_scalar(asset_radius)?;
    let inlier_fraction = distance
        .f_le(options.inlier_distance)?
        .f_to_kind(Kind::Double)?
        .f_mean(Kind::Double)?
        .f_double_value(&[])?;
    // The score is in the observed cloud's units; × s puts it back in the asset's.
    let scale = polished.batch.scale.f_double_value(&[0])?;
    let rms = polished.scores.f_double_value(&[0])?.sqrt() * scale * asset_radius;

    // Undo the normalisations: x_a = r_a·(ŝ·R·(x − c_o)/r_o + t̂) + c_a.
    let normalised = polished
        .batch
        .to_similarities()?
        .into_iter()
        .next()
        .ok_or_else(|| Error::internal("register: no candidate survived"))?;
    let observed_to_unit = Similarity {
        scale: 1.0 / observed_radius,
        rotation: Similarity::identity().rotation,
        translation: observed_centre.map(|c| -c / observed_radius),
    };
    let unit_to_asset = Similarity {
        scale: asset_radius,
        rotation: Similarity::identity().rotation,
        translation: asset_centre,
    };
    let similarity = unit_to_asset
        .compose(&normalised)
        .compose(&observed_to_unit);
    Ok(Registration {
        similarity,
        inlier_fraction,
        rms,
    })
}

/// `camera` (camera-from-VGGT) as camera-from-asset, for `x_asset = s·R·x_vggt + t`.
///
/// A VGGT-frame point is `x = Rᵀ(x_asset − t)/s`, so camera coordinates are
/// `R_c·Rᵀ·(x_asset − t)/s + t_c`. Scaling them by `s` (which leaves every projection
/// unchanged and puts depths in asset units) gives the extrinsic `[R_c·Rᵀ | s·t_c − R_c·Rᵀ·t]`.
/// Intrinsics and image size are unchanged. `similarity.scale` must be positive (a negative one
/// would put the scene behind the camera).
pub fn camera_in_frame(camera: &Camera, similarity: &Similarity) -> Camera {
    let e = camera.extrinsic.map(f64::from);
    let rc = [[e[0], e[1], e[2]], [e[4], e[5], e[6]], [e[8], e[9], e[10]]];
    let tc = [e[3], e[7], e[11]];
    let rotation = mat_mul(&rc, &transpose(&similarity.rotation));
    let moved = mat_vec(&rotation, similarity.translation);
    let t = [0, 1, 2].map(|i| similarity.scale * tc[i] - moved[i]);
    let mut extrinsic = [0f32; 12];
    for i in 0..3 {
        for j in 0..3 {
            extrinsic[4 * i + j] = rotation[i][j] as f32;
        }
        extrinsic[4 * i + 3] = t[i] as f32;
    }
    Camera {
        extrinsic,
        ..*camera
    }
}

// ---------------------------------------------------------------------------------------------
// ICP with scale, batched over candidate similarities.

/// C similarities as tensors on the points' device: rotation [C, 3, 3], scale [C],
/// translation [C, 3] (float32).
struct Batch {
    rotation: Tensor,
    scale: Tensor,
    translation: Tensor,
}

impl Batch {
    fn from_similarities(similarities: &[Similarity], device: Device) -> Result<Self> {
        let c = similarities.len() as i64;
        let rotation: Vec<f32> = similarities
            .iter()
            .flat_map(|s| s.rotation.iter().flatten().map(|&v| v as f32))
            .collect();
        let scale: Vec<f32> = similarities.iter().map(|s| s.scale as f32).collect();
        let translation: Vec<f32> = similarities
            .iter()
            .flat_map(|s| s.translation.map(|v| v as f32))
            .collect();
        Ok(Self {
            rotation: Tensor::f_from_slice(&rotation)?
                .f_view([c, 3, 3])?
                .f_to_device(device)?,
            scale: Tensor::f_from_slice(&scale)?.f_to_device(device)?,
            translation: Tensor::f_from_slice(&translation)?
                .f_view([c, 3])?
                .f_to_device(device)?,
        })
    }

    fn select(&self, indices: &[i64]) -> Result<Self> {
        let index = Tensor::f_from_slice(indices)?.f_to_device(self.scale.device())?;
        Ok(Self {
            rotation: self.rotation.f_index_select(0, &index)?,
            scale: self.scale.f_index_select(0, &index)?,
            translation: self.translation.f_index_select(0, &index)?,
        })
    }

    /// Every similarity applied to `points` [n, 3] → [C, n, 3].
    fn apply(&self, points: &Tensor) -> Result<Tensor> {
        let rotated = points.f_matmul(&self.rotation.f_transpose(1, 2)?)?;
        Ok(rotated
            .f_mul(&self.scale.f_view([-1, 1, 1])?)?
            .f_add(&self.translation.f_unsqueeze(1)?)?)
    }

    /// The largest entry-wise change of rotation, scale or translation from `before`
    /// (normalised units, so comparable with [`CONVERGED`]).
    fn largest_change(&self, before: &Batch) -> Result<f64> {
        let change = |a: &Tensor, b: &Tensor| -> Result<f64> {
            Ok(a.f_sub(b)?.f_abs()?.f_max()?.f_double_value(&[])?)
        };
        let rotation = change(&self.rotation, &before.rotation)?;
        let scale = change(&self.scale, &before.scale)?;
        let translation = change(&self.translation, &before.translation)?;
        Ok(rotation.max(scale).max(translation))
    }

    /// The similarities, on the host.
    fn to_similarities(&self) -> Result<Vec<Similarity>> {
        let r = host_f64(&self.rotation)?;
        let t = host_f64(&self.translation)?;
        let s = host_f64(&self.scale)?;
        if r.len() != 9 * s.len() || t.len() != 3 * s.len() {
            return Err(Error::internal("register: malformed similarity batch"));
        }
        Ok((0..s.len())
            .map(|c| Similarity {
                scale: s[c],
                rotation: [0, 1, 2].map(|i| [0, 1, 2].map(|j| r[9 * c + 3 * i + j])),
                translation: [0, 1, 2].map(|i| t[3 * c + i]),
            })
            .collect())
    }
}

/// How an ICP round measures a match: point-to-point (robust far from the answer, used by the
/// global search) or point-to-plane along the asset's local normal (converges in a few rounds
/// where point-to-point crawls, because sliding along the surface costs nothing).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Metric {
    Point,
    Plane,
}

/// What an ICP stage ends with: the similarities, each one's score (trimmed mean squared
/// distance in the observed cloud's units), and the last squared distances [C, n].
struct Fitted {
    batch: Batch,
    scores: Tensor,
    sq: Tensor,
}

/// One round's matches: nearest asset points [C, n, 3], their indices [C·n], squared distances
/// [C, n] and 0/1 weights [C, n] keeping the closest `trim` fraction per candidate.
struct Matches {
    moved: Tensor,
    matched: Tensor,
    index: Tensor,
    sq: Tensor,
    weight: Tensor,
}

/// Trimmed ICP with scale: the fraction of matches kept, and the scale's allowed range.
struct Icp {
    trim: f64,
    bounds: (f64, f64),
}

impl Icp {
    /// Up to `stage.iterations` rounds of matching + solving on strided subsets, then each
    /// candidate's score: the trimmed mean squared distance divided by s², i.e. measured in the
    /// observed cloud's units, so shrinking onto a patch of the surface does not pay.
    fn run(
        &self,
        observed: &Tensor,
        asset: &Tensor,
        mut batch: Batch,
        stage: &IcpStage,
        metric: Metric,
    ) -> Result<Fitted> {
        let src = strided(observed, stage.observed)?;
        let dst = strided(asset, stage.asset)?;
        let normals = match metric {
            Metric::Plane => Some(normals(&dst, NORMAL_NEIGHBOURS)?),
            Metric::Point => None,
        };
        for _ in 0..stage.iterations {
            let matches = self.correspond(&src, &dst, &batch)?;
            let next = match &normals {
                Some(normals) => self.plane_step(&batch, &matches, normals)?,
                None => self.umeyama(&src, &matches)?,
            };
            let change = next.largest_change(&batch)?;
            batch = next;
            // Converged: another round would move no point by more than ~1e-5 radii.
            if change < CONVERGED {
                break;
            }
        }
        let matches = self.correspond(&src, &dst, &batch)?;
        let mean = matches
            .sq
            .f_mul(&matches.weight)?
            .f_sum_dim_intlist(1, false, None)?
            .f_div(
                &matches
                    .weight
                    .f_sum_dim_intlist(1, false, None)?
                    .f_clamp_min(1.0)?,
            )?;
        let scores = mean.f_div(&batch.scale.f_square()?)?;
        Ok(Fitted {
            batch,
            scores,
            sq: matches.sq,
        })
    }

    /// The nearest asset point of every moved observed point, trimmed.
    fn correspond(&self, src: &Tensor, dst: &Tensor, batch: &Batch) -> Result<Matches> {
        let moved = batch.apply(src)?;
        let (c, n) = (moved.size()[0], moved.size()[1]);
        let index = nearest(&moved.f_reshape([-1, 3])?, dst)?;
        let matched = dst.f_index_select(0, &index)?.f_view([c, n, 3])?;
        let sq = moved
            .f_sub(&matched)?
            .f_square()?
            .f_sum_dim_intlist(-1, false, None)?;
        let keep = ((self.trim * n as f64).ceil() as i64).clamp(1, n);
        let (limit, _) = sq.f_kthvalue(keep, 1, true)?;
        let weight = sq.f_le_tensor(&limit)?.f_to_kind(Kind::Float)?;
        Ok(Matches {
            moved,
            matched,
            index,
            sq,
            weight,
        })
    }

    /// Umeyama's weighted least-squares similarity from `src` [n, 3] to each candidate's
    /// matches [C, n, 3]; sums on the device, the 3×3 SVDs on the host in float64.
    fn umeyama(&self, src: &Tensor, matches: &Matches) -> Result<Batch> {
        let (matched, weight) = (&matches.matched, &matches.weight);
        let device = matched.device();
        let w = weight.f_unsqueeze(-1)?;
        let total = weight
            .f_sum_dim_intlist(1, true, None)?
            .f_clamp_min(1e-12)?;
        let mean_x = w
            .f_mul(src)?
            .f_sum_dim_intlist(1, false, None)?
            .f_div(&total)?;
        let mean_y = w
            .f_mul(matched)?
            .f_sum_dim_intlist(1, false, None)?
            .f_div(&total)?;
        let xc = src.f_sub(&mean_x.f_unsqueeze(1)?)?;
        let yc = matched.f_sub(&mean_y.f_unsqueeze(1)?)?;
        let cov = yc
            .f_mul(&w)?
            .f_transpose(1, 2)?
            .f_matmul(&xc)?
            .f_div(&total.f_unsqueeze(-1)?)?;
        let var_x = xc
            .f_square()?
            .f_mul(&w)?
            .f_sum_dim_intlist([1i64, 2].as_slice(), false, None)?
            .f_div(&total.f_squeeze_dim(1)?)?;

        let (cov, var_x, mean_x, mean_y) = (
            to_host(&cov)?,
            to_host(&var_x)?,
            to_host(&mean_x)?,
            to_host(&mean_y)?,
        );
        // cov = U·diag(σ)·Vᵀ; R = U·diag(1, 1, d)·Vᵀ with d = det(U·Vᵀ) so R is proper.
        let (u, sigma, v) = cov.f_svd(true, true)?;
        let d = det3(&u)?.f_mul(&det3(&v)?)?.f_sign()?;
        let ones = Tensor::f_ones_like(&d)?;
        let flip = Tensor::f_stack(&[&ones, &ones, &d], 1)?;
        let rotation = u
            .f_mul(&flip.f_unsqueeze(1)?)?
            .f_matmul(&v.f_transpose(1, 2)?)?;
        let scale = sigma
            .f_mul(&flip)?
            .f_sum_dim_intlist(1, false, None)?
            .f_div(&var_x.f_clamp_min(1e-12)?)?
            .f_clamp(self.bounds.0, self.bounds.1)?;
        let turned = rotation
            .f_matmul(&mean_x.f_unsqueeze(-1)?)?
            .f_squeeze_dim(-1)?;
        let translation = mean_y.f_sub(&turned.f_mul(&scale.f_unsqueeze(1)?)?)?;
        let back =
            |t: Tensor| -> Result<Tensor> { Ok(t.f_to_kind(Kind::Float)?.f_to_device(device)?) };
        Ok(Batch {
            rotation: back(rotation)?,
            scale: back(scale)?,
            translation: back(translation)?,
        })
    }

    /// One Gauss-Newton step of trimmed point-to-plane ICP with scale. Around the moved
    /// points' centroid c, a small change `y ↦ (1 + δs)·Rot(ω)·(y − c) + c + δt` changes each
    /// residual `r = (y − q)·n` by `ω·((y − c) × n) + δt·n + δs·((y − c)·n)`; the 7×7 normal
    /// equations are summed on the device and solved on the host in float64 (lightly damped,
    /// so a flat or one-sided patch leaves its free directions alone rather than blowing up).
    fn plane_step(&self, batch: &Batch, matches: &Matches, normals: &Tensor) -> Result<Batch> {
        let (moved, weight) = (&matches.moved, &matches.weight);
        let device = moved.device();
        let shape = moved.size();
        let normal = normals
            .f_index_select(0, &matches.index)?
            .f_view(shape.as_slice())?;
        let w = weight.f_unsqueeze(-1)?;
        let total = weight
            .f_sum_dim_intlist(1, true, None)?
            .f_clamp_min(1e-12)?;
        let centre = w
            .f_mul(moved)?
            .f_sum_dim_intlist(1, false, None)?
            .f_div(&total)?;
        let offset = moved.f_sub(&centre.f_unsqueeze(1)?)?;
        let residual = moved
            .f_sub(&matches.matched)?
            .f_mul(&normal)?
            .f_sum_dim_intlist(-1, true, None)?;
        let jacobian = Tensor::f_cat(
            &[
                offset.f_cross(&normal, -1)?,
                normal.shallow_clone(),
                offset.f_mul(&normal)?.f_sum_dim_intlist(-1, true, None)?,
            ],
            -1,
        )?;
        let weighted = jacobian.f_mul(&w)?;
        let lhs = to_host(&weighted.f_transpose(1, 2)?.f_matmul(&jacobian)?)?;
        let rhs = to_host(&weighted.f_transpose(1, 2)?.f_matmul(&residual)?.f_neg()?)?;
        let damping = lhs
            .f_diagonal(0, 1, 2)?
            .f_mean_dim(-1, true, None)?
            .f_mul_scalar(1e-6)?
            .f_add_scalar(1e-12)?
            .f_unsqueeze(-1)?;
        let eye = Tensor::f_eye(7, (Kind::Double, Device::Cpu))?;
        let step = Tensor::f_linalg_solve(&lhs.f_add(&eye.f_mul(&damping)?)?, &rhs, true)?;
        let step = host_f64(&step)?;
        let centre = host_f64(&centre)?;

        let current = batch.to_similarities()?;
        let mut next = Vec::with_capacity(current.len());
        for (k, similarity) in current.iter().enumerate() {
            let d = &step[7 * k..7 * k + 7];
            let c = [centre[3 * k], centre[3 * k + 1], centre[3 * k + 2]];
            // Steps are clipped so a bad linearisation cannot throw a candidate far away.
            let omega = clip_norm([d[0], d[1], d[2]], MAX_STEP_ANGLE);
            let grow = 1.0 + d[6].clamp(-MAX_STEP_SCALE, MAX_STEP_SCALE);
            let turn = axis_angle_matrix(omega);
            let turned = mat_vec(&turn, c);
            let update = Similarity {
                scale: grow,
                rotation: turn,
                translation: [0, 1, 2].map(|i| c[i] + d[3 + i] - grow * turned[i]),
            };
            let mut moved = update.compose(similarity);
            moved.scale = moved.scale.clamp(self.bounds.0, self.bounds.1);
            next.push(moved);
        }
        Batch::from_similarities(&next, device)
    }
}

/// Unit normals [m, 3] of a surface sample: the least-variance direction of each point's `k`
/// nearest neighbours (sign arbitrary; point-to-plane does not care).
fn normals(points: &Tensor, k: i64) -> Result<Tensor> {
    crate::cuda::linalg::ensure_loaded(points.device())?;
    let m = points.size()[0];
    let k = k.min(m);
    let block = (DISTANCE_BLOCK / m.max(1)).max(1);
    let mut parts = Vec::new();
    let mut start = 0;
    while start < m {
        let len = block.min(m - start);
        let distance = Tensor::f_cdist(&points.f_narrow(0, start, len)?, points, 2.0, None)?;
        let (_, index) = distance.f_topk(k, 1, false, false)?;
        let neighbours = points
            .f_index_select(0, &index.f_reshape([-1])?)?
            .f_view([len, k, 3])?;
        let centred = neighbours.f_sub(&neighbours.f_mean_dim(1, true, None)?)?;
        let spread = centred.f_transpose(1, 2)?.f_matmul(&centred)?;
        let (_, vectors) = spread.f_to_kind(Kind::Double)?.f_linalg_eigh("L")?;
        // eigh sorts eigenvalues ascending: column 0 is the normal.
        parts.push(vectors.f_select(2, 0)?.f_to_kind(Kind::Float)?);
        start += len;
    }
    Ok(Tensor::f_cat(&parts, 0)?)
}

fn clip_norm(v: [f64; 3], limit: f64) -> [f64; 3] {
    let n = (v[0] * v[0] + v[1] * v[1] + v[2] * v[2]).sqrt();
    if n > limit {
        v.map(|x| x * limit / n)
    } else {
        v
    }
}

/// Rodrigues: the rotation by |ω| about ω.
fn axis_angle_matrix(omega: [f64; 3]) -> [[f64; 3]; 3] {
    let angle = (omega[0] * omega[0] + omega[1] * omega[1] + omega[2] * omega[2]).sqrt();
    if angle < 1e-15 {
        return Similarity::identity().rotation;
    }
    let [x, y, z] = omega.map(|v| v / angle);
    let (s, c) = angle.sin_cos();
    let t = 1.0 - c;
    [
        [t * x * x + c, t * x * y - s * z, t * x * z + s * y],
        [t * x * y + s * z, t * y * y + c, t * y * z - s * x],
        [t * x * z - s * y, t * y * z + s * x, t * z * z + c],
    ]
}

/// Determinants of `[C, 3, 3]` matrices by cofactor expansion along the first row: a few
/// element-wise ops, where `linalg_det` factorises each matrix (about 4 ms for the global
/// search's 384 candidates on the host, every round). Only their signs are used, of
/// orthogonal matrices (±1).
fn det3(m: &Tensor) -> Result<Tensor> {
    let at = |i: i64, j: i64| -> Result<Tensor> { Ok(m.f_select(1, i)?.f_select(1, j)?) };
    let minor = |r: [i64; 2], c: [i64; 2]| -> Result<Tensor> {
        Ok(at(r[0], c[0])?
            .f_mul(&at(r[1], c[1])?)?
            .f_sub(&at(r[0], c[1])?.f_mul(&at(r[1], c[0])?)?)?)
    };
    Ok(at(0, 0)?
        .f_mul(&minor([1, 2], [1, 2])?)?
        .f_sub(&at(0, 1)?.f_mul(&minor([1, 2], [0, 2])?)?)?
        .f_add(&at(0, 2)?.f_mul(&minor([1, 2], [0, 1])?)?)?)
}

fn to_host(t: &Tensor) -> Result<Tensor> {
    Ok(t.f_to_device(Device::Cpu)?.f_to_kind(Kind::Double)?)
}

/// Index of the nearest `targets` row for every `queries` row, in distance blocks of bounded
/// size so memory stays flat however large the clouds are.
fn nearest(queries: &Tensor, targets: &Tensor) -> Result<Tensor> {
    let rows = queries.size()[0];
    let m = targets.size()[0].max(1);
    let block = (DISTANCE_BLOCK / m).max(1);
    let mut parts = Vec::new();
    let mut start = 0;
    while start < rows {
        let len = block.min(rows - start);
        let distance = Tensor::f_cdist(&queries.f_narrow(0, start, len)?, targets, 2.0, None)?;
        parts.push(distance.f_argmin(1, false)?);
        start += len;
    }
    Ok(Tensor::f_cat(&parts, 0)?)
}

// ---------------------------------------------------------------------------------------------
// Point-cloud helpers.

/// Drops points whose mean distance to their `k` nearest neighbours (themselves included, as
/// Open3D counts them) exceeds the cloud's mean of that by `std_ratio` standard deviations.
fn remove_statistical_outliers(points: &Tensor, k: i64, std_ratio: f64) -> Result<Tensor> {
    let n = points.size()[0];
    if n < 3 {
        return Ok(points.shallow_clone());
    }
    let k = k.min(n);
    let block = (DISTANCE_BLOCK / n).max(1);
    let mut parts = Vec::new();
    let mut start = 0;
    while start < n {
        let len = block.min(n - start);
        let distance = Tensor::f_cdist(&points.f_narrow(0, start, len)?, points, 2.0, None)?;
        let (closest, _) = distance.f_topk(k, 1, false, false)?;
        parts.push(closest.f_mean_dim(1, false, None)?);
        start += len;
    }
    let spread = Tensor::f_cat(&parts, 0)?.f_to_kind(Kind::Double)?;
    let mean = spread.f_mean(Kind::Double)?.f_double_value(&[])?;
    let std = spread.f_std(true)?.f_double_value(&[])?;
    let keep = spread.f_le(mean + std_ratio * std)?;
    Ok(points.f_index_select(0, &keep.f_nonzero()?.f_squeeze_dim(1)?)?)
}

/// At most `count` rows, evenly strided (row ⌊i·n/count⌋), so every part of the cloud — every
/// view, for VGGT's points — is represented without a random draw.
fn strided(points: &Tensor, count: usize) -> Result<Tensor> {
    let n = points.size()[0];
    let count = count as i64;
    if n <= count {
        return Ok(points.shallow_clone());
    }
    let index = Tensor::f_arange(count, (Kind::Int64, points.device()))?
        .f_mul_scalar(n)?
        .f_div_scalar_mode(count, "floor")?;
    Ok(points.f_index_select(0, &index)?)
}

/// `np.percentile(values, q)` with linear interpolation, for a 1-D float64 tensor of any size
/// (`quantile` refuses more than 16M elements). One sort, then the one or two order
/// statistics around the position: libtorch's `kthvalue` selects within one thread block per
/// row, which for a single row of millions of confidences took 6 ms per call on the H100.
fn percentile(values: &Tensor, q: f64) -> Result<f64> {
    let n = values.size()[0];
    if n == 0 {
        return Err(Error::invalid_argument("percentile of an empty set"));
    }
    let position = q / 100.0 * (n - 1) as f64;
    let low = position.floor();
    let high = position.ceil();
    let (sorted, _) = values.f_sort(0, false)?;
    let around = sorted.f_narrow(0, low as i64, (high - low) as i64 + 1)?;
    let around = host_f64(&around)?;
    let (lo, hi) = (around[0], around[around.len() - 1]);
    Ok(lo + (position - low) * (hi - lo))
}

/// A [P, 3] float32 cloud on `device` with its non-finite rows removed, or a clear error.
fn finite_cloud(points: &Tensor, name: &str, device: Device) -> Result<Tensor> {
    let size = points.size();
    if size.len() != 2 || size[1] != 3 {
        return Err(Error::invalid_argument(format!(
            "register: {name} points must be [K, 3], got {size:?}"
        )));
    }
    if !points.is_floating_point() {
        return Err(Error::invalid_argument(format!(
            "register: {name} points must be floating point, got {:?}",
            points.kind()
        )));
    }
    let points = points.f_to_device(device)?.f_to_kind(Kind::Float)?;
    let finite = points.f_isfinite()?.f_all_dim(1, false)?;
    let points = points.f_index_select(0, &finite.f_nonzero()?.f_squeeze_dim(1)?)?;
    let count = points.size()[0];
    if count < MIN_POINTS {
        return Err(Error::invalid_argument(format!(
            "register: {name} has {count} finite points; at least {MIN_POINTS} are needed"
        )));
    }
    Ok(points)
}

/// Centroid and robust RMS radius (farthest 5% ignored), on the host in float64. Errors when
/// the cloud is a single point or a line, where no rotation is determined.
fn centre_and_radius(points: &Tensor, name: &str) -> Result<([f64; 3], f64)> {
    let points = points.f_to_kind(Kind::Double)?;
    let centre = points.f_mean_dim(0, true, None)?;
    let offset = points.f_sub(&centre)?;
    let sq = offset.f_square()?.f_sum_dim_intlist(1, false, None)?;
    let n = sq.size()[0];
    let keep = ((RADIUS_KEEP * n as f64).ceil() as i64).clamp(1, n);
    let (closest, _) = sq.f_topk(keep, 0, false, false)?;
    let radius = closest.f_mean(Kind::Double)?.f_double_value(&[])?.sqrt();
    let c = host_f64(&centre)?;
    let spread = offset
        .f_transpose(0, 1)?
        .f_matmul(&offset)?
        .f_div_scalar(n)?;
    let eigen = host_f64(&spread.f_to_device(Device::Cpu)?.f_linalg_eigvalsh("L")?)?;
    let (largest, middle) = (eigen[2], eigen[1]);
    if !radius.is_finite() || radius <= 1e-12 || largest <= 0.0 {
        return Err(Error::invalid_argument(format!(
            "register: the {name} points all coincide"
        )));
    }
    if middle <= 1e-10 * largest {
        return Err(Error::invalid_argument(format!(
            "register: the {name} points lie on a line; the rotation is undetermined"
        )));
    }
    Ok(([c[0], c[1], c[2]], radius))
}

fn validate_options(options: &RegistrationOptions) -> Result<()> {
    let stages = [&options.coarse, &options.refine, &options.polish];
    if options.rotation_candidates == 0 || options.keep == 0 {
        return Err(Error::invalid_argument(
            "register: rotation_candidates and keep must be at least 1",
        ));
    }
    if stages
        .iter()
        .any(|s| (s.observed as i64) < MIN_POINTS || (s.asset as i64) < MIN_POINTS)
    {
        return Err(Error::invalid_argument(format!(
            "register: every ICP stage needs at least {MIN_POINTS} observed and asset points"
        )));
    }
    if !(options.trim_fraction > 0.0 && options.trim_fraction <= 1.0) {
        return Err(Error::invalid_argument(format!(
            "register: trim_fraction must be in (0, 1], got {}",
            options.trim_fraction
        )));
    }
    if !(options.max_scale_ratio >= 1.0 && options.max_scale_ratio.is_finite()) {
        return Err(Error::invalid_argument(format!(
            "register: max_scale_ratio must be finite and ≥ 1, got {}",
            options.max_scale_ratio
        )));
    }
    if !(options.inlier_distance > 0.0 && options.inlier_distance.is_finite()) {
        return Err(Error::invalid_argument(format!(
            "register: inlier_distance must be positive, got {}",
            options.inlier_distance
        )));
    }
    Ok(())
}

/// `count` rotations spread evenly over SO(3): the identity, then a super-Fibonacci spiral of
/// unit quaternions (Alexa, CVPR 2022) — deterministic, with no clumps or polar gaps.
fn rotation_candidates(count: usize) -> Vec<[[f64; 3]; 3]> {
    // φ = √2 and ψ, the real root of ψ⁴ = ψ + 4: two irrational turn rates for the two circles.
    const PHI: f64 = std::f64::consts::SQRT_2;
    const PSI: f64 = 1.533_751_168_755_204_3;
    let spiral = count.saturating_sub(1);
    let mut out = Vec::with_capacity(count);
    out.push(Similarity::identity().rotation);
    for i in 0..spiral {
        let s = i as f64 + 0.5;
        let t = s / spiral as f64;
        let (r, big_r) = (t.sqrt(), (1.0 - t).sqrt());
        let alpha = 2.0 * PI * s / PHI;
        let beta = 2.0 * PI * s / PSI;
        out.push(quaternion_matrix([
            r * alpha.sin(),
            r * alpha.cos(),
            big_r * beta.sin(),
            big_r * beta.cos(),
        ]));
    }
    out
}

/// Rotation matrix of the unit quaternion `[x, y, z, w]`.
fn quaternion_matrix(q: [f64; 4]) -> [[f64; 3]; 3] {
    let [x, y, z, w] = q;
    [
        [
            1.0 - 2.0 * (y * y + z * z),
            2.0 * (x * y - z * w),
            2.0 * (x * z + y * w),
        ],
        [
            2.0 * (x * y + z * w),
            1.0 - 2.0 * (x * x + z * z),
            2.0 * (y * z - x * w),
        ],
        [
            2.0 * (x * z - y * w),
            2.0 * (y * z + x * w),
            1.0 - 2.0 * (x * x + y * y),
        ],
    ]
}

/// Indices of `values` from smallest to largest; NaN last, ties by index (deterministic).
fn ascending(values: &[f64]) -> Vec<usize> {
    let mut order: Vec<usize> = (0..values.len()).collect();
    order.sort_by(|&a, &b| {
        let key = |i: usize| {
            if values[i].is_nan() {
                f64::INFINITY
            } else {
                values[i]
            }
        };
        key(a).total_cmp(&key(b)).then(a.cmp(&b))
    });
    order
}

/// `x` rounded to the nearest float32, as a threshold compared with float32 tensors.
fn as_f32(x: f64) -> f64 {
    f64::from(x as f32)
}

fn host_f64(t: &Tensor) -> Result<Vec<f64>> {
    let flat = t
        .f_to_device(Device::Cpu)?
        .f_to_kind(Kind::Double)?
        .f_contiguous()?
        .f_reshape([-1])?;
    Ok(Vec::<f64>::try_from(&flat)?)
}

fn to_device_tensor(v: &[f64; 3], device: Device) -> Result<Tensor> {
    let data = v.map(|x| x as f32);
    Ok(Tensor::f_from_slice(&data)?
        .f_view([1, 3])?
        .f_to_device(device)?)
}

fn mat_vec(m: &[[f64; 3]; 3], v: [f64; 3]) -> [f64; 3] {
    [0, 1, 2].map(|i| m[i][0] * v[0] + m[i][1] * v[1] + m[i][2] * v[2])
}

fn mat_mul(a: &[[f64; 3]; 3], b: &[[f64; 3]; 3]) -> [[f64; 3]; 3] {
    [0, 1, 2].map(|i| [0, 1, 2].map(|j| a[i][0] * b[0][j] + a[i][1] * b[1][j] + a[i][2] * b[2][j]))
}

fn transpose(m: &[[f64; 3]; 3]) -> [[f64; 3]; 3] {
    [0, 1, 2].map(|i| [0, 1, 2].map(|j| m[j][i]))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn det3_matches_linalg_det() {
        // Values from a fixed sequence: the lib tests run in parallel and other tests seed
        // libtorch's global generator, which this test must not draw from.
        let values: Vec<f64> = (0..64 * 9)
            .map(|i| ((i as f64 * 0.618_033_988_75).fract() - 0.5) * 4.0)
            .collect();
        let m = Tensor::from_slice(&values).view([64, 3, 3]);
        let expected = Tensor::linalg_det(&m);
        let found = det3(&m).unwrap();
        let error = f64::try_from((&found - &expected).abs().max()).unwrap();
        assert!(error < 1e-12, "largest difference {error}");
    }
}
