//! [`PrecomputedReference`]: reference log-probs stored by example id.

use std::collections::BTreeMap;

use burn::tensor::{Device, Tensor, TensorData};

use crate::batch::PairedBatch;
use crate::check;
use crate::data::BatchLayout;
use crate::error::{PreferenceError, Result};
use crate::logps::SequenceLogpsOutput;

/// The reference model's sequence log-probs of a dataset, computed in one pass and stored by
/// example id: TRL's `precompute_ref_log_probs`. Training then needs no reference model in
/// memory and no reference forward pass; each step looks its batch's values up and gives them
/// to [`PairedBatch::with_reference`](crate::batch::PairedBatch::with_reference) (or, with
/// `K = 1`, to [`UnpairedBatch::with_reference`](crate::batch::UnpairedBatch::with_reference)
/// after a reshape).
///
/// Each example holds `K` values (its candidates' log-probs, chosen first for pairs). The
/// store is plain data: serialise it with serde (JSON, bincode, …) next to the dataset and
/// load it for later runs. It holds sequence log-probs only: LD-DPO and WPO, which read the
/// reference's per-token log-probs, need the live reference.
///
/// ```
/// use burn::tensor::{Device, Tensor};
/// use burn_preference::prelude::*;
/// use burn_preference::reference::PrecomputedReference;
///
/// let device = Device::default();
/// let mut store = PrecomputedReference::new();
/// // The precompute pass: the reference's log-probs of each batch, by example id (from the
/// // gatherer's output over a collated batch, `insert_output` takes its layout).
/// store.insert(&[7, 3], Tensor::<2>::from_floats([[-13.0, -13.5], [-30.0, -29.5]], &device))?;
/// // A training step over examples 3 and 7: the policy only.
/// let policy = Tensor::<2>::from_floats([[-30.5, -29.0], [-12.0, -14.0]], &device);
/// let batch = PairedBatch::new(policy)?.with_reference(store.get(&[3, 7], &device)?)?;
/// let loss = DpoConfig::new().init()?.forward(batch)?.loss;
/// assert!(loss.into_scalar::<f32>() > 0.0);
/// # Ok::<(), burn_preference::PreferenceError>(())
/// ```
#[derive(Debug, Clone, Default, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct PrecomputedReference {
    /// `K`, fixed by the first insert.
    candidates: Option<usize>,
    /// The values of each example, by id (ordered, so a serialised store is reproducible).
    entries: BTreeMap<u64, Vec<f32>>,
}

impl PrecomputedReference {
    /// An empty store.
    pub fn new() -> Self {
        Self::default()
    }

    /// Stores the reference log-probs `[B, K]` of examples `ids` (`B` ids), reading them back
    /// once. An id stored before is overwritten.
    ///
    /// # Errors
    /// [`PreferenceError::BatchMismatch`] when `ids` and the rows differ in number;
    /// [`PreferenceError::Shape`] when `K` differs from the store's;
    /// [`PreferenceError::NonFinite`] for a NaN or infinite log-prob (it would poison every
    /// step that reads it); [`PreferenceError::Read`] when the device read fails.
    pub fn insert(&mut self, ids: &[u64], logps: Tensor<2>) -> Result<()> {
        let [rows, candidates] = logps.dims();
        check::batch("ids", ids.len(), "logps", rows)?;
        if let Some(k) = self.candidates.filter(|k| *k != candidates) {
            return Err(PreferenceError::Shape {
                arg: "logps",
                expected: format!("[B, K] with the store's K = {k}"),
                actual: vec![rows, candidates],
            });
        }
        let values = check::read_floats("logps", logps.detach())?;
        check::all_finite("logps", &values, &[rows, candidates])?;
        self.candidates = Some(candidates);
        for (id, row) in ids.iter().zip(values.chunks_exact(candidates.max(1))) {
            self.entries.insert(*id, row.to_vec());
        }
        Ok(())
    }

    /// Stores the gatherer's output over the reference model for a collated batch of examples
    /// `ids` (one id per prompt), laid out as the collator says
    /// ([`Collated::layout`](crate::data::Collated::layout)): `2B` rows chosen first, or
    /// `B·K` prompt-major. One read, as [`insert`](Self::insert).
    ///
    /// # Errors
    /// As [`PairedBatch::from_output`] for an output that does not fit the layout, and as
    /// [`insert`](Self::insert).
    pub fn insert_output(
        &mut self,
        ids: &[u64],
        reference: &SequenceLogpsOutput,
        layout: BatchLayout,
    ) -> Result<()> {
        let logps = PairedBatch::from_output(reference.clone(), layout)?.policy;
        self.insert(ids, logps)
    }

    /// The stored log-probs of examples `ids`, in that order, `[B, K]` on `device`.
    ///
    /// # Errors
    /// [`PreferenceError::Empty`] for no ids; [`PreferenceError::InvalidValue`] naming `ids`
    /// for an id that was never stored.
    pub fn get(&self, ids: &[u64], device: &Device) -> Result<Tensor<2>> {
        check::non_empty("ids", ids.len())?;
        let candidates = self.candidates.unwrap_or(0);
        let mut values = Vec::with_capacity(ids.len() * candidates);
        for id in ids {
            let row = self
                .entries
                .get(id)
                .ok_or_else(|| PreferenceError::InvalidValue {
                    arg: "ids",
                    expected: "ids of precomputed examples",
                    found: format!("id {id}, not in the store"),
                })?;
            values.extend_from_slice(row);
        }
        Ok(Tensor::from_data(
            TensorData::new(values, [ids.len(), candidates]),
            device,
        ))
    }

    /// Whether example `id` is stored.
    pub fn contains(&self, id: u64) -> bool {
        self.entries.contains_key(&id)
    }

    /// The number of stored examples.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// Whether no example is stored.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// `K`, the values per example (`None` before the first insert).
    pub fn candidates(&self) -> Option<usize> {
        self.candidates
    }
}
