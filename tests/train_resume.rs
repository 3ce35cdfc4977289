//! A training process killed with SIGKILL and restarted ends with the same weights, EMA, optimiser
//! state and loss trace, to the bit, as one that ran uninterrupted.
//!
//! Expected numbers: none from outside — the reference is diffuq's own uninterrupted run (same
//! binary, same thread count, CPU). The test binary re-runs itself as the training process: with
//! `TRAIN_RESUME_CHILD_DIR` set, the `child` test trains a small MLP ε-model through
//! `diffuq::model::trainer::train` (60 steps, a checkpoint every 10) and exits; without it, `child`
//! does nothing.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use candle_core::{DType, Device, Tensor};
use candle_nn::{Init, VarMap};
use diffuq::model::train::LrDecay;
use diffuq::model::trainer::{checkpoints, read_trace, train, DdpmEpsLoss, TrainSpec, TRACE_FILE};
use diffuq::schedule::{NoiseSchedule, ScheduleKind};
use diffuq::seed::SeedStreams;

const CHILD_DIR: &str = "TRAIN_RESUME_CHILD_DIR";
const CHILD_DELAY_MS: &str = "TRAIN_RESUME_CHILD_DELAY_MS";
const STEPS: usize = 60;
const EVERY: usize = 10;
const HIDDEN: usize = 16;

fn spec() -> TrainSpec {
    TrainSpec {
        warmup_steps: 5,
        lr_decay: LrDecay::Cosine,
        clip_grad_norm: Some(1.0),
        ema_decay: 0.9,
        ema_start: 3,
        checkpoint_every: EVERY,
        ..TrainSpec::new(STEPS, 16, 1e-2)
    }
}

/// The training process: an MLP ε-model [x_t, t/T] → 16 (tanh) → 2 on 32 fixed 2-d points.
#[test]
fn child() {
    let Some(dir) = std::env::var_os(CHILD_DIR) else {
        return;
    };
    let delay: u64 = std::env::var(CHILD_DELAY_MS)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(0);
    let dev = Device::Cpu;
    let init = SeedStreams::new(7).purpose("init");
    let vm = VarMap::new();
    let param = |name: &str, shape: &[usize], index: u64, scale: f64| {
        let t = vm
            .get(shape, name, Init::Const(0.0), DType::F32, &dev)
            .unwrap();
        let n = shape.iter().product();
        let values = init.normals(&[index], None, n);
        let v = (Tensor::from_vec(values, shape, &dev).unwrap() * scale).unwrap();
        vm.data().lock().unwrap()[name].set(&v).unwrap();
        t
    };
    let w1 = param("l1.weight", &[3, HIDDEN], 0, 0.5);
    let b1 = param("l1.bias", &[HIDDEN], 1, 0.1);
    let w2 = param("l2.weight", &[HIDDEN, 2], 2, 0.25);
    let b2 = param("l2.bias", &[2], 3, 0.0);
    let points = SeedStreams::new(7).purpose("data").normals(&[0], None, 64);
    let data = Tensor::from_vec(points, (32, 2), &dev).unwrap();
    let schedule = NoiseSchedule::new(ScheduleKind::Linear, 1e-4, 0.02, 100);
    let mlp = move |x: &Tensor, t: &Tensor| {
        let t = (t.unsqueeze(1)? / 100.0)?;
        let h = Tensor::cat(&[x, &t], 1)?
            .matmul(&w1)?
            .broadcast_add(&b1)?
            .tanh()?;
        h.matmul(&w2)?.broadcast_add(&b2)
    };
    let mut objective = DdpmEpsLoss::new(data, &schedule, mlp).unwrap();
    let out = train(
        &vm,
        &spec(),
        &SeedStreams::new(11),
        Path::new(&dir),
        &mut objective,
        |_| std::thread::sleep(Duration::from_millis(delay)),
    )
    .unwrap();
    println!("resumed_from={:?}", out.resumed_from);
}

fn spawn(dir: &Path, delay_ms: u64) -> Child {
    Command::new(std::env::current_exe().unwrap())
        .args(["child", "--exact", "--nocapture", "--test-threads=1"])
        .env(CHILD_DIR, dir)
        .env(CHILD_DELAY_MS, delay_ms.to_string())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("spawning the training process")
}

fn finish(child: Child) -> String {
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success(), "training process failed: {out:?}");
    String::from_utf8_lossy(&out.stdout).to_string()
}

fn last_checkpoint(dir: &Path) -> Option<(usize, PathBuf)> {
    checkpoints(dir).ok().and_then(|mut c| c.pop())
}

/// (name, dtype, shape, raw bytes) of every tensor of a safetensors file, sorted by name.
fn tensor_bytes(path: &Path) -> Vec<(String, String, Vec<usize>, Vec<u8>)> {
    let bytes = std::fs::read(path).unwrap();
    let st = safetensors::SafeTensors::deserialize(&bytes).unwrap();
    let mut out: Vec<_> = st
        .tensors()
        .into_iter()
        .map(|(name, view)| {
            let dtype = format!("{:?}", view.dtype());
            (name, dtype, view.shape().to_vec(), view.data().to_vec())
        })
        .collect();
    out.sort();
    out
}

#[test]
fn sigkilled_training_resumes_to_identical_weights_ema_and_trace() {
    let tmp = tempfile::tempdir().unwrap();
    let (full, cut) = (tmp.path().join("full"), tmp.path().join("cut"));

    // Reference: one uninterrupted process.
    let out = finish(spawn(&full, 0));
    assert!(out.contains("resumed_from=None"), "{out}");

    // A process slowed to ~20 ms a step, killed a few steps after its step-20 checkpoint.
    let mut child = spawn(&cut, 20);
    let started = Instant::now();
    while last_checkpoint(&cut).is_none_or(|(step, _)| step < 20) {
        assert!(
            started.elapsed() < Duration::from_secs(120),
            "no checkpoint"
        );
        assert!(
            child.try_wait().unwrap().is_none(),
            "exited before the kill"
        );
        std::thread::sleep(Duration::from_millis(2));
    }
    std::thread::sleep(Duration::from_millis(40));
    child.kill().unwrap(); // SIGKILL on unix
    child.wait().unwrap();
    let (killed_at, _) = last_checkpoint(&cut).unwrap();
    let rows = read_trace(&cut).unwrap().len();
    assert!(
        (20..STEPS).contains(&killed_at) && rows > killed_at && rows < STEPS,
        "killed with checkpoint {killed_at}, {rows} trace rows"
    );

    // Restarted, it resumes from that checkpoint and finishes.
    let out = finish(spawn(&cut, 0));
    assert!(
        out.contains(&format!("resumed_from=Some({killed_at})")),
        "{out}"
    );

    let (a, b) = (
        last_checkpoint(&full).unwrap(),
        last_checkpoint(&cut).unwrap(),
    );
    assert_eq!((a.0, b.0), (STEPS, STEPS));
    assert_eq!(
        checkpoints(&cut).unwrap().len(),
        1,
        "older checkpoints removed"
    );
    let (ta, tb) = (tensor_bytes(&a.1), tensor_bytes(&b.1));
    let names = |t: &[(String, String, Vec<usize>, Vec<u8>)]| {
        t.iter().map(|x| x.0.clone()).collect::<Vec<_>>()
    };
    assert_eq!(names(&ta), names(&tb));
    for prefix in [
        "model/",
        "ema/",
        "adamw/exp_avg/",
        "adamw/exp_avg_sq/",
        "adamw/step/",
    ] {
        assert_eq!(
            ta.iter().filter(|t| t.0.starts_with(prefix)).count(),
            4,
            "{prefix}"
        );
    }
    for (x, y) in ta.iter().zip(&tb) {
        assert!(x == y, "tensor `{}` differs after the resume", x.0);
    }
    let trace = |d: &Path| std::fs::read(d.join(TRACE_FILE)).unwrap();
    assert_eq!(trace(&full), trace(&cut), "loss traces differ");
    assert_eq!(read_trace(&cut).unwrap().len(), STEPS);
}
