//! Sums of rows by group (`zeros.index_add(0, group, rows)`) with the same bits on every run and
//! every device.
//!
//! libtorch's CUDA `index_add` adds with atomics: the rows of one group are summed in whatever
//! order the threads get there, so the float result changes from run to run. Inside a flow
//! model, a last-bit difference grows over the sampler steps, and two runs of one seed (or one
//! model per GPU in a server) would not give the same asset. Here, on CUDA, the rows are put in
//! group order once (a stable sort: within a group they keep their order) and each group is
//! summed in that order by libtorch's segment reduction, which has no atomics. On the CPU,
//! `index_add` already adds the rows one after the other, and stays as it is.

use tch::{Kind, Tensor};

use crate::error::{Error, Result};

/// Rows assigned to groups, prepared for [`GroupedRows::sum`]: what depends on the grouping
/// only (the sort, the group sizes) is computed once, so that sums of many tensors over the
/// same grouping (every step of a sampler) do no host synchronisation and can be captured in a
/// CUDA graph.
pub struct GroupedRows {
    /// Each row's group `[N]` (int64).
    group: Tensor,
    groups: i64,
    /// CUDA only: the rows in group order (stable) and each group's row count `[groups]`.
    ordered: Option<(Tensor, Tensor)>,
}

impl GroupedRows {
    /// The same grouping, sharing its tensors.
    pub fn share(&self) -> Self {
        Self {
            group: self.group.shallow_clone(),
            groups: self.groups,
            ordered: self
                .ordered
                .as_ref()
                .map(|(order, sizes)| (order.shallow_clone(), sizes.shallow_clone())),
        }
    }

    /// `group` `[N]`: each row's group, in `0..groups` (not checked on the device; out-of-range
    /// values are caught by libtorch's kernels). On CUDA with more than one group it synchronises
    /// with the device (`bincount`): build it once per grouping, outside sampler loops and graph
    /// captures (one group, the pipelines' single sample, needs nothing).
    pub fn new(group: &Tensor, groups: i64) -> Result<Self> {
        if group.dim() != 1 {
            return Err(Error::invalid_argument(format!(
                "group sums: the row groups must be [N], got {:?}",
                group.size()
            )));
        }
        let group = group.f_to_kind(Kind::Int64)?;
        let ordered = if group.device().is_cuda() && groups > 1 {
            let (_, order) = group.f_sort_stable(true, 0, false)?;
            let sizes = group.f_bincount(None::<Tensor>, groups)?;
            Some((order, sizes))
        } else {
            None
        };
        Ok(Self {
            group,
            groups,
            ordered,
        })
    }

    /// `[groups, ...]`: per group, the sum of the rows of `rows` `[N, ...]` in it (zero for an
    /// empty group), in `rows`' dtype.
    pub fn sum(&self, rows: &Tensor) -> Result<Tensor> {
        let n = self.group.size()[0];
        if rows.dim() == 0 || rows.size()[0] != n {
            return Err(Error::invalid_argument(format!(
                "group sums: {n} rows are grouped, got a tensor of shape {:?}",
                rows.size()
            )));
        }
        if self.groups == 1 && rows.device().is_cuda() {
            // One group: a plain reduction (deterministic, no sort).
            return Ok(rows.f_sum_dim_intlist([0i64].as_slice(), true, None::<Kind>)?);
        }
        match &self.ordered {
            Some((order, sizes)) => Ok(Tensor::f_segment_reduce(
                &rows.f_index_select(0, order)?,
                "sum",
                Some(sizes),
                None::<&Tensor>,
                None::<&Tensor>,
                0,
                true,
                0.0,
            )?),
            None => {
                let mut shape = rows.size();
                shape[0] = self.groups;
                Ok(
                    Tensor::f_zeros(shape.as_slice(), (rows.kind(), rows.device()))?.f_index_add(
                        0,
                        &self.group,
                        rows,
                    )?,
                )
            }
        }
    }
}

/// Per group `g` in `0..groups`, the sum of the rows `r` of `rows` with `group[r] == g`: one
/// [`GroupedRows::sum`].
pub fn group_sums(rows: &Tensor, group: &Tensor, groups: i64) -> Result<Tensor> {
    GroupedRows::new(group, groups)?.sum(rows)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The CPU path is `index_add`, bit for bit; empty groups are zero.
    #[test]
    fn cpu_sums_are_index_add() {
        let rows = Tensor::from_slice(&[1.0f32, 2.0, 3.0, 4.0, 5.0, 6.0]).reshape([3, 2]);
        let group = Tensor::from_slice(&[2i64, 0, 2]);
        let sums = group_sums(&rows, &group, 4).unwrap();
        let expected =
            Tensor::from_slice(&[3.0f32, 4.0, 0.0, 0.0, 6.0, 8.0, 0.0, 0.0]).reshape([4, 2]);
        assert!(sums.equal(&expected), "{sums}");
    }

    #[test]
    fn shapes_are_checked() {
        let group = Tensor::from_slice(&[0i64, 1]);
        let grouped = GroupedRows::new(&group, 2).unwrap();
        let err = grouped.sum(&Tensor::zeros([3, 2], (Kind::Float, tch::Device::Cpu)));
        assert!(err.unwrap_err().message().contains("2 rows are grouped"));
        let err = GroupedRows::new(&group.reshape([1, 2]), 2).err().unwrap();
        assert!(err.message().contains("must be [N]"));
    }
}
