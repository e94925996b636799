//! Small file helpers: atomic directories and files, JSON, f32 safetensors.

use std::path::{Path, PathBuf};

use crate::error::{Result, TrainError};

/// Writes into `DIR.tmp-<pid>` with `fill`, then replaces `dir` by it (old copy moved aside, then removed), so a
/// reader (or a resume after kill -9) sees either the old or the new directory, never a half-written one.
pub fn atomic_dir(dir: &Path, fill: impl FnOnce(&Path) -> Result<()>) -> Result<()> {
    let name = dir
        .file_name()
        .map(|n| n.to_string_lossy().to_string())
        .ok_or_else(|| TrainError::Input(format!("{} has no file name", dir.display())))?;
    let parent = dir.parent().unwrap_or(Path::new("."));
    std::fs::create_dir_all(parent).map_err(|e| TrainError::io(parent, e))?;
    let tmp = parent.join(format!(".{name}.tmp-{}", std::process::id()));
    let old = parent.join(format!(".{name}.old-{}", std::process::id()));
    if tmp.exists() {
        std::fs::remove_dir_all(&tmp).map_err(|e| TrainError::io(&tmp, e))?;
    }
    std::fs::create_dir_all(&tmp).map_err(|e| TrainError::io(&tmp, e))?;
    fill(&tmp)?;
    if dir.exists() {
        std::fs::rename(dir, &old).map_err(|e| TrainError::io(dir, e))?;
    }
    std::fs::rename(&tmp, dir).map_err(|e| TrainError::io(dir, e))?;
    if old.exists() {
        std::fs::remove_dir_all(&old).map_err(|e| TrainError::io(&old, e))?;
    }
    Ok(())
}

/// Writes `bytes` to `path` via a temp file + rename.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> Result<()> {
    let tmp = tmp_name(path);
    std::fs::write(&tmp, bytes).map_err(|e| TrainError::io(&tmp, e))?;
    std::fs::rename(&tmp, path).map_err(|e| TrainError::io(path, e))
}

fn tmp_name(path: &Path) -> PathBuf {
    let mut s = path.as_os_str().to_owned();
    s.push(format!(".tmp-{}", std::process::id()));
    PathBuf::from(s)
}

/// Pretty JSON to `path` (atomic).
pub fn write_json(path: &Path, v: &impl serde::Serialize) -> Result<()> {
    let s = serde_json::to_string_pretty(v).map_err(|e| TrainError::Json {
        path: path.to_path_buf(),
        msg: e.to_string(),
    })?;
    write_atomic(path, s.as_bytes())
}

/// Reads a JSON file into `T`.
pub fn read_json<T: serde::de::DeserializeOwned>(path: &Path) -> Result<T> {
    let s = std::fs::read_to_string(path).map_err(|e| TrainError::io(path, e))?;
    serde_json::from_str(&s).map_err(|e| TrainError::Json {
        path: path.to_path_buf(),
        msg: e.to_string(),
    })
}

#[cfg(feature = "tch")]
pub use tensors::*;

#[cfg(feature = "tch")]
mod tensors {
    use super::*;
    use std::collections::{BTreeMap, HashMap};
    use tch::{Kind, Tensor};

    /// Writes f32 tensors as safetensors (metadata `format: pt`, as transformers expects), atomically.
    pub fn write_safetensors_f32(path: &Path, tensors: &BTreeMap<String, Tensor>) -> Result<()> {
        let mut bufs: Vec<(String, Vec<usize>, Vec<u8>)> = Vec::with_capacity(tensors.len());
        for (name, t) in tensors {
            let shape: Vec<usize> = t.size().iter().map(|&d| d as usize).collect();
            let t = t.to_kind(Kind::Float).contiguous().flatten(0, -1);
            let v: Vec<f32> = Vec::<f32>::try_from(&t).map_err(|e| TrainError::Checkpoint {
                path: path.to_path_buf(),
                msg: format!("tensor {name}: {e}"),
            })?;
            let bytes = v.iter().flat_map(|x| x.to_le_bytes()).collect();
            bufs.push((name.clone(), shape, bytes));
        }
        let views = bufs
            .iter()
            .map(|(n, s, b)| {
                safetensors::tensor::TensorView::new(safetensors::Dtype::F32, s.clone(), b)
                    .map(|v| (n.clone(), v))
            })
            .collect::<std::result::Result<Vec<_>, _>>()
            .map_err(|e| TrainError::Checkpoint {
                path: path.to_path_buf(),
                msg: e.to_string(),
            })?;
        let meta: HashMap<String, String> = [("format".to_string(), "pt".to_string())].into();
        let bytes =
            safetensors::serialize(views, Some(meta)).map_err(|e| TrainError::Checkpoint {
                path: path.to_path_buf(),
                msg: e.to_string(),
            })?;
        write_atomic(path, &bytes)
    }

    /// Reads every tensor of a safetensors file as f32 CPU tensors.
    pub fn read_safetensors_f32(path: &Path) -> Result<BTreeMap<String, Tensor>> {
        let bytes = std::fs::read(path).map_err(|e| TrainError::io(path, e))?;
        let st =
            safetensors::SafeTensors::deserialize(&bytes).map_err(|e| TrainError::Checkpoint {
                path: path.to_path_buf(),
                msg: e.to_string(),
            })?;
        let mut out = BTreeMap::new();
        for (name, view) in st.tensors() {
            if view.dtype() != safetensors::Dtype::F32 {
                return Err(TrainError::Checkpoint {
                    path: path.to_path_buf(),
                    msg: format!("tensor {name} is {:?}, expected F32", view.dtype()),
                });
            }
            let data: Vec<f32> = view
                .data()
                .chunks_exact(4)
                .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
                .collect();
            let shape: Vec<i64> = view.shape().iter().map(|&d| d as i64).collect();
            out.insert(name, Tensor::from_slice(&data).reshape(&shape));
        }
        Ok(out)
    }
}
