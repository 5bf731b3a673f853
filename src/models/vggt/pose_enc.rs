//! `vggt/utils/pose_enc.py` (with `vggt/utils/rotation.py`'s `quat_to_mat`): VGGT's 9-D camera
//! encoding `absT_quaR_FoV` = `[t (3), q (4, xyzw: scalar last), fov_h, fov_w]` and its
//! conversion to OpenCV cameras.
//!
//! The extrinsics are camera-from-world `[R | t]` (x right, y down, z forward) in frame 0's
//! camera frame. `R` comes from the quaternion with `2/|q|²`, so `q` need not be unit. The
//! intrinsics put the principal point at the image centre, with `fy = (H/2)/tan(fov_h/2)` and
//! `fx = (W/2)/tan(fov_w/2)`.

use tch::{Kind, Tensor};

use crate::error::{Error, Result};

/// Width of the `absT_quaR_FoV` encoding.
pub const POSE_ENCODING_DIM: i64 = 9;

/// `pose_encoding_to_extri_intri(pose_encoding, image_size_hw, "absT_quaR_FoV",
/// build_intrinsics=True)`: `pose_encoding` `[..., 9]` → extrinsics `[..., 3, 4]` and
/// intrinsics `[..., 3, 3]` for images of `height`×`width` pixels, in the encoding's dtype.
pub fn pose_encoding_to_extri_intri(
    pose_encoding: &Tensor,
    height: i64,
    width: i64,
) -> Result<(Tensor, Tensor)> {
    let shape = pose_encoding.size();
    if shape.last() != Some(&POSE_ENCODING_DIM) {
        return Err(Error::invalid_argument(format!(
            "pose encoding must be [..., {POSE_ENCODING_DIM}], got {shape:?}"
        )));
    }
    if height <= 0 || width <= 0 {
        return Err(Error::invalid_argument(format!(
            "pose encoding: image size must be positive, got {height}x{width}"
        )));
    }
    let translation = pose_encoding.f_narrow(-1, 0, 3)?;
    let quaternion = pose_encoding.f_narrow(-1, 3, 4)?;
    let fov_h = pose_encoding.f_select(-1, 7)?;
    let fov_w = pose_encoding.f_select(-1, 8)?;
    let rotation = quat_to_mat(&quaternion)?;
    let extrinsics = Tensor::f_cat(&[&rotation, &translation.f_unsqueeze(-1)?], -1)?;
    let fy = focal_from_fov(&fov_h, height)?;
    let fx = focal_from_fov(&fov_w, width)?;
    let zeros = fx.f_zeros_like()?;
    let ones = fx.f_ones_like()?;
    let cx = zeros.f_add_scalar(width as f64 / 2.0)?;
    let cy = zeros.f_add_scalar(height as f64 / 2.0)?;
    let entries = [&fx, &zeros, &cx, &zeros, &fy, &cy, &zeros, &zeros, &ones];
    let mut matrix_shape = fx.size();
    matrix_shape.extend([3, 3]);
    let intrinsics = Tensor::f_stack(&entries, -1)?.f_reshape(&matrix_shape)?;
    Ok((extrinsics, intrinsics))
}

/// `(size/2) / tan(fov/2)`, rounded as torch's `float / tensor` (reciprocal, then product).
fn focal_from_fov(fov: &Tensor, size: i64) -> Result<Tensor> {
    Ok(fov
        .f_div_scalar(2.0)?
        .f_tan()?
        .f_reciprocal()?
        .f_mul_scalar(size as f64 / 2.0)?)
}

/// `quat_to_mat`: quaternions `[..., 4]` (x, y, z, w) → rotation matrices `[..., 3, 3]`,
/// scaled by `2/|q|²` (a non-unit quaternion still gives a rotation).
pub fn quat_to_mat(quaternions: &Tensor) -> Result<Tensor> {
    let shape = quaternions.size();
    if shape.last() != Some(&4) {
        return Err(Error::invalid_argument(format!(
            "quaternions must be [..., 4], got {shape:?}"
        )));
    }
    let parts = quaternions.f_unbind(-1)?;
    let [i, j, k, r]: [Tensor; 4] = parts
        .try_into()
        .map_err(|_| Error::internal("a quaternion did not unbind into 4 parts"))?;
    // `2.0 / tensor` in torch is `tensor.reciprocal() * 2.0`; the same rounding here.
    let two_s = quaternions
        .f_square()?
        .f_sum_dim_intlist(&[-1i64][..], false, None::<Kind>)?
        .f_reciprocal()?
        .f_mul_scalar(2.0)?;
    let prod = |a: &Tensor, b: &Tensor| a.f_mul(b);
    // 1 − 2s(a² + b²) on the diagonal, 2s(ab ± cr) off it.
    let diagonal = |a: &Tensor, b: &Tensor| -> Result<Tensor> {
        Ok(prod(a, a)?
            .f_add(&prod(b, b)?)?
            .f_mul(&two_s)?
            .f_neg()?
            .f_add_scalar(1.0)?)
    };
    let off = |a: &Tensor, b: &Tensor, c: &Tensor, sign: f64| -> Result<Tensor> {
        Ok(prod(a, b)?
            .f_add(&prod(c, &r)?.f_mul_scalar(sign)?)?
            .f_mul(&two_s)?)
    };
    let entries = [
        diagonal(&j, &k)?,
        off(&i, &j, &k, -1.0)?,
        off(&i, &k, &j, 1.0)?,
        off(&i, &j, &k, 1.0)?,
        diagonal(&i, &k)?,
        off(&j, &k, &i, -1.0)?,
        off(&i, &k, &j, -1.0)?,
        off(&j, &k, &i, 1.0)?,
        diagonal(&i, &j)?,
    ];
    let mut matrix_shape = shape[..shape.len() - 1].to_vec();
    matrix_shape.extend([3, 3]);
    Ok(Tensor::f_stack(&entries, -1)?.f_reshape(&matrix_shape)?)
}

#[cfg(test)]
mod tests {
    use super::*;
    use tch::Device;

    #[test]
    fn identity_quaternion_and_known_focal() {
        // fov 0.8 rad at 518 px gives f = 612.59 (research/reconviagen.md §3.8).
        let enc = Tensor::from_slice(&[1.0f32, 2.0, 3.0, 0.0, 0.0, 0.0, 2.0, 0.8, 0.8])
            .reshape([1, 1, 9]);
        let (extri, intri) = pose_encoding_to_extri_intri(&enc, 518, 518).unwrap();
        assert_eq!(extri.size(), vec![1, 1, 3, 4]);
        assert_eq!(intri.size(), vec![1, 1, 3, 3]);
        let e: Vec<f32> = Vec::try_from(extri.flatten(0, -1)).unwrap();
        assert_eq!(
            e,
            vec![1.0, 0.0, 0.0, 1.0, 0.0, 1.0, 0.0, 2.0, 0.0, 0.0, 1.0, 3.0]
        );
        let k: Vec<f32> = Vec::try_from(intri.flatten(0, -1)).unwrap();
        assert!((k[0] - 612.59).abs() < 0.01 && (k[4] - 612.59).abs() < 0.01);
        assert_eq!((k[2], k[5], k[8]), (259.0, 259.0, 1.0));
    }

    #[test]
    fn rotation_is_orthonormal() {
        // Under recon's generator lock: other lib tests seed the global generator in parallel.
        let q = crate::pipelines::trellis_image_to_3d::with_cpu_generator(|| {
            Tensor::randn([5, 4], (Kind::Double, Device::Cpu))
        });
        let r = quat_to_mat(&q).unwrap();
        let eye = Tensor::eye(3, (Kind::Double, Device::Cpu));
        let err = (r.matmul(&r.transpose(-1, -2)) - eye).abs().max();
        assert!(f64::try_from(err).unwrap() < 1e-12);
    }
}
