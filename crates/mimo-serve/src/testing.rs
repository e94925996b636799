//! A tiny MiMo checkpoint with a scripted reply, for server tests and load tests without real weights.
//!
//! Every decoder block (main and MTP) has zero weights, so the residual stream at a position is the token's
//! embedding and the model is a bigram model whose successor table is set through `lm_head`: after the last
//! token of a chat generation prompt (`"\n"`) it replies, greedily and almost surely when sampling,
//! `<think>`[`SCRIPTED_REASONING`]`</think>`[`SCRIPTED_CONTENT`]`<|im_end|>`. Other tokens are followed by
//! near-uniform random tokens that never include EOS or a token of the script, so such text always runs to
//! `max_tokens`. The MTP layer projects the next token's embedding, so its drafts match the
//! main model (high acceptance).

use std::collections::HashMap;
use std::path::Path;

use anyhow::{bail, Context};
use candle_core::{Device, Tensor};
use mimo_model::{expected_tensors, ModelConfig};
use mimo_text::Tokenizer;

/// Reasoning text of the scripted reply.
pub const SCRIPTED_REASONING: &str = "Check sum";
/// Content of the scripted reply.
pub const SCRIPTED_CONTENT: &str = "The result: 4!";

/// Deterministic normal samples (xorshift64* and Box–Muller).
struct Rng(u64);

impl Rng {
    fn uniform(&mut self) -> f64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        let x = self.0.wrapping_mul(0x2545_f491_4f6c_dd1d);
        ((x >> 11) as f64 + 0.5) / (1u64 << 53) as f64
    }

    fn normal(&mut self) -> f32 {
        let (u, v) = (self.uniform(), self.uniform());
        ((-2.0 * u.ln()).sqrt() * (2.0 * std::f64::consts::PI * v).cos()) as f32
    }
}

/// Writes the scripted test checkpoint into `dir`: `config.json`, `model.safetensors` and the tokenizer files
/// copied from `tokenizer_dir` (which must hold `<think>`, `</think>` and `<|im_end|>` tokens, like
/// `fixtures/tokenizer`). `max_position_embeddings` is the context length.
pub fn write_test_model(
    dir: &Path,
    tokenizer_dir: &Path,
    max_position_embeddings: usize,
) -> anyhow::Result<()> {
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    for f in [
        "tokenizer.json",
        "tokenizer_config.json",
        "generation_config.json",
    ] {
        let src = tokenizer_dir.join(f);
        if src.is_file() {
            std::fs::copy(&src, dir.join(f))
                .with_context(|| format!("copying {}", src.display()))?;
        }
    }
    let tok = Tokenizer::from_dir(dir)?;
    let vocab = tok.vocab_size();
    let (h, inter) = (64usize, 128usize);
    let config = serde_json::json!({
        "architectures": ["MiMoForCausalLM"],
        "model_type": "mimo",
        "hidden_act": "silu",
        "hidden_size": h,
        "intermediate_size": inter,
        "num_hidden_layers": 2,
        "num_attention_heads": 4,
        "num_key_value_heads": 2,
        "num_nextn_predict_layers": 1,
        "max_position_embeddings": max_position_embeddings,
        "rms_norm_eps": 1e-6,
        "rope_theta": 10000.0,
        "tie_word_embeddings": false,
        "vocab_size": vocab,
        "torch_dtype": "float32",
    });
    let config_path = dir.join("config.json");
    std::fs::write(&config_path, serde_json::to_string_pretty(&config)?)?;
    let cfg = ModelConfig::from_dir(dir)?;

    // The scripted chain: trigger (the last token of the template's generation prompt) → reply tokens.
    let text = mimo_text::ModelText::load(dir)?;
    let prompt = text
        .chat_template
        .render(&[mimo_text::ChatMessage::new("user", "x")], true)?;
    let trigger = *tok
        .encode(&prompt, false)?
        .last()
        .context("empty generation prompt")?;
    let reply = tok.encode(
        &format!("<think>{SCRIPTED_REASONING}</think>{SCRIPTED_CONTENT}<|im_end|>"),
        false,
    )?;
    let mut chain = vec![trigger];
    chain.extend(&reply);
    let mut seen = std::collections::HashSet::new();
    if !chain.iter().all(|t| seen.insert(*t)) {
        bail!("the scripted reply repeats a token with this tokenizer: {chain:?}");
    }

    // Layout of the 64 hidden dims: 0..32 one "key" dim per chain source, 32 a dim shared by every other
    // token, 33..64 random. Chain rows of `lm_head` read their source's key dim (logit ≈ 16 after the final
    // norm) and, like EOS, `<think>` and `</think>`, are pushed down along the shared dim, so text sampled
    // from ordinary tokens never enters the script or stops by itself: it runs to `max_tokens`.
    const KEYS: usize = 32;
    const SHARED: usize = 32;
    if chain.len() - 1 > KEYS {
        bail!("the scripted reply is too long ({} tokens)", chain.len());
    }
    let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
    let mut embed = vec![0f32; vocab * h];
    let mut lm_head = vec![0f32; vocab * h];
    for t in 0..vocab {
        embed[t * h + SHARED] = 1.0;
        for j in SHARED + 1..h {
            embed[t * h + j] = rng.normal();
            lm_head[t * h + j] = 0.02 * rng.normal();
        }
    }
    let (alpha, gamma) = (2.0f32, 10.0f32);
    let mut suppressed: Vec<u32> = chain.clone();
    suppressed.extend(&text.eos_ids);
    suppressed.extend(
        ["<think>", "</think>"]
            .iter()
            .filter_map(|t| tok.token_to_id(t)),
    );
    for &t in &suppressed {
        let row = &mut lm_head[t as usize * h..(t as usize + 1) * h];
        row.iter_mut().for_each(|x| *x = 0.0);
        row[SHARED] = -gamma;
    }
    for (k, pair) in chain.windows(2).enumerate() {
        let (a, b) = (pair[0] as usize, pair[1] as usize);
        let e = &mut embed[a * h..(a + 1) * h];
        e.iter_mut().for_each(|x| *x = 0.0);
        e[k] = 1.0;
        lm_head[b * h + k] = alpha;
    }
    let dev = Device::Cpu;
    let mut tensors: HashMap<String, Tensor> = HashMap::new();
    for spec in expected_tensors(&cfg) {
        let name = spec.name.clone();
        let t = if name == "model.embed_tokens.weight" {
            Tensor::from_vec(embed.clone(), (vocab, h), &dev)?
        } else if name == "lm_head.weight" {
            Tensor::from_vec(lm_head.clone(), (vocab, h), &dev)?
        } else if name.ends_with("norm.weight") {
            Tensor::ones(spec.shape.as_slice(), candle_core::DType::F32, &dev)?
        } else if name.ends_with("input_proj.weight") {
            // [h, 2h] over cat([hidden, token]): pass the token half through.
            let mut w = vec![0f32; h * 2 * h];
            for i in 0..h {
                w[i * 2 * h + h + i] = 1.0;
            }
            Tensor::from_vec(w, (h, 2 * h), &dev)?
        } else {
            Tensor::zeros(spec.shape.as_slice(), candle_core::DType::F32, &dev)?
        };
        tensors.insert(name, t);
    }
    let tmp = dir.join("model.safetensors.tmp");
    candle_core::safetensors::save(&tensors, &tmp)?;
    std::fs::rename(&tmp, dir.join("model.safetensors"))?;
    Ok(())
}
