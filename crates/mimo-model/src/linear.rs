//! The model's projections and embedding tables over every weight format: dense candle tensors, bf16/f16
//! weights read by [`HalfLinear`] with f32 activations (CPU), and GGUF block-quantized weights through candle's
//! `QMatMul` (its CPU k-quant kernels, repacked for AVX2). Activations are f32 on the CPU whatever the weights:
//! like llama.cpp, half and quantized weights only cut the bytes read per token.

use std::borrow::Cow;
use std::sync::Arc;

use candle_core::quantized::{GgmlDType, QMatMul, QStorage, QTensor};

use candle_core::{DType, Device, Module, Tensor, D};
use candle_nn::Linear;

use crate::error::{ModelError, Result};
use crate::half::HalfLinear;
use crate::qgemv::QGemv;

/// A weight as its source stores it: float values (already in the dtype the caller asked for, or a GGUF file's
/// own float dtype) or quantized blocks.
#[derive(Debug, Clone)]
pub(crate) enum RawWeight {
    Float(Tensor),
    Quant(Arc<QTensor>),
}

/// A block-quantization format for `--quant` and `mimo quantize` (llama.cpp's names).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct QuantType(pub GgmlDType);

impl QuantType {
    /// The accepted names, for messages.
    pub const NAMES: &'static str = "q8_0, q4_0, q4_1, q5_0, q5_1, q2_k, q3_k, q4_k, q5_k, q6_k";

    /// Parses a llama.cpp-style name (`q8_0`, `q4_k`, `Q4_K_M` …; the `_s`/`_m` mix suffixes map to the base
    /// k-quant type).
    pub fn parse(name: &str) -> Result<Self> {
        let n = name.trim().to_ascii_lowercase();
        let base = n
            .strip_suffix("_m")
            .or_else(|| n.strip_suffix("_s"))
            .unwrap_or(&n);
        let t = match base {
            "q8_0" => GgmlDType::Q8_0,
            "q4_0" => GgmlDType::Q4_0,
            "q4_1" => GgmlDType::Q4_1,
            "q5_0" => GgmlDType::Q5_0,
            "q5_1" => GgmlDType::Q5_1,
            "q2_k" => GgmlDType::Q2K,
            "q3_k" => GgmlDType::Q3K,
            "q4_k" => GgmlDType::Q4K,
            "q5_k" => GgmlDType::Q5K,
            "q6_k" => GgmlDType::Q6K,
            _ => {
                return Err(ModelError::Setting {
                    setting: "quant".into(),
                    msg: format!("{name:?}: expected one of {}", Self::NAMES),
                })
            }
        };
        Ok(Self(t))
    }

    /// The format used for a weight with `k` input features: this one when `k` is a multiple of its block, else
    /// a 32-wide fallback for k-quants (Q4_K/Q2_K/Q3_K → Q4_0, Q5_K/Q6_K → Q8_0; llama.cpp picks Q5_0/Q5_1,
    /// which have no SIMD kernel in candle); `None` when nothing fits (the weight stays in floats).
    pub fn fit(self, k: usize) -> Option<GgmlDType> {
        let t = self.0;
        if k.is_multiple_of(t.block_size()) {
            return Some(t);
        }
        let fallback = match t {
            GgmlDType::Q4K | GgmlDType::Q2K | GgmlDType::Q3K => GgmlDType::Q4_0,
            GgmlDType::Q5K | GgmlDType::Q6K | GgmlDType::Q8K => GgmlDType::Q8_0,
            _ => return None,
        };
        k.is_multiple_of(fallback.block_size()).then_some(fallback)
    }
}

/// How the loader turns raw weights into layers.
#[derive(Debug, Clone)]
pub(crate) struct WeightPlan {
    /// Activation dtype (f32 on the CPU).
    pub act: DType,
    /// Quantize float weights to this format at load (`--quant`).
    pub quant: Option<QuantType>,
    pub device: Device,
}

impl WeightPlan {
    /// Quantizes a float weight `[out, in]` when the plan asks for it and a format fits.
    fn maybe_quantize(&self, w: RawWeight) -> Result<RawWeight> {
        let (RawWeight::Float(t), Some(q)) = (&w, self.quant) else {
            return Ok(w);
        };
        let Some(target) = q.fit(t.dim(D::Minus1)?) else {
            return Ok(w);
        };
        Ok(RawWeight::Quant(Arc::new(quantize_rows(
            t,
            target,
            &self.device,
        )?)))
    }
}

/// Whether candle has a SIMD (AVX2) CPU matmul for `t`: Q4_0, Q8_0 and the k-quants; Q4_1, Q5_0, Q5_1 and
/// Q8_1 run scalar code.
fn has_cpu_kernel(t: GgmlDType) -> bool {
    !matches!(
        t,
        GgmlDType::Q4_1 | GgmlDType::Q5_0 | GgmlDType::Q5_1 | GgmlDType::Q8_1
    )
}

/// Block-quantizes a float `[n, k]` weight in row chunks of at most 32 MiB of f32, in parallel: a 7B
/// checkpoint's embedding table never exists in f32 all at once, and both cores quantize.
pub(crate) fn quantize_rows(t: &Tensor, target: GgmlDType, device: &Device) -> Result<QTensor> {
    use rayon::prelude::*;
    let (n, k) = t.dims2()?;
    let t = t.to_device(&Device::Cpu)?;
    let chunk = ((32usize << 20) / (4 * k.max(1))).max(1);
    let parts = (0..n.div_ceil(chunk))
        .into_par_iter()
        .map(|c| -> Result<Vec<u8>> {
            let rows = t.narrow(0, c * chunk, chunk.min(n - c * chunk))?;
            let q = QTensor::quantize(&rows.to_dtype(DType::F32)?, target)?;
            Ok(q.data()?.into_owned())
        })
        .collect::<Result<Vec<_>>>()?;
    let storage = QStorage::from_data(Cow::Owned(parts.concat()), device, target)?;
    Ok(QTensor::new(storage, (n, k))?)
}

/// A projection `y = x·Wᵀ + b` (`W` is `[out, in]`), output in the activation dtype.
#[derive(Debug, Clone)]
pub(crate) enum Proj {
    /// Weight in the activation dtype, stored transposed-contiguous (the CPU gemm streams it without re-packing).
    Dense(Linear),
    /// bf16/f16 weight, f32 activations (CPU).
    Half(HalfLinear),
    /// Quantized weight with a kernel of ours (`qgemv.rs`), f32 activations; bias in f32.
    QGemv { g: QGemv, bias: Option<Tensor> },
    /// Quantized weight through candle's `QMatMul` (other formats, GPUs), f32 activations; bias in f32.
    Quant { mm: QMatMul, bias: Option<Tensor> },
    /// Merged parts that cannot share one weight (different quant formats): computed apart, outputs side by side.
    Split(Vec<Proj>),
}

impl Proj {
    pub(crate) fn forward(&self, x: &Tensor) -> Result<Tensor> {
        Ok(match self {
            Proj::Dense(l) => match crate::gemv::small_rows(x, l.weight())? {
                Some(y) => match l.bias() {
                    Some(b) => y.broadcast_add(b)?,
                    None => y,
                },
                None => l.forward(x)?,
            },
            Proj::Half(h) => h.forward(x)?,
            Proj::QGemv { g, bias } => {
                let y = g.forward(x)?;
                match bias {
                    Some(b) => y.broadcast_add(b)?,
                    None => y,
                }
            }
            Proj::Quant { mm, bias } => {
                let y = mm.forward(&x.contiguous()?)?;
                match bias {
                    Some(b) => y.broadcast_add(b)?,
                    None => y,
                }
            }
            Proj::Split(parts) => {
                let ys = parts
                    .iter()
                    .map(|p| p.forward(x))
                    .collect::<Result<Vec<_>>>()?;
                Tensor::cat(&ys, D::Minus1)?
            }
        })
    }

    /// One projection computing `parts` (weight `[out_i, in]`, optional bias `[out_i]`) side by side, as vLLM's
    /// merged QKV and gate/up projections: one matmul instead of several when the parts share a format.
    pub(crate) fn merged(
        parts: Vec<(RawWeight, Option<Tensor>)>,
        plan: &WeightPlan,
    ) -> Result<Self> {
        let parts = parts
            .into_iter()
            .map(|(w, b)| Ok((plan.maybe_quantize(w)?, b)))
            .collect::<Result<Vec<_>>>()?;
        let bias = if parts.iter().all(|p| p.1.is_some()) {
            let bs: Vec<Tensor> = parts.iter().filter_map(|p| p.1.clone()).collect();
            Some(Tensor::cat(&bs, 0)?)
        } else {
            None
        };
        let quant: Vec<&Arc<QTensor>> = parts
            .iter()
            .filter_map(|p| match &p.0 {
                RawWeight::Quant(q) => Some(q),
                RawWeight::Float(_) => None,
            })
            .collect();
        let floats: Vec<&Tensor> = parts
            .iter()
            .filter_map(|p| match &p.0 {
                RawWeight::Float(t) => Some(t),
                RawWeight::Quant(_) => None,
            })
            .collect();
        if quant.len() == parts.len() && quant.iter().all(|q| q.dtype() == quant[0].dtype()) {
            return Self::quant(concat_rows(&quant)?, bias, plan);
        }
        if floats.len() == parts.len() && floats.iter().all(|t| t.dtype() == floats[0].dtype()) {
            return Self::float(Tensor::cat(&floats, 0)?, bias, plan);
        }
        let split = parts
            .into_iter()
            .map(|(w, b)| Self::single(w, b, plan))
            .collect::<Result<Vec<_>>>()?;
        Ok(Proj::Split(split))
    }

    fn single(w: RawWeight, bias: Option<Tensor>, plan: &WeightPlan) -> Result<Self> {
        match w {
            RawWeight::Quant(q) => Self::quant(q, bias, plan),
            RawWeight::Float(t) => Self::float(t, bias, plan),
        }
    }

    fn quant(mut q: Arc<QTensor>, bias: Option<Tensor>, plan: &WeightPlan) -> Result<Self> {
        if matches!(q.dtype(), GgmlDType::F32 | GgmlDType::F16 | GgmlDType::BF16) {
            return Self::float(q.dequantize(&plan.device)?, bias, plan);
        }
        if plan.device.is_cpu() && !has_cpu_kernel(q.dtype()) {
            // candle's CPU matmul for these is scalar (measured 3.5× slower than Q8_0 on SmolLM2-135M): re-quantize
            // once to Q8_0, which is finer than each of them.
            q = Arc::new(quantize_rows(
                &q.dequantize(&Device::Cpu)?,
                GgmlDType::Q8_0,
                &plan.device,
            )?);
        }
        let bias = bias.map(|b| b.to_dtype(DType::F32)).transpose()?;
        if let Some(g) = QGemv::new(q.clone()) {
            return Ok(Proj::QGemv { g, bias });
        }
        Ok(Proj::Quant {
            mm: QMatMul::from_arc(q)?,
            bias,
        })
    }

    fn float(w: Tensor, bias: Option<Tensor>, plan: &WeightPlan) -> Result<Self> {
        if plan.device.is_cpu() && matches!(w.dtype(), DType::BF16 | DType::F16) {
            let bias = bias.map(|b| b.to_dtype(DType::F32)).transpose()?;
            return Ok(Proj::Half(HalfLinear::new(w.contiguous()?, bias)?));
        }
        let w = w.to_dtype(plan.act)?.t()?.contiguous()?.t()?;
        let bias = bias.map(|b| b.to_dtype(plan.act)).transpose()?;
        Ok(Proj::Dense(Linear::new(w, bias)))
    }

    /// The projection reading an embedding table `[V, H]` as its weight (tied `lm_head`).
    pub(crate) fn tied(embed: &Embed, plan: &WeightPlan) -> Result<Self> {
        match embed {
            Embed::Quant(q) => Self::quant(q.clone(), None, plan),
            Embed::Dense(t) if plan.device.is_cpu() && t.dtype() != DType::F32 => {
                Ok(Proj::Half(HalfLinear::new(t.clone(), None)?))
            }
            Embed::Dense(t) => Ok(Proj::Dense(Linear::new(t.clone(), None))),
        }
    }
}

/// Stacks the rows of quantized `[out_i, in]` weights of one format into one `[Σ out_i, in]` weight (rows are
/// whole blocks, so this is a byte concatenation).
fn concat_rows(parts: &[&Arc<QTensor>]) -> Result<Arc<QTensor>> {
    if parts.len() == 1 {
        return Ok(parts[0].clone());
    }
    let dtype = parts[0].dtype();
    let k = parts[0].shape().dims2()?.1;
    let mut rows = 0;
    let mut bytes = Vec::new();
    for p in parts {
        let (n, pk) = p.shape().dims2()?;
        if pk != k {
            return Err(ModelError::Input(format!(
                "merged projection parts have {pk} and {k} input features"
            )));
        }
        rows += n;
        bytes.extend_from_slice(&p.data()?);
    }
    let device = parts[0].device();
    let storage = QStorage::from_data(Cow::Owned(bytes), &device, dtype)?;
    Ok(Arc::new(QTensor::new(storage, (rows, k))?))
}

/// Reorders the rows of a `[n, k]` weight: row `i` of the result is row `perm[i]` of `w` (whole quantized rows
/// are moved as bytes).
pub(crate) fn permute_rows(w: &RawWeight, perm: &[usize]) -> Result<RawWeight> {
    match w {
        RawWeight::Float(t) => {
            let idx: Vec<u32> = perm.iter().map(|&p| p as u32).collect();
            let idx = Tensor::from_vec(idx, perm.len(), t.device())?;
            Ok(RawWeight::Float(t.index_select(&idx, 0)?))
        }
        RawWeight::Quant(q) => {
            let (n, k) = q.shape().dims2()?;
            let data = q.data()?;
            let row = data.len() / n;
            let mut bytes = Vec::with_capacity(data.len());
            for &p in perm {
                bytes.extend_from_slice(&data[p * row..(p + 1) * row]);
            }
            let storage = QStorage::from_data(Cow::Owned(bytes), &q.device(), q.dtype())?;
            Ok(RawWeight::Quant(Arc::new(QTensor::new(storage, (n, k))?)))
        }
    }
}

/// A token embedding table `[V, H]`; lookups come out in the activation dtype.
#[derive(Debug, Clone)]
pub(crate) enum Embed {
    /// Float table (f32, or bf16/f16 kept half to save memory on the CPU).
    Dense(Tensor),
    /// Quantized table; looked-up rows are dequantized.
    Quant(Arc<QTensor>),
}

impl Embed {
    pub(crate) fn new(w: RawWeight, plan: &WeightPlan) -> Result<Self> {
        Ok(match plan.maybe_quantize(w)? {
            RawWeight::Quant(q)
                if matches!(q.dtype(), GgmlDType::F32 | GgmlDType::F16 | GgmlDType::BF16) =>
            {
                Embed::Dense(q.dequantize(&plan.device)?.to_dtype(plan.act)?)
            }
            RawWeight::Quant(q) => Embed::Quant(q),
            RawWeight::Float(t) if plan.device.is_cpu() && t.dtype() != DType::F32 => {
                Embed::Dense(t)
            }
            RawWeight::Float(t) => Embed::Dense(t.to_dtype(plan.act)?),
        })
    }

    /// Rows for `ids` (`[b, t]`) as `[b, t, H]` in `act`.
    pub(crate) fn forward(&self, ids: &Tensor, act: DType) -> Result<Tensor> {
        let y = match self {
            Embed::Dense(t) => {
                let mut dims = ids.dims().to_vec();
                dims.push(t.dim(1)?);
                t.index_select(&ids.flatten_all()?, 0)?.reshape(dims)?
            }
            Embed::Quant(q) => q.embedding(ids)?,
        };
        Ok(y.to_dtype(act)?)
    }
}
