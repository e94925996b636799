//! `mimo pipeline` end to end at micro scale (every stage runs, a few steps each): the report has the fields
//! scripts read, the final checkpoint loads in the candle engine and, as Qwen2, in transformers with the
//! same logits.

use std::path::{Path, PathBuf};

use candle_core::{DType, Device};
use mimo_model::MimoModel;
use mimo_pipeline::{run_pipeline, PipelineArgs};

const MICRO: &str = r#"
[synth]
train = 400
heldout = 60
terse_fraction = 0.7
[model]
hidden_size = 64
intermediate_size = 128
num_hidden_layers = 2
num_attention_heads = 2
num_key_value_heads = 1
[tokenizer]
vocab_size = 400
[[stages]]
name = "stage1"
weights = { general = 0.7, math = 0.15, code = 0.15 }
steps = 2
seq_len = 64
rope_theta = 10000.0
[[stages]]
name = "stage2"
weights = { general = 0.3, math = 0.55, code = 0.15 }
steps = 2
seq_len = 64
rope_theta = 10000.0
[[stages]]
name = "stage3"
weights = { general = 0.2, math = 0.2, code = 0.1, cot = 0.5 }
steps = 2
seq_len = 128
rope_theta = 40000.0
[pretrain]
train = { batch_size = 2, progress = false, plot = false }
[sft]
train = { steps = 2, batch_size = 2, seq_len = 128, progress = false, plot = false }
[rl]
steps = 2
max_staleness = 1
max_num_seqs = 16
rollout = { groups = 1, group_size = 2, max_tokens = 8, max_tasks_per_step = 4 }
[eval]
problems = 4
k = 1
max_tokens = 8
mtp_prompts = 2
[bench]
steps = 1
groups = 1
group_size = 2
short = 2
long = 6
long_fraction = 0.5
"#;

fn python() -> Option<PathBuf> {
    let p = std::env::var_os("MIMO_PYTHON")
        .map(PathBuf::from)
        .or_else(|| {
            let v = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../.venv/bin/python");
            v.exists().then_some(v)
        })?;
    p.exists().then_some(p)
}

#[test]
fn micro_pipeline_runs_every_stage_and_writes_a_loadable_checkpoint() {
    let tmp = tempfile::tempdir().unwrap();
    let cfg = tmp.path().join("micro.toml");
    std::fs::write(&cfg, MICRO).unwrap();
    let args = PipelineArgs::layered(&[cfg], &[]).unwrap();
    let out = tmp.path().join("run");
    let report = run_pipeline(&args, &out, |l| eprintln!("{l}")).unwrap();

    let json: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(out.join("report.json")).unwrap()).unwrap();
    for key in ["base", "sft", "rl"] {
        let v = json["pass_at_1"][key].as_f64().unwrap();
        assert!((0.0..=1.0).contains(&v), "pass_at_1.{key} = {v}");
    }
    for key in ["mtp_acceptance", "rollout_speedup", "minutes"] {
        assert!(
            json[key].as_f64().is_some_and(f64::is_finite),
            "{key}: {}",
            json[key]
        );
    }
    for key in ["base", "sft", "rl"] {
        let v = json["response_tokens"][key].as_f64().unwrap();
        assert!(v > 0.0, "response_tokens.{key} = {v}");
        let se = json["pass_at_1_se"][key].as_f64().unwrap();
        assert!((0.0..=0.5).contains(&se), "pass_at_1_se.{key} = {se}");
    }
    // The paired RL − SFT difference is the difference of the two pass@1 figures (same problems).
    let d = &json["paired"]["rl - sft"];
    let want =
        json["pass_at_1"]["rl"].as_f64().unwrap() - json["pass_at_1"]["sft"].as_f64().unwrap();
    assert!((d["delta"].as_f64().unwrap() - want).abs() < 1e-9, "{d}");
    assert!(d["se"].as_f64().is_some_and(f64::is_finite), "{d}");
    // The SFT model's pass@k runs to k = 16 (its default sample count), never decreasing.
    assert_eq!(json["eval_samples"]["sft"], 16);
    let curve: Vec<f64> = json["sft_pass_at_k"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_f64().unwrap())
        .collect();
    assert_eq!(curve.len(), 16);
    assert!(curve.windows(2).all(|w| w[1] >= w[0] - 1e-12), "{curve:?}");
    assert!(out.join("plots/pass_at_1.png").is_file());
    // One-step off-policy overlap: step 2's batch was sampled by the starting policy while step 1 trained.
    let staleness: Vec<(u64, u64)> = std::fs::read_to_string(out.join("rl/metrics.jsonl"))
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap())
        .map(|m| {
            (
                m["weight_version"].as_u64().unwrap(),
                m["staleness"].as_u64().unwrap(),
            )
        })
        .collect();
    assert_eq!(staleness, vec![(0, 0), (0, 1)]);
    // The SFT set mixes terse responses in (terse_fraction 0.7 here); the stage-3 reasoning corpus keeps
    // every response worked digit by digit ("ones …" steps).
    let math_responses = |path: &Path, field: &str| -> Vec<String> {
        std::fs::read_to_string(path)
            .unwrap()
            .lines()
            .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap())
            .filter(|v| v.get("kind").is_none_or(|k| k != "code"))
            .map(|v| v[field].as_str().unwrap().to_string())
            .filter(|t| t.contains("\\boxed{"))
            .collect()
    };
    let sft_set = math_responses(&out.join("data/synth/train.jsonl"), "response");
    let terse = sft_set.iter().filter(|t| !t.contains("ones ")).count();
    assert!(
        terse > 0 && terse < sft_set.len(),
        "{terse} terse of {}",
        sft_set.len()
    );
    let cot = math_responses(&out.join("data/corpus/cot.jsonl"), "text");
    assert!(!cot.is_empty());
    assert!(
        cot.iter().all(|t| t.contains("ones ")),
        "a terse response in the corpus"
    );
    let ckpt = PathBuf::from(json["final_checkpoint"].as_str().unwrap());
    assert_eq!(ckpt, report.final_checkpoint);
    assert!(out.join("report.md").is_file());
    for f in [
        "tokenizer.json",
        "tokenizer_config.json",
        "config.json",
        "model.safetensors",
    ] {
        assert!(
            ckpt.join(f).is_file(),
            "{f} missing from the final checkpoint"
        );
    }
    // The stage-3 RoPE θ reached the final config.
    let cfg: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(ckpt.join("config.json")).unwrap()).unwrap();
    assert_eq!(cfg["rope_theta"].as_f64(), Some(40000.0), "{cfg}");
    // The engine loads it (what `mimo serve` does) ...
    let model = MimoModel::from_dir(&ckpt, DType::F32, &Device::Cpu).unwrap();
    let ids: Vec<u32> = vec![1, 5, 9, 20, 33, 2];
    let ours = model
        .forward_teacher_forced(&ids)
        .unwrap()
        .0
        .to_vec2::<f32>()
        .unwrap();
    // ... and so does transformers, as Qwen2, with the same main logits.
    let Some(py) = python() else {
        assert!(
            std::env::var_os("CI").is_none(),
            "CI must run the Python reference tests"
        );
        eprintln!("SKIPPED transformers check: no Python env");
        return;
    };
    let hf_out = tmp.path().join("hf.safetensors");
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../tools/train/hf_logits.py");
    let ok = std::process::Command::new(py)
        .arg(&script)
        .arg(&ckpt)
        .arg(ids.iter().map(u32::to_string).collect::<Vec<_>>().join(","))
        .arg(&hf_out)
        .status()
        .unwrap()
        .success();
    assert!(ok, "{script:?} failed");
    let bytes = std::fs::read(&hf_out).unwrap();
    let st = safetensors::SafeTensors::deserialize(&bytes).unwrap();
    let hf: Vec<f32> = st
        .tensor("logits")
        .unwrap()
        .data()
        .chunks_exact(4)
        .map(|c| f32::from_le_bytes(c.try_into().unwrap()))
        .collect();
    let worst = ours
        .iter()
        .flatten()
        .zip(&hf)
        .map(|(a, b)| (a - b).abs())
        .fold(0.0f32, f32::max);
    assert_eq!(hf.len(), ours.iter().flatten().count());
    assert!(
        worst < 1e-4,
        "final checkpoint: candle vs transformers max |Δ| = {worst}"
    );
}
