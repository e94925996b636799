//! Quantized GEMV/GEMM speed at MiMo-7B shapes: mimo's kernels (`mimo_model::qgemv`) beside candle's `QMatMul`
//! on the same weights, as GB/s of weight read (the decode bound). `cargo run --release -p mimo-model --example
//! qgemv` (set `RAYON_NUM_THREADS`); prints one JSON object per case.
use std::sync::Arc;
use std::time::Instant;

use candle_core::quantized::{GgmlDType, QMatMul, QTensor};
use candle_core::{Device, Module, Tensor};
use mimo_model::qgemv::QGemv;

fn time(
    reps: usize,
    mut f: impl FnMut() -> candle_core::Result<Tensor>,
) -> candle_core::Result<f64> {
    f()?;
    let t = Instant::now();
    for _ in 0..reps {
        f()?;
    }
    Ok(t.elapsed().as_secs_f64() / reps as f64)
}

fn main() -> anyhow::Result<()> {
    let dev = Device::Cpu;
    let dtypes = [
        GgmlDType::Q4K,
        GgmlDType::Q8_0,
        GgmlDType::Q6K,
        GgmlDType::Q4_0,
    ];
    // `QGEMV_SHAPES="151680x4096,576x576"` replaces the default shapes (MiMo-7B's FFN and QKV projections).
    let shapes: Vec<(usize, usize)> = match std::env::var("QGEMV_SHAPES") {
        Ok(v) => v
            .split(',')
            .map(|s| {
                let (a, b) = s
                    .split_once('x')
                    .ok_or_else(|| anyhow::anyhow!("bad shape {s}"))?;
                Ok((a.trim().parse()?, b.trim().parse()?))
            })
            .collect::<anyhow::Result<_>>()?,
        Err(_) => vec![(11008, 4096), (4096, 11008), (6144, 4096)],
    };
    // `QGEMV_DTYPES="q4k,q8_0"` restricts the formats.
    let only = std::env::var("QGEMV_DTYPES")
        .unwrap_or_default()
        .to_lowercase();
    let dtypes: Vec<GgmlDType> = dtypes
        .into_iter()
        .filter(|d| {
            only.is_empty()
                || only
                    .split(',')
                    .any(|o| format!("{d:?}").to_lowercase() == o)
        })
        .collect();
    for &(n, k) in &shapes {
        let w = Tensor::randn(0f32, 1.0, (n, k), &dev)?;
        for &dt in &dtypes {
            let q = Arc::new(QTensor::quantize(&w, dt)?);
            let bytes = q.storage_size_in_bytes() as f64;
            let candle = QMatMul::from_arc(q.clone())?;
            let ours = QGemv::new(q).ok_or_else(|| anyhow::anyhow!("no kernel for {dt:?} here"))?;
            for m in [1usize, 2, 4, 16] {
                let x = Tensor::randn(0f32, 1.0, (m, k), &dev)?;
                let reps = if m > 4 { 5 } else { 20 };
                let t_c = time(reps, || candle.forward(&x))?;
                let t_o = time(reps, || ours.forward(&x))?;
                println!(
                    "{}",
                    serde_json::json!({"dtype": format!("{dt:?}"), "n": n, "k": k, "rows": m,
                        "mimo_ms": t_o * 1e3, "candle_ms": t_c * 1e3, "mimo_gb_s": bytes / t_o / 1e9,
                        "candle_gb_s": bytes / t_c / 1e9, "mimo_vs_candle": t_c / t_o})
                );
            }
        }
    }
    Ok(())
}
