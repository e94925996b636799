//! The MiMo model (arXiv 2505.07608) for inference on candle: config, HF checkpoint loading, and the Qwen2
//! decoder with Multi-Token-Prediction layers. The KV cache is owned by the caller ([`KvCache`]).

pub mod attention;
pub mod cache;
pub mod config;
pub mod device;
pub mod error;
mod gemv;
#[cfg(target_arch = "x86_64")]
pub mod qgemv;
/// Other architectures: no hand-written quantized kernels (candle's `QMatMul` serves every format).
#[cfg(not(target_arch = "x86_64"))]
pub mod qgemv {
    /// Never constructed off x86-64.
    #[derive(Debug, Clone)]
    pub struct QGemv(std::convert::Infallible);
    impl QGemv {
        pub fn new(_: std::sync::Arc<candle_core::quantized::QTensor>) -> Option<Self> {
            None
        }
        pub fn forward(&self, _: &candle_core::Tensor) -> candle_core::Result<candle_core::Tensor> {
            match self.0 {}
        }
    }
}
pub mod gguf;
pub mod half;
pub mod linear;
pub mod model;
pub mod weights;

pub use attention::LayerKv;
pub use cache::{ContiguousKvCache, KvCache};
pub use config::{Arch, ModelConfig, MtpHidden};
pub use device::{parse_device, parse_dtype, parse_kv_dtype};
pub use error::{ModelError, Result};
pub use gguf::{gguf_path, GgufFile};
pub use linear::QuantType;
pub use model::{
    parameter_counts, save_host_weights, HostWeights, MainOutput, MimoModel, MtpOutput,
    WeightFormat,
};
pub use weights::{expected_tensors, TensorSpec, WeightStore};
