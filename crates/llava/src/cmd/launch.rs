//! `--nproc-per-node N`: one node's ranks started by the command itself, as `torchrun
//! --standalone --nproc-per-node N` would start them: N copies of this program with torchrun's
//! environment (`RANK`, `LOCAL_RANK`, `WORLD_SIZE`, `LOCAL_WORLD_SIZE`, `MASTER_ADDR`,
//! `MASTER_PORT`), watched until they end.

use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

/// How long the other ranks get to stop on their own after one failed (they notice a lost peer
/// within seconds and say which), before they are killed.
const GRACE: Duration = Duration::from_secs(30);

use trainer::dist::Launch;

/// Whether this process is a rank some launcher (ours, torchrun or Slurm) started, as the trainer
/// reads the environment (a malformed one counts: the run then says what is wrong with it).
pub fn launched() -> bool {
    !matches!(Launch::from_env(), Ok(None))
}

/// Whether this process is rank 0 of its job, or runs alone (it alone talks to the user): under
/// Slurm too, where `RANK` is not set.
pub fn leader() -> bool {
    Launch::from_env()
        .ok()
        .flatten()
        .is_none_or(|l| l.rank == 0)
}

/// `args` without `--nproc-per-node N` (or `--nproc-per-node=N`).
pub fn without_nproc(args: &[String]) -> Vec<String> {
    let mut out = Vec::new();
    let mut skip = false;
    for arg in args {
        if skip {
            skip = false;
        } else if arg == "--nproc-per-node" {
            skip = true;
        } else if !arg.starts_with("--nproc-per-node=") {
            out.push(arg.clone());
        }
    }
    out
}

/// Runs this program's command line again as `n` local ranks and waits for them. When a rank
/// fails, the others get [`GRACE`] to stop (each says which rank it lost), then are killed; the
/// answer says which rank failed and how.
pub fn run_local(n: usize) -> llava::Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    spawn(n, &without_nproc(&args), false).map(|_| ())
}

/// Runs this program with `args` as `n` local ranks, as [`run_local`] does, and answers what
/// rank 0 printed on its standard output.
pub fn run_local_output(n: usize, args: &[String]) -> llava::Result<String> {
    spawn(n, &without_nproc(args), true)
}

/// Starts `n` ranks of this program with `args`, rank 0's standard output captured when
/// `capture`; waits for them (see [`watch`]) and answers what rank 0 printed.
fn spawn(n: usize, args: &[String], capture: bool) -> llava::Result<String> {
    let program = std::env::current_exe()
        .map_err(|e| llava::Error::Unsupported(format!("finding this program: {e}")))?;
    // torchrun's way: a port the system says is free now.
    let port = free_port()?;
    let mut children: Vec<Option<Child>> = Vec::with_capacity(n);
    let mut reader = None;
    for rank in 0..n {
        let mut command = Command::new(&program);
        command
            .args(args)
            .env("RANK", rank.to_string())
            .env("LOCAL_RANK", rank.to_string())
            .env("WORLD_SIZE", n.to_string())
            .env("LOCAL_WORLD_SIZE", n.to_string())
            .env("MASTER_ADDR", "127.0.0.1")
            .env("MASTER_PORT", port.to_string());
        if capture && rank == 0 {
            command.stdout(Stdio::piped());
        }
        let mut child = match command.spawn() {
            Ok(child) => child,
            Err(e) => {
                // The ranks already started would wait for this one until their timeout.
                for child in children.iter_mut().flatten() {
                    let _ = child.kill();
                    let _ = child.wait();
                }
                return Err(llava::Error::Unsupported(format!(
                    "starting rank {rank}: {e}"
                )));
            }
        };
        if let Some(mut stdout) = child.stdout.take() {
            reader = Some(std::thread::spawn(move || {
                let mut text = String::new();
                let _ = std::io::Read::read_to_string(&mut stdout, &mut text);
                text
            }));
        }
        children.push(Some(child));
    }
    let failure = watch(&mut children);
    let output = reader
        .map(|r| r.join().unwrap_or_default())
        .unwrap_or_default();
    match failure {
        None => Ok(output),
        Some((rank, status)) => Err(llava::Error::Unsupported(format!(
            "rank {rank} of {n} failed ({}); the run can continue from its last checkpoint \
             with --resume",
            describe(status)
        ))),
    }
}

/// Waits for the ranks `children` until all have ended, or until [`GRACE`] after the first
/// failure, then kills those left; answers the first rank that failed and how.
fn watch(children: &mut [Option<Child>]) -> Option<(usize, ExitStatus)> {
    let mut failure: Option<(usize, ExitStatus)> = None;
    let mut failed_at: Option<Instant> = None;
    loop {
        for (rank, slot) in children.iter_mut().enumerate() {
            let Some(child) = slot else { continue };
            if let Ok(Some(status)) = child.try_wait() {
                *slot = None;
                if !status.success() && failure.is_none() {
                    failure = Some((rank, status));
                    failed_at = Some(Instant::now());
                }
            }
        }
        if children.iter().all(Option::is_none) {
            return failure;
        }
        if failed_at.is_some_and(|t| t.elapsed() > GRACE) {
            for (rank, child) in children.iter_mut().enumerate() {
                if let Some(child) = child {
                    eprintln!("rank {rank} did not stop on its own; killing it");
                    let _ = child.kill();
                    let _ = child.wait();
                }
            }
            return failure;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// A port on the loopback that the system says is free now.
pub fn free_port() -> llava::Result<u16> {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .map_err(|e| llava::Error::Unsupported(format!("finding a free port: {e}")))
}

fn describe(status: ExitStatus) -> String {
    #[cfg(unix)]
    {
        use std::os::unix::process::ExitStatusExt;
        if let Some(signal) = status.signal() {
            return format!("killed by signal {signal}");
        }
    }
    status.to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_ranks_get_the_command_line_without_the_launch_flag() {
        let args: Vec<String> = [
            "train",
            "--nproc-per-node",
            "2",
            "--stage",
            "2",
            "--nproc-per-node=3",
        ]
        .map(String::from)
        .to_vec();
        assert_eq!(without_nproc(&args), ["train", "--stage", "2"]);
    }
}
