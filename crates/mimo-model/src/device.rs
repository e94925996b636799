//! Device and dtype names, parsed once for every command and the server: `cpu`, `cuda`, `cuda:N`; `auto`,
//! `f32`/`float32`, `bf16`/`bfloat16`, `f16`/`float16`.

use candle_core::{DType, Device};

use crate::error::{ModelError, Result};

/// Opens the device `name` names: `cpu`, `cuda` (device 0) or `cuda:N`; `auto` is CUDA device 0 when this
/// build has CUDA and one is present, else the CPU.
pub fn parse_device(name: &str) -> Result<Device> {
    let bad = |msg: String| ModelError::Setting {
        setting: "device".into(),
        msg,
    };
    let cuda = |ordinal: usize| {
        Device::new_cuda(ordinal).map_err(|e| {
            bad(format!(
                "cannot open CUDA device {ordinal} (was mimo built with --features cuda?): {e}"
            ))
        })
    };
    match name.trim().to_ascii_lowercase().as_str() {
        "cpu" => Ok(Device::Cpu),
        "auto" => Ok(if candle_core::utils::cuda_is_available() {
            cuda(0)?
        } else {
            Device::Cpu
        }),
        "cuda" => cuda(0),
        other => match other.strip_prefix("cuda:").map(str::parse::<usize>) {
            Some(Ok(n)) => cuda(n),
            _ => Err(bad(format!("{name:?}: expected cpu, cuda, cuda:N or auto"))),
        },
    }
}

/// The dtype `name` names; `auto` is f32 on the CPU (the fastest there) and bf16 on accelerators.
pub fn parse_dtype(name: &str, device: &Device) -> Result<DType> {
    Ok(match name.trim().to_ascii_lowercase().as_str() {
        "auto" if device.is_cpu() => DType::F32,
        "auto" => DType::BF16,
        "f32" | "float32" => DType::F32,
        "bf16" | "bfloat16" => DType::BF16,
        "f16" | "float16" => DType::F16,
        _ => {
            return Err(ModelError::Setting {
                setting: "dtype".into(),
                msg: format!("{name:?}: expected auto, f32, bf16 or f16"),
            })
        }
    })
}

/// The KV cache dtype `name` names: `auto` (the activation dtype), `f32` or `f16` (what the fused CPU
/// attention kernel reads).
pub fn parse_kv_dtype(name: &str) -> Result<Option<DType>> {
    Ok(match name.trim().to_ascii_lowercase().as_str() {
        "auto" => None,
        "f32" | "float32" => Some(DType::F32),
        "f16" | "float16" => Some(DType::F16),
        _ => {
            return Err(ModelError::Setting {
                setting: "kv-cache-dtype".into(),
                msg: format!("{name:?}: expected auto, f32 or f16"),
            })
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_parse_and_bad_ones_say_what_is_accepted() {
        assert!(parse_device("cpu").unwrap().is_cpu());
        assert!(parse_device("CPU").unwrap().is_cpu());
        let e = parse_device("tpu").unwrap_err().to_string();
        assert!(e.contains("device") && e.contains("cuda:N"), "{e}");
        assert!(parse_device("cuda:x").is_err());
        let cpu = Device::Cpu;
        assert_eq!(parse_dtype("auto", &cpu).unwrap(), DType::F32);
        assert_eq!(parse_dtype("bfloat16", &cpu).unwrap(), DType::BF16);
        assert_eq!(parse_dtype("f16", &cpu).unwrap(), DType::F16);
        let e = parse_dtype("int4", &cpu).unwrap_err().to_string();
        assert!(e.contains("dtype") && e.contains("bf16"), "{e}");
    }
}
