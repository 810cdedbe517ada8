//! A fused MiniLM (BERT encoder) forward pass for CPU on plain `f32`
//! slices: the `embed` and `classify` workloads' model.
//!
//! Why not a general tensor library: MiniLM sentences are short (~27
//! tokens), so a generic per-op engine spends much of its time on small
//! matmuls that repack the weights on every call, transposes and copies for
//! attention, and one allocation per op. Here the weights are packed once
//! at load into panels for a register-blocked matmul kernel (SIMD through
//! `pulp`, which picks AVX2/FMA or AVX-512 at run time and falls back to
//! scalar code, all in safe Rust), the Q/K/V projections are one matmul,
//! every sequence of a batch keeps its own length (attention runs per
//! sequence, so nothing is padded or masked), and work is split over
//! threads by output columns (matmuls) and by sequences or heads
//! (attention) with a spin-waiting team (`team.rs`: sleeping pool workers
//! woke too slowly for sub-millisecond matmuls), GELU fused into the
//! intermediate matmul's threads.
//!
//! Numerics follow BERT exactly (erf GELU, LayerNorm eps from the config);
//! erf and exp use polynomial/rational approximations accurate to ~1e-7,
//! and the embeddings are checked against an independent float64 reference
//! (tests/embed.rs, cosine ≥ 0.999 and |Δ| < 1e-3).

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use pulp::{Arch, Simd, WithSimd};
use safetensors::SafeTensors;

use crate::team::{self, Job, Team};

/// Output columns per packed weight panel.
const NR: usize = 16;
/// Rows per register tile, at most.
const MR: usize = 6;
/// Rows per cache block of the input (keeps it in L2 while panels stream).
const MC: usize = 96;

/// The BERT dimensions read from config.json.
#[derive(Debug, Clone, serde::Deserialize)]
pub struct MiniLmConfig {
    pub vocab_size: usize,
    pub hidden_size: usize,
    pub num_hidden_layers: usize,
    pub num_attention_heads: usize,
    pub intermediate_size: usize,
    pub max_position_embeddings: usize,
    pub type_vocab_size: usize,
    pub layer_norm_eps: f64,
    pub hidden_act: String,
}

/// A `Linear` weight W (n × k, PyTorch layout) packed for Y = X·Wᵀ + b:
/// panel p holds output columns p·NR .. p·NR+NR as k rows of NR floats.
/// The data is shared (`Arc`), so a clone is cheap and can travel with a
/// job to a helper thread.
///
/// The panels start on a 64-byte boundary ([`Packed::data`]), so every
/// AVX-512 weight load of the kernel reads exactly one cache line. Where a
/// buffer lands is otherwise up to malloc, whose choice depends on the
/// process's allocation history (glibc raises its mmap threshold after
/// the first large free): the same model then had differently aligned
/// panels in the island agent and in the enclave, and a confidential job
/// ran its model measurably slower than the same job plain (BENCHMARKS.md,
/// issue 5).
#[derive(Clone)]
struct Packed {
    k: usize,
    n: usize,
    /// `n·k` panel floats, from `off` on, plus up to a line of slack.
    buf: Arc<[f32]>,
    off: usize,
    bias: Arc<[f32]>,
}

/// Floats per 64-byte cache line (and per AVX-512 vector).
const LINE: usize = 16;

impl Packed {
    fn new(w: &[f32], bias: Vec<f32>, n: usize, k: usize) -> Result<Self, String> {
        Self::with_offset(w, bias, n, k, None)
    }

    /// [`Packed::new`]; `off` forces where the panels start in the buffer
    /// (tests use it to check any alignment gives the same results).
    fn with_offset(
        w: &[f32],
        bias: Vec<f32>,
        n: usize,
        k: usize,
        off: Option<usize>,
    ) -> Result<Self, String> {
        if w.len() != n * k || bias.len() != n || !n.is_multiple_of(NR) || k == 0 {
            return Err(format!("linear weight {n}x{k} has an unexpected shape"));
        }
        let mut buf: Arc<[f32]> = std::iter::repeat_n(0f32, n * k + LINE).collect();
        // align_offset may in principle find no offset (usize::MAX); any
        // offset within the slack is then correct, only slower. A forced
        // offset is checked by the range below.
        let off = off.unwrap_or_else(|| buf.as_ptr().align_offset(64).min(LINE));
        let data = Arc::get_mut(&mut buf)
            .ok_or("a new weight buffer is unexpectedly shared")?
            .get_mut(off..off + n * k)
            .ok_or("weight buffer offset out of range")?;
        for p in 0..n / NR {
            let panel = &mut data[p * k * NR..(p + 1) * k * NR];
            for j in 0..NR {
                let row = &w[(p * NR + j) * k..(p * NR + j + 1) * k];
                for (kk, &v) in row.iter().enumerate() {
                    panel[kk * NR + j] = v;
                }
            }
        }
        Ok(Self {
            k,
            n,
            buf,
            off,
            bias: bias.into(),
        })
    }

    /// The packed panels.
    fn data(&self) -> &[f32] {
        &self.buf[self.off..self.off + self.n * self.k]
    }

    fn panels(&self) -> usize {
        self.n / NR
    }
}

struct Layer {
    qkv: Packed,
    attn_out: Packed,
    ln1: (Vec<f32>, Vec<f32>),
    inter: Packed,
    out: Packed,
    ln2: (Vec<f32>, Vec<f32>),
}

/// MiniLM weights ready for inference. `Send + Sync`, read-only.
pub struct MiniLm {
    cfg: MiniLmConfig,
    word: Vec<f32>,
    pos: Vec<f32>,
    type0: Vec<f32>,
    emb_ln: (Vec<f32>, Vec<f32>),
    layers: Vec<Layer>,
    eps: f32,
}

fn tensor(st: &SafeTensors<'_>, name: &str, shape: &[usize]) -> Result<Vec<f32>, String> {
    let t = st.tensor(name).map_err(|e| format!("tensor {name}: {e}"))?;
    if t.dtype() != safetensors::Dtype::F32 || t.shape() != shape {
        return Err(format!(
            "tensor {name} is {:?} {:?}, expected F32 {shape:?}",
            t.dtype(),
            t.shape()
        ));
    }
    Ok(t.data()
        .chunks_exact(4)
        .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
        .collect())
}

impl MiniLm {
    /// Builds the model from config.json and model.safetensors bytes.
    pub fn from_bytes(config: &[u8], weights: &[u8]) -> Result<Self, String> {
        let cfg: MiniLmConfig =
            serde_json::from_slice(config).map_err(|e| format!("config.json: {e}"))?;
        let (h, i, nh) = (
            cfg.hidden_size,
            cfg.intermediate_size,
            cfg.num_attention_heads,
        );
        if cfg.hidden_act != "gelu" || nh == 0 || h % nh != 0 || cfg.type_vocab_size == 0 {
            return Err("config is not a BERT encoder with erf GELU".into());
        }
        let st = SafeTensors::deserialize(weights).map_err(|e| e.to_string())?;
        let word = tensor(
            &st,
            "embeddings.word_embeddings.weight",
            &[cfg.vocab_size, h],
        )?;
        let pos = tensor(
            &st,
            "embeddings.position_embeddings.weight",
            &[cfg.max_position_embeddings, h],
        )?;
        let types = tensor(
            &st,
            "embeddings.token_type_embeddings.weight",
            &[cfg.type_vocab_size, h],
        )?;
        let ln = |p: &str| -> Result<(Vec<f32>, Vec<f32>), String> {
            Ok((
                tensor(&st, &format!("{p}.weight"), &[h])?,
                tensor(&st, &format!("{p}.bias"), &[h])?,
            ))
        };
        let lin = |p: &str, n: usize, k: usize| -> Result<Packed, String> {
            let w = tensor(&st, &format!("{p}.weight"), &[n, k])?;
            let b = tensor(&st, &format!("{p}.bias"), &[n])?;
            Packed::new(&w, b, n, k)
        };
        let emb_ln = ln("embeddings.LayerNorm")?;
        let mut layers = Vec::with_capacity(cfg.num_hidden_layers);
        for l in 0..cfg.num_hidden_layers {
            let p = format!("encoder.layer.{l}");
            // Q, K and V as one matmul: rows [q; k; v] of a (3h × h) weight.
            let mut w = Vec::with_capacity(3 * h * h);
            let mut b = Vec::with_capacity(3 * h);
            for part in ["query", "key", "value"] {
                w.extend(tensor(
                    &st,
                    &format!("{p}.attention.self.{part}.weight"),
                    &[h, h],
                )?);
                b.extend(tensor(
                    &st,
                    &format!("{p}.attention.self.{part}.bias"),
                    &[h],
                )?);
            }
            layers.push(Layer {
                qkv: Packed::new(&w, b, 3 * h, h)?,
                attn_out: lin(&format!("{p}.attention.output.dense"), h, h)?,
                ln1: ln(&format!("{p}.attention.output.LayerNorm"))?,
                inter: lin(&format!("{p}.intermediate.dense"), i, h)?,
                out: lin(&format!("{p}.output.dense"), h, i)?,
                ln2: ln(&format!("{p}.output.LayerNorm"))?,
            });
        }
        Ok(Self {
            eps: cfg.layer_norm_eps as f32,
            type0: types[..h].to_vec(),
            cfg,
            word,
            pos,
            emb_ln,
            layers,
        })
    }

    pub fn hidden_size(&self) -> usize {
        self.cfg.hidden_size
    }

    pub fn vocab_size(&self) -> usize {
        self.cfg.vocab_size
    }

    pub fn max_positions(&self) -> usize {
        self.cfg.max_position_embeddings
    }

    /// Mean-pooled (not normalised) last hidden states, one per sequence.
    /// Token ids must be < [`Self::vocab_size`] and each sequence non-empty
    /// and at most [`Self::max_positions`] long (the caller checks).
    pub fn mean_pooled(&self, seqs: &[&[u32]]) -> Vec<Vec<f32>> {
        let h = self.cfg.hidden_size;
        let total: usize = seqs.iter().map(|s| s.len()).sum();
        let mut offsets = Vec::with_capacity(seqs.len());
        let mut o = 0;
        for s in seqs {
            offsets.push((o, s.len()));
            o += s.len();
        }

        // Embeddings: word + position + token type 0, then LayerNorm.
        let mut x = vec![0f32; total * h];
        for (s, &(o, len)) in seqs.iter().zip(&offsets) {
            for (t, &id) in s.iter().enumerate().take(len) {
                let row = &mut x[(o + t) * h..(o + t + 1) * h];
                let w = &self.word[id as usize * h..(id as usize + 1) * h];
                let p = &self.pos[t * h..(t + 1) * h];
                for j in 0..h {
                    row[j] = w[j] + p[j] + self.type0[j];
                }
            }
        }
        layer_norm_rows(&mut x, None, h, &self.emb_ln, self.eps);

        // Helpers only when the largest matmul is worth splitting.
        let threads = split(
            2 * total * self.cfg.intermediate_size * h,
            usize::MAX,
            team::threads(),
        );
        let heads = self.cfg.num_attention_heads;
        let inter_n = self.cfg.intermediate_size;
        let mut x = Arc::new(x);
        let mut forward = |team: &Team<'_>| {
            let mut qkv = Arc::new(vec![0f32; total * 3 * h]);
            let mut ctx = Arc::new(vec![0f32; total * h]);
            let mut tmp = vec![0f32; total * h];
            let mut inter = Arc::new(vec![0f32; total * inter_n]);
            for layer in &self.layers {
                matmul(team, &x, total, &layer.qkv, mut_buf(&mut qkv), None);
                attention(team, &qkv, &offsets, h, heads, mut_buf(&mut ctx));
                matmul(team, &ctx, total, &layer.attn_out, &mut tmp, None);
                layer_norm_rows(mut_buf(&mut x), Some(&tmp), h, &layer.ln1, self.eps);
                matmul(
                    team,
                    &x,
                    total,
                    &layer.inter,
                    mut_buf(&mut inter),
                    Some(gelu),
                );
                matmul(team, &inter, total, &layer.out, &mut tmp, None);
                layer_norm_rows(mut_buf(&mut x), Some(&tmp), h, &layer.ln2, self.eps);
            }
        };
        // The process-wide team when the pass is worth splitting and no
        // other pass holds it; alone otherwise.
        match (threads > 1).then(team::shared).flatten() {
            Some(team) => forward(&team),
            None => Team::with(0, |team| forward(team)),
        }

        offsets
            .iter()
            .map(|&(o, len)| {
                let mut v = vec![0f32; h];
                for t in 0..len {
                    for (a, b) in v.iter_mut().zip(&x[(o + t) * h..(o + t + 1) * h]) {
                        *a += b;
                    }
                }
                let n = len.max(1) as f32;
                v.iter_mut().for_each(|a| *a /= n);
                v
            })
            .collect()
    }
}

/// Threads to split `flops` of work over: one per ~0.5 MFLOP (a team
/// hand-off costs well under a microsecond, but tiny jobs still run
/// inline), at most `units` and `threads`.
fn split(flops: usize, units: usize, threads: usize) -> usize {
    let by_work = (flops / 500_000).max(1);
    by_work.min(threads).min(units).max(1)
}

/// 0..n cut into at most `parts` contiguous, non-empty ranges of near
/// equal length.
fn ranges(n: usize, parts: usize) -> impl Iterator<Item = (usize, usize)> {
    let per = n.div_ceil(parts.max(1)).max(1);
    (0..n.div_ceil(per)).map(move |i| (i * per, ((i + 1) * per).min(n)))
}

/// The buffer behind `a`, for writing between team jobs. Jobs drop their
/// clones before they report done, so this never copies in practice; if a
/// clone were still alive it would copy rather than alias.
fn mut_buf(a: &mut Arc<Vec<f32>>) -> &mut Vec<f32> {
    Arc::make_mut(a)
}

/// y (m × n) = x (m × k) · Wᵀ + b, then `epilogue` on y's elements (applied
/// by each thread to its own block).
fn matmul(
    team: &Team<'_>,
    x: &Arc<Vec<f32>>,
    m: usize,
    w: &Packed,
    y: &mut [f32],
    epilogue: Option<fn(&mut [f32])>,
) {
    let n = w.n;
    debug_assert!(x.len() >= m * w.k && y.len() >= m * n);
    let tasks = split(2 * m * n * w.k, w.panels(), team.size());
    if tasks == 1 {
        Arch::new().dispatch(MatmulOp {
            x,
            m,
            w,
            p0: 0,
            p1: w.panels(),
            y: YOut::Rows(&mut y[..m * n]),
        });
        if let Some(f) = epilogue {
            f(&mut y[..m * n]);
        }
        return;
    }
    // Output columns (panels) are handed out to the team's threads in
    // chunks from a shared counter, so a thread that starts late or runs
    // slower simply takes fewer; each chunk is computed into its own block
    // and copied into y afterwards. Chunks are whole AVX-512 panel pairs.
    let panels = w.panels();
    let chunk = (panels / (4 * tasks)).max(2).next_multiple_of(2);
    let next = Arc::new(AtomicUsize::new(0));
    let jobs: Vec<Job<'_>> = (0..tasks)
        .map(|_| {
            let (x, next, w) = (Arc::clone(x), Arc::clone(&next), w.clone());
            Box::new(move || {
                let mut parts = Vec::new();
                loop {
                    let p0 = next.fetch_add(chunk, Ordering::Relaxed);
                    if p0 >= panels {
                        break;
                    }
                    let p1 = (p0 + chunk).min(panels);
                    let mut out = vec![0f32; m * (p1 - p0) * NR];
                    Arch::new().dispatch(MatmulOp {
                        x: &x,
                        m,
                        w: &w,
                        p0,
                        p1,
                        y: YOut::Block(&mut out),
                    });
                    if let Some(f) = epilogue {
                        f(&mut out);
                    }
                    parts.push((p0, out));
                }
                parts
            }) as Job<'_>
        })
        .collect();
    for (p0, out) in team.run(jobs).into_iter().flatten() {
        let width = out.len() / m.max(1);
        if width == 0 {
            continue;
        }
        for (r, src) in out.chunks_exact(width).enumerate() {
            y[r * n + p0 * NR..r * n + p0 * NR + width].copy_from_slice(src);
        }
    }
}

enum YOut<'a> {
    /// Full rows of y (all panels).
    Rows(&'a mut [f32]),
    /// A block of the panels p0..p1 only (m × (p1-p0)·NR).
    Block(&'a mut [f32]),
}

struct MatmulOp<'a> {
    x: &'a [f32],
    m: usize,
    w: &'a Packed,
    p0: usize,
    p1: usize,
    y: YOut<'a>,
}

impl WithSimd for MatmulOp<'_> {
    type Output = ();

    #[inline(always)]
    fn with_simd<S: Simd>(self, simd: S) {
        // A register tile is MR rows × (NP panels × NV vectors): 12
        // accumulators with AVX2 (one 16-column panel = 2 vectors) and with
        // AVX-512 (two panels side by side, one vector each), so the FMA
        // units stay busy at either width.
        let lanes = core::mem::size_of::<S::f32s>() / 4;
        match lanes {
            8 => self.run::<S, 2, 1>(simd),
            16 => self.run::<S, 1, 2>(simd),
            4 => self.run::<S, 4, 1>(simd),
            _ => self.run::<S, 16, 1>(simd),
        }
    }
}

impl MatmulOp<'_> {
    #[inline(always)]
    fn run<S: Simd, const NV: usize, const NP: usize>(self, simd: S) {
        let MatmulOp { x, m, w, p0, p1, y } = self;
        let n = w.n;
        let (y, ld, col0) = match y {
            YOut::Rows(y) => (y, n, 0),
            YOut::Block(y) => (y, (p1 - p0) * NR, p0 * NR),
        };
        let mut r0 = 0;
        while r0 < m {
            let rc = MC.min(m - r0);
            let mut p = p0;
            while p < p1 {
                if NP > 1 && p + NP <= p1 {
                    panel_rows::<S, NV, NP>(simd, x, r0, rc, w, p, y, ld, p * NR - col0);
                    p += NP;
                } else {
                    panel_rows::<S, NV, 1>(simd, x, r0, rc, w, p, y, ld, p * NR - col0);
                    p += 1;
                }
            }
            r0 += rc;
        }
    }
}

/// Rows r0..r0+rc of y for the NP panels starting at panel `p`, one
/// register tile of up to MR rows at a time.
#[inline(always)]
#[allow(clippy::too_many_arguments)]
fn panel_rows<S: Simd, const NV: usize, const NP: usize>(
    simd: S,
    x: &[f32],
    r0: usize,
    rc: usize,
    w: &Packed,
    p: usize,
    y: &mut [f32],
    ld: usize,
    ycol: usize,
) {
    let k = w.k;
    let data = w.data();
    let panels: [&[f32]; NP] =
        core::array::from_fn(|q| &data[(p + q) * k * NR..(p + q + 1) * k * NR]);
    let bias = &w.bias[p * NR..(p + NP) * NR];
    // Rows split into tiles as even as possible (27 rows: 6 + 6 + 5 + 5 +
    // 5, not 6 + 6 + 6 + 6 + 3), so no thin tile runs at a fraction of the
    // FMA rate. Taller tiles (8 or 12 rows for AVX-512's 32 registers)
    // measured 25–40 % slower here (not profiled; register pressure from
    // the row pointers is the likely reason).
    let tiles = rc.div_ceil(MR).max(1);
    let (base, extra) = (rc / tiles, rc % tiles);
    let mut r = r0;
    for t in 0..tiles {
        let rows = base + usize::from(t < extra);
        let xs = &x[r * k..(r + rows) * k];
        let ys = &mut y[r * ld..];
        match rows {
            6 => tile::<S, NV, NP, 6>(simd, xs, k, panels, bias, ys, ld, ycol),
            5 => tile::<S, NV, NP, 5>(simd, xs, k, panels, bias, ys, ld, ycol),
            4 => tile::<S, NV, NP, 4>(simd, xs, k, panels, bias, ys, ld, ycol),
            3 => tile::<S, NV, NP, 3>(simd, xs, k, panels, bias, ys, ld, ycol),
            2 => tile::<S, NV, NP, 2>(simd, xs, k, panels, bias, ys, ld, ycol),
            _ => tile::<S, NV, NP, 1>(simd, xs, k, panels, bias, ys, ld, ycol),
        }
        r += rows;
    }
}

/// R rows × NP·NR columns of y = x·Wᵀ + b from NP (1 or 2) adjacent
/// panels, accumulated in registers.
#[inline(always)]
#[allow(clippy::too_many_arguments)]
fn tile<S: Simd, const NV: usize, const NP: usize, const R: usize>(
    simd: S,
    x: &[f32],
    k: usize,
    panels: [&[f32]; NP],
    bias: &[f32],
    y: &mut [f32],
    ld: usize,
    ycol: usize,
) {
    const { assert!(NP == 1 || NP == 2) };
    let mut acc = [[[simd.splat_f32s(0.0); NV]; NP]; R];
    let rows: [&[f32]; R] = core::array::from_fn(|r| &x[r * k..(r + 1) * k]);
    // Both iterators walk the same panel when NP is 1.
    let pairs = panels[0]
        .chunks_exact(NR)
        .zip(panels[NP - 1].chunks_exact(NR));
    for (kk, (w0, w1)) in pairs.enumerate().take(k) {
        let ws = [w0, w1];
        let wv: [[S::f32s; NV]; NP] = core::array::from_fn(|q| {
            let (v, _) = S::as_simd_f32s(ws[q]);
            core::array::from_fn(|i| v[i])
        });
        for r in 0..R {
            let a = simd.splat_f32s(rows[r][kk]);
            for q in 0..NP {
                for v in 0..NV {
                    acc[r][q][v] = simd.mul_add_e_f32s(a, wv[q][v], acc[r][q][v]);
                }
            }
        }
    }
    for (r, acc) in acc.iter().enumerate() {
        for (q, acc) in acc.iter().enumerate() {
            let vals: &[f32] = pulp::bytemuck::cast_slice(&acc[..]);
            let col = ycol + q * NR;
            let out = &mut y[r * ld + col..r * ld + col + NR];
            let b = &bias[q * NR..(q + 1) * NR];
            for j in 0..NR {
                out[j] = vals[j] + b[j];
            }
        }
    }
}

/// Self-attention per sequence and head on the fused projections
/// `qkv` (rows of [q | k | v]), writing the context rows into `ctx`. Split
/// over the team by sequences, or by heads for a single sequence.
fn attention(
    team: &Team<'_>,
    qkv: &Arc<Vec<f32>>,
    offsets: &[(usize, usize)],
    h: usize,
    heads: usize,
    ctx: &mut [f32],
) {
    let d = h / heads;
    let scale = 1.0 / (d as f32).sqrt();
    let flops: usize = offsets.iter().map(|s| 4 * s.1 * s.1 * h).sum();
    // (sequence range, head range) per job.
    let parts: Vec<((usize, usize), (usize, usize))> = if offsets.len() == 1 {
        ranges(heads, split(flops, heads, team.size()))
            .map(|hr| ((0, 1), hr))
            .collect()
    } else {
        ranges(offsets.len(), split(flops, offsets.len(), team.size()))
            .map(|sr| (sr, (0, heads)))
            .collect()
    };
    let jobs: Vec<Job<'_>> = parts
        .iter()
        .map(|&((s0, s1), (h0, h1))| {
            let qkv = Arc::clone(qkv);
            let seqs = offsets[s0..s1].to_vec();
            Box::new(move || {
                let mut out = Vec::new();
                for (o, len) in seqs {
                    out.extend(Arch::new().dispatch(AttnOp {
                        qkv: &qkv[o * 3 * h..(o + len) * 3 * h],
                        len,
                        h,
                        heads: (h0, h1),
                        d,
                        scale,
                    }));
                }
                vec![(0usize, out)]
            }) as Job<'_>
        })
        .collect();
    let outs = team.run(jobs).into_iter().flatten().map(|(_, out)| out);
    for (&((s0, s1), (h0, h1)), out) in parts.iter().zip(outs) {
        // Rows of (h1 - h0)·d values, sequence after sequence.
        let width = (h1 - h0) * d;
        let rows = offsets[s0..s1].iter().flat_map(|&(o, len)| o..o + len);
        for (t, src) in rows.zip(out.chunks_exact(width)) {
            ctx[t * h + h0 * d..t * h + h1 * d].copy_from_slice(src);
        }
    }
}

struct AttnOp<'a> {
    qkv: &'a [f32],
    len: usize,
    h: usize,
    /// Heads h0..h1 of this job; its output rows hold only their values.
    heads: (usize, usize),
    d: usize,
    scale: f32,
}

impl WithSimd for AttnOp<'_> {
    type Output = Vec<f32>;

    #[inline(always)]
    fn with_simd<S: Simd>(self, simd: S) -> Vec<f32> {
        let AttnOp {
            qkv,
            len,
            h,
            heads,
            d,
            scale,
        } = self;
        let (h0, h1) = heads;
        let width = (h1 - h0) * d;
        let mut out = vec![0f32; len * width];
        let mut p = vec![0f32; len];
        let row = |t: usize| &qkv[t * 3 * h..(t + 1) * 3 * h];
        for hd in h0..h1 {
            for i in 0..len {
                let q = &row(i)[hd * d..(hd + 1) * d];
                let mut max = f32::NEG_INFINITY;
                for (j, pj) in p.iter_mut().enumerate() {
                    let kv = &row(j)[h + hd * d..h + (hd + 1) * d];
                    *pj = dot(simd, q, kv) * scale;
                    max = max.max(*pj);
                }
                let mut sum = 0.0;
                for pj in p.iter_mut() {
                    *pj = exp_approx(*pj - max);
                    sum += *pj;
                }
                let inv = 1.0 / sum;
                let o = &mut out[i * width + (hd - h0) * d..i * width + (hd - h0 + 1) * d];
                for (j, &pj) in p.iter().enumerate() {
                    let v = &row(j)[2 * h + hd * d..2 * h + (hd + 1) * d];
                    let w = pj * inv;
                    for (a, b) in o.iter_mut().zip(v) {
                        *a += w * b;
                    }
                }
            }
        }
        out
    }
}

#[inline(always)]
fn dot<S: Simd>(simd: S, a: &[f32], b: &[f32]) -> f32 {
    let (av, at) = S::as_simd_f32s(a);
    let (bv, bt) = S::as_simd_f32s(b);
    let mut acc = simd.splat_f32s(0.0);
    for (x, y) in av.iter().zip(bv) {
        acc = simd.mul_add_e_f32s(*x, *y, acc);
    }
    let mut s = simd.reduce_sum_f32s(acc);
    for (x, y) in at.iter().zip(bt) {
        s += x * y;
    }
    s
}

/// x ← LayerNorm(x + residual) row by row (residual optional).
fn layer_norm_rows(
    x: &mut [f32],
    residual: Option<&[f32]>,
    h: usize,
    ln: &(Vec<f32>, Vec<f32>),
    eps: f32,
) {
    struct Op<'a> {
        x: &'a mut [f32],
        residual: Option<&'a [f32]>,
        h: usize,
        ln: &'a (Vec<f32>, Vec<f32>),
        eps: f32,
    }
    impl WithSimd for Op<'_> {
        type Output = ();
        #[inline(always)]
        fn with_simd<S: Simd>(self, _simd: S) {
            let Op {
                x,
                residual,
                h,
                ln,
                eps,
            } = self;
            for (r, row) in x.chunks_exact_mut(h).enumerate() {
                if let Some(res) = residual {
                    for (a, b) in row.iter_mut().zip(&res[r * h..(r + 1) * h]) {
                        *a += b;
                    }
                }
                let mean = row.iter().sum::<f32>() / h as f32;
                let var = row.iter().map(|v| (v - mean) * (v - mean)).sum::<f32>() / h as f32;
                let inv = 1.0 / (var + eps).sqrt();
                for ((v, g), b) in row.iter_mut().zip(&ln.0).zip(&ln.1) {
                    *v = (*v - mean) * inv * g + b;
                }
            }
        }
    }
    Arch::new().dispatch(Op {
        x,
        residual,
        h,
        ln,
        eps,
    });
}

/// x ← GELU(x) = x/2 · (1 + erf(x/√2)), BERT's exact (erf) form.
fn gelu(x: &mut [f32]) {
    struct Op<'a>(&'a mut [f32]);
    impl WithSimd for Op<'_> {
        type Output = ();
        #[inline(always)]
        fn with_simd<S: Simd>(self, _simd: S) {
            for v in self.0.iter_mut() {
                *v = 0.5 * *v * (1.0 + erf_approx(*v * std::f32::consts::FRAC_1_SQRT_2));
            }
        }
    }
    Arch::new().dispatch(Op(x));
}

/// erf(x) for f32: a rational approximation on [-4, 4] (erf is ±1 to f32
/// precision outside), branch-free so loops over it vectorise.
#[inline(always)]
fn erf_approx(x: f32) -> f32 {
    let x = x.clamp(-4.0, 4.0);
    let x2 = x * x;
    let mut p = x2 * -2.726_142_3e-10 + 2.770_681_4e-8;
    p = p * x2 + -2.101_024e-6;
    p = p * x2 + -5.692_506_4e-5;
    p = p * x2 + -7.349_906_3e-4;
    p = p * x2 + -2.954_600_1e-3;
    p = p * x2 + -1.609_603_3e-2;
    p *= x;
    let mut q = x2 * -1.456_607_2e-5 + -2.133_740_5e-4;
    q = q * x2 + -1.682_827e-3;
    q = q * x2 + -7.373_329_2e-3;
    q = q * x2 + -1.426_473_9e-2;
    p / q
}

/// e^x for x ≤ 0 down to -87 (softmax arguments): Cephes' polynomial after
/// range reduction by powers of two; branch-free.
#[inline(always)]
fn exp_approx(x: f32) -> f32 {
    let x = x.clamp(-87.0, 88.0);
    let n = (x * std::f32::consts::LOG2_E + 0.5).floor();
    let r = x - n * 0.693_359_4 - n * -2.121_944_4e-4;
    let z = r * r;
    let mut y = 1.987_569_1e-4 * r + 1.398_2e-3;
    y = y * r + 8.333_452e-3;
    y = y * r + 4.166_579_6e-2;
    y = y * r + 1.666_666_5e-1;
    y = y * r + 0.5;
    y = y * z + r + 1.0;
    y * f32::from_bits(((n as i32 + 127) as u32) << 23)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn erf_and_exp_approximations_are_accurate() {
        let mut worst_erf = 0f64;
        let mut worst_exp = 0f64;
        for i in -6000..=6000 {
            let x = i as f32 / 1000.0;
            let e = (erf_approx(x) as f64 - libm::erf(x as f64)).abs();
            worst_erf = worst_erf.max(e);
            if x <= 0.0 {
                let x = x * 14.0;
                let want = (x as f64).exp();
                let rel = (exp_approx(x) as f64 - want).abs() / want;
                worst_exp = worst_exp.max(rel);
            }
        }
        assert!(worst_erf < 1e-6, "erf error {worst_erf}");
        assert!(worst_exp < 1e-6, "exp relative error {worst_exp}");
    }

    #[test]
    fn ranges_cover_everything_once_without_empty_parts() {
        for n in 0..40 {
            for parts in 0..8 {
                let r: Vec<_> = ranges(n, parts).collect();
                assert!(r.len() <= parts.max(1), "n={n} parts={parts}: {r:?}");
                assert!(r.iter().all(|(a, b)| b > a), "empty part: {r:?}");
                let mut next = 0;
                for &(a, b) in &r {
                    assert_eq!(a, next, "gap or overlap: {r:?}");
                    next = b;
                }
                assert_eq!(next, n, "n={n} parts={parts}: {r:?}");
            }
        }
        assert_eq!(ranges(12, 2).collect::<Vec<_>>(), vec![(0, 6), (6, 12)]);
    }

    #[test]
    fn attention_split_by_heads_or_sequences_matches_one_thread() {
        let (h, heads) = (384, 12);
        for lens in [vec![27], vec![3], vec![5, 9, 1, 30], vec![12, 12]] {
            let total: usize = lens.iter().sum();
            let mut offsets = Vec::new();
            let mut o = 0;
            for &l in &lens {
                offsets.push((o, l));
                o += l;
            }
            let qkv = Arc::new(
                (0..total * 3 * h)
                    .map(|i| ((i * 37 % 101) as f32 - 50.0) / 40.0)
                    .collect::<Vec<f32>>(),
            );
            let mut want = vec![0f32; total * h];
            Team::with(0, |team| {
                attention(team, &qkv, &offsets, h, heads, &mut want)
            });
            for helpers in 1..4 {
                let mut got = vec![0f32; total * h];
                Team::with(helpers, |team| {
                    attention(team, &qkv, &offsets, h, heads, &mut got)
                });
                assert_eq!(got, want, "lens {lens:?}, {helpers} helpers");
            }
            assert_eq!(Arc::strong_count(&qkv), 1);
        }
    }

    /// The single-threaded matmul on one given instruction set.
    fn matmul_on<S: Simd>(simd: S, x: &[f32], m: usize, w: &Packed) -> Vec<f32> {
        let mut y = vec![0f32; m * w.n];
        simd.vectorize(MatmulOp {
            x,
            m,
            w,
            p0: 0,
            p1: w.panels(),
            y: YOut::Rows(&mut y[..]),
        });
        y
    }

    #[test]
    fn matmul_matches_naive_for_all_tile_shapes() {
        // Small shapes run inline; the last is split over threads.
        for (k, n, m) in [
            (40, 48, 1),
            (40, 48, 5),
            (40, 48, 6),
            (40, 48, 7),
            (40, 48, 13),
            (40, 48, 100),
            (384, 64, 200),
            (384, 80, 200),
            (384, 1152, 27),
        ] {
            let w: Vec<f32> = (0..n * k)
                .map(|i| ((i * 7 % 13) as f32 - 6.0) / 7.0)
                .collect();
            let b: Vec<f32> = (0..n).map(|i| i as f32 / 10.0).collect();
            let packed = Packed::new(&w, b.clone(), n, k).unwrap();
            assert_eq!(
                packed.data().as_ptr() as usize % 64,
                0,
                "panels start on a line"
            );
            let x: Vec<f32> = (0..m * k)
                .map(|i| ((i * 5 % 11) as f32 - 5.0) / 3.0)
                .collect();
            let xa = Arc::new(x.clone());
            let mut ys = Vec::new();
            // Panels that start off a line boundary give the same results.
            for off in [1, 4, LINE] {
                let moved = Packed::with_offset(&w, b.clone(), n, k, Some(off)).unwrap();
                assert_eq!(moved.data(), packed.data());
                let mut y = vec![0f32; m * n];
                Team::with(0, |team| matmul(team, &xa, m, &moved, &mut y, None));
                ys.push(y);
            }
            // Inline, and split over teams of 2 and 3 threads.
            for helpers in 0..3 {
                let mut y = vec![0f32; m * n];
                Team::with(helpers, |team| matmul(team, &xa, m, &packed, &mut y, None));
                ys.push(y);
            }
            // Every instruction set this machine has, each forced in turn
            // (the dispatcher alone would only test the widest).
            ys.push(matmul_on(pulp::Scalar::new(), &x, m, &packed));
            #[cfg(target_arch = "x86_64")]
            {
                if let Some(simd) = pulp::x86::V3::try_new() {
                    ys.push(matmul_on(simd, &x, m, &packed));
                }
                if let Some(simd) = pulp::x86::V4::try_new() {
                    ys.push(matmul_on(simd, &x, m, &packed));
                }
            }
            for y in ys {
                for r in 0..m {
                    for c in 0..n {
                        let want: f32 =
                            (0..k).map(|i| x[r * k + i] * w[c * k + i]).sum::<f32>() + b[c];
                        let got = y[r * n + c];
                        assert!(
                            (got - want).abs() < 1e-3 * (1.0 + want.abs()),
                            "m={m} ({r},{c}): {got} vs {want}"
                        );
                    }
                }
            }
        }
    }
}
