//! `mimo-dist`: data-parallel collectives for the trainer on PyTorch's c10d (`TCPStore` rendezvous,
//! `ProcessGroupGloo` all-reduce and broadcast) through the libtorch that `tch` links: the engine torchrun-launched
//! PyTorch programs use on CPU, never a home-made all-reduce (design §8).
//!
//! Launch is the torchrun way: `RANK`, `WORLD_SIZE`, `LOCAL_RANK`, `MASTER_ADDR`, `MASTER_PORT` (and
//! `GLOO_SOCKET_IFNAME` to pick the interface), so `torchrun --nproc-per-node N mimo train …` and Slurm
//! (`srun` with those variables exported) both work. A rank waits for its peers up to the timeout
//! (`MIMO_DIST_TIMEOUT_S`, default 300 s) and then fails with a clear error; a collective whose peer died
//! fails as soon as gloo sees the closed connection.

use std::ffi::{c_char, c_int, CStr, CString};
use std::ptr::NonNull;
use std::time::Duration;

use tch::{Kind, Tensor};

/// Errors of the process group.
#[derive(Debug, thiserror::Error)]
pub enum DistError {
    /// A launch variable is missing or malformed.
    #[error("distributed launch: {0}")]
    Env(String),
    /// c10d/gloo reported an error (rendezvous timeout, a peer that died, …).
    #[error("distributed {op} (rank {rank} of {world}): {msg}")]
    C10d {
        op: &'static str,
        rank: usize,
        world: usize,
        msg: String,
    },
    /// Ranks disagree on something that must be identical (shapes, a config).
    #[error("distributed: {0}")]
    Mismatch(String),
}

/// Result of this crate.
pub type Result<T> = std::result::Result<T, DistError>;

#[repr(C)]
struct RawGroup {
    _private: [u8; 0],
}

/// An `at::Tensor*`: what a tch `Tensor` holds ([`Tensor::as_mut_ptr`]).
type Tp = *mut std::ffi::c_void;

extern "C" {
    fn mimo_pg_new(
        host: *const c_char,
        port: c_int,
        rank: c_int,
        world: c_int,
        timeout_ms: c_int,
        iface: *const c_char,
        err: *mut *mut c_char,
    ) -> *mut RawGroup;
    fn mimo_pg_free(g: *mut RawGroup);
    fn mimo_free_str(s: *mut c_char);
    fn mimo_pg_allreduce_sum(
        g: *mut RawGroup,
        ts: *mut Tp,
        n: c_int,
        err: *mut *mut c_char,
    ) -> c_int;
    fn mimo_pg_broadcast(g: *mut RawGroup, t: Tp, root: c_int, err: *mut *mut c_char) -> c_int;
    fn mimo_pg_barrier(g: *mut RawGroup, err: *mut *mut c_char) -> c_int;
}

/// Where this process stands in a torchrun/Slurm launch.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Launch {
    pub rank: usize,
    pub world_size: usize,
    pub local_rank: usize,
    pub master_addr: String,
    pub master_port: u16,
    /// How long a rank waits for its peers (and a collective for its inputs).
    pub timeout: Duration,
}

impl Launch {
    /// The launch from the process environment; `None` when `WORLD_SIZE` is unset or 1 (one process).
    pub fn from_env() -> Result<Option<Launch>> {
        Self::from_vars(|k| std::env::var(k).ok())
    }

    /// The launch from `var` (the environment's lookup in [`Launch::from_env`]).
    pub fn from_vars(var: impl Fn(&str) -> Option<String>) -> Result<Option<Launch>> {
        let num = |k: &str, default: Option<usize>| -> Result<usize> {
            match var(k) {
                Some(v) => v.trim().parse().map_err(|_| {
                    DistError::Env(format!("{k}={v:?} is not a non-negative integer"))
                }),
                None => default.ok_or_else(|| {
                    DistError::Env(format!(
                        "WORLD_SIZE is set but {k} is not (launch with torchrun or export it)"
                    ))
                }),
            }
        };
        let world_size = match var("WORLD_SIZE") {
            None => return Ok(None),
            Some(_) => num("WORLD_SIZE", None)?,
        };
        if world_size <= 1 {
            return Ok(None);
        }
        let rank = num("RANK", None)?;
        if rank >= world_size {
            return Err(DistError::Env(format!(
                "RANK {rank} is not below WORLD_SIZE {world_size}"
            )));
        }
        let local_rank = num("LOCAL_RANK", Some(rank))?;
        let master_port = num("MASTER_PORT", Some(29500))?;
        let master_port = u16::try_from(master_port)
            .map_err(|_| DistError::Env(format!("MASTER_PORT {master_port} is not a port")))?;
        let timeout_s = match var("MIMO_DIST_TIMEOUT_S") {
            Some(v) => v
                .trim()
                .parse::<f64>()
                .ok()
                .filter(|s| *s > 0.0)
                .ok_or_else(|| {
                    DistError::Env(format!(
                        "MIMO_DIST_TIMEOUT_S={v:?} is not a positive number"
                    ))
                })?,
            None => 300.0,
        };
        Ok(Some(Launch {
            rank,
            world_size,
            local_rank,
            master_addr: var("MASTER_ADDR").unwrap_or_else(|| "127.0.0.1".into()),
            master_port,
            timeout: Duration::from_secs_f64(timeout_s),
        }))
    }
}

/// A c10d gloo process group over all ranks of the launch.
pub struct Group {
    raw: NonNull<RawGroup>,
    rank: usize,
    world: usize,
}

impl std::fmt::Debug for Group {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Group(rank {} of {})", self.rank, self.world)
    }
}

fn take_err(err: *mut c_char) -> String {
    if err.is_null() {
        return "unknown error".into();
    }
    // SAFETY: `err` is a NUL-terminated string malloc'ed by the shim, freed once here.
    let s = unsafe { CStr::from_ptr(err) }
        .to_string_lossy()
        .into_owned();
    unsafe { mimo_free_str(err) };
    s
}

impl Group {
    /// Rendezvous with every rank of `launch` at `MASTER_ADDR:MASTER_PORT` (rank 0 serves the store) and
    /// build the gloo group. Fails after `launch.timeout` when a peer never arrives.
    pub fn init(launch: &Launch) -> Result<Group> {
        let c =
            |s: &str| CString::new(s).map_err(|_| DistError::Env(format!("{s:?} has a NUL byte")));
        let host = c(&launch.master_addr)?;
        let iface = c(&std::env::var("GLOO_SOCKET_IFNAME").unwrap_or_default())?;
        let timeout_ms = launch.timeout.as_millis().min(i32::MAX as u128) as c_int;
        let mut err = std::ptr::null_mut();
        // SAFETY: the strings outlive the call; `err` receives an owned message on failure.
        let raw = unsafe {
            mimo_pg_new(
                host.as_ptr(),
                launch.master_port as c_int,
                launch.rank as c_int,
                launch.world_size as c_int,
                timeout_ms,
                iface.as_ptr(),
                &mut err,
            )
        };
        let fail = |msg: String| DistError::C10d {
            op: "rendezvous",
            rank: launch.rank,
            world: launch.world_size,
            msg: format!(
                "{msg} (waiting for {} ranks at {}:{} for up to {:.0} s)",
                launch.world_size,
                launch.master_addr,
                launch.master_port,
                launch.timeout.as_secs_f64()
            ),
        };
        let raw = NonNull::new(raw).ok_or_else(|| fail(take_err(err)))?;
        Ok(Group {
            raw,
            rank: launch.rank,
            world: launch.world_size,
        })
    }

    /// This process's rank.
    pub fn rank(&self) -> usize {
        self.rank
    }

    /// The number of ranks.
    pub fn world_size(&self) -> usize {
        self.world
    }

    fn check(&self, op: &'static str, rc: c_int, err: *mut c_char) -> Result<()> {
        if rc == 0 {
            return Ok(());
        }
        Err(DistError::C10d {
            op,
            rank: self.rank,
            world: self.world,
            msg: take_err(err),
        })
    }

    /// Sums each tensor over the ranks, in place (contiguous CPU tensors of the same shape on every rank).
    pub fn all_reduce_sum(&self, tensors: &mut [Tensor]) -> Result<()> {
        let mut inner: Vec<Tp> = tensors.iter_mut().map(|t| t.as_mut_ptr() as Tp).collect();
        let mut err = std::ptr::null_mut();
        // SAFETY: every pointer is a live at::Tensor owned by `tensors` for the call's duration.
        let rc = unsafe {
            mimo_pg_allreduce_sum(
                self.raw.as_ptr(),
                inner.as_mut_ptr(),
                inner.len() as c_int,
                &mut err,
            )
        };
        self.check("all-reduce", rc, err)
    }

    /// Sums `values` over the ranks (as f64).
    pub fn all_reduce_f64(&self, values: &mut [f64]) -> Result<()> {
        if values.is_empty() {
            return Ok(());
        }
        let mut t = [Tensor::from_slice(values)];
        self.all_reduce_sum(&mut t)?;
        t[0].copy_data(values, values.len());
        Ok(())
    }

    /// Overwrites `tensor` on every rank with rank `root`'s.
    pub fn broadcast(&self, tensor: &mut Tensor, root: usize) -> Result<()> {
        let mut err = std::ptr::null_mut();
        // SAFETY: `tensor` is a live at::Tensor for the call's duration.
        let rc = unsafe {
            mimo_pg_broadcast(
                self.raw.as_ptr(),
                tensor.as_mut_ptr() as Tp,
                root as c_int,
                &mut err,
            )
        };
        self.check("broadcast", rc, err)
    }

    /// Rank 0's `bytes` on every rank (other ranks' `bytes` are ignored): the length, then the payload.
    pub fn broadcast_bytes(&self, bytes: &[u8]) -> Result<Vec<u8>> {
        let mut len = Tensor::from_slice(&[bytes.len() as i64]);
        self.broadcast(&mut len, 0)?;
        let n = len.int64_value(&[0]) as usize;
        let mut buf = if self.rank == 0 {
            Tensor::from_slice(bytes)
        } else {
            Tensor::zeros([n as i64], (Kind::Uint8, tch::Device::Cpu))
        };
        self.broadcast(&mut buf, 0)?;
        let mut out = vec![0u8; n];
        buf.copy_data(&mut out, n);
        Ok(out)
    }

    /// Blocks until every rank arrives.
    pub fn barrier(&self) -> Result<()> {
        let mut err = std::ptr::null_mut();
        // SAFETY: plain call on a live group.
        let rc = unsafe { mimo_pg_barrier(self.raw.as_ptr(), &mut err) };
        self.check("barrier", rc, err)
    }

    /// Fails unless every rank passes the same `value` (a config digest, a world-size check).
    pub fn check_same(&self, what: &str, value: u64) -> Result<()> {
        let mut v = [value as f64, (value as f64).powi(2)];
        let lo = (value & 0xffff_ffff) as f64;
        let mut w = [lo, lo * lo];
        self.all_reduce_f64(&mut v)?;
        self.all_reduce_f64(&mut w)?;
        let n = self.world as f64;
        let same = |s: [f64; 2]| (s[1] * n - s[0] * s[0]).abs() <= 1e-6 * s[1].abs().max(1.0);
        if same(v) && same(w) {
            Ok(())
        } else {
            Err(DistError::Mismatch(format!(
                "ranks disagree on {what} (every rank must run the same command and config)"
            )))
        }
    }

    /// Sums the gradients over the ranks in buckets of about `bucket_bytes` (each bucket flattened into one
    /// all-reduce, as DDP's reducer does). Every tensor must have a defined gradient.
    pub fn all_reduce_grads(&self, params: &[Tensor], bucket_bytes: usize) -> Result<()> {
        let grads: Vec<Tensor> = params.iter().map(|p| p.grad()).collect();
        if let Some(i) = grads.iter().position(|g| !g.defined()) {
            return Err(DistError::Mismatch(format!(
                "parameter {i} has no gradient this step; data-parallel steps need every parameter used"
            )));
        }
        let mut start = 0;
        while start < grads.len() {
            let mut end = start;
            let mut bytes = 0;
            while end < grads.len() && (end == start || bytes < bucket_bytes) {
                bytes += grads[end].numel() * grads[end].kind().elt_size_in_bytes();
                end += 1;
            }
            let flat: Vec<Tensor> = grads[start..end].iter().map(|g| g.reshape([-1])).collect();
            let mut bucket = [Tensor::cat(&flat, 0)];
            self.all_reduce_sum(&mut bucket)?;
            let mut off = 0;
            for g in &grads[start..end] {
                let n = g.numel() as i64;
                let mut g = g.shallow_clone();
                g.copy_(&bucket[0].narrow(0, off, n).view_as(&g));
                off += n;
            }
            start = end;
        }
        Ok(())
    }

    /// Overwrites every tensor with rank 0's (the start of a run: all ranks train the same weights).
    pub fn broadcast_params(&self, params: &[Tensor]) -> Result<()> {
        tch::no_grad(|| {
            for p in params {
                let mut t = p.detach();
                self.broadcast(&mut t, 0)?;
            }
            Ok(())
        })
    }
}

impl Drop for Group {
    fn drop(&mut self) {
        // SAFETY: the group was created by mimo_pg_new and is freed once.
        unsafe { mimo_pg_free(self.raw.as_ptr()) }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn vars<'a>(kv: &'a [(&'a str, &'a str)]) -> impl Fn(&str) -> Option<String> + 'a {
        move |k| kv.iter().find(|(a, _)| *a == k).map(|(_, v)| v.to_string())
    }

    #[test]
    fn launch_reads_torchrun_variables() {
        assert_eq!(Launch::from_vars(vars(&[])).unwrap(), None);
        assert_eq!(
            Launch::from_vars(vars(&[("WORLD_SIZE", "1")])).unwrap(),
            None
        );
        let l = Launch::from_vars(vars(&[
            ("WORLD_SIZE", "4"),
            ("RANK", "3"),
            ("LOCAL_RANK", "1"),
            ("MASTER_ADDR", "node0"),
            ("MASTER_PORT", "1234"),
        ]))
        .unwrap()
        .unwrap();
        assert_eq!((l.rank, l.world_size, l.local_rank), (3, 4, 1));
        assert_eq!((l.master_addr.as_str(), l.master_port), ("node0", 1234));
        for bad in [
            vec![("WORLD_SIZE", "2")],
            vec![("WORLD_SIZE", "2"), ("RANK", "2")],
            vec![("WORLD_SIZE", "x")],
            vec![("WORLD_SIZE", "2"), ("RANK", "0"), ("MASTER_PORT", "70000")],
        ] {
            let e = Launch::from_vars(vars(&bad)).unwrap_err().to_string();
            assert!(e.starts_with("distributed launch:"), "{e}");
        }
    }
}
