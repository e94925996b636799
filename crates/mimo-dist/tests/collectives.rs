//! The c10d gloo group on loopback: two ranks (threads of this process, each with its own store client and
//! gloo context) all-reduce, broadcast and bucket gradients; a lone rank times out with a clear error.

use std::net::TcpListener;
use std::time::{Duration, Instant};

use mimo_dist::{Group, Launch};
use tch::{Kind, Tensor};

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn launch(rank: usize, world: usize, port: u16, timeout_s: f64) -> Launch {
    Launch {
        rank,
        world_size: world,
        local_rank: rank,
        master_addr: "127.0.0.1".into(),
        master_port: port,
        timeout: Duration::from_secs_f64(timeout_s),
    }
}

fn on_ranks<T: Send + 'static>(
    world: usize,
    f: impl Fn(Group) -> T + Send + Sync + Clone + 'static,
) -> Vec<T> {
    let port = free_port();
    let handles: Vec<_> = (0..world)
        .map(|r| {
            let f = f.clone();
            std::thread::spawn(move || f(Group::init(&launch(r, world, port, 60.0)).unwrap()))
        })
        .collect();
    handles.into_iter().map(|h| h.join().unwrap()).collect()
}

#[test]
fn two_ranks_sum_broadcast_and_bucket_gradients() {
    let out = on_ranks(2, |g| {
        let r = g.rank() as f64;
        let mut x = [1.0 + r, 10.0 * r];
        g.all_reduce_f64(&mut x).unwrap();
        let msg = g
            .broadcast_bytes(if g.rank() == 0 {
                b"from rank 0"
            } else {
                b"ignored"
            })
            .unwrap();
        // Three parameters with gradients rank+1 times their index; a tiny bucket size forces 3 buckets.
        let params: Vec<Tensor> = (0..3)
            .map(|_| Tensor::zeros([2, 3], (Kind::Float, tch::Device::Cpu)).set_requires_grad(true))
            .collect();
        let loss = params
            .iter()
            .enumerate()
            .map(|(i, p)| p.sum(Kind::Float) * ((i + 1) as f64 * (r + 1.0)))
            .fold(Tensor::from(0.0f32), |a, b| a + b);
        loss.backward();
        g.all_reduce_grads(&params, 8).unwrap();
        let grads: Vec<f64> = params
            .iter()
            .map(|p| p.grad().double_value(&[1, 2]))
            .collect();
        g.check_same("a constant", 42).unwrap();
        let differ = g.check_same("the rank", g.rank() as u64).is_err();
        g.barrier().unwrap();
        (x, msg, grads, differ)
    });
    for (x, msg, grads, differ) in out {
        assert_eq!(x, [3.0, 10.0]);
        assert_eq!(msg, b"from rank 0");
        assert_eq!(grads, vec![3.0, 6.0, 9.0]);
        assert!(differ);
    }
}

#[test]
fn a_lone_rank_times_out_naming_its_peers() {
    let t = Instant::now();
    let e = Group::init(&launch(0, 2, free_port(), 2.0))
        .unwrap_err()
        .to_string();
    assert!(t.elapsed() < Duration::from_secs(30), "{:?}", t.elapsed());
    assert!(
        e.contains("rendezvous") && e.contains("waiting for 2 ranks"),
        "{e}"
    );
}
