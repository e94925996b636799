//! Dedup, filters, decontamination, classifier, packing and resume behaviour.

use mimo_data::*;
use serde_json::{json, Value};
use std::path::{Path, PathBuf};

fn fixture(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../../fixtures/data")
        .join(name)
}

fn tmpdir(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("mimo-data-pipe-{}-{name}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

fn write_jsonl(p: &Path, docs: &[Value]) {
    let s: String = docs.iter().map(|d| format!("{d}\n")).collect();
    std::fs::write(p, s).unwrap();
}

fn read_jsonl(p: &Path) -> Vec<Value> {
    std::fs::read_to_string(p)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

/// Deterministic pseudo-English text of `n` words.
fn words(seed: u64, n: usize) -> Vec<String> {
    let vocab = [
        "the", "river", "stone", "quiet", "morning", "engine", "garden", "silver", "market",
        "window", "forest", "signal", "paper", "winter", "harbor", "lantern", "orbit", "valley",
        "copper", "meadow", "thunder", "castle", "pocket", "mirror", "anchor", "bridge", "candle",
        "desert", "ember", "falcon", "glacier", "hollow", "island", "jungle", "kettle", "ladder",
        "marble", "needle", "oyster", "pepper", "quartz", "ribbon", "saddle", "timber", "umbrella",
        "velvet", "walnut", "yonder", "zephyr", "and", "of", "to", "with", "that",
    ];
    let mut r = SplitMix64(seed);
    (0..n)
        .map(|_| vocab[r.below(vocab.len() as u64) as usize].to_string())
        .collect()
}

#[test]
fn minhash_similarity_estimates() {
    let mh = MinHasher::new(MinHashParams::default());
    let a = words(1, 300);
    let mut b = a.clone();
    b[100] = "zzz".into();
    b[200] = "yyy".into();
    let c = words(2, 300);
    let (sa, _) = mh.signature(&a.join(" ")).unwrap();
    let (sb, _) = mh.signature(&b.join(" ")).unwrap();
    let (sc, _) = mh.signature(&c.join(" ")).unwrap();
    assert!(mimo_data::minhash::estimated_jaccard(&sa, &sb) > 0.8);
    assert!(mimo_data::minhash::estimated_jaccard(&sa, &sc) < 0.1);
    // Stable across runs and processes: fixed seeds, xxh3.
    let again = MinHasher::new(MinHashParams::default())
        .signature(&a.join(" "))
        .unwrap()
        .0;
    assert_eq!(sa, again);
}

fn dedup_corpus(d: &Path) -> Vec<PathBuf> {
    let a = words(10, 400);
    let mut a2 = a.clone();
    for i in [50, 150, 250, 350] {
        a2[i] = "different".into();
    }
    let b = words(11, 400);
    let c = words(12, 400);
    let e = words(13, 400);
    let s0 = d.join("s0.jsonl");
    let s1 = d.join("s1.jsonl");
    write_jsonl(
        &s0,
        &[
            json!({"url": "http://x/a", "text": a.join(" ")}),
            json!({"url": "http://x/b", "text": b.join(" ")}),
        ],
    );
    let mut s1_body = String::new();
    s1_body.push_str(&format!(
        "{}\n",
        json!({"url": "http://x/a2", "text": a2.join(" ")})
    ));
    s1_body.push_str("{broken json\n");
    s1_body.push_str(&format!(
        "{}\n",
        json!({"url": "http://x/b#frag", "text": c.join(" ")})
    ));
    s1_body.push_str(&format!(
        "{}\n",
        json!({"url": "http://x/e", "text": e.join(" ")})
    ));
    std::fs::write(&s1, s1_body).unwrap();
    vec![s0, s1]
}

fn check_dedup_output(out: &Path) {
    let k0 = read_jsonl(&out.join("s0.jsonl"));
    let k1 = read_jsonl(&out.join("s1.jsonl"));
    let x1 = read_jsonl(&out.join("s1.excluded.jsonl"));
    assert_eq!(k0.len(), 2);
    assert_eq!(k1.len(), 1, "{k1:?}");
    assert_eq!(k1[0]["url"], "http://x/e");
    let reasons: Vec<&str> = x1.iter().map(|x| x["reason"].as_str().unwrap()).collect();
    assert_eq!(
        reasons,
        ["near_duplicate", "malformed:invalid_json", "duplicate_url"]
    );
    assert!(x1[0]["detail"].as_str().unwrap().contains("s0.jsonl:1"));
    assert!(x1[2]["detail"].as_str().unwrap().contains("s0.jsonl:2"));
    assert_eq!(x1[0]["doc"]["url"], "http://x/a2");
}

#[test]
fn dedup_all_stages_one_task() {
    let d = tmpdir("dedup1");
    let inputs = dedup_corpus(&d);
    let args = DedupArgs {
        inputs,
        work_dir: d.join("work"),
        output: d.join("out"),
        ..Default::default()
    };
    let r = dedup(&args).unwrap();
    check_dedup_output(&d.join("out"));
    assert_eq!(r.reasons["near_duplicate"], 1);
    assert_eq!(r.reasons["duplicate_url"], 1);
    let sig = &r.extra["signatures"];
    assert!(sig["extra"]["minhash_words_per_s"].as_f64().unwrap() > 0.0);
    // Relaunch: everything is skipped.
    let r2 = dedup(&args).unwrap();
    assert_eq!(r2.shards_run, 0);
    assert_eq!(r2.shards_skipped, 2);
}

#[test]
fn dedup_staged_two_tasks() {
    let d = tmpdir("dedup2");
    let inputs = dedup_corpus(&d);
    let base = DedupArgs {
        inputs,
        work_dir: d.join("work"),
        output: d.join("out"),
        num_tasks: 2,
        ..Default::default()
    };
    // Buckets before signatures are complete is refused.
    assert!(dedup(&DedupArgs {
        stage: DedupStage::Buckets,
        ..base.clone()
    })
    .is_err());
    for stage in [
        DedupStage::Signatures,
        DedupStage::Buckets,
        DedupStage::Cluster,
        DedupStage::Filter,
    ] {
        for t in 0..2 {
            dedup(&DedupArgs {
                stage,
                task_index: t,
                ..base.clone()
            })
            .unwrap();
        }
    }
    check_dedup_output(&d.join("out"));
    assert!(dedup(&DedupArgs {
        stage: DedupStage::All,
        ..base
    })
    .is_err());
}

const PROSE: &str = "The history of the town begins in the twelfth century, when a small group of farmers settled \
near the river. Over the following centuries the settlement grew into a market town with a church, a mill and a \
bridge that connected it to the roads of the region. Today the town is known for its old houses, its weekly market \
and the festival that takes place every summer. Visitors can walk along the river, see the old mill and enjoy the \
local food in one of the many small restaurants that line the main square.";

fn math_page() -> String {
    // Symbol-heavy ('#', '...', '{', many non-alphabetic tokens, short formula lines): fails Gopher/C4/FineWeb
    // notation rules without the math exemption.
    r"Theorem 1. For every integer $n \ge 1$ we have $1 + 2 + ... + n = \frac{n(n+1)}{2}$.
Proof. We argue by induction on $n$.
Base case: $n = 1$ gives $1 = \frac{1 \cdot 2}{2}$.
Inductive step: assume $S_n = \frac{n(n+1)}{2}$; then
$$S_{n+1} = S_n + (n+1) = \frac{n(n+1)}{2} + \frac{2(n+1)}{2} = \frac{(n+1)(n+2)}{2}.$$
Hence the claim holds for all $n$. #
Remark #2. Gauss's trick pairs $k$ with $n+1-k$:
$$2S_n = \sum_{k=1}^{n} \{ k + (n+1-k) \} = n(n+1).$$
Exercise #3. Show that $\sum_{k=1}^{n} k^2 = \frac{n(n+1)(2n+1)}{6}$ and that $\sum_{k=1}^{n} k^3 = S_n^2$.
Exercise #4. Compute $1^2 + 2^2 + ... + 10^2$ with the formula, then check it by hand.
Hint: $x_1, x_2, ..., x_n$ with $x_k = k$; use $\binom{n}{2} = \frac{n(n-1)}{2}$ and telescoping in $(k+1)^3 - k^3$.
#5 $a_n$: $a_1 = 1$, $a_{n+1} = a_n + n + 1$ ... $a_n = S_n$.
$\{1, 2, ..., n\}$
$\{S_1, S_2, ...\}$
$= 1, 3, 6, 10, 15, ...$
"
    .to_string()
}

#[test]
fn filter_keeps_math_drops_junk() {
    let d = tmpdir("filter");
    let input = d.join("in.jsonl");
    let code_page = format!("{PROSE}\n\n```python\nfor i in range(10):\n    print({{i: i ** 2}})\n```\n\nThat loop prints squares of the numbers, one per line, and shows the dictionary syntax of the language.");
    write_jsonl(
        &input,
        &[
            json!({"url": "math", "text": math_page()}),
            json!({"url": "prose", "text": PROSE}),
            json!({"url": "short", "text": "Click here to subscribe."}),
            json!({"url": "lorem", "text": format!("{PROSE} Lorem ipsum dolor sit amet.")}),
            json!({"url": "french", "text": "La ville a été fondée au douzième siècle, lorsque un petit groupe de paysans s'est installé près de la rivière. Au cours des siècles suivants, le village est devenu une ville de marché avec une église, un moulin et un pont. Aujourd'hui la ville est connue pour ses vieilles maisons, son marché hebdomadaire et le festival qui a lieu chaque été, et les visiteurs peuvent se promener le long de la rivière."}),
            json!({"url": "code", "text": code_page}),
            json!({"url": "repeat", "text": std::iter::repeat_n("Buy cheap watches now at the best online store today.", 30).collect::<Vec<_>>().join("\n")}),
        ],
    );
    let out = d.join("out.jsonl");
    let r = filter(&FilterArgs {
        inputs: vec![input.clone()],
        output: out.clone(),
        ..Default::default()
    })
    .unwrap();
    let kept: Vec<String> = read_jsonl(&out)
        .iter()
        .map(|v| v["url"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(kept, ["math", "prose", "code"], "{r:?}");
    let ex = read_jsonl(&d.join("out.excluded.jsonl"));
    let reasons: Vec<(&str, &str)> = ex
        .iter()
        .map(|x| {
            (
                x["doc"]["url"].as_str().unwrap(),
                x["reason"].as_str().unwrap(),
            )
        })
        .collect();
    assert!(reasons.iter().any(|(u, _)| *u == "short"), "{reasons:?}");
    assert!(
        reasons.contains(&("lorem", "c4:lorem_ipsum")),
        "{reasons:?}"
    );
    assert!(reasons.contains(&("french", "language")), "{reasons:?}");
    assert!(
        reasons
            .iter()
            .any(|(u, r)| *u == "repeat" && r.starts_with("gopher:")),
        "{reasons:?}"
    );
    // Without the exemption the same math page is dropped by a notation-sensitive rule.
    let out2 = d.join("out2.jsonl");
    filter(&FilterArgs {
        inputs: vec![input],
        output: out2.clone(),
        math_code_exemption: false,
        ..Default::default()
    })
    .unwrap();
    let kept2: Vec<String> = read_jsonl(&out2)
        .iter()
        .map(|v| v["url"].as_str().unwrap().to_string())
        .collect();
    assert!(!kept2.contains(&"math".to_string()), "{kept2:?}");
}

#[test]
fn decontamination_drops_eval_overlap() {
    let d = tmpdir("decontam");
    let input = d.join("web.jsonl");
    let eval: Value = serde_json::from_str(
        std::fs::read_to_string(fixture("eval-sample.jsonl"))
            .unwrap()
            .lines()
            .next()
            .unwrap(),
    )
    .unwrap();
    let q = eval["question"].as_str().unwrap();
    // Embedded with different case/punctuation: still caught (normalised words).
    let leaked = format!(
        "Forum post. Someone asked: {} Thanks!",
        q.to_uppercase().replace(',', " ,")
    );
    let partial: String = q.split_whitespace().take(10).collect::<Vec<_>>().join(" ");
    write_jsonl(
        &input,
        &[
            json!({"url": "clean", "text": PROSE}),
            json!({"url": "leak", "text": leaked}),
            json!({"url": "partial", "text": format!("{partial} is how the puzzle starts, but nothing else.")}),
        ],
    );
    let mut evals = vec![fixture("eval-sample.jsonl")];
    // The real sets, when the shared data is present.
    let real = Path::new("/work/shared/data/eval/gsm8k.jsonl");
    if real.exists() {
        evals.push(real.to_path_buf());
    }
    let out = d.join("out.jsonl");
    let r = decontaminate(&DecontamArgs {
        inputs: vec![input],
        output: out.clone(),
        eval_sets: evals,
        ..Default::default()
    })
    .unwrap();
    let kept: Vec<String> = read_jsonl(&out)
        .iter()
        .map(|v| v["url"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(kept, ["clean", "partial"]);
    assert_eq!(r.reasons["contamination"], 1);
    let ex = read_jsonl(&d.join("out.excluded.jsonl"));
    assert!(ex[0]["detail"]
        .as_str()
        .unwrap()
        .contains("eval-sample.jsonl:1"));
}

fn toy(seed: u64, n: usize) -> Vec<Value> {
    let math = [
        "theorem",
        "proof",
        "integral",
        "equation",
        "lemma",
        "derivative",
        "matrix",
        "prime",
        "$x^2$",
        "\\frac",
    ];
    let cook = [
        "recipe", "oven", "butter", "flour", "sugar", "bake", "salt", "onion", "garlic", "simmer",
    ];
    let common = [
        "the", "a", "we", "then", "with", "and", "is", "of", "this", "for",
    ];
    let mut r = SplitMix64(seed);
    (0..n)
        .map(|i| {
            let (label, dom) = if i % 2 == 0 {
                ("math", &math)
            } else {
                ("cooking", &cook)
            };
            let t: Vec<&str> = (0..30)
                .map(|_| {
                    if r.below(3) == 0 {
                        dom[r.below(10) as usize]
                    } else {
                        common[r.below(10) as usize]
                    }
                })
                .collect();
            json!({"text": t.join(" "), "label": label})
        })
        .collect()
}

#[test]
fn classifier_learns_toy_split() {
    let d = tmpdir("clf");
    write_jsonl(&d.join("train.jsonl"), &toy(1, 200));
    write_jsonl(&d.join("valid.jsonl"), &toy(2, 60));
    let model = d.join("model.json");
    let r = classifier_train(&ClassifierTrainArgs {
        inputs: vec![d.join("train.jsonl")],
        valid: vec![d.join("valid.jsonl")],
        model: model.clone(),
        ..Default::default()
    })
    .unwrap();
    assert!(r.extra["valid_accuracy"].as_f64().unwrap() >= 0.95, "{r:?}");
    let r2 = classifier_score(&ClassifierScoreArgs {
        inputs: vec![d.join("valid.jsonl")],
        output: d.join("scored"),
        model,
        drop_labels: vec!["cooking".into()],
        ..Default::default()
    })
    .unwrap();
    let kept = read_jsonl(&d.join("scored/valid.jsonl"));
    assert!(kept.iter().all(|v| v["quality"]["label"] == "math"));
    assert!(kept.len() >= 28, "{}", kept.len());
    assert!(r2.reasons["classifier:cooking"] >= 28);
    assert!(kept[0]["quality"]["scores"]["math"].as_f64().unwrap() > 0.5);
}

#[test]
fn mixture_spec_validates() {
    let m = MixtureSpec::load(&fixture("mixture.toml")).unwrap();
    assert_eq!(m.stages.len(), 3);
    let w = m.stage_weights("stage2").unwrap();
    assert!((w["math"] + w["code"] - 0.7).abs() < 1e-9);
    let d = tmpdir("mixbad");
    let p = d.join("m.toml");
    std::fs::write(&p, "[sources.a]\nfiles = []\n\n[[stages]]\nname = \"s\"\nseq_len = 8\nweights = { a = 1.0 }\nbogus = 1\n").unwrap();
    let e = MixtureSpec::load(&p).unwrap_err().to_string();
    assert!(e.contains("m.toml:8"), "{e}");
}

#[test]
fn pack_round_trip_two_tasks() {
    let d = tmpdir("pack");
    let out = d.join("packed");
    let base = PackArgs {
        mixture: fixture("mixture.toml"),
        stage: "stage1".into(),
        tokenizer: fixture("tokenizer.json"),
        output: out.clone(),
        shard_tokens: 40,
        num_tasks: 2,
        ..Default::default()
    };
    let r0 = pack(&PackArgs {
        task_index: 0,
        ..base.clone()
    })
    .unwrap();
    assert_eq!(r0.extra["index_written"], false);
    assert!(!out.join("index.json").exists());
    let r1 = pack(&PackArgs {
        task_index: 1,
        ..base.clone()
    })
    .unwrap();
    assert_eq!(r1.extra["index_written"], true);
    // Relaunch of a finished task does no work.
    let again = pack(&PackArgs {
        task_index: 0,
        ..base.clone()
    })
    .unwrap();
    assert_eq!(again.shards_skipped, 1);

    let ds = PackedDataset::open(&out).unwrap();
    let idx = ds.index().clone();
    assert_eq!(idx.dtype, "u32");
    assert_eq!(idx.seq_len, 8192);
    assert!(idx.shards.len() >= 2);
    let tok = tokenizers::Tokenizer::from_file(ds.tokenizer_path()).unwrap();
    assert_eq!(Some(idx.eos_id), tok.token_to_id("<|endoftext|>"));
    // Decode every document back and find it in the sources.
    let mut all_src = String::new();
    for f in ["web", "math", "code"] {
        all_src.push_str(&std::fs::read_to_string(fixture(&format!("corpus/{f}.jsonl"))).unwrap());
    }
    let mut docs = 0;
    for (i, sh) in idx.shards.iter().enumerate() {
        let toks: Vec<u32> = ds.shard_tokens(i).collect();
        assert_eq!(toks.len() as u64, sh.tokens);
        assert_eq!(*toks.last().unwrap(), idx.eos_id);
        for doc in toks.split(|t| *t == idx.eos_id).filter(|d| !d.is_empty()) {
            let text = tok.decode(doc, false).unwrap();
            assert!(
                all_src.contains(&serde_json::to_string(&text).unwrap()),
                "decoded text not in sources: {text}"
            );
            docs += 1;
        }
        assert_eq!(
            toks.iter().filter(|t| **t == idx.eos_id).count() as u64,
            sh.documents
        );
    }
    assert_eq!(
        docs as u64,
        idx.shards.iter().map(|s| s.documents).sum::<u64>()
    );
    assert_eq!(ds.total_tokens(), idx.sources.values().sum::<u64>());

    // Windows: deterministic shuffle, a permutation, rank split.
    let n = ds.num_windows(8);
    assert!(n > 4);
    let o1 = ds.window_order(8, Some(7), 0, 1);
    let o2 = ds.window_order(8, Some(7), 0, 1);
    assert_eq!(o1, o2);
    assert_ne!(o1, (0..n).collect::<Vec<_>>());
    let mut s = o1.clone();
    s.sort();
    assert_eq!(s, (0..n).collect::<Vec<_>>());
    let r0: Vec<usize> = ds.window_order(8, Some(7), 0, 2);
    let r1: Vec<usize> = ds.window_order(8, Some(7), 1, 2);
    assert_eq!(r0.len() + r1.len(), n);
    let w: Vec<Vec<u32>> = ds.windows(8, Some(7), 0, 1).collect();
    assert_eq!(w.len(), n);
    assert!(w.iter().all(|x| x.len() == 8));
    assert_eq!(w[0], ds.window(8, o1[0]).unwrap());
}

#[test]
fn pack_with_target_upsamples() {
    let d = tmpdir("pack-target");
    let out = d.join("p");
    let r = pack(&PackArgs {
        mixture: fixture("mixture.toml"),
        stage: "stage3".into(),
        tokenizer: fixture("tokenizer.json"),
        output: out.clone(),
        shard_tokens: 1 << 20,
        ..Default::default()
    })
    .unwrap();
    assert!(r.extra["tokens"].as_u64().unwrap() >= 2000);
    let ds = PackedDataset::open(&out).unwrap();
    let src = &ds.index().sources;
    assert_eq!(src.len(), 4);
    assert!(src["synthetic"] > 0);
    let (m, c) = (src["math"] as f64, src["code"] as f64);
    let total = ds.total_tokens() as f64;
    assert!((m + c) / total > 0.45, "{src:?}");
}

#[test]
fn packed_open_rejects_bad_shard() {
    let d = tmpdir("packbad");
    let out = d.join("p");
    pack(&PackArgs {
        mixture: fixture("mixture.toml"),
        tokenizer: fixture("tokenizer.json"),
        output: out.clone(),
        ..Default::default()
    })
    .unwrap();
    let idx: Value =
        serde_json::from_str(&std::fs::read_to_string(out.join("index.json")).unwrap()).unwrap();
    let f = out.join(idx["shards"][0]["file"].as_str().unwrap());
    let mut b = std::fs::read(&f).unwrap();
    b.pop();
    std::fs::write(&f, b).unwrap();
    let e = PackedDataset::open(&out).unwrap_err().to_string();
    assert!(e.contains("shard-00000-00000.bin"), "{e}");
}

#[test]
fn resume_runs_only_unfinished_shards() {
    let d = tmpdir("resume");
    let mut inputs = Vec::new();
    for name in ["a", "b", "c"] {
        let p = d.join(format!("{name}.jsonl"));
        write_jsonl(
            &p,
            &[json!({"url": name, "html": format!("<p>page {name}</p>")})],
        );
        inputs.push(p);
    }
    let out = d.join("out");
    let args = ExtractArgs {
        inputs: inputs.clone(),
        output: out.clone(),
        ..Default::default()
    };
    // Task 1 of 2 runs only b.
    let r = extract(&ExtractArgs {
        task_index: 1,
        num_tasks: 2,
        ..args.clone()
    })
    .unwrap();
    assert_eq!(r.shards_run, 1);
    assert!(out.join("b.done").exists() && !out.join("a.done").exists());
    // Simulate a crash of an earlier full run: a left partial temp file and no marker for c.
    let r = extract(&args).unwrap();
    assert_eq!((r.shards_run, r.shards_skipped), (2, 1));
    std::fs::remove_file(out.join("c.done")).unwrap();
    std::fs::write(out.join("c.jsonl"), "partial garbage").unwrap();
    let r = extract(&args).unwrap();
    assert_eq!((r.shards_run, r.shards_skipped), (1, 2));
    assert_eq!(read_jsonl(&out.join("c.jsonl"))[0]["text"], "page c");
    // force redoes everything
    let r = extract(&ExtractArgs {
        force: true,
        ..args
    })
    .unwrap();
    assert_eq!(r.shards_run, 3);
}

#[test]
fn bad_usage_is_an_error_not_a_panic() {
    let e = extract(&ExtractArgs {
        task_index: 3,
        num_tasks: 2,
        ..Default::default()
    })
    .unwrap_err();
    assert!(e.to_string().contains("task index"));
    let e = filter(&FilterArgs {
        inputs: vec!["/nonexistent/x.jsonl".into()],
        output: "/tmp/none".into(),
        ..Default::default()
    })
    .unwrap_err();
    assert!(e.to_string().contains("/nonexistent/x.jsonl"), "{e}");
}
