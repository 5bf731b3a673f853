//! What `recon bench` needs to be compared with the reference pipeline run on the same
//! machine: a fixed, realistic voxel set for the structured-latent stage (`--voxels`) and the
//! last run's intermediate tensors written out (`--dump`) so that the reference's outputs can
//! be checked against ours (benches/reference_pipeline.py reads both).

use std::path::Path;

use recon::pipeline::Generation;
use recon::weights::write_safetensors;
use recon::{Error, Result};
use tch::{Kind, Tensor};

/// The structured latent's grid: TRELLIS's SLat networks work on 64³ voxels.
const GRID: i64 = 64;

/// `--voxels shell:R`: the voxels of a sphere shell, else `None` (the decoded voxels).
pub fn voxel_override(spec: Option<&str>) -> Result<Option<Tensor>> {
    let Some(spec) = spec else {
        return Ok(None);
    };
    let radius = spec
        .strip_prefix("shell:")
        .and_then(|r| r.parse::<f64>().ok())
        .filter(|r| r.is_finite() && *r >= 1.0 && *r < (GRID / 2) as f64)
        .ok_or_else(|| {
            Error::invalid_argument(format!(
                "--voxels '{spec}': expected shell:R with R a radius in voxels from 1 to {}",
                GRID / 2 - 1
            ))
        })?;
    Ok(Some(shell_voxels(radius, GRID)?))
}

/// The cells of a `grid`³ volume whose centres lie within one voxel of a sphere of `radius`
/// around the volume's centre, as `[M, 4]` int32 `(0, x, y, z)` in row-major order (the order
/// `torch.argwhere` gives on the decoder's logits). A closed surface like a real object's:
/// random-weight decoders scatter voxels through the volume instead, which after the flow's
/// 2× downsampling leaves 3–4× more tokens than a surface with as many voxels.
pub fn shell_voxels(radius: f64, grid: i64) -> Result<Tensor> {
    let centre = (grid - 1) as f64 / 2.0;
    let mut rows: Vec<i32> = Vec::new();
    for x in 0..grid {
        for y in 0..grid {
            for z in 0..grid {
                let d = [x, y, z].map(|c| c as f64 - centre);
                let distance = (d[0] * d[0] + d[1] * d[1] + d[2] * d[2]).sqrt();
                if (distance - radius).abs() < 1.0 {
                    rows.extend([0, x as i32, y as i32, z as i32]);
                }
            }
        }
    }
    Ok(Tensor::from_slice(&rows).f_view([-1, 4])?)
}

/// Writes the generation's intermediate results (first sample) as safetensors: the condition,
/// both stages' noise and samples, the voxels, the structured latent and each decoded
/// representation's raw tensors. Names are what benches/reference_pipeline.py compares.
pub fn dump_generation(path: &Path, generation: &Generation) -> Result<()> {
    let stage1 = &generation.sparse_structure;
    let stage2 = &generation.slat;
    let mut tensors: Vec<(&str, &Tensor)> = vec![
        ("cond", &stage1.cond),
        ("ss_noise", &stage1.noise),
        ("ss_latent", &stage1.latent),
        ("coords", &stage1.coords),
        ("slat_noise", &stage2.noise),
        ("slat_sampled", &stage2.sampled),
        ("slat_feats", stage2.slat.feats()),
    ];
    if let Some(g) = stage2.gaussians.first() {
        tensors.extend([
            ("gs_xyz", g.xyz()),
            ("gs_features_dc", g.features_dc()),
            ("gs_scaling", g.scaling()),
            ("gs_rotation", g.rotation()),
            ("gs_opacity", g.opacity()),
        ]);
    }
    if let Some(m) = stage2.meshes.first() {
        tensors.extend([("mesh_vertices", &m.vertices), ("mesh_faces", &m.faces)]);
    }
    let owned = tensors
        .into_iter()
        .map(|(name, t)| Ok((name.to_string(), on_host(t)?)))
        .collect::<Result<Vec<_>>>()?;
    write_safetensors(path, &owned)
}

/// A contiguous CPU copy; floating tensors as float32 (the reference side compares in fp32).
fn on_host(t: &Tensor) -> Result<Tensor> {
    let t = t.f_to_device(tch::Device::Cpu)?;
    let t = if t.is_floating_point() {
        t.f_to_kind(Kind::Float)?
    } else {
        t
    };
    Ok(t.f_contiguous()?)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shell_matches_its_definition() {
        let v = shell_voxels(20.0, 64).unwrap();
        // refbench's r=20 shell on 64³: 10,256 voxels.
        assert_eq!(v.size(), [10256, 4]);
        assert_eq!(v.select(1, 0).abs().sum(Kind::Int64).int64_value(&[]), 0);
        // Row-major order: the flattened index increases strictly.
        let xyz = v.narrow(1, 1, 3).to_kind(Kind::Int64);
        let flat = xyz.select(1, 0) * 4096 + xyz.select(1, 1) * 64 + xyz.select(1, 2);
        let steps = flat.narrow(0, 1, 10255) - flat.narrow(0, 0, 10255);
        assert!(bool::try_from(steps.gt(0).all()).unwrap());
    }

    #[test]
    fn bad_voxel_specs_are_named() {
        for spec in [
            "sphere",
            "shell:",
            "shell:x",
            "shell:0.5",
            "shell:40",
            "shell:nan",
        ] {
            let err = voxel_override(Some(spec)).unwrap_err().to_string();
            assert!(err.contains("--voxels") && err.contains(spec), "{err}");
        }
        assert!(voxel_override(None).unwrap().is_none());
    }
}
