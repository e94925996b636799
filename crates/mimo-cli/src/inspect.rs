//! `mimo inspect --model DIR`: architecture, parameter counts, dtypes, problems and unused tensors of a
//! checkpoint, without loading the weights.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

use anyhow::Result;
use mimo_model::gguf::gguf_name;
use mimo_model::weights::is_ignorable;
use mimo_model::{expected_tensors, parameter_counts, GgufFile, ModelConfig, WeightStore};
use serde_json::json;

use crate::write_stdout;

/// What a checkpoint stores, from safetensors or GGUF.
struct Stored {
    cfg: ModelConfig,
    problems: Vec<String>,
    unused: Vec<String>,
    dtypes: BTreeMap<String, usize>,
    files: Vec<String>,
    count: usize,
}

fn stored_safetensors(dir: &Path) -> Result<Stored> {
    let cfg = ModelConfig::from_dir(dir)?;
    let store = WeightStore::open(dir)?;
    let specs = expected_tensors(&cfg);
    let expected: BTreeSet<&str> = specs.iter().map(|s| s.name.as_str()).collect();
    let problems = specs
        .iter()
        .filter_map(|s| store.check(s).err().map(|e| e.to_string()))
        .chain(store.check_layer_counts(&cfg).err().map(|e| e.to_string()))
        .collect();
    let unused = store
        .names()
        .filter(|n| !expected.contains(n) && !is_ignorable(n))
        .map(str::to_string)
        .collect();
    let mut dtypes: BTreeMap<String, usize> = BTreeMap::new();
    for name in store.names() {
        if let Some(info) = store.info(name) {
            *dtypes
                .entry(format!("{:?}", info.dtype).to_lowercase())
                .or_default() += 1;
        }
    }
    let files = store
        .files()
        .iter()
        .map(|p| p.display().to_string())
        .collect();
    let count = store.names().count();
    Ok(Stored {
        cfg,
        problems,
        unused,
        dtypes,
        files,
        count,
    })
}

fn stored_gguf(path: &Path) -> Result<Stored> {
    let file = GgufFile::open(path)?;
    let cfg = file.config()?;
    let tensors = file.tensors();
    let by_name: BTreeMap<&str, &Vec<usize>> =
        tensors.iter().map(|(n, _, s)| (n.as_str(), s)).collect();
    let specs = expected_tensors(&cfg);
    let mut expected = BTreeSet::new();
    let mut problems = vec![];
    for spec in &specs {
        let name = gguf_name(&spec.name);
        match by_name.get(name.as_str()) {
            None => problems.push(format!("missing tensor `{name}` (HF `{}`)", spec.name)),
            Some(shape) if **shape != spec.shape => problems.push(format!(
                "tensor `{name}` has shape {shape:?}, expected {:?}",
                spec.shape
            )),
            Some(_) => {}
        }
        expected.insert(name);
    }
    let mut dtypes: BTreeMap<String, usize> = BTreeMap::new();
    for (_, t, _) in &tensors {
        *dtypes.entry(format!("{t:?}").to_lowercase()).or_default() += 1;
    }
    Ok(Stored {
        cfg,
        problems,
        unused: tensors
            .iter()
            .filter(|(n, _, _)| !expected.contains(n))
            .map(|(n, _, _)| n.clone())
            .collect(),
        dtypes,
        files: vec![path.display().to_string()],
        count: tensors.len(),
    })
}

/// Prints the report for `dir` (an HF directory or a GGUF file) as text or JSON.
pub fn run(dir: &Path, as_json: bool) -> Result<()> {
    let Stored {
        cfg,
        problems,
        unused,
        dtypes,
        files,
        count,
    } = match mimo_model::gguf_path(dir) {
        Some(file) => stored_gguf(&file)?,
        None => stored_safetensors(dir)?,
    };
    let specs = expected_tensors(&cfg);
    let (main, mtp) = parameter_counts(&cfg);
    let report = json!({
        "model_dir": dir.display().to_string(),
        "model_type": cfg.arch.as_str(),
        "hidden_size": cfg.hidden_size,
        "intermediate_size": cfg.intermediate_size,
        "num_hidden_layers": cfg.num_hidden_layers,
        "num_attention_heads": cfg.num_attention_heads,
        "num_key_value_heads": cfg.num_key_value_heads,
        "head_dim": cfg.head_dim,
        "vocab_size": cfg.vocab_size,
        "rope_theta": cfg.rope_theta,
        "rms_norm_eps": cfg.rms_norm_eps,
        "max_position_embeddings": cfg.max_position_embeddings,
        "tie_word_embeddings": cfg.tie_word_embeddings,
        "qkv_bias": cfg.qkv_bias,
        "num_nextn_predict_layers": cfg.num_nextn_predict_layers,
        "mtp_hidden": format!("{:?}", cfg.mtp_hidden),
        "params_main": main,
        "params_mtp": mtp,
        "params_total": main + mtp,
        "config_dtype": cfg.torch_dtype,
        "stored_dtypes": dtypes,
        "files": files,
        "tensors_stored": count,
        "tensors_expected": specs.len(),
        "problems": problems,
        "unused_tensors": unused,
    });
    if as_json {
        return write_stdout(&report.to_string());
    }
    let mut s = String::new();
    let line = |s: &mut String, k: &str, v: String| s.push_str(&format!("{k:<26}{v}\n"));
    line(&mut s, "model", dir.display().to_string());
    line(
        &mut s,
        "architecture",
        format!(
            "{} ({} layers, hidden {}, ffn {}, heads {}/{} kv, head_dim {}, vocab {})",
            cfg.arch.as_str(),
            cfg.num_hidden_layers,
            cfg.hidden_size,
            cfg.intermediate_size,
            cfg.num_attention_heads,
            cfg.num_key_value_heads,
            cfg.head_dim,
            cfg.vocab_size
        ),
    );
    line(
        &mut s,
        "rope / norm",
        format!(
            "theta {}, rms eps {:e}, max positions {}",
            cfg.rope_theta, cfg.rms_norm_eps, cfg.max_position_embeddings
        ),
    );
    line(
        &mut s,
        "heads",
        format!(
            "q/k/v bias {}, lm_head {}",
            cfg.qkv_bias,
            if cfg.tie_word_embeddings {
                "tied to embed_tokens"
            } else {
                "untied"
            }
        ),
    );
    line(
        &mut s,
        "MTP layers",
        format!(
            "{} (hidden input: {:?})",
            cfg.num_nextn_predict_layers, cfg.mtp_hidden
        ),
    );
    line(&mut s, "parameters (main)", group(main));
    line(&mut s, "parameters (MTP)", group(mtp));
    line(&mut s, "parameters (total)", group(main + mtp));
    line(
        &mut s,
        "dtype",
        format!(
            "config {}, stored {}",
            cfg.torch_dtype.as_deref().unwrap_or("-"),
            dtypes
                .iter()
                .map(|(d, n)| format!("{d} x{n}"))
                .collect::<Vec<_>>()
                .join(", ")
        ),
    );
    line(&mut s, "files", files.join(", "));
    line(
        &mut s,
        "tensors",
        format!("{} stored, {} expected", count, specs.len()),
    );
    line(
        &mut s,
        "problems",
        if problems.is_empty() {
            "none".into()
        } else {
            problems.len().to_string()
        },
    );
    for p in &problems {
        s.push_str(&format!("  {p}\n"));
    }
    line(
        &mut s,
        "unused tensors",
        if unused.is_empty() {
            "none".into()
        } else {
            unused.len().to_string()
        },
    );
    for u in &unused {
        s.push_str(&format!("  {u}\n"));
    }
    write_stdout(s.trim_end())
}

/// 7622619136 → "7,622,619,136".
fn group(n: usize) -> String {
    let s = n.to_string();
    let mut out = String::new();
    for (i, c) in s.chars().enumerate() {
        if i > 0 && (s.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(c);
    }
    out
}
