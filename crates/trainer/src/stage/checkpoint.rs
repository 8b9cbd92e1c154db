//! Checkpoints: written atomically by every rank together, found again in a run's output, and
//! resumed from at any world size.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::Serialize;

use super::StageError;
use super::config::StageConfig;
use super::ranks::Ranks;
use crate::parallel::Optimizer;

/// Where a checkpoint says the run was (`trainer_state.json`).
#[derive(Debug, Clone, Serialize, serde::Deserialize, PartialEq)]
pub struct TrainerState {
    /// Optimizer steps taken.
    pub step: usize,
    /// The epoch in progress.
    pub epoch: u64,
    /// Where the next batch starts in that epoch's order.
    pub position: usize,
    /// Samples trained on.
    pub samples_seen: usize,
    /// Skips so far, by reason.
    pub skipped: BTreeMap<String, usize>,
    /// Loss of the first step.
    pub first_loss: f64,
    /// Ranks that wrote it (a resume may use another number).
    #[serde(default = "one")]
    pub world_size: usize,
}

fn one() -> usize {
    1
}

/// The name of the state file that makes a directory a (complete) checkpoint.
const STATE_FILE: &str = "trainer_state.json";

/// Writes a checkpoint atomically: into `checkpoint-<step>.tmp`, then renamed. A run killed at any
/// moment leaves either no checkpoint of that step or a whole one. With several ranks, each
/// writes its shard of the optimizer state, and rank 0 commits the checkpoint (its
/// `trainer_state.json` and the rename) only once every rank has written.
pub(super) fn save_checkpoint(
    output: &Path,
    optimizer: &Optimizer,
    state: &TrainerState,
    ranks: Ranks<'_>,
) -> Result<(), StageError> {
    let tmp = output.join(format!("checkpoint-{}.tmp", state.step));
    if ranks.is_leader() {
        let _ = std::fs::remove_dir_all(&tmp);
        std::fs::create_dir_all(&tmp).map_err(StageError::io(&tmp))?;
    }
    ranks.barrier()?;
    if let Some(file) = optimizer.checkpoint_file() {
        foundation::save_safetensors(tmp.join(file), &optimizer.checkpoint_tensors(), None)
            .map_err(StageError::Checkpoint)?;
    }
    ranks.barrier()?;
    if ranks.is_leader() {
        commit(output, &tmp, state)?;
    }
    ranks.barrier()
}

/// Rank 0's end of a checkpoint's writing: the state file into `tmp`, then `tmp` renamed to
/// `checkpoint-<step>`.
fn commit(output: &Path, tmp: &Path, state: &TrainerState) -> Result<(), StageError> {
    let json = serde_json::to_string_pretty(state).expect("state serialises");
    foundation::write_atomic(tmp.join(STATE_FILE), json.as_bytes())
        .map_err(StageError::Checkpoint)?;
    // A checkpoint of this step from an earlier attempt is set aside, not deleted, until
    // the new one is in place: a kill at any moment leaves one of them whole.
    let dir = output.join(format!("checkpoint-{}", state.step));
    let old = output.join(format!("checkpoint-{}.old", state.step));
    let _ = std::fs::remove_dir_all(&old);
    if dir.exists() {
        std::fs::rename(&dir, &old).map_err(StageError::io(&old))?;
    }
    std::fs::rename(tmp, &dir).map_err(StageError::io(&dir))?;
    let _ = std::fs::remove_dir_all(&old);
    Ok(())
}

/// The checkpoint to resume from: `dir` itself when it is one, else the latest complete
/// `checkpoint-<step>` inside it (a run's output directory; `.tmp` leftovers of a killed write
/// are ignored).
pub fn resolve_checkpoint(dir: &Path) -> Result<PathBuf, StageError> {
    if dir.join(STATE_FILE).exists() {
        return Ok(dir.to_path_buf());
    }
    let entries = std::fs::read_dir(dir).map_err(StageError::io(dir))?;
    entries
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.join(STATE_FILE).exists())
        .filter_map(|p| Some((checkpoint_rank(&p)?, p)))
        .max_by_key(|(key, _)| *key)
        .map(|(_, p)| p)
        .ok_or_else(|| {
            StageError::Resume(format!(
                "{}: neither a checkpoint nor a run directory with checkpoint-<step> folders",
                dir.display()
            ))
        })
}

/// How recent the checkpoint directory `path` is: its step, then whether it is the current one
/// of that step. `checkpoint-<step>.old` is a whole checkpoint set aside while its step was
/// being written again; it counts when the new one did not make it.
fn checkpoint_rank(path: &Path) -> Option<(usize, bool)> {
    let name = path.file_name()?.to_str()?.strip_prefix("checkpoint-")?;
    let (step, current) = match name.strip_suffix(".old") {
        Some(step) => (step, false),
        None => (name, true),
    };
    Some((step.parse::<usize>().ok()?, current))
}

/// Restores weights and optimizer state from `dir` (written at any world size); returns where
/// the run was.
fn load_checkpoint(dir: &Path, optimizer: &mut Optimizer) -> Result<TrainerState, StageError> {
    let state_file = dir.join(STATE_FILE);
    let text = std::fs::read_to_string(&state_file).map_err(StageError::io(&state_file))?;
    let state: TrainerState = serde_json::from_str(&text)
        .map_err(|e| StageError::Resume(format!("{}: {e}", state_file.display())))?;
    optimizer.restore(dir).map_err(StageError::Resume)?;
    Ok(state)
}

/// Restores the checkpoint `config.resume` names into `optimizer`, and returns where the run was;
/// `None` when the stage starts from the beginning. A job restarted with `--resume` on its own
/// `output` (torchrun's --max-restarts) before its first checkpoint starts over.
pub(super) fn resume(
    config: &StageConfig,
    output: &Path,
    optimizer: &mut Optimizer,
    ranks: Ranks<'_>,
) -> Result<Option<TrainerState>, StageError> {
    let Some(dir) = &config.resume else {
        return Ok(None);
    };
    match resolve_checkpoint(dir) {
        Ok(checkpoint) => load_checkpoint(&checkpoint, optimizer).map(Some),
        Err(_) if same_dir(dir, output) => {
            if ranks.is_leader() {
                eprintln!(
                    "no checkpoint in {} yet: starting from the beginning",
                    dir.display()
                );
            }
            Ok(None)
        }
        Err(e) => Err(e),
    }
}

/// Whether `a` and `b` name the same directory.
fn same_dir(a: &Path, b: &Path) -> bool {
    match (std::fs::canonicalize(a), std::fs::canonicalize(b)) {
        (Ok(a), Ok(b)) => a == b,
        _ => a == b,
    }
}
