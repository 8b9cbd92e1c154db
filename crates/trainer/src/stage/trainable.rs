//! What a stage trains, and the optimizer over it.

use std::collections::HashSet;

use llava_model::LlavaModel;
use tch::Tensor;

use super::StageError;
use super::config::{Stage, StageConfig};
use super::ranks::Parallel;
use crate::parallel::Optimizer;

/// What a stage trains, by name, with everything else frozen: the connector always; in stage 2
/// the language model too, or only its LoRA adapters when it carries them (the base weights then
/// stay bit-identical). The vision tower never trains.
fn trainable(model: &mut LlavaModel, stage: Stage) -> Vec<(String, Tensor)> {
    model.vision_vs.freeze();
    model.connector_vs.unfreeze();
    let mut params: Vec<(String, Tensor)> = model.connector_vs.variables().into_iter().collect();
    match (stage, &mut model.lora_vs) {
        (Stage::Pretrain, _) => model.lm_vs.freeze(),
        (Stage::Finetune, Some(adapters)) => {
            model.lm_vs.freeze();
            adapters.unfreeze();
            params.extend(adapters.variables());
        }
        (Stage::Finetune, None) => {
            model.lm_vs.unfreeze();
            params.extend(model.lm_vs.variables());
        }
    }
    params.sort_by(|a, b| a.0.cmp(&b.0));
    params
}

/// The optimizer over what the stage trains, on this process or across the ranks of `parallel`
/// (which then start from rank 0's weights), the connector at its own rate when it has one.
pub(super) fn optimizer(
    model: &mut LlavaModel,
    config: &StageConfig,
    parallel: Option<&Parallel>,
) -> Result<Optimizer, StageError> {
    let mut optimizer = Optimizer::new(
        trainable(model, config.stage),
        config.adamw,
        parallel.map(|p| p.group.clone()),
        parallel.is_some_and(|p| p.shard_optimizer),
    )
    .map_err(StageError::optimizer)?;
    if let Some(connector_lr) = config.connector_lr {
        let connector: HashSet<String> = model.connector_vs.variables().into_keys().collect();
        optimizer.set_lr_scale(|name| connector.contains(name), connector_lr / config.lr);
    }
    Ok(optimizer)
}
