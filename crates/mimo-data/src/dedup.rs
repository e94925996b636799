//! Global dedup as four file-based stages (datatrove-style), so a corpus larger than memory works:
//!
//! 1. `signatures` (task i of N over input shards): per shard and band, the sorted records
//!    `(key u64, shard u32, line u32)` → `work/sigs/band-BB/SSSSS.bin`; band `bands` (one past the last
//!    MinHash band) holds the hash of the URL, so exact URL dedup uses the same machinery.
//! 2. `buckets` (task i of N over bands): k-way merge of a band's sorted files; every record whose key equals
//!    the previous one's gives a pair (duplicate → first) → `work/pairs/band-BB.bin`. Memory: one record per shard.
//! 3. `cluster` (one task): union-find over all pairs (memory ∝ duplicates only); every document but the
//!    smallest id of its cluster is removed → `work/remove/SSSSS.bin`.
//! 4. `filter` (task i of N over input shards): drops removed lines; they go to the exclusion file with reason
//!    `duplicate_url` or `near_duplicate` and the kept document's shard and line.
//!
//! Every stage leaves completion markers and skips finished units on relaunch. All stages must be given the
//! same input list in the same order (shard ids are positions in it).

use crate::common::{
    check_task, owned, read_marker, run_jsonl_stage, text_of, write_json_file, AtomicWriter,
    BadLines, Decision, JsonlReader, Line, Report, ShardReport,
};
use crate::minhash::{MinHashParams, MinHasher};
use crate::DataError;
use serde_json::json;
use std::collections::{BinaryHeap, HashMap};
use std::fs::File;
use std::io::{BufReader, Read};
use std::path::{Path, PathBuf};
use std::time::Instant;
use xxhash_rust::xxh3::xxh3_64;

/// Which dedup stage to run.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Serialize, serde::Deserialize)]
pub enum DedupStage {
    /// MinHash/URL keys per shard.
    Signatures,
    /// Merge per band into duplicate pairs.
    Buckets,
    /// Union-find into removal lists (task 0 only; other tasks do nothing).
    Cluster,
    /// Write deduplicated shards.
    Filter,
    /// All four in order (only with one task).
    #[default]
    All,
}

/// Arguments of `mimo data dedup`.
#[derive(Debug, Clone)]
pub struct DedupArgs {
    /// Input JSONL shards (same list, same order, for every stage).
    pub inputs: Vec<PathBuf>,
    /// Directory for intermediate files (signatures, pairs, removal lists).
    pub work_dir: PathBuf,
    /// Output directory of the filter stage.
    pub output: PathBuf,
    /// Stage to run.
    pub stage: DedupStage,
    /// This task's index.
    pub task_index: usize,
    /// Number of tasks.
    pub num_tasks: usize,
    /// Field holding the text.
    pub text_field: String,
    /// Field holding the URL (exact URL dedup); documents without one only take part in MinHash.
    pub url_field: String,
    /// MinHash parameters.
    pub minhash: MinHashParams,
    /// Redo units that already have a completion marker.
    pub force: bool,
    /// Show progress bars on stderr.
    pub progress: bool,
}

impl Default for DedupArgs {
    fn default() -> Self {
        DedupArgs {
            inputs: vec![],
            work_dir: PathBuf::new(),
            output: PathBuf::new(),
            stage: DedupStage::All,
            task_index: 0,
            num_tasks: 1,
            text_field: "text".into(),
            url_field: "url".into(),
            minhash: MinHashParams::default(),
            force: false,
            progress: false,
        }
    }
}

const REC: usize = 16;
const PAIR: usize = 17;
const REMOVE: usize = 13;

/// Runs one dedup stage (or all of them).
pub fn dedup(args: &DedupArgs) -> Result<Report, DataError> {
    check_task(args.task_index, args.num_tasks)?;
    if args.inputs.len() > u32::MAX as usize {
        return Err(DataError::Usage("too many input shards".into()));
    }
    match args.stage {
        DedupStage::Signatures => signatures(args),
        DedupStage::Buckets => buckets(args),
        DedupStage::Cluster => cluster(args),
        DedupStage::Filter => filter(args),
        DedupStage::All => {
            if args.num_tasks != 1 {
                return Err(DataError::Usage(
                    "dedup stage All needs num_tasks = 1; run the stages one by one".into(),
                ));
            }
            let start = Instant::now();
            let s = signatures(args)?;
            let b = buckets(args)?;
            let c = cluster(args)?;
            let mut f = filter(args)?;
            f.stage = "dedup".into();
            for (name, r) in [("signatures", s), ("buckets", b), ("cluster", c)] {
                f.extra
                    .insert(name.into(), serde_json::to_value(&r).unwrap_or_default());
            }
            f.finish(start);
            Ok(f)
        }
    }
}

fn band_dir(args: &DedupArgs, band: usize) -> PathBuf {
    args.work_dir.join("sigs").join(format!("band-{band:02}"))
}

fn normalize_url(u: &str) -> &str {
    let u = u.trim();
    u.split('#').next().unwrap_or(u)
}

fn signatures(args: &DedupArgs) -> Result<Report, DataError> {
    let start = Instant::now();
    let mh = MinHasher::new(args.minhash);
    let nb = args.minhash.bands;
    let mut report = Report::new("dedup/signatures", args.task_index, args.num_tasks);
    let mut words = 0u64;
    let mut hash_secs = 0f64;
    for shard in owned(args.inputs.len(), args.task_index, args.num_tasks) {
        let input = &args.inputs[shard];
        let marker = args.work_dir.join("sigs").join(format!("{shard:05}.done"));
        if !args.force {
            if let Some(mut m) = read_marker(&marker) {
                m.resumed = true;
                report.add(m);
                continue;
            }
        }
        let t0 = Instant::now();
        let mut sr = ShardReport {
            input: input.display().to_string(),
            output: format!("sigs/*/{shard:05}.bin"),
            ..Default::default()
        };
        let mut per_band: Vec<Vec<(u64, u32)>> = vec![Vec::new(); nb + 1];
        let mut r = JsonlReader::open(input)?;
        let mut bad = BadLines::default();
        while let Some((line, l)) = r.next_line() {
            sr.docs_in += 1;
            let doc = match l {
                Line::Doc(doc) => doc,
                Line::Malformed(_, detail) => {
                    bad.note(&detail);
                    continue;
                }
            };
            let line = line as u32;
            if let Some(u) = doc.get(&args.url_field).and_then(|v| v.as_str()) {
                let u = normalize_url(u);
                if !u.is_empty() {
                    per_band[nb].push((xxh3_64(u.as_bytes()), line));
                }
            }
            let th = Instant::now();
            if let Some((sig, n)) = mh.signature(text_of(&doc, &args.text_field)) {
                words += n as u64;
                for (b, k) in mh.band_keys(&sig).into_iter().enumerate() {
                    per_band[b].push((k, line));
                }
            }
            hash_secs += th.elapsed().as_secs_f64();
            sr.docs_out += 1;
        }
        sr.malformed = bad.count;
        bad.record(&mut sr.extra);
        for (b, mut recs) in per_band.into_iter().enumerate() {
            recs.sort_unstable();
            let mut w = AtomicWriter::create(&band_dir(args, b).join(format!("{shard:05}.bin")))?;
            let mut buf = Vec::with_capacity(recs.len() * REC);
            for (k, line) in recs {
                buf.extend_from_slice(&k.to_le_bytes());
                buf.extend_from_slice(&(shard as u32).to_le_bytes());
                buf.extend_from_slice(&line.to_le_bytes());
            }
            w.write_all(&buf)?;
            w.finish()?;
        }
        sr.seconds = t0.elapsed().as_secs_f64();
        write_json_file(&marker, &sr)?;
        report.add(sr);
    }
    report.finish(start);
    report.extra.insert("words".into(), json!(words));
    report.extra.insert(
        "minhash_words_per_s".into(),
        json!(words as f64 / hash_secs.max(1e-9)),
    );
    Ok(report)
}

fn require_marker(path: &Path, what: &str) -> Result<(), DataError> {
    if path.exists() {
        Ok(())
    } else {
        Err(DataError::Usage(format!(
            "{what} not finished: missing marker {}",
            path.display()
        )))
    }
}

struct SigFile {
    r: BufReader<File>,
    path: PathBuf,
}

impl SigFile {
    fn next(&mut self) -> Result<Option<(u64, u32, u32)>, DataError> {
        let mut b = [0u8; REC];
        match self.r.read_exact(&mut b) {
            Ok(()) => Ok(Some((
                u64::from_le_bytes(b[0..8].try_into().unwrap_or_default()),
                u32::from_le_bytes(b[8..12].try_into().unwrap_or_default()),
                u32::from_le_bytes(b[12..16].try_into().unwrap_or_default()),
            ))),
            Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => Ok(None),
            Err(e) => Err(DataError::Io {
                path: self.path.clone(),
                source: e,
            }),
        }
    }
}

fn buckets(args: &DedupArgs) -> Result<Report, DataError> {
    let start = Instant::now();
    let n_shards = args.inputs.len();
    for s in 0..n_shards {
        require_marker(
            &args.work_dir.join("sigs").join(format!("{s:05}.done")),
            "dedup signatures stage",
        )?;
    }
    let nb = args.minhash.bands;
    let mut report = Report::new("dedup/buckets", args.task_index, args.num_tasks);
    for band in owned(nb + 1, args.task_index, args.num_tasks) {
        let out = args
            .work_dir
            .join("pairs")
            .join(format!("band-{band:02}.bin"));
        let marker = args
            .work_dir
            .join("pairs")
            .join(format!("band-{band:02}.done"));
        if !args.force {
            if let Some(mut m) = read_marker(&marker) {
                m.resumed = true;
                report.add(m);
                continue;
            }
        }
        let t0 = Instant::now();
        let mut sr = ShardReport {
            input: format!("band {band}"),
            output: out.display().to_string(),
            ..Default::default()
        };
        let mut files = Vec::new();
        for s in 0..n_shards {
            let p = band_dir(args, band).join(format!("{s:05}.bin"));
            let f = File::open(&p).map_err(DataError::io(&p))?;
            files.push(SigFile {
                r: BufReader::with_capacity(1 << 16, f),
                path: p,
            });
        }
        let mut heap = BinaryHeap::new();
        for (i, f) in files.iter_mut().enumerate() {
            if let Some((k, s, l)) = f.next()? {
                heap.push(std::cmp::Reverse((k, s, l, i)));
            }
        }
        let is_url = band == nb;
        let mut w = AtomicWriter::create(&out)?;
        let mut prev: Option<(u64, u32, u32)> = None;
        while let Some(std::cmp::Reverse((k, s, l, i))) = heap.pop() {
            sr.docs_in += 1;
            if let Some(next) = files[i].next()? {
                heap.push(std::cmp::Reverse((next.0, next.1, next.2, i)));
            }
            match prev {
                Some((pk, ps, pl)) if pk == k => {
                    let mut rec = [0u8; PAIR];
                    rec[0..4].copy_from_slice(&s.to_le_bytes());
                    rec[4..8].copy_from_slice(&l.to_le_bytes());
                    rec[8..12].copy_from_slice(&ps.to_le_bytes());
                    rec[12..16].copy_from_slice(&pl.to_le_bytes());
                    rec[16] = is_url as u8;
                    w.write_all(&rec)?;
                    sr.docs_out += 1;
                }
                _ => prev = Some((k, s, l)),
            }
        }
        w.finish()?;
        sr.seconds = t0.elapsed().as_secs_f64();
        sr.extra.insert("pairs".into(), json!(sr.docs_out));
        write_json_file(&marker, &sr)?;
        report.add(sr);
    }
    report.finish(start);
    Ok(report)
}

fn find(parent: &mut HashMap<u64, u64>, x: u64) -> u64 {
    let mut r = x;
    while let Some(&p) = parent.get(&r) {
        if p == r {
            break;
        }
        r = p;
    }
    // Path compression.
    let mut c = x;
    while let Some(&p) = parent.get(&c) {
        if p == r {
            break;
        }
        parent.insert(c, r);
        c = p;
    }
    r
}

fn cluster(args: &DedupArgs) -> Result<Report, DataError> {
    let start = Instant::now();
    let mut report = Report::new("dedup/cluster", args.task_index, args.num_tasks);
    if args.task_index != 0 {
        report.finish(start);
        return Ok(report);
    }
    let nb = args.minhash.bands;
    for band in 0..=nb {
        require_marker(
            &args
                .work_dir
                .join("pairs")
                .join(format!("band-{band:02}.done")),
            "dedup buckets stage",
        )?;
    }
    let marker = args.work_dir.join("remove").join("cluster.done");
    if !args.force {
        if let Some(mut m) = read_marker(&marker) {
            m.resumed = true;
            report.add(m);
            report.finish(start);
            return Ok(report);
        }
    }
    let mut parent: HashMap<u64, u64> = HashMap::new();
    let mut url_dup: HashMap<u64, bool> = HashMap::new();
    let mut pairs = 0u64;
    for band in 0..=nb {
        let p = args
            .work_dir
            .join("pairs")
            .join(format!("band-{band:02}.bin"));
        let mut r = BufReader::new(File::open(&p).map_err(DataError::io(&p))?);
        let mut rec = [0u8; PAIR];
        loop {
            match r.read_exact(&mut rec) {
                Ok(()) => {}
                Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => break,
                Err(e) => return Err(DataError::Io { path: p, source: e }),
            }
            pairs += 1;
            let id = |o: usize| {
                ((u32::from_le_bytes([rec[o], rec[o + 1], rec[o + 2], rec[o + 3]]) as u64) << 32)
                    | u32::from_le_bytes([rec[o + 4], rec[o + 5], rec[o + 6], rec[o + 7]]) as u64
            };
            let (a, b) = (id(0), id(8));
            if rec[16] == 1 {
                url_dup.insert(a, true);
            }
            parent.entry(a).or_insert(a);
            parent.entry(b).or_insert(b);
            let (ra, rb) = (find(&mut parent, a), find(&mut parent, b));
            if ra != rb {
                let (lo, hi) = if ra < rb { (ra, rb) } else { (rb, ra) };
                parent.insert(hi, lo);
            }
        }
    }
    let nodes: Vec<u64> = parent.keys().copied().collect();
    let mut per_shard: Vec<Vec<(u32, u64, u8)>> = vec![Vec::new(); args.inputs.len()];
    let mut sr = ShardReport {
        input: "pairs".into(),
        output: "remove/".into(),
        ..Default::default()
    };
    for n in nodes {
        let root = find(&mut parent, n);
        if root != n {
            let shard = (n >> 32) as usize;
            let reason = u8::from(url_dup.get(&n).copied().unwrap_or(false));
            if let Some(v) = per_shard.get_mut(shard) {
                v.push((n as u32, root, reason));
                sr.exclude(if reason == 1 {
                    "duplicate_url"
                } else {
                    "near_duplicate"
                });
            }
        }
    }
    for (shard, mut v) in per_shard.into_iter().enumerate() {
        v.sort_unstable();
        let mut w =
            AtomicWriter::create(&args.work_dir.join("remove").join(format!("{shard:05}.bin")))?;
        let mut buf = Vec::with_capacity(v.len() * REMOVE);
        for (line, root, reason) in v {
            buf.extend_from_slice(&line.to_le_bytes());
            buf.extend_from_slice(&root.to_le_bytes());
            buf.push(reason);
        }
        w.write_all(&buf)?;
        w.finish()?;
    }
    sr.docs_in = pairs;
    sr.extra.insert("pairs".into(), json!(pairs));
    write_json_file(&marker, &sr)?;
    report.add(sr);
    report.finish(start);
    Ok(report)
}

/// Removed line → (kept document id, reason flag).
type Removals = HashMap<u32, (u64, u8)>;

fn load_removals(args: &DedupArgs, shard: usize) -> Result<Removals, DataError> {
    let p = args.work_dir.join("remove").join(format!("{shard:05}.bin"));
    let mut b = Vec::new();
    File::open(&p)
        .map_err(DataError::io(&p))?
        .read_to_end(&mut b)
        .map_err(DataError::io(&p))?;
    if b.len() % REMOVE != 0 {
        return Err(DataError::parse(&p, 0, "removal list has a partial record"));
    }
    Ok(b.chunks_exact(REMOVE)
        .map(|c| {
            let line = u32::from_le_bytes([c[0], c[1], c[2], c[3]]);
            let mut r = [0u8; 8];
            r.copy_from_slice(&c[4..12]);
            (line, (u64::from_le_bytes(r), c[12]))
        })
        .collect())
}

fn filter(args: &DedupArgs) -> Result<Report, DataError> {
    require_marker(
        &args.work_dir.join("remove").join("cluster.done"),
        "dedup cluster stage",
    )?;
    let mut current: Option<(usize, Removals)> = None;
    let inputs = &args.inputs;
    run_jsonl_stage(
        "dedup/filter",
        inputs,
        &args.output,
        args.task_index,
        args.num_tasks,
        args.force,
        args.progress,
        |shard, _p, line, doc| {
            if current.as_ref().map(|c| c.0) != Some(shard) {
                current = Some((shard, load_removals(args, shard)?));
            }
            let removals = current.as_ref().map(|c| &c.1);
            match removals.and_then(|m| m.get(&(line as u32))) {
                Some(&(root, reason)) => {
                    let kept_shard = (root >> 32) as usize;
                    let detail = format!(
                        "duplicate of {}:{}",
                        inputs
                            .get(kept_shard)
                            .map(|p| p.display().to_string())
                            .unwrap_or_default(),
                        root as u32
                    );
                    let reason = if reason == 1 {
                        "duplicate_url"
                    } else {
                        "near_duplicate"
                    };
                    Ok(Decision::Drop(doc, reason.into(), detail))
                }
                None => Ok(Decision::Keep(doc)),
            }
        },
    )
}
