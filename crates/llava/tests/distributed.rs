//! Data-parallel training as users run it, on CPU ranks over c10d's Gloo: `llava train
//! --nproc-per-node N` and `torchrun --no-python` (the cached torch environment's own torchrun)
//! give the losses of one process, on one node or as two torchrun nodes; a rank killed with SIGKILL stops the others within a bounded
//! time, naming it; `--resume` then reproduces the uninterrupted run, at the same world size or
//! another (re-sharding the optimizer state); torchrun's `--max-restarts` recovers by itself.

mod common;

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::llava;

/// Twelve optimizer steps of two micro-batches of four on the tiny preset.
const SHORT: &[&str] = &[
    "train",
    "--stage",
    "2",
    "--skip-pretraining",
    "--synthetic-images",
    "60",
    "--micro-batch",
    "4",
    "--global-batch",
    "8",
    "--max-steps",
    "12",
];

/// A run long enough to be killed in the middle of: 300 steps, a checkpoint every 5.
const LONG: &[&str] = &[
    "train",
    "--stage",
    "2",
    "--skip-pretraining",
    "--synthetic-images",
    "200",
    "--micro-batch",
    "4",
    "--global-batch",
    "8",
    "--epochs",
    "50",
    "--max-steps",
    "300",
    "--save-every",
    "5",
];

fn train(args: &[&str], output: &Path, extra: &[&str]) -> String {
    let out = llava()
        .args(args)
        .arg("--output")
        .arg(output)
        .args(extra)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(out.status.success(), "{args:?} {extra:?}\n{stderr}");
    stderr
}

/// `(step, loss)` of every line of a run's `metrics.jsonl`.
fn losses(output: &Path) -> Vec<(u64, f64)> {
    std::fs::read_to_string(output.join("metrics.jsonl"))
        .unwrap()
        .lines()
        .map(|l| {
            let v: serde_json::Value = serde_json::from_str(l).unwrap();
            (v["step"].as_u64().unwrap(), v["loss"].as_f64().unwrap())
        })
        .collect()
}

fn summary(output: &Path) -> serde_json::Value {
    serde_json::from_str(&std::fs::read_to_string(output.join("summary.json")).unwrap()).unwrap()
}

fn assert_same_losses(a: &[(u64, f64)], b: &[(u64, f64)], what: &str) {
    assert_eq!(a.len(), b.len(), "{what}: steps");
    for ((sa, la), (sb, lb)) in a.iter().zip(b) {
        assert_eq!(sa, sb, "{what}");
        assert!(
            (la - lb).abs() <= 1e-4 * la.abs().max(1e-6),
            "{what}: step {sa}: {la} against {lb}"
        );
    }
}

#[test]
fn two_ranks_train_as_one_process_sharded_or_replicated() {
    let dir = tempfile::tempdir().unwrap();
    let one = dir.path().join("one");
    train(SHORT, &one, &[]);
    let sharded = dir.path().join("sharded");
    train(SHORT, &sharded, &["--nproc-per-node", "2"]);
    let replicated = dir.path().join("replicated");
    train(
        SHORT,
        &replicated,
        &["--nproc-per-node", "2", "--no-shard-optimizer"],
    );
    let reference = losses(&one);
    assert_eq!(reference.len(), 12);
    assert_same_losses(&reference, &losses(&sharded), "2 ranks, sharded");
    assert_same_losses(&reference, &losses(&replicated), "2 ranks, replicated");
    // Only rank 0 writes; the summary says how many trained and what each held.
    for (run, world) in [(&one, 1), (&sharded, 2), (&replicated, 2)] {
        assert_eq!(summary(run)["world_size"], world);
        assert!(run.join("model/model.safetensors").exists() || run.join("model").exists());
    }
    let state = |run: &Path| summary(run)["optimizer_state_bytes"].as_u64().unwrap();
    // f32 weights on the CPU are their own masters (8 bytes per element); a shard keeps its own
    // f32 master (12 bytes per element) of half the elements.
    assert_eq!(state(&replicated), state(&one));
    assert_eq!(state(&sharded) * 4, state(&one) * 3);

    // The tiny preset's own batch (one micro-batch of 32 per step) is cut in halves between
    // the ranks, each micro-batch's loss normalised by its tokens on both.
    let whole = dir.path().join("whole");
    let tiny = [
        "train",
        "--stage",
        "2",
        "--skip-pretraining",
        "--synthetic-images",
        "60",
    ];
    train(&tiny, &whole, &["--max-steps", "4"]);
    let halves = dir.path().join("halves");
    train(
        &tiny,
        &halves,
        &["--max-steps", "4", "--nproc-per-node", "2"],
    );
    assert_same_losses(
        &losses(&whole),
        &losses(&halves),
        "micro-batches cut in halves",
    );
}

/// The processes whose parent is `parent` (Linux's /proc).
fn children(parent: u32) -> Vec<u32> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir("/proc").unwrap().flatten() {
        let Ok(pid) = entry.file_name().to_string_lossy().parse::<u32>() else {
            continue;
        };
        let Ok(stat) = std::fs::read_to_string(entry.path().join("stat")) else {
            continue;
        };
        // `pid (comm) state ppid …`; comm may hold spaces, so read after the last ')'.
        let ppid = stat
            .rsplit(')')
            .next()
            .and_then(|rest| rest.split_whitespace().nth(1))
            .and_then(|p| p.parse::<u32>().ok());
        if ppid == Some(parent) {
            out.push(pid);
        }
    }
    out
}

/// The `RANK` in a process's environment.
fn rank_of(pid: u32) -> Option<String> {
    let environ = std::fs::read(format!("/proc/{pid}/environ")).ok()?;
    environ
        .split(|&b| b == 0)
        .filter_map(|kv| std::str::from_utf8(kv).ok())
        .find_map(|kv| kv.strip_prefix("RANK=").map(str::to_string))
}

fn wait_for(what: &str, limit: Duration, mut ready: impl FnMut() -> bool) {
    let started = Instant::now();
    while !ready() {
        assert!(started.elapsed() < limit, "waited {limit:?} for {what}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Once the run writing into `output` has committed checkpoint 10, SIGKILLs rank 1 among the
/// children of `launcher` (ours or torchrun); returns when.
fn kill_rank_1_after_checkpoint_10(launcher: u32, output: &Path) -> Instant {
    wait_for("checkpoint-10", Duration::from_secs(120), || {
        output.join("checkpoint-10/trainer_state.json").exists()
    });
    let rank1 = children(launcher)
        .into_iter()
        .find(|&pid| rank_of(pid).as_deref() == Some("1"))
        .expect("rank 1 runs");
    let killed = Instant::now();
    Command::new("kill")
        .args(["-9", &rank1.to_string()])
        .status()
        .unwrap();
    killed
}

#[test]
fn a_killed_rank_stops_the_job_naming_it_and_resume_reproduces_the_run() {
    let dir = tempfile::tempdir().unwrap();
    let uninterrupted = dir.path().join("uninterrupted");
    train(LONG, &uninterrupted, &["--nproc-per-node", "2"]);
    let reference = losses(&uninterrupted);
    assert_eq!(reference.len(), 300);

    let run = dir.path().join("run");
    let mut launcher = llava()
        .args(LONG)
        .arg("--output")
        .arg(&run)
        .args(["--nproc-per-node", "2"])
        .stderr(Stdio::piped())
        .stdout(Stdio::null())
        .spawn()
        .unwrap();
    let killed = kill_rank_1_after_checkpoint_10(launcher.id(), &run);
    let out = {
        let mut stderr = launcher.stderr.take().unwrap();
        let mut text = String::new();
        std::io::Read::read_to_string(&mut stderr, &mut text).unwrap();
        let status = launcher.wait().unwrap();
        (status, text)
    };
    let elapsed = killed.elapsed();
    assert!(!out.0.success(), "{}", out.1);
    assert!(elapsed < Duration::from_secs(60), "{elapsed:?}\n{}", out.1);
    // Rank 0 names the rank it lost; the launcher says how it ended.
    assert!(out.1.contains("lost rank 1 of 2"), "{}", out.1);
    assert!(
        out.1.contains("rank 1 of 2 failed (killed by signal 9)"),
        "{}",
        out.1
    );
    let steps_before = losses(&run).len();
    assert!(
        steps_before < 300,
        "the kill came too late: {steps_before} steps"
    );

    // At the same world size, the resumed run is the uninterrupted one.
    let again = dir.path().join("again");
    copy_dir(&run, &again);
    train(
        LONG,
        &again,
        &["--nproc-per-node", "2", "--resume", again.to_str().unwrap()],
    );
    assert_same_losses(&reference, &losses(&again), "resumed on 2 ranks");

    // At another world size (the optimizer state re-sharded from 2 to 3, and to 1), it trains on
    // to the end. Its first steps agree with the uninterrupted run to float tolerance; after
    // that, gradients summed in another order drift apart as any two float orders do over
    // hundreds of steps at this learning rate.
    let resumed_at = std::fs::read_dir(&run)
        .unwrap()
        .flatten()
        .filter_map(|e| {
            e.file_name()
                .to_str()?
                .strip_prefix("checkpoint-")?
                .parse::<usize>()
                .ok()
        })
        .max()
        .unwrap();
    for world in ["3", "1"] {
        let other = dir.path().join(format!("on-{world}"));
        copy_dir(&run, &other);
        train(
            LONG,
            &other,
            &[
                "--nproc-per-node",
                world,
                "--resume",
                other.to_str().unwrap(),
            ],
        );
        assert_eq!(summary(&other)["world_size"], world.parse::<u64>().unwrap());
        let trained = losses(&other);
        assert_eq!(trained.len(), 300, "resumed on {world}");
        let early = resumed_at + 5;
        assert_same_losses(
            &reference[..early],
            &trained[..early],
            &format!("resumed on {world} at step {resumed_at}"),
        );
    }
}

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for entry in std::fs::read_dir(from).unwrap().flatten() {
        let target = to.join(entry.file_name());
        if entry.file_type().unwrap().is_dir() {
            copy_dir(&entry.path(), &target);
        } else {
            std::fs::copy(entry.path(), target).unwrap();
        }
    }
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

#[test]
fn torchrun_launches_the_ranks_and_restarts_them_after_a_kill() {
    let Some(torchrun) = llava::foundation::torch_env_bin("torchrun") else {
        panic!("no torchrun beside libtorch: run `cargo xtask setup`");
    };
    let dir = tempfile::tempdir().unwrap();
    let one = dir.path().join("one");
    train(SHORT, &one, &[]);
    let launched = dir.path().join("torchrun");
    let out = Command::new(&torchrun)
        .args(["--no-python", "--nproc-per-node", "2", "--master-port"])
        .arg(free_port().to_string())
        .arg(env!("CARGO_BIN_EXE_llava"))
        .args(SHORT)
        .arg("--output")
        .arg(&launched)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_same_losses(&losses(&one), &losses(&launched), "under torchrun");
    assert_eq!(summary(&launched)["world_size"], 2);

    // Two nodes of one rank each, as two torchrun agents meeting through c10d's rendezvous (on
    // this one host): RANK and LOCAL_RANK differ, and rank 1's agent is not the store's host.
    let nodes = dir.path().join("nodes");
    let endpoint = format!("127.0.0.1:{}", free_port());
    let agents: Vec<_> = (0..2)
        .map(|_| {
            Command::new(&torchrun)
                .args(["--no-python", "--nnodes", "2", "--nproc-per-node", "1"])
                .args([
                    "--rdzv-backend",
                    "c10d",
                    "--rdzv-id",
                    "nodes",
                    "--rdzv-endpoint",
                ])
                .arg(&endpoint)
                .arg(env!("CARGO_BIN_EXE_llava"))
                .args(SHORT)
                .arg("--output")
                .arg(&nodes)
                .stdout(Stdio::null())
                .stderr(Stdio::piped())
                .spawn()
                .unwrap()
        })
        .collect();
    for agent in agents {
        let out = agent.wait_with_output().unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    assert_same_losses(&losses(&one), &losses(&nodes), "two torchrun nodes");

    // torchrun --max-restarts with --resume on the run's own output: a killed rank costs the
    // steps since the last checkpoint, and the run ends as an uninterrupted one.
    let recovered = dir.path().join("recovered");
    let mut job = Command::new(&torchrun)
        .args([
            "--no-python",
            "--nproc-per-node",
            "2",
            "--max-restarts",
            "1",
            "--master-port",
        ])
        .arg(free_port().to_string())
        .arg(env!("CARGO_BIN_EXE_llava"))
        .args(LONG)
        .arg("--output")
        .arg(&recovered)
        .arg("--resume")
        .arg(&recovered)
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    kill_rank_1_after_checkpoint_10(job.id(), &recovered);
    let mut stderr = String::new();
    std::io::Read::read_to_string(&mut job.stderr.take().unwrap(), &mut stderr).unwrap();
    assert!(job.wait().unwrap().success(), "{stderr}");
    assert!(stderr.contains("exitcode: -9"), "the kill landed: {stderr}");
    let uninterrupted = dir.path().join("uninterrupted");
    train(LONG, &uninterrupted, &["--nproc-per-node", "2"]);
    assert_same_losses(
        &losses(&uninterrupted),
        &losses(&recovered),
        "after torchrun's restart",
    );
}
