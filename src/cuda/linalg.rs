//! libtorch's CUDA linear algebra (`linalg_eigh`, `linalg_solve`, ... on CUDA tensors) lives in
//! `libtorch_cuda_linalg`, which libtorch loads at the first such call. That first call is not
//! thread-safe: two threads getting there together fail with "lazy wrapper should be called at
//! most once" (seen with two models on two GPUs registering their cameras at the same time).
//! [`ensure_loaded`] makes the first call once per process, other threads waiting for it.

use std::sync::Mutex;

use tch::{Device, Kind, Tensor};

use crate::error::Result;
use crate::parallel::lock;

/// Loads libtorch's CUDA linear algebra with one tiny call on `device` the first time it is
/// asked (any thread; others wait for it); later calls return at once. Nothing to do on the
/// CPU. A failed first call (out of memory, say) is not remembered: the next call tries again.
pub fn ensure_loaded(device: Device) -> Result<()> {
    static LOADED: Mutex<bool> = Mutex::new(false);
    if !device.is_cuda() {
        return Ok(());
    }
    let mut loaded = lock(&LOADED);
    if !*loaded {
        Tensor::f_eye(2, (Kind::Float, device))
            .and_then(|eye| eye.f_linalg_eigh("L"))
            .map(|_| ())
            .map_err(|e| crate::Error::from(e).context("loading libtorch's CUDA linear algebra"))?;
        *loaded = true;
    }
    Ok(())
}
