//! `he-aggregate`: count, sum, mean and histogram over many encrypted records.
//!
//! A record is one row of a user-defined [`AggregateSchema`] (for example a
//! batch of lab values). The client lays each record out as `F` consecutive
//! plaintext coefficients: slot 0 is a constant 1 (so the count is computed
//! under encryption and padding never counts), then one slot per value
//! column (`round(v · scale)`) and one slot per histogram bucket (one-hot).
//! `R = ⌊N / F⌋` records share one ciphertext (record r at coefficients
//! `r·F .. r·F + F`), and a request carries up to
//! [`MAX_AGGREGATE_CIPHERTEXTS`] ciphertexts — possibly from several
//! contributors encrypting to the same public material.
//!
//! The island adds all ciphertexts (slot-wise sums) and then multiplies once
//! by the plaintext `P(y) = Σ_{r<R} y^{r·F}`: coefficient `(R−1)·F + f` of the
//! product is `Σ_r x_{r·F+f}`, the total of slot f over every record, and
//! (because `R·F ≤ N`) negacyclic wrap-around only reaches indices below
//! `(R−1)·F`. This is the batching of [`crate::classify`] with all-ones
//! weights: no rotation keys are needed. Everything but the F totals is
//! masked and the noise is flooded before the response leaves the island, so
//! when records come from several parties the key holder learns the
//! aggregates and nothing about individual records.

use fhe_math::rq::{traits::TryConvertFrom, Poly, Representation};
use fhe_traits::{FheDecoder, FheDecrypter};
use serde::{Deserialize, Serialize};
use zeroize::{Zeroize, Zeroizing};

use crate::classify::check_params;
use crate::wire::{self, MessageKind, Reader};
use crate::{sanitize, HeEncryptor, HeError, HePublicMaterial, HeSecretKey, ParamSet};

/// Most ciphertexts in one aggregate request (bounds the noise, see `docs/he.md`).
pub const MAX_AGGREGATE_CIPHERTEXTS: usize = 128;

/// Size limit of an aggregate request.
pub const MAX_AGGREGATE_REQUEST_BYTES: usize = 40 * 1024 * 1024;

/// Size limit of an aggregate response.
pub const MAX_AGGREGATE_RESPONSE_BYTES: usize = 512 * 1024;

/// Most columns in a schema.
pub const MAX_COLUMNS: usize = 256;

/// Most bucket edges in a histogram column.
pub const MAX_HISTOGRAM_EDGES: usize = 1024;

/// One column of an aggregate schema.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum AggregateColumn {
    /// A numeric column: the result has its sum and mean. Values must lie in
    /// `[min, max]`; they are quantised as `round(v · scale)`.
    Value {
        /// Column name.
        name: String,
        /// Quantisation scale (e.g. 100 for two decimals).
        scale: f64,
        /// Smallest allowed value.
        min: f64,
        /// Largest allowed value.
        max: f64,
    },
    /// A histogram column with buckets `(-∞, e0), [e0, e1), …, [e_last, ∞)`.
    Histogram {
        /// Column name.
        name: String,
        /// Strictly increasing bucket edges.
        edges: Vec<f64>,
    },
}

impl AggregateColumn {
    fn name(&self) -> &str {
        match self {
            AggregateColumn::Value { name, .. } | AggregateColumn::Histogram { name, .. } => name,
        }
    }

    fn width(&self) -> usize {
        match self {
            AggregateColumn::Value { .. } => 1,
            AggregateColumn::Histogram { edges, .. } => edges.len() + 1,
        }
    }
}

/// The layout of the records of an aggregate job; client-side only (the
/// island sees just the record width).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct AggregateSchema {
    /// Columns in record order.
    pub columns: Vec<AggregateColumn>,
}

impl AggregateSchema {
    /// Plaintext slots per record: 1 (count) + one per value column + buckets.
    pub fn record_width(&self) -> usize {
        1 + self
            .columns
            .iter()
            .map(AggregateColumn::width)
            .sum::<usize>()
    }

    /// Records that fit in one ciphertext.
    pub fn records_per_ciphertext(&self, param_set: ParamSet) -> usize {
        param_set.degree() / self.record_width().max(1)
    }

    /// Most records one request can carry.
    pub fn max_records(&self, param_set: ParamSet) -> usize {
        MAX_AGGREGATE_CIPHERTEXTS * self.records_per_ciphertext(param_set)
    }

    /// Check the schema fits the parameters with no possible overflow of any
    /// total modulo t.
    pub fn validate(&self, param_set: ParamSet) -> Result<(), HeError> {
        let bad = |m: String| Err(HeError::InvalidInput(m));
        if self.columns.is_empty() || self.columns.len() > MAX_COLUMNS {
            return bad(format!("a schema needs 1 to {MAX_COLUMNS} columns"));
        }
        let width = self.record_width();
        if width > param_set.degree() {
            return bad(format!(
                "record width {width} exceeds the polynomial degree {}",
                param_set.degree()
            ));
        }
        let max_records = self.max_records(param_set) as f64;
        let half = param_set.plaintext_half() as f64;
        for col in &self.columns {
            match col {
                AggregateColumn::Value {
                    name,
                    scale,
                    min,
                    max,
                } => {
                    if !(scale.is_finite()
                        && *scale > 0.0
                        && min.is_finite()
                        && max.is_finite()
                        && min <= max)
                    {
                        return bad(format!(
                            "column {name:?}: scale must be positive and min ≤ max, all finite"
                        ));
                    }
                    let max_q = (min.abs().max(max.abs()) * scale).round() + 1.0;
                    if max_q * max_records >= half {
                        return bad(format!(
                            "column {name:?}: range × scale × {max_records} records could overflow t/2; \
                             lower the scale or narrow [min, max]"
                        ));
                    }
                }
                AggregateColumn::Histogram { name, edges } => {
                    if edges.is_empty() || edges.len() > MAX_HISTOGRAM_EDGES {
                        return bad(format!(
                            "column {name:?}: a histogram needs 1 to {MAX_HISTOGRAM_EDGES} edges"
                        ));
                    }
                    if edges.iter().any(|e| !e.is_finite())
                        || edges.windows(2).any(|w| w[0] >= w[1])
                    {
                        return bad(format!(
                            "column {name:?}: histogram edges must be finite and strictly increasing"
                        ));
                    }
                }
            }
        }
        Ok(())
    }

    /// Lay out one record as `record_width()` slots.
    fn encode_record(&self, record: &[f64], out: &mut Vec<i64>) -> Result<(), HeError> {
        if record.len() != self.columns.len() {
            return Err(HeError::DimensionMismatch {
                what: "record length (values per record)",
                expected: self.columns.len(),
                found: record.len(),
            });
        }
        out.push(1);
        for (col, v) in self.columns.iter().zip(record) {
            if !v.is_finite() {
                return Err(HeError::InvalidInput(format!(
                    "column {:?}: values must be finite",
                    col.name()
                )));
            }
            match col {
                AggregateColumn::Value {
                    name,
                    scale,
                    min,
                    max,
                } => {
                    if v < min || v > max {
                        return Err(HeError::InvalidInput(format!(
                            "column {name:?}: a value is outside the schema range [{min}, {max}]"
                        )));
                    }
                    out.push((v * scale).round() as i64);
                }
                AggregateColumn::Histogram { edges, .. } => {
                    let bucket = edges.partition_point(|e| e <= v);
                    out.extend((0..=edges.len()).map(|b| i64::from(b == bucket)));
                }
            }
        }
        Ok(())
    }
}

/// Client (or any contributor holding the public material): encrypt records
/// into an `he-aggregate` request.
pub fn encrypt_records<K, R>(
    key: &K,
    schema: &AggregateSchema,
    records: &[R],
) -> Result<Vec<u8>, HeError>
where
    K: HeEncryptor + ?Sized,
    R: AsRef<[f64]>,
{
    let param_set = key.params();
    schema.validate(param_set)?;
    if records.is_empty() {
        return Err(HeError::InvalidInput("no records to aggregate".into()));
    }
    let max = schema.max_records(param_set);
    if records.len() > max {
        return Err(HeError::InvalidInput(format!(
            "{} records exceed the per-request limit of {max}; split them into several jobs",
            records.len()
        )));
    }
    let width = schema.record_width();
    let per_ct = schema.records_per_ciphertext(param_set);
    let chunks = records.chunks(per_ct);
    let n_ct = chunks.len();
    let mut out = Vec::with_capacity(
        wire::HEADER_LEN + wire::KEY_ID_LEN + 8 + n_ct * wire::full_ciphertext_len(param_set),
    );
    wire::write_header(&mut out, MessageKind::AggregateRequest, param_set);
    out.extend_from_slice(key.key_id_str().as_bytes());
    out.extend_from_slice(&(width as u32).to_le_bytes());
    out.extend_from_slice(&(n_ct as u32).to_le_bytes());
    let mut slots: Zeroizing<Vec<i64>> = Zeroizing::new(Vec::with_capacity(per_ct * width));
    for chunk in chunks {
        slots.clear();
        for rec in chunk {
            schema.encode_record(rec.as_ref(), &mut slots)?;
        }
        key.encrypt_coeffs(&slots, &mut out)?;
    }
    Ok(out)
}

struct AggregateRequestView {
    param_set: ParamSet,
    key_id: String,
    width: usize,
    n_ct: usize,
}

fn open_request<'a>(request: &'a [u8]) -> Result<(AggregateRequestView, Reader<'a>), HeError> {
    let (param_set, mut r) = wire::open(
        request,
        MessageKind::AggregateRequest,
        MAX_AGGREGATE_REQUEST_BYTES,
    )?;
    let key_id = r.key_id()?;
    let width = r.u32()? as usize;
    let n_ct = r.u32()? as usize;
    if width == 0 || width > param_set.degree() {
        return Err(HeError::Malformed {
            what: MessageKind::AggregateRequest.name(),
            reason: "record width is zero or exceeds the polynomial degree",
        });
    }
    if n_ct == 0 || n_ct > MAX_AGGREGATE_CIPHERTEXTS {
        return Err(HeError::Malformed {
            what: MessageKind::AggregateRequest.name(),
            reason: "ciphertext count must be between 1 and 128",
        });
    }
    Ok((
        AggregateRequestView {
            param_set,
            key_id,
            width,
            n_ct,
        },
        r,
    ))
}

/// Combine several aggregate requests for the same key and record width
/// (for example one per contributor) into one. Checks structure only; the
/// island validates every coefficient when it evaluates.
pub fn merge_aggregate_requests(parts: &[&[u8]]) -> Result<Vec<u8>, HeError> {
    let mut first: Option<AggregateRequestView> = None;
    let mut total = 0usize;
    let mut body = Vec::new();
    for part in parts {
        let (view, mut r) = open_request(part)?;
        if let Some(f) = &first {
            check_params(f.param_set, view.param_set)?;
            if f.key_id != view.key_id {
                return Err(HeError::KeyMismatch {
                    expected: f.key_id.clone(),
                    found: view.key_id,
                });
            }
            if f.width != view.width {
                return Err(HeError::DimensionMismatch {
                    what: "record width",
                    expected: f.width,
                    found: view.width,
                });
            }
        }
        total += view.n_ct;
        if total > MAX_AGGREGATE_CIPHERTEXTS {
            return Err(HeError::TooLarge {
                what: "merged he-aggregate request (ciphertexts)",
                len: total,
                max: MAX_AGGREGATE_CIPHERTEXTS,
            });
        }
        let rest = r.take(r.remaining())?;
        body.extend_from_slice(rest);
        if first.is_none() {
            first = Some(view);
        }
    }
    let Some(f) = first else {
        return Err(HeError::InvalidInput(
            "no aggregate requests to merge".into(),
        ));
    };
    let mut out = Vec::with_capacity(wire::HEADER_LEN + wire::KEY_ID_LEN + 8 + body.len());
    wire::write_header(&mut out, MessageKind::AggregateRequest, f.param_set);
    out.extend_from_slice(f.key_id.as_bytes());
    out.extend_from_slice(&(f.width as u32).to_le_bytes());
    out.extend_from_slice(&(total as u32).to_le_bytes());
    out.extend_from_slice(&body);
    if out.len() > MAX_AGGREGATE_REQUEST_BYTES {
        return Err(HeError::TooLarge {
            what: MessageKind::AggregateRequest.name(),
            len: out.len(),
            max: MAX_AGGREGATE_REQUEST_BYTES,
        });
    }
    Ok(out)
}

/// Island: sum every record of an encrypted request. Needs only the user's
/// public material; returns the response bytes (masked, re-randomised,
/// noise-flooded column totals).
pub fn evaluate_aggregate(public: &HePublicMaterial, request: &[u8]) -> Result<Vec<u8>, HeError> {
    evaluate_aggregate_with_rng(public, request, &mut rand::rng())
}

pub(crate) fn evaluate_aggregate_with_rng<G: rand::RngCore + rand::CryptoRng>(
    public: &HePublicMaterial,
    request: &[u8],
    rng: &mut G,
) -> Result<Vec<u8>, HeError> {
    let (view, mut r) = open_request(request)?;
    let param_set = view.param_set;
    check_params(public.param_set(), param_set)?;
    if view.key_id != public.key_id() {
        return Err(HeError::KeyMismatch {
            expected: public.key_id().to_string(),
            found: view.key_id,
        });
    }
    let [mut c0, mut c1] = wire::read_ciphertext(&mut r, param_set)?;
    for _ in 1..view.n_ct {
        let [d0, d1] = wire::read_ciphertext(&mut r, param_set)?;
        c0 += &d0;
        c1 += &d1;
    }
    r.finish()?;

    let n = param_set.degree();
    let width = view.width;
    let per_ct = n / width;
    let mut ones: Vec<i64> = vec![0; n];
    for rec in 0..per_ct {
        ones[rec * width] = 1;
    }
    let par = param_set.bfv()?;
    let ctx = par
        .context_at_level(0)
        .map_err(HeError::backend("context lookup"))?;
    let mut p = Poly::try_convert_from(ones.as_slice(), ctx, false, Representation::PowerBasis)
        .map_err(HeError::backend_math("aggregate packing"))?;
    p.change_representation(Representation::Ntt);

    c0 *= &p;
    c1 *= &p;
    let base = (per_ct - 1) * width;
    let keep: Vec<(usize, u64)> = (0..width).map(|f| (base + f, 0)).collect();
    let [c0, c1] = sanitize::sanitize(public, c0, c1, &keep, rng)?;

    let mut out = Vec::with_capacity(wire::full_ciphertext_len(param_set) + 64);
    wire::write_header(&mut out, MessageKind::AggregateResponse, param_set);
    out.extend_from_slice(public.key_id().as_bytes());
    out.extend_from_slice(&(width as u32).to_le_bytes());
    wire::write_ciphertext(&mut out, &c0, &c1, param_set);
    tracing::debug!(
        ciphertexts = view.n_ct,
        width,
        bytes = out.len(),
        "he-aggregate evaluated"
    );
    Ok(out)
}

/// The result of one column.
#[derive(Clone, PartialEq)]
#[non_exhaustive]
pub enum ColumnResult {
    /// Sum and mean of a value column.
    Value {
        /// Column name.
        name: String,
        /// Sum of the values (exact up to the schema's quantisation).
        sum: f64,
        /// Mean (`None` when there are no records).
        mean: Option<f64>,
    },
    /// Counts per bucket of a histogram column.
    Histogram {
        /// Column name.
        name: String,
        /// Bucket edges (from the schema).
        edges: Vec<f64>,
        /// `edges.len() + 1` counts.
        counts: Vec<u64>,
    },
}

/// Decrypted aggregates (the user's plaintext: zeroized on drop, never printed).
#[derive(Clone, PartialEq)]
pub struct AggregateResult {
    /// Number of records aggregated.
    pub count: u64,
    /// One result per schema column.
    pub columns: Vec<ColumnResult>,
}

impl std::fmt::Debug for AggregateResult {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AggregateResult")
            .field("columns", &self.columns.len())
            .field("values", &"<redacted>")
            .finish()
    }
}

impl Drop for AggregateResult {
    fn drop(&mut self) {
        self.count.zeroize();
        for c in &mut self.columns {
            match c {
                ColumnResult::Value { sum, mean, .. } => {
                    sum.zeroize();
                    if let Some(m) = mean.as_mut() {
                        m.zeroize();
                    }
                }
                ColumnResult::Histogram { counts, .. } => counts.zeroize(),
            }
        }
    }
}

/// Client: decrypt an `he-aggregate` response under `schema`.
pub fn decrypt_aggregate(
    key: &HeSecretKey,
    schema: &AggregateSchema,
    response: &[u8],
) -> Result<AggregateResult, HeError> {
    let (param_set, mut r) = wire::open(
        response,
        MessageKind::AggregateResponse,
        MAX_AGGREGATE_RESPONSE_BYTES,
    )?;
    check_params(key.param_set(), param_set)?;
    schema.validate(param_set)?;
    let key_id = r.key_id()?;
    if key_id != key.key_id() {
        return Err(HeError::KeyMismatch {
            expected: key.key_id().to_string(),
            found: key_id,
        });
    }
    let width = r.u32()? as usize;
    let ct = wire::to_fhe_ciphertext(wire::read_ciphertext(&mut r, param_set)?, param_set)?;
    r.finish()?;
    if width != schema.record_width() {
        return Err(HeError::DimensionMismatch {
            what: "record width",
            expected: schema.record_width(),
            found: width,
        });
    }
    let pt = key
        .inner()
        .try_decrypt(&ct)
        .map_err(HeError::backend("decryption"))?;
    let values: Zeroizing<Vec<i64>> = Zeroizing::new(
        Vec::<i64>::try_decode(&pt, fhe::bfv::Encoding::poly())
            .map_err(HeError::backend("decoding"))?,
    );
    let base = (param_set.degree() / width - 1) * width;
    let totals = &values[base..base + width];
    let count = totals[0].max(0) as u64;
    let mut slot = 1;
    let mut columns = Vec::with_capacity(schema.columns.len());
    for col in &schema.columns {
        match col {
            AggregateColumn::Value { name, scale, .. } => {
                let sum = totals[slot] as f64 / scale;
                slot += 1;
                columns.push(ColumnResult::Value {
                    name: name.clone(),
                    sum,
                    mean: (count > 0).then(|| sum / count as f64),
                });
            }
            AggregateColumn::Histogram { name, edges } => {
                let counts = totals[slot..slot + edges.len() + 1]
                    .iter()
                    .map(|c| (*c).max(0) as u64)
                    .collect();
                slot += edges.len() + 1;
                columns.push(ColumnResult::Histogram {
                    name: name.clone(),
                    edges: edges.clone(),
                    counts,
                });
            }
        }
    }
    Ok(AggregateResult { count, columns })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::generate_keypair;
    use rand::{Rng, SeedableRng};
    use rand_chacha::ChaCha8Rng;

    fn schema() -> AggregateSchema {
        AggregateSchema {
            columns: vec![
                AggregateColumn::Value {
                    name: "glucose_mmol_l".into(),
                    scale: 100.0,
                    min: 0.0,
                    max: 50.0,
                },
                AggregateColumn::Histogram {
                    name: "age".into(),
                    edges: vec![18.0, 40.0, 65.0],
                },
                AggregateColumn::Value {
                    name: "delta".into(),
                    scale: 10.0,
                    min: -100.0,
                    max: 100.0,
                },
            ],
        }
    }

    fn records(rng: &mut ChaCha8Rng, n: usize) -> Vec<Vec<f64>> {
        (0..n)
            .map(|_| {
                vec![
                    (rng.random_range(3.0f64..12.0) * 100.0).round() / 100.0,
                    rng.random_range(0.0f64..99.0).floor(),
                    (rng.random_range(-100.0f64..100.0) * 10.0).round() / 10.0,
                ]
            })
            .collect()
    }

    #[test]
    fn aggregates_match_plaintext() {
        let mut rng = ChaCha8Rng::seed_from_u64(9);
        let (sk, pm) = generate_keypair().unwrap();
        let s = schema();
        // 2500 records with width 8 → 1024 per ciphertext → 3 ciphertexts.
        let recs = records(&mut rng, 2500);
        let mine = encrypt_records(&sk, &s, &recs[..2000]).unwrap();
        // A second contributor with only the public material.
        let theirs = encrypt_records(&pm, &s, &recs[2000..]).unwrap();
        let req = merge_aggregate_requests(&[&mine, &theirs]).unwrap();
        let resp = evaluate_aggregate(&pm, &req).unwrap();
        let out = decrypt_aggregate(&sk, &s, &resp).unwrap();
        assert_eq!(out.count, 2500);
        let sum0: f64 = recs.iter().map(|r| (r[0] * 100.0).round()).sum::<f64>() / 100.0;
        let sum2: f64 = recs.iter().map(|r| (r[2] * 10.0).round()).sum::<f64>() / 10.0;
        let mut hist = [0u64; 4];
        for r in &recs {
            hist[[18.0, 40.0, 65.0].partition_point(|e| *e <= r[1])] += 1;
        }
        match &out.columns[0] {
            ColumnResult::Value { sum, mean, .. } => {
                assert!((sum - sum0).abs() < 1e-6);
                assert!((mean.unwrap() - sum0 / 2500.0).abs() < 1e-9);
            }
            _ => panic!("column 0 is a value column"),
        }
        match &out.columns[1] {
            ColumnResult::Histogram { counts, .. } => assert_eq!(counts.as_slice(), &hist),
            _ => panic!("column 1 is a histogram"),
        }
        match &out.columns[2] {
            ColumnResult::Value { sum, .. } => assert!((sum - sum2).abs() < 1e-6),
            _ => panic!("column 2 is a value column"),
        }
        assert!(format!("{out:?}").contains("<redacted>"));
    }

    #[test]
    fn json_shapes_of_head_and_schema() {
        let h: crate::LinearHead = serde_json::from_str(
            r#"{"labels":["a","b"],"weights":[[0.1,0.2],[0.3,-0.4]],"bias":[0.0,1.0]}"#,
        )
        .unwrap();
        assert_eq!(h.quantise().unwrap().n_classes(), 2);
        let s: AggregateSchema = serde_json::from_str(
            r#"{"columns":[{"kind":"value","name":"v","scale":10,"min":0,"max":5},
                           {"kind":"histogram","name":"h","edges":[1,2]}]}"#,
        )
        .unwrap();
        assert_eq!(s.record_width(), 1 + 1 + 3);
        s.validate(ParamSet::DEFAULT).unwrap();
    }

    #[test]
    fn refusals() {
        let mut rng = ChaCha8Rng::seed_from_u64(10);
        let (sk, pm) = generate_keypair().unwrap();
        let (_, other) = generate_keypair().unwrap();
        let s = schema();
        assert!(matches!(
            encrypt_records(&sk, &s, &Vec::<Vec<f64>>::new()),
            Err(HeError::InvalidInput(_))
        ));
        assert!(matches!(
            encrypt_records(&sk, &s, &[vec![1.0, 2.0]]),
            Err(HeError::DimensionMismatch { .. })
        ));
        assert!(matches!(
            encrypt_records(&sk, &s, &[vec![60.0, 2.0, 0.0]]),
            Err(HeError::InvalidInput(_))
        ));
        assert!(matches!(
            encrypt_records(&sk, &s, &[vec![f64::NAN, 2.0, 0.0]]),
            Err(HeError::InvalidInput(_))
        ));
        let overflow = AggregateSchema {
            columns: vec![AggregateColumn::Value {
                name: "x".into(),
                scale: 1e6,
                min: 0.0,
                max: 1e6,
            }],
        };
        assert!(matches!(
            overflow.validate(ParamSet::DEFAULT),
            Err(HeError::InvalidInput(_))
        ));
        let unsorted = AggregateSchema {
            columns: vec![AggregateColumn::Histogram {
                name: "h".into(),
                edges: vec![2.0, 1.0],
            }],
        };
        assert!(matches!(
            unsorted.validate(ParamSet::DEFAULT),
            Err(HeError::InvalidInput(_))
        ));

        let recs = records(&mut rng, 10);
        let req = encrypt_records(&sk, &s, &recs).unwrap();
        assert!(matches!(
            evaluate_aggregate(&other, &req),
            Err(HeError::KeyMismatch { .. })
        ));
        let req_other = encrypt_records(&other, &s, &recs).unwrap();
        assert!(matches!(
            merge_aggregate_requests(&[&req, &req_other]),
            Err(HeError::KeyMismatch { .. })
        ));
        // Zero ciphertexts declared.
        let mut zero = req.clone();
        let at = wire::HEADER_LEN + wire::KEY_ID_LEN + 4;
        zero[at..at + 4].copy_from_slice(&0u32.to_le_bytes());
        assert!(matches!(
            evaluate_aggregate(&pm, &zero),
            Err(HeError::Malformed { .. })
        ));
        // More ciphertexts declared than present.
        let mut more = req.clone();
        more[at..at + 4].copy_from_slice(&2u32.to_le_bytes());
        assert!(matches!(
            evaluate_aggregate(&pm, &more),
            Err(HeError::Truncated { .. })
        ));
        // Width zero.
        let mut w0 = req.clone();
        w0[at - 4..at].copy_from_slice(&0u32.to_le_bytes());
        assert!(matches!(
            evaluate_aggregate(&pm, &w0),
            Err(HeError::Malformed { .. })
        ));
        // A classify request is not an aggregate request.
        let x = vec![0.0f32; 384];
        let creq = crate::encrypt_features(&sk, &x).unwrap();
        assert!(matches!(
            evaluate_aggregate(&pm, &creq),
            Err(HeError::WrongKind { .. })
        ));
        // Response decrypted with the wrong schema width.
        let resp = evaluate_aggregate(&pm, &req).unwrap();
        let narrow = AggregateSchema {
            columns: vec![s.columns[0].clone()],
        };
        assert!(matches!(
            decrypt_aggregate(&sk, &narrow, &resp),
            Err(HeError::DimensionMismatch { .. })
        ));
    }
}
